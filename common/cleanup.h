/* nbdkit-fleece: scope-based cleanup helpers.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_FLEECE_CLEANUP_H
#define NBDKIT_FLEECE_CLEANUP_H

#include <stdlib.h>
#include <pthread.h>
#include <assert.h>

/* Free the pointer when it goes out of scope. */
static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

/* Unlock a mutex when the scope ends. */
static inline void
cleanup_mutex_unlock (pthread_mutex_t **ptr)
{
  int r = pthread_mutex_unlock (*ptr);
  assert (r == 0);
}

#define FLEECE_CONCAT_(a, b) a##b
#define FLEECE_CONCAT(a, b) FLEECE_CONCAT_ (a, b)

/* Hold MUTEX until the end of the enclosing scope.  Put it in a bare
 * { } block to keep the critical section narrow.
 */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  __attribute__ ((cleanup (cleanup_mutex_unlock)))                      \
  pthread_mutex_t *FLEECE_CONCAT (lock_, __LINE__) = (mutex);           \
  do {                                                                  \
    int FLEECE_CONCAT (r_, __LINE__) =                                  \
      pthread_mutex_lock (FLEECE_CONCAT (lock_, __LINE__));             \
    assert (FLEECE_CONCAT (r_, __LINE__) == 0);                         \
  } while (0)

#endif /* NBDKIT_FLEECE_CLEANUP_H */
