/* nbdkit-fleece: deadlines and intervals on CLOCK_MONOTONIC.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Every timeout in the project (cbw-timeout, cbw-linger, freezes,
 * reconnect delays, retry delays) is measured on CLOCK_MONOTONIC, so
 * a change of the wall clock moves none of them.  Condition
 * variables that wait for these deadlines must be set up with
 * pthread_condattr_setclock (CLOCK_MONOTONIC); sem_clockwait takes
 * the clock as an argument.
 */

#ifndef NBDKIT_FLEECE_TIMESPEC_H
#define NBDKIT_FLEECE_TIMESPEC_H

#include <stdbool.h>
#include <time.h>

#define TS_NSEC_PER_SEC 1000000000L

/* The current CLOCK_MONOTONIC time. */
static inline struct timespec
ts_now (void)
{
  struct timespec t;

  clock_gettime (CLOCK_MONOTONIC, &t);
  return t;
}

/* The current CLOCK_MONOTONIC time in seconds, for code that keeps
 * its deadlines as doubles (the control tool).
 */
static inline double
ts_now_seconds (void)
{
  const struct timespec t = ts_now ();

  return t.tv_sec + t.tv_nsec / 1e9;
}

/* T + SECS (SECS >= 0, fractions kept to the nanosecond). */
static inline struct timespec
ts_add (struct timespec t, double secs)
{
  long long ns = (long long) (secs * 1e9);

  t.tv_sec += ns / TS_NSEC_PER_SEC;
  t.tv_nsec += ns % TS_NSEC_PER_SEC;
  if (t.tv_nsec >= TS_NSEC_PER_SEC) {
    t.tv_sec++;
    t.tv_nsec -= TS_NSEC_PER_SEC;
  }
  return t;
}

/* True if A is earlier than B. */
static inline bool
ts_before (struct timespec a, struct timespec b)
{
  return a.tv_sec < b.tv_sec ||
    (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

/* Seconds from A to B (negative if B is earlier). */
static inline double
ts_seconds_between (struct timespec a, struct timespec b)
{
  return (double) (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
}

/* The deadline SECS from now. */
static inline struct timespec
deadline_after (double secs)
{
  return ts_add (ts_now (), secs);
}

/* True once the clock has reached DEADLINE. */
static inline bool
deadline_reached (struct timespec deadline)
{
  return !ts_before (ts_now (), deadline);
}

#endif /* NBDKIT_FLEECE_TIMESPEC_H */
