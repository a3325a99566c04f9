/* nbdkit-fleece: give a thread a name that top -H, perf and gdb show.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_FLEECE_THREADNAME_H
#define NBDKIT_FLEECE_THREADNAME_H

#include <pthread.h>

/* NAME has at most 15 characters (the kernel's limit).  A name is
 * only for people reading a thread list, so a failure is ignored.
 */
static inline void
thread_name (pthread_t thread, const char *name)
{
#ifdef HAVE_PTHREAD_SETNAME_NP
  (void) pthread_setname_np (thread, name);
#else
  (void) thread;
  (void) name;
#endif
}

#endif /* NBDKIT_FLEECE_THREADNAME_H */
