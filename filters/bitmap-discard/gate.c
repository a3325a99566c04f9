/* nbdkit-fleece: bitmap-discard filter, the writer gate and freezes.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Every write, zero and trim of the writer export passes the gate
 * (gate_begin ... gate_end).  Two things close it:
 *
 *  - a control step (snapshot, checkpoint, delete-checkpoint) that
 *    needs a quiet instant: gate_hold closes the gate and waits until
 *    the writes in flight have finished; gate_release opens it;
 *
 *  - a freeze (the "freeze" command), which does the same for up to
 *    its timeout, so that a coordinator can take the snapshots of
 *    several disks (one nbdkit each) at one instant.  A freeze ends
 *    by "thaw", or by itself when its deadline passes: a coordinator
 *    that dies must not leave the writers stuck.
 *
 * While frozen, gate_hold finds the writes drained already and
 * returns at once, and gate_release leaves them held: a snapshot
 * taken while frozen is at the frozen instant and does not let the
 * writes go.  A snapshot that depends on a freeze checks it and closes
 * the gate in one step (gate_hold_frozen), so the freeze cannot end
 * between the check and the hold.
 *
 * A freeze's end by timeout is noticed by whoever looks first after
 * its deadline: a held writer (its wait is timed), the control thread
 * (its poll is timed, gate_expire), or a command.  All do the same:
 * the freeze is marked expired, counted and logged once, and the
 * writers are woken.  While a freeze is still draining, only the
 * freeze itself may end it (held writers wait untimed), so the drain
 * has one outcome.
 *
 * Deadlines are on CLOCK_MONOTONIC (the condition variable is set up
 * to match), so changing the wall clock does not end or stretch a
 * freeze.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "timespec.h"
#include "gate.h"

/* 'lock' guards every field below; 'cond' (CLOCK_MONOTONIC) is
 * broadcast whenever the gate opens or the writes in flight reach 0.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;

static bool held;               /* a control step holds the writes */
static uint64_t inflight;       /* writes between begin and end */
static uint64_t waiting;        /* writes waiting in gate_begin */

static bool frozen;             /* a freeze is in force (or draining) */
static bool draining;           /* ... and still waiting for inflight */
static uint64_t freeze_id;      /* the current or last freeze, 0: none */
static struct timespec deadline; /* when the freeze ends by itself */
static double freeze_seconds;   /* its timeout */
static bool last_expired;       /* freeze_id ended by its timeout */
static uint64_t freezes_expired;

int
gate_init (void)
{
  pthread_condattr_t attr;
  int err;

  err = pthread_condattr_init (&attr);
  if (err == 0)
    err = pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  if (err == 0)
    err = pthread_cond_init (&cond, &attr);
  pthread_condattr_destroy (&attr);
  if (err) {
    errno = err;
    nbdkit_error ("bitmap-discard: pthread_cond_init: %m");
    return -1;
  }
  return 0;
}

/* A freeze that ended by its timeout, to be logged once the lock is
 * dropped (the log is I/O).
 */
struct expiry {
  uint64_t id;                  /* 0: none */
  double seconds;
};

/* End the freeze if its deadline has passed (and it is not draining:
 * then gate_freeze decides).  Lock held.  Fills *ex if it ended.
 */
static void
expire_locked (struct expiry *ex)
{
  if (!frozen || draining || !deadline_reached (deadline))
    return;
  frozen = false;
  last_expired = true;
  freezes_expired++;
  ex->id = freeze_id;
  ex->seconds = freeze_seconds;
  pthread_cond_broadcast (&cond);
}

/* Log the end of a freeze by its timeout, if ex says so. */
static void
log_expiry (const struct expiry *ex)
{
  if (ex->id)
    nbdkit_error ("bitmap-discard: freeze %" PRIu64 " expired: no thaw "
                  "within its timeout of %g seconds; writes resume, and "
                  "a snapshot with freeze=%" PRIu64 " will fail",
                  ex->id, ex->seconds, ex->id);
}

void
gate_begin (void)
{
  struct expiry ex = { 0 };

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    for (;;) {
      expire_locked (&ex);
      if (!held && !frozen)
        break;
      waiting++;
      if (frozen && !draining) {
        struct timespec until = deadline;
        pthread_cond_timedwait (&cond, &lock, &until);
      }
      else
        pthread_cond_wait (&cond, &lock);
      waiting--;
    }
    inflight++;
  }
  log_expiry (&ex);
}

void
gate_end (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (inflight > 0);
  if (--inflight == 0)
    pthread_cond_broadcast (&cond);
}

void
gate_hold (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (!held);
  held = true;
  while (inflight > 0)
    pthread_cond_wait (&cond, &lock);
}

int
gate_hold_frozen (uint64_t id, char *err, size_t errlen)
{
  struct expiry ex = { 0 };
  int r = -1;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    assert (!held);
    expire_locked (&ex);
    if (frozen && id == freeze_id) {
      assert (inflight == 0);
      held = true;
      r = 0;
    }
    else if (id == freeze_id && last_expired)
      snprintf (err, errlen, "freeze %" PRIu64 " expired before this "
                "snapshot (its timeout passed): the writers went on, so "
                "the instant is lost; freeze again and retry", id);
    else
      snprintf (err, errlen, "freeze %" PRIu64 " is not in force%s", id,
                frozen ? "" : " (nothing is frozen)");
  }
  log_expiry (&ex);
  return r;
}

void
gate_release (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (held);
  held = false;
  pthread_cond_broadcast (&cond);
}

/* Set the deadline to now + seconds.  Lock held. */
static void
set_deadline_locked (double seconds)
{
  deadline = deadline_after (seconds);
}

int
gate_freeze (double seconds, uint64_t *id, char *err, size_t errlen)
{
  struct expiry ex = { 0 };
  int r = -1;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    assert (!held);
    expire_locked (&ex);
    if (frozen) {
      snprintf (err, errlen, "already frozen (freeze %" PRIu64 ")",
                freeze_id);
      goto out;
    }
    set_deadline_locked (seconds);
    frozen = draining = true;
    freeze_id++;
    freeze_seconds = seconds;
    last_expired = false;
    while (inflight > 0) {
      if (pthread_cond_timedwait (&cond, &lock, &deadline) == ETIMEDOUT &&
          inflight > 0) {
        snprintf (err, errlen, "%" PRIu64 " write(s) in flight did not "
                  "finish within %g seconds: not frozen", inflight,
                  seconds);
        frozen = draining = false;
        pthread_cond_broadcast (&cond);
        goto out;
      }
    }
    draining = false;
    *id = freeze_id;
    r = 0;
  out:;
  }
  log_expiry (&ex);
  return r;
}

void
gate_thaw (bool *was_frozen, bool *expired)
{
  struct expiry ex = { 0 };

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    assert (!draining);
    expire_locked (&ex);
    *was_frozen = frozen;
    *expired = !frozen && last_expired;
    if (frozen) {
      frozen = false;
      pthread_cond_broadcast (&cond);
    }
  }
  log_expiry (&ex);
}

int
gate_expire (void)
{
  struct expiry ex = { 0 };
  int r = -1;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    expire_locked (&ex);
    if (frozen && !draining) {
      double left = ts_seconds_between (ts_now (), deadline);
      r = left > 0 ? (int) (left * 1000) + 1 : 0;
    }
  }
  log_expiry (&ex);
  return r;
}

void
gate_get_stats (struct gate_stats *st)
{
  struct expiry ex = { 0 };

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    struct timespec t = ts_now ();

    expire_locked (&ex);
    st->frozen = frozen && !draining;
    st->freeze_id = st->frozen ? freeze_id : 0;
    st->freeze_remaining =
      st->frozen ? ts_seconds_between (t, deadline) : 0;
    if (st->freeze_remaining < 0)
      st->freeze_remaining = 0;
    st->freezes_expired = freezes_expired;
    st->writes_held = waiting;
    st->writes_in_flight = inflight;
  }
  log_expiry (&ex);
}
