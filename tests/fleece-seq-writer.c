/* nbdkit-fleece: ordered writes to several disks, and their check.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 *   fleece-seq-writer write PROGRESS URI...
 *   fleece-seq-writer check URI...
 *
 * write: for n = 1, 2, 3... writes the block of sequence number n to
 * the first disk, then the second, and so on, each write finished
 * before the next starts, until SIGTERM or SIGINT; then disconnects
 * cleanly (nothing is in flight).  Block n is 4096 bytes holding n
 * (64 bit little endian) 512 times, at slot (n - 1) mod S of the
 * disk, where S is the number of 4K slots of the smallest disk.
 * After each round it stores n in the file PROGRESS (8 bytes, native
 * order), so a test can wait for the writer to get past a number.
 *
 * check: reads every disk (the snapshot exports, usually) and checks
 * that together they hold a prefix of the writer's sequence of
 * writes, i.e. what the disks held at one instant: each disk k holds
 * every one of its writes up to some N_k and none after (each slot
 * holds its newest block up to N_k, whole), and N_1 >= N_2 >= ... >=
 * N_K >= N_1 - 1, so that a number on disk k implies every earlier
 * write on every disk.  Prints the N_k; exit status 0 if consistent,
 * 1 if not (saying why), 2 on errors.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#define BLOCK 4096
#define WORDS (BLOCK / 8)
#define MAX_DISKS 16

static volatile sig_atomic_t stop;

/* SIGTERM, SIGINT: finish the write in progress, then stop. */
static void
on_signal (int sig)
{
  stop = 1;
}

/* Connect to uri; exit on error. */
static struct nbd_handle *
connect_uri (const char *uri)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL || nbd_connect_uri (h, uri) == -1) {
    fprintf (stderr, "fleece-seq-writer: %s: %s\n", uri, nbd_get_error ());
    exit (2);
  }
  return h;
}

/* The number of slots: 4K blocks of the smallest disk. */
static uint64_t
count_slots (struct nbd_handle **h, int n)
{
  uint64_t slots = UINT64_MAX;
  int i;

  for (i = 0; i < n; ++i) {
    int64_t size = nbd_get_size (h[i]);
    if (size < BLOCK) {
      fprintf (stderr, "fleece-seq-writer: disk %d: too small\n", i + 1);
      exit (2);
    }
    if ((uint64_t) size / BLOCK < slots)
      slots = size / BLOCK;
  }
  return slots;
}

/* The write loop. */
static int
do_write (const char *progress, char **uris, int n)
{
  struct nbd_handle *h[MAX_DISKS];
  struct sigaction sa = { .sa_handler = on_signal };
  static uint64_t buf[WORDS];
  uint64_t seq, slots;
  int i, fd;

  fd = open (progress, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1) {
    perror (progress);
    return 2;
  }
  for (i = 0; i < n; ++i)
    h[i] = connect_uri (uris[i]);
  slots = count_slots (h, n);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGINT, &sa, NULL);

  for (seq = 1; !stop; ++seq) {
    for (i = 0; i < WORDS; ++i)
      buf[i] = htole64 (seq);
    for (i = 0; i < n; ++i)
      if (nbd_pwrite (h[i], buf, BLOCK, (seq - 1) % slots * BLOCK, 0) == -1) {
        fprintf (stderr, "fleece-seq-writer: write %" PRIu64 " to disk %d: "
                 "%s\n", seq, i + 1, nbd_get_error ());
        return 2;
      }
    if (pwrite (fd, &seq, sizeof seq, 0) != sizeof seq) {
      perror ("fleece-seq-writer: pwrite");
      return 2;
    }
  }
  /* Every write has finished: disconnect cleanly. */
  for (i = 0; i < n; ++i) {
    nbd_shutdown (h[i], 0);
    nbd_close (h[i]);
  }
  close (fd);
  printf ("wrote %" PRIu64 " rounds\n", seq - 1);
  return 0;
}

/* The block slot s should hold when the last write was number last. */
static uint64_t
expected (uint64_t s, uint64_t last, uint64_t slots)
{
  if (last < s + 1)
    return 0;
  return s + 1 + (last - (s + 1)) / slots * slots;
}

/* Read disk i; its numbers per slot into nums (slots of them).  Fails
 * if a block is torn (not one number throughout).
 */
static int
read_disk (struct nbd_handle *h, int i, uint64_t *nums, uint64_t slots)
{
  static uint64_t buf[WORDS * 256];
  uint64_t s, j, chunk = 256;

  for (s = 0; s < slots; s += chunk) {
    uint64_t n = slots - s < chunk ? slots - s : chunk;
    if (nbd_pread (h, buf, n * BLOCK, s * BLOCK, 0) == -1) {
      fprintf (stderr, "fleece-seq-writer: read disk %d: %s\n", i + 1,
               nbd_get_error ());
      return -1;
    }
    for (j = 0; j < n * WORDS; ++j)
      if (buf[j] != buf[j / WORDS * WORDS]) {
        printf ("disk %d: slot %" PRIu64 " is torn\n", i + 1, s + j / WORDS);
        return 1;
      }
    for (j = 0; j < n; ++j)
      nums[s + j] = le64toh (buf[j * WORDS]);
  }
  return 0;
}

/* Check one disk on its own; its last number into *last. */
static int
check_disk (struct nbd_handle *h, int i, uint64_t slots, uint64_t *last)
{
  uint64_t *nums = calloc (slots, sizeof *nums), s;
  int r;

  if (nums == NULL) {
    perror ("calloc");
    return -1;
  }
  r = read_disk (h, i, nums, slots);
  *last = 0;
  for (s = 0; r == 0 && s < slots; ++s)
    if (nums[s] > *last)
      *last = nums[s];
  for (s = 0; r == 0 && s < slots; ++s)
    if (nums[s] != expected (s, *last, slots)) {
      printf ("disk %d: slot %" PRIu64 " holds %" PRIu64 ", but the "
              "disk's last write was %" PRIu64 ", so it should hold %"
              PRIu64 "\n", i + 1, s, nums[s], *last,
              expected (s, *last, slots));
      r = 1;
    }
  free (nums);
  return r;
}

/* The check. */
static int
do_check (char **uris, int n)
{
  struct nbd_handle *h[MAX_DISKS];
  uint64_t last[MAX_DISKS], slots;
  int i, j, status = 0, r;

  for (i = 0; i < n; ++i)
    h[i] = connect_uri (uris[i]);
  slots = count_slots (h, n);
  for (i = 0; i < n; ++i) {
    r = check_disk (h[i], i, slots, &last[i]);
    if (r == -1)
      return 2;
    if (r == 1)
      status = 1;
  }
  for (i = 0; i < n; ++i)
    printf ("%s%" PRIu64, i ? " " : "", last[i]);
  printf ("\n");
  /* A prefix: disks before j were written at least as far as j,
   * disks after it at most one round less.
   */
  for (j = 0; j < n; ++j)
    for (i = 0; i < n; ++i)
      if ((i < j && last[i] < last[j]) ||
          (i > j && last[i] + 1 < last[j])) {
        printf ("inconsistent: disk %d holds write %" PRIu64 " but disk %d "
                "only reached %" PRIu64 "\n", j + 1, last[j], i + 1,
                last[i]);
        status = 1;
      }
  for (i = 0; i < n; ++i) {
    nbd_shutdown (h[i], 0);
    nbd_close (h[i]);
  }
  return status;
}

int
main (int argc, char **argv)
{
  if (argc >= 4 && argc - 3 <= MAX_DISKS && strcmp (argv[1], "write") == 0)
    return do_write (argv[2], argv + 3, argc - 3);
  if (argc >= 3 && argc - 2 <= MAX_DISKS && strcmp (argv[1], "check") == 0)
    return do_check (argv + 2, argc - 2);
  fprintf (stderr, "usage: fleece-seq-writer write PROGRESS URI...\n"
           "       fleece-seq-writer check URI...\n");
  return 2;
}
