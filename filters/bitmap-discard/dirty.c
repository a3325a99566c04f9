/* nbdkit-fleece: bitmap-discard filter, persistent dirty bitmaps.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Checkpoints and their bitmaps
 * =============================
 *
 * A checkpoint is a named point in time.  The checkpoints form one
 * chain, oldest first, each naming its predecessor ("parent"):
 *
 *   c1 ---------- c2 ---------- c3 ---------- now
 *   | bitmap c1   | bitmap c2   | bitmap c3 (active)
 *
 * The bitmap of a checkpoint holds one bit per granule
 * (bitmap-granularity bytes; the last granule may be short):
 *
 *   bit | meaning
 *   ----+---------------------------------------------------------
 *    0  | not changed between this checkpoint and the next one
 *       | (for the newest, "active", checkpoint: until now)
 *    1  | a write, zero or trim may have changed the granule
 *
 * "Changed since cN" is the union of the bitmaps of cN and all newer
 * checkpoints.  Creating a checkpoint freezes the active bitmap and
 * starts an empty one.  Deleting a checkpoint ORs its bits into its
 * predecessor (whose interval now covers both), or drops them if it
 * is the oldest (nobody can ask "since" a point before it any more).
 * Before the first checkpoint nothing is tracked: no incremental
 * could use it.
 *
 * Files
 * =====
 *
 * bitmap-dir holds one file NAME.bitmap per checkpoint:
 *
 *   0     4096 byte header, little endian (see struct layout below),
 *         ending in the SHA-256 of its first 4064 bytes;
 *   4096  the bits, ceil (granules / 8) bytes, bit i of byte j is
 *         granule 8*j+i; their SHA-256 is in the header;
 *   ...   active file only: a log of records, each
 *           u32 magic "BDLR", u32 nr, u64 seq,
 *           nr x (u64 first granule, u64 number of granules),
 *           SHA-256 of everything before it in the record,
 *         each setting more bits.
 *
 * Whole files are only ever written as NAME.bitmap.tmp, fsync'd,
 * renamed over NAME.bitmap, and the directory fsync'd: a file is
 * either the old or the new one.  The active file additionally gets
 * log records appended (and fdatasync'd); when its log grows larger
 * than the bits, it is rewritten compactly.
 *
 * Crash safety (group commit)
 * ===========================
 *
 * dirty_mark runs before a write, zero or trim goes below.  Two
 * in-memory bitmaps of the active checkpoint:
 *
 *   requested | durable | meaning
 *   ----------+---------+-----------------------------------------
 *       0     |    0    | clean
 *       1     |    0    | queued in the pending batch or being
 *             |         | synced; writers touching it must wait
 *       1     |    1    | on disk: writers go ahead at once
 *
 * A caller sets 'requested' and queues the granules it newly dirties
 * in the pending batch (number 'batch_gen'), then waits until
 * 'synced_gen' reaches that batch.  If no sync is running, the waiter
 * becomes the leader: it takes the whole pending batch, appends one
 * record for it and fdatasyncs, then marks it durable and wakes
 * everyone.  Callers that arrive meanwhile queue into the next batch,
 * so N concurrent writers cost about one sync per sync latency, and
 * writes to already durable granules cost nothing.
 *
 * Loading: a record is trusted only if its checksum matches.  A bad
 * record followed by more data is corruption (refused).  A bad or
 * short record at the very end of the file can only be a torn append
 * after a power failure (the requests it covered never went below),
 * but it could also be damage: we then mark every granule dirty (the
 * safe answer: the next incremental copies everything) and say so.
 *
 * Checkpoint operations (create, delete) are crash safe by order:
 *   create NEW:  write NEW (active, parent = newest); rewrite the old
 *                newest as frozen.  A crash in between leaves two
 *                files with logs; loading freezes the older one.
 *   delete X:    rewrite X with state "deleting"; OR X into its
 *                parent; re-parent X's child; unlink X.  Loading
 *                finishes any "deleting" file (all steps idempotent);
 *                if X's child already names X's parent, only the
 *                unlink was missing.
 *   pending:     a snapshot's checkpoint is created with state
 *                "pending"; committing rewrites it as active (one
 *                rename), dropping is the delete above.  Loading
 *                drops any file still pending: its backup never
 *                ended.
 *
 * Locking: 'lock' guards everything marked below.  The file is only
 * touched by the sync leader ('syncing' true, appending without the
 * lock), by the leader while it compacts the file (with the lock held:
 * rare, as each granule is logged once between compactions), or by
 * the checkpoint functions, which run with writes drained and no
 * leader.  'cond' is broadcast whenever a sync ends.
 */

#include <config.h>

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <signal.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>

#include "bitmap.h"
#include "cleanup.h"
#include "rounding.h"
#include "dirty.h"

/* Header layout (byte offsets). */
#define HDR_SIZE          4096
#define HDR_MAGIC         0     /* "NBDKBMAP" */
#define HDR_VERSION       8     /* u32, FORMAT_VERSION */
#define HDR_HDRSIZE       12    /* u32, 4096 */
#define HDR_DISK_SIZE     16    /* u64 */
#define HDR_GRANULARITY   24    /* u32 */
#define HDR_STATE         28    /* u32, ST_* */
#define HDR_CREATED       32    /* u64, seconds since the epoch */
#define HDR_BITS_SIZE     40    /* u64, bytes of bits */
#define HDR_NR_GRANULES   48    /* u64 */
#define HDR_NAME          56    /* 64 bytes, NUL padded */
#define HDR_PARENT        120   /* 64 bytes, NUL padded ("" = none) */
#define HDR_BITS_SHA      184   /* 32 bytes: SHA-256 of the bits */
#define HDR_SHA           4064  /* 32 bytes: SHA-256 of bytes 0..4063 */
#define MAGIC             "NBDKBMAP"
#define FORMAT_VERSION    1
#define REC_MAGIC         0x524c4442 /* "BDLR" little endian */
#define REC_HEAD          16
#define SHA_LEN           32

/* ST_PENDING: the newest checkpoint, active, created by a snapshot
 * whose backup has not ended yet (see dirty_checkpoint_settle).
 */
enum { ST_ACTIVE = 1, ST_FROZEN = 2, ST_DELETING = 3, ST_PENDING = 4 };

struct ckpt {
  char name[CKPT_NAME_MAX + 1];
  char parent[CKPT_NAME_MAX + 1];
  uint64_t created;
  unsigned state;               /* ST_*, as on disk */
  struct bitmap bits;           /* frozen bits; for the newest: durable */
};

/* Initialized in dirty_open and never changed. */
static char *dir;               /* NULL: no bitmap-dir */
static uint64_t disk_size;
static uint32_t granularity;
static uint64_t nr_granules;
static size_t bits_size;        /* bytes */

/* The lock: see the top of the file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

/* --- Everything below is protected by lock. --- */

/* The chain, oldest first; ckpts[nr_ckpts-1] is active. */
static struct ckpt *ckpts;
static size_t nr_ckpts;

static struct bitmap requested; /* see the table above */
static int active_fd = -1;      /* the active file, for appends */
static uint64_t log_bytes;      /* bytes of log in the active file */
static uint64_t next_seq;       /* sequence number of the next record */

struct range { uint64_t first, count; };
static struct range *pending;   /* the pending batch */
static size_t nr_pending, pending_alloc;
static uint64_t batch_gen = 1;  /* number of the pending batch */
static uint64_t synced_gen;     /* batches durable up to this one */
static bool syncing;            /* a leader is syncing */
static bool failed;             /* a sync failed: refuse writes */

static uint64_t stat_syncs, stat_marks_synced;
static char warning[256];

/* Little endian helpers. */
static void
put32 (unsigned char *p, uint32_t v)
{
  for (int i = 0; i < 4; ++i) p[i] = v >> (8 * i);
}
static void
put64 (unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; ++i) p[i] = v >> (8 * i);
}
static uint32_t
get32 (const unsigned char *p)
{
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

static int
sha256 (const void *data, size_t len, unsigned char *out)
{
  int r = gnutls_hash_fast (GNUTLS_DIG_SHA256, data, len, out);
  if (r < 0) {
    nbdkit_error ("bitmap-discard: gnutls_hash_fast: %s",
                  gnutls_strerror (r));
    return -1;
  }
  return 0;
}

static void
seterr (char *err, size_t errlen, const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  vsnprintf (err, errlen, fs, args);
  va_end (args);
}

bool
dirty_valid_name (const char *name, char *err, size_t errlen)
{
  size_t len = strlen (name);

  if (len == 0 || len > CKPT_NAME_MAX) {
    seterr (err, errlen, "checkpoint names have 1 to %d characters",
            CKPT_NAME_MAX);
    return false;
  }
  if (name[0] == '.' || name[0] == '-') {
    seterr (err, errlen, "a checkpoint name cannot start with '.' or '-'");
    return false;
  }
  if (strspn (name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
              "0123456789._-") != len) {
    seterr (err, errlen, "a checkpoint name may only contain letters, "
            "digits, '.', '_' and '-'");
    return false;
  }
  return true;
}

/* Test hook (see docs/HACKING.md): with BITMAP_DISCARD_TEST_CRASH=
 * OP:POINT in the environment, nbdkit kills itself with SIGKILL when
 * operation OP (commit, drop) reaches POINT, as a crash there would.
 * crash_op names the operation running, or is NULL.
 */
static const char *crash_op;
static void
crash_point (const char *point)
{
  const char *want = getenv ("BITMAP_DISCARD_TEST_CRASH");
  char here[64];

  if (want == NULL || crash_op == NULL)
    return;
  snprintf (here, sizeof here, "%s:%s", crash_op, point);
  if (strcmp (want, here) == 0) {
    nbdkit_debug ("bitmap-discard: test crash at %s", here);
    kill (getpid (), SIGKILL);
  }
}

/* Size the bitmaps for a disk of size bytes. */
static void
set_size (uint64_t size)
{
  disk_size = size;
  nr_granules = (size + granularity - 1) / granularity;
  bits_size = (nr_granules + 7) / 8;
}

/* Number of bytes of the disk covered by the set bits of bm. */
static uint64_t
bits_bytes (const struct bitmap *bm)
{
  uint64_t n = bitmap_count_ones (bm) * granularity;

  /* The last granule may be short. */
  if (bm->nblocks > 0 && bitmap_get (bm, bm->nblocks - 1))
    n -= bm->nblocks * granularity - disk_size;
  return n;
}

static void
bits_or (struct bitmap *dst, const struct bitmap *src)
{
  size_t i, n = bitmap_bytes (dst);

  for (i = 0; i < n; ++i)
    dst->bits[i] |= src->bits[i];
}

static char *
file_path (const char *name, const char *suffix)
{
  char *path;

  if (asprintf (&path, "%s/%s.bitmap%s", dir, name, suffix) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  return path;
}

static int
write_all (int fd, const void *buf, size_t len, uint64_t offset)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = pwrite (fd, p, len, offset);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += r; len -= r; offset += r;
  }
  return 0;
}

static int
sync_dir (void)
{
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  if (fd == -1 || fsync (fd) == -1) {
    nbdkit_error ("bitmap-discard: fsync: %s: %m", dir);
    if (fd >= 0) close (fd);
    return -1;
  }
  close (fd);
  return 0;
}

/* Write checkpoint c's file anew (header + bits, empty log) through a
 * temporary file and a rename.  If fdp is not NULL, it receives an fd
 * of the new file open for appending.
 */
static int
write_file (const struct ckpt *c, int *fdp)
{
  CLEANUP_FREE char *path = file_path (c->name, "");
  CLEANUP_FREE char *tmp = file_path (c->name, ".tmp");
  unsigned char *hdr;
  int fd;

  if (!path || !tmp)
    return -1;
  hdr = calloc (1, HDR_SIZE);
  if (hdr == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  memcpy (hdr + HDR_MAGIC, MAGIC, 8);
  put32 (hdr + HDR_VERSION, FORMAT_VERSION);
  put32 (hdr + HDR_HDRSIZE, HDR_SIZE);
  put64 (hdr + HDR_DISK_SIZE, disk_size);
  put32 (hdr + HDR_GRANULARITY, granularity);
  put32 (hdr + HDR_STATE, c->state);
  put64 (hdr + HDR_CREATED, c->created);
  put64 (hdr + HDR_BITS_SIZE, bits_size);
  put64 (hdr + HDR_NR_GRANULES, nr_granules);
  memcpy (hdr + HDR_NAME, c->name, strlen (c->name));
  memcpy (hdr + HDR_PARENT, c->parent, strlen (c->parent));
  if (sha256 (c->bits.bits, bits_size, hdr + HDR_BITS_SHA) == -1 ||
      sha256 (hdr, HDR_SHA, hdr + HDR_SHA) == -1) {
    free (hdr);
    return -1;
  }

  /* Never open what a crash or someone else left at tmp (it could be
   * a FIFO or a symlink): remove it and create the file anew.
   */
  if (unlink (tmp) == -1 && errno != ENOENT) {
    nbdkit_error ("bitmap-discard: unlink: %s: %m", tmp);
    free (hdr);
    return -1;
  }
  fd = open (tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd == -1) {
    nbdkit_error ("bitmap-discard: open: %s: %m", tmp);
    free (hdr);
    return -1;
  }
  if (write_all (fd, hdr, HDR_SIZE, 0) == -1 ||
      write_all (fd, c->bits.bits, bits_size, HDR_SIZE) == -1 ||
      fsync (fd) == -1) {
    nbdkit_error ("bitmap-discard: write: %s: %m", tmp);
    free (hdr);
    close (fd);
    unlink (tmp);
    return -1;
  }
  free (hdr);
  crash_point ("written");
  if (rename (tmp, path) == -1) {
    nbdkit_error ("bitmap-discard: rename: %s: %m", path);
    close (fd);
    unlink (tmp);
    return -1;
  }
  crash_point ("renamed");
  if (sync_dir () == -1) {
    close (fd);
    return -1;
  }
  if (fdp)
    *fdp = fd;
  else
    close (fd);
  return 0;
}

/* Rewrite the active file compactly and switch active_fd to it. */
static int
compact_active (void)
{
  int fd;

  if (write_file (&ckpts[nr_ckpts - 1], &fd) == -1)
    return -1;
  if (active_fd >= 0)
    close (active_fd);
  active_fd = fd;
  log_bytes = 0;
  return 0;
}

#define WHAT_TO_DO \
  " move the *.bitmap files out of bitmap-dir (the next backup must " \
  "then be a full one, taken with \"snapshot checkpoint=NAME\") and " \
  "start nbdkit again"
#define UNTRUSTED "; it cannot be trusted:" WHAT_TO_DO

/* Read a whole file.  Only a regular file is read: opening does not
 * follow a symlink or wait for a FIFO's writer (O_NONBLOCK), so no
 * stray special file in bitmap-dir can hang the start.
 */
static unsigned char *
read_file (const char *path, size_t *len)
{
  int fd;
  struct stat st;
  unsigned char *buf;
  size_t done = 0;

  fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
  if (fd == -1 || fstat (fd, &st) == -1) {
    if (errno == ELOOP)
      nbdkit_error ("bitmap-discard: %s: is a symbolic link: bitmap files "
                    "must be regular files;" WHAT_TO_DO, path);
    else
      nbdkit_error ("bitmap-discard: open: %s: %m", path);
    if (fd >= 0) close (fd);
    return NULL;
  }
  if (!S_ISREG (st.st_mode)) {
    nbdkit_error ("bitmap-discard: %s: not a regular file (a FIFO, "
                  "device, socket or directory): bitmap files must be "
                  "regular files;" WHAT_TO_DO, path);
    close (fd);
    return NULL;
  }
  buf = malloc (st.st_size + 1);
  if (buf == NULL) {
    nbdkit_error ("malloc: %m");
    close (fd);
    return NULL;
  }
  while (done < (size_t) st.st_size) {
    ssize_t r = read (fd, buf + done, st.st_size - done);
    if (r == -1 && errno == EINTR) continue;
    if (r <= 0) {
      nbdkit_error ("bitmap-discard: read: %s: %m", path);
      free (buf);
      close (fd);
      return NULL;
    }
    done += r;
  }
  close (fd);
  *len = done;
  return buf;
}

/* Load and check one file into c.  fname is the file's name in dir. */
static int
load_file (const char *fname, struct ckpt *c)
{
  CLEANUP_FREE char *path = NULL;
  CLEANUP_FREE unsigned char *buf = NULL;
  unsigned char sha[SHA_LEN];
  size_t len, pos;
  char err[128];
  uint64_t v;

  if (asprintf (&path, "%s/%s", dir, fname) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  buf = read_file (path, &len);
  if (buf == NULL)
    return -1;
  if (len < HDR_SIZE || memcmp (buf + HDR_MAGIC, MAGIC, 8) != 0) {
    nbdkit_error ("bitmap-discard: %s: not a bitmap file (bad magic or "
                  "too short)" UNTRUSTED, path);
    return -1;
  }
  if (sha256 (buf, HDR_SHA, sha) == -1)
    return -1;
  if (memcmp (sha, buf + HDR_SHA, SHA_LEN) != 0) {
    nbdkit_error ("bitmap-discard: %s: header checksum mismatch: the "
                  "file is corrupted" UNTRUSTED, path);
    return -1;
  }
  if (get32 (buf + HDR_VERSION) != FORMAT_VERSION ||
      get32 (buf + HDR_HDRSIZE) != HDR_SIZE) {
    nbdkit_error ("bitmap-discard: %s: format version %" PRIu32 " is not "
                  "supported (this filter reads version %d): use the "
                  "nbdkit-fleece version that wrote it, or" WHAT_TO_DO,
                  path, get32 (buf + HDR_VERSION), FORMAT_VERSION);
    return -1;
  }
  /* The first file gives the disk size (dirty_start checks it against
   * the disk); the others must agree.
   */
  v = get64 (buf + HDR_DISK_SIZE);
  if (nr_ckpts == 0)
    set_size (v);
  else if (v != disk_size) {
    nbdkit_error ("bitmap-discard: %s: made for a disk of %" PRIu64
                  " bytes, but %s.bitmap for one of %" PRIu64 " bytes: "
                  "the files come from different disks" UNTRUSTED,
                  path, v, ckpts[0].name, disk_size);
    return -1;
  }
  if (get32 (buf + HDR_GRANULARITY) != granularity) {
    nbdkit_error ("bitmap-discard: %s: written with bitmap-granularity="
                  "%" PRIu32 ", but bitmap-granularity=%" PRIu32 " now: "
                  "use the same granularity, or" WHAT_TO_DO,
                  path, get32 (buf + HDR_GRANULARITY), granularity);
    return -1;
  }
  if (get64 (buf + HDR_BITS_SIZE) != bits_size ||
      get64 (buf + HDR_NR_GRANULES) != nr_granules ||
      len < HDR_SIZE + bits_size ||
      buf[HDR_NAME + CKPT_NAME_MAX] != 0 ||
      buf[HDR_PARENT + CKPT_NAME_MAX] != 0) {
    nbdkit_error ("bitmap-discard: %s: inconsistent header" UNTRUSTED,
                  path);
    return -1;
  }
  memcpy (c->name, buf + HDR_NAME, CKPT_NAME_MAX + 1);
  memcpy (c->parent, buf + HDR_PARENT, CKPT_NAME_MAX + 1);
  c->created = get64 (buf + HDR_CREATED);
  c->state = get32 (buf + HDR_STATE);
  if (!dirty_valid_name (c->name, err, sizeof err) ||
      (c->parent[0] && !dirty_valid_name (c->parent, err, sizeof err)) ||
      strlen (fname) != strlen (c->name) + strlen (".bitmap") ||
      strncmp (fname, c->name, strlen (c->name)) != 0 ||
      c->state < ST_ACTIVE || c->state > ST_PENDING) {
    nbdkit_error ("bitmap-discard: %s: bad name, parent or state in the "
                  "header (the file may have been renamed)" UNTRUSTED,
                  path);
    return -1;
  }
  if (sha256 (buf + HDR_SIZE, bits_size, sha) == -1)
    return -1;
  if (memcmp (sha, buf + HDR_BITS_SHA, SHA_LEN) != 0) {
    nbdkit_error ("bitmap-discard: %s: checksum mismatch in the bits: "
                  "the file is corrupted" UNTRUSTED, path);
    return -1;
  }
  if (bitmap_init (&c->bits, 1, nr_granules) == -1) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  memcpy (c->bits.bits, buf + HDR_SIZE, bits_size);

  /* The log. */
  pos = HDR_SIZE + bits_size;
  while (pos < len) {
    uint32_t nr;
    size_t reclen = 0, i;

    if (len - pos < REC_HEAD + SHA_LEN ||
        get32 (buf + pos) != REC_MAGIC ||
        (nr = get32 (buf + pos + 4),
         reclen = REC_HEAD + (size_t) nr * 16 + SHA_LEN,
         len - pos < reclen) ||
        sha256 (buf + pos, reclen - SHA_LEN, sha) == -1 ||
        memcmp (sha, buf + pos + reclen - SHA_LEN, SHA_LEN) != 0) {
      /* A bad record.  At the end of the file it may be a torn append
       * (it then ends the file exactly or is cut short): be safe and
       * mark everything.  Elsewhere it is corruption.
       */
      if (len - pos < REC_HEAD + SHA_LEN || get32 (buf + pos) != REC_MAGIC ||
          len - pos <= reclen) {
        bitmap_fill (&c->bits, 1);
        snprintf (warning, sizeof warning,
                  "%s: the last change record was incomplete (torn "
                  "write?): every granule is marked changed, so the "
                  "next incremental copies the whole disk", fname);
        nbdkit_debug ("bitmap-discard: %s", warning);
        break;
      }
      nbdkit_error ("bitmap-discard: %s: a change record at byte %zu "
                    "fails its checksum: the file is corrupted"
                    UNTRUSTED, path, pos);
      bitmap_free (&c->bits);
      return -1;
    }
    for (i = 0; i < nr; ++i) {
      uint64_t first = get64 (buf + pos + REC_HEAD + i * 16);
      uint64_t count = get64 (buf + pos + REC_HEAD + i * 16 + 8);
      uint64_t g;

      if (first > nr_granules || count > nr_granules - first) {
        nbdkit_error ("bitmap-discard: %s: a change record at byte %zu "
                      "is out of range" UNTRUSTED, path, pos);
        bitmap_free (&c->bits);
        return -1;
      }
      for (g = first; g < first + count; ++g)
        bitmap_set (&c->bits, g, 1);
    }
    pos += reclen;
  }
  return 0;
}

static void
free_chain (void)
{
  size_t i;

  for (i = 0; i < nr_ckpts; ++i)
    bitmap_free (&ckpts[i].bits);
  free (ckpts);
  ckpts = NULL;
  nr_ckpts = 0;
}

static ssize_t
find_ckpt (const char *name)
{
  size_t i;

  for (i = 0; i < nr_ckpts; ++i)
    if (strcmp (ckpts[i].name, name) == 0)
      return i;
  return -1;
}

/* The last step of deleting ckpts[i]: remove its file (already gone
 * is fine: every step of a delete may be done twice) and its entry.
 */
static int
unlink_ckpt (size_t i)
{
  CLEANUP_FREE char *path = file_path (ckpts[i].name, "");

  if (!path)
    return -1;
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("bitmap-discard: unlink: %s: %m", path);
    return -1;
  }
  crash_point ("unlinked");
  if (sync_dir () == -1)
    return -1;
  bitmap_free (&ckpts[i].bits);
  memmove (&ckpts[i], &ckpts[i+1], (nr_ckpts - i - 1) * sizeof *ckpts);
  nr_ckpts--;
  return 0;
}

/* A delete that crashed after re-parenting the child of X but before
 * unlinking X leaves two files naming X's parent as theirs.  X's bits
 * were merged into its parent before the child was re-parented, so
 * only the unlink is missing: do it.
 */
static int
drop_finished_deletes (void)
{
  size_t i, j;

  for (i = 0; i < nr_ckpts; ) {
    bool finished = false;

    if (ckpts[i].state == ST_DELETING)
      for (j = 0; j < nr_ckpts; ++j)
        if (j != i && ckpts[j].state != ST_DELETING &&
            strcmp (ckpts[j].parent, ckpts[i].parent) == 0)
          finished = true;
    if (!finished) {
      i++;
      continue;
    }
    nbdkit_debug ("bitmap-discard: finishing the deletion of "
                  "checkpoint %s (its child is re-parented already)",
                  ckpts[i].name);
    if (unlink_ckpt (i) == -1)
      return -1;
  }
  return 0;
}

/* Order the loaded checkpoints into a chain by their parents. */
static int
order_chain (void)
{
  struct ckpt *sorted;
  size_t i, n = 0;
  const char *prev = "";

  sorted = calloc (nr_ckpts ? nr_ckpts : 1, sizeof *sorted);
  if (sorted == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  while (n < nr_ckpts) {
    size_t found = nr_ckpts, count = 0;

    for (i = 0; i < nr_ckpts; ++i)
      if (strcmp (ckpts[i].parent, prev) == 0) {
        found = i;
        count++;
      }
    if (count != 1) {
      nbdkit_error ("bitmap-discard: %s: the checkpoint files do not form "
                    "one chain (%zu files name \"%s\" as their parent)"
                    UNTRUSTED, dir, count, prev);
      free (sorted);
      return -1;
    }
    sorted[n++] = ckpts[found];
    prev = ckpts[found].name;
  }
  free (ckpts);
  ckpts = sorted;
  return 0;
}

/* The steps of deleting ckpts[i] after it is marked ST_DELETING. */
static int
finish_delete (size_t i)
{
  bool was_active = i == nr_ckpts - 1;

  if (i > 0) {
    bits_or (&ckpts[i-1].bits, &ckpts[i].bits);
    if (was_active)
      ckpts[i-1].state = ST_ACTIVE;
    if (write_file (&ckpts[i-1], NULL) == -1)
      return -1;
  }
  if (!was_active) {
    strcpy (ckpts[i+1].parent, ckpts[i].parent);
    if (write_file (&ckpts[i+1], NULL) == -1)
      return -1;
  }
  return unlink_ckpt (i);
}

/* Open the newest file for appending, compacting it first, and make
 * 'requested' match its bits.
 */
static int
open_active (void)
{
  if (active_fd >= 0) {
    close (active_fd);
    active_fd = -1;
  }
  bitmap_free (&requested);
  if (bitmap_init (&requested, 1, nr_granules) == -1) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  if (nr_ckpts == 0)
    return 0;
  memcpy (requested.bits, ckpts[nr_ckpts-1].bits.bits, bits_size);
  return compact_active ();
}

int
dirty_open (const char *d, uint32_t gran)
{
  DIR *dp;
  struct dirent *de;

  granularity = gran;
  dir = strdup (d);
  if (dir == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    nbdkit_error ("bitmap-discard: mkdir: %s: %m", dir);
    return -1;
  }

  dp = opendir (dir);
  if (dp == NULL) {
    nbdkit_error ("bitmap-discard: bitmap-dir=%s: %m", dir);
    return -1;
  }
  while ((de = readdir (dp)) != NULL) {
    size_t len = strlen (de->d_name);
    struct ckpt *p;

    if (len > 11 && strcmp (de->d_name + len - 11, ".bitmap.tmp") == 0) {
      /* A half-written file from a crash: never renamed, never used. */
      unlinkat (dirfd (dp), de->d_name, 0);
      continue;
    }
    if (len <= 7 || strcmp (de->d_name + len - 7, ".bitmap") != 0)
      continue;
    p = realloc (ckpts, (nr_ckpts + 1) * sizeof *ckpts);
    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      closedir (dp);
      return -1;
    }
    ckpts = p;
    memset (&ckpts[nr_ckpts], 0, sizeof *ckpts);
    if (load_file (de->d_name, &ckpts[nr_ckpts]) == -1) {
      closedir (dp);
      free_chain ();
      return -1;
    }
    nr_ckpts++;
  }
  closedir (dp);
  if (drop_finished_deletes () == -1) {
    free_chain ();
    return -1;
  }
  if (order_chain () == -1) {
    free_chain ();
    return -1;
  }

  nbdkit_debug ("bitmap-discard: %s: %zu checkpoints", dir, nr_ckpts);
  return 0;
}

/* Finish interrupted deletes, then freeze any older file that a crash
 * during checkpoint creation left active, and open the newest file.
 */
static int
recover_chain (void)
{
  size_t i;

  /* A pending checkpoint whose backup never ended: drop it. */
  for (i = 0; i < nr_ckpts; ++i)
    if (ckpts[i].state == ST_PENDING) {
      snprintf (warning, sizeof warning,
                "checkpoint %s was pending when nbdkit stopped (its "
                "backup never ended): dropped, its changes merged into "
                "%s", ckpts[i].name,
                ckpts[i].parent[0] ? ckpts[i].parent : "nothing");
      nbdkit_debug ("bitmap-discard: %s", warning);
      ckpts[i].state = ST_DELETING;
      if (write_file (&ckpts[i], NULL) == -1)
        return -1;
    }
  for (i = 0; i < nr_ckpts; ) {
    if (ckpts[i].state == ST_DELETING) {
      nbdkit_debug ("bitmap-discard: finishing the deletion of "
                    "checkpoint %s", ckpts[i].name);
      if (finish_delete (i) == -1)
        return -1;
    }
    else
      i++;
  }
  for (i = 0; i + 1 < nr_ckpts; ++i)
    if (ckpts[i].state != ST_FROZEN) {
      ckpts[i].state = ST_FROZEN;
      if (write_file (&ckpts[i], NULL) == -1)
        return -1;
    }
  if (nr_ckpts > 0)
    ckpts[nr_ckpts-1].state = ST_ACTIVE;
  return open_active ();
}

int
dirty_start (uint64_t size)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL)
    return 0;
  if (nr_ckpts > 0 && size != disk_size) {
    nbdkit_error ("bitmap-discard: %s: the checkpoints were made for a "
                  "disk of %" PRIu64 " bytes, but this disk has %" PRIu64
                  " bytes: is bitmap-dir the right one for this disk?  "
                  "If the disk was resized, the bitmaps are useless:"
                  WHAT_TO_DO, dir, disk_size, size);
    return -1;
  }
  if (nr_ckpts == 0)
    set_size (size);
  return recover_chain ();
}

void
dirty_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL)
    return;
  /* Leave a compact file behind; if this fails the log is still good. */
  if (nr_ckpts > 0 && !failed && !syncing)
    compact_active ();
  if (active_fd >= 0)
    close (active_fd);
  active_fd = -1;
  free_chain ();
  bitmap_free (&requested);
  free (pending);
  pending = NULL;
  free (dir);
  dir = NULL;
}

/* Queue granules [first, end) in the pending batch. */
static int
queue_locked (uint64_t first, uint64_t end)
{
  if (nr_pending > 0 &&
      pending[nr_pending-1].first + pending[nr_pending-1].count == first) {
    pending[nr_pending-1].count += end - first;
    return 0;
  }
  if (nr_pending == pending_alloc) {
    size_t n = pending_alloc ? 2 * pending_alloc : 64;
    struct range *p = realloc (pending, n * sizeof *p);
    if (p == NULL)
      return -1;
    pending = p;
    pending_alloc = n;
  }
  pending[nr_pending].first = first;
  pending[nr_pending].count = end - first;
  nr_pending++;
  return 0;
}

/* Append one record for ranges to the active file and make it
 * durable.  Called by the leader without the lock.
 */
static int
append_record (const struct range *r, size_t n, uint64_t seq,
               uint64_t offset)
{
  size_t reclen = REC_HEAD + n * 16 + SHA_LEN, i;
  CLEANUP_FREE unsigned char *rec = malloc (reclen);

  if (rec == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  put32 (rec, REC_MAGIC);
  put32 (rec + 4, n);
  put64 (rec + 8, seq);
  for (i = 0; i < n; ++i) {
    put64 (rec + REC_HEAD + i * 16, r[i].first);
    put64 (rec + REC_HEAD + i * 16 + 8, r[i].count);
  }
  if (sha256 (rec, reclen - SHA_LEN, rec + reclen - SHA_LEN) == -1)
    return -1;
  if (write_all (active_fd, rec, reclen, offset) == -1 ||
      fdatasync (active_fd) == -1) {
    nbdkit_error ("bitmap-discard: cannot make dirty bits durable in "
                  "%s: %m: writes fail from now on, to protect the "
                  "incremental backups", dir);
    return -1;
  }
  return 0;
}

int
dirty_mark (uint64_t offset, uint64_t count, int *err)
{
  uint64_t first, end, g, my_gen;
  bool need = false;

  if (dir == NULL || count == 0)
    return 0;
  first = offset / granularity;
  end = MIN (nr_granules, (offset + count + granularity - 1) / granularity);

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (nr_ckpts == 0)            /* nothing to track into yet */
    return 0;
  if (failed) {
    *err = EIO;
    return -1;
  }
  for (g = first; g < end; ++g) {
    if (!bitmap_get (&requested, g)) {
      if (queue_locked (g, g + 1) == -1) {
        nbdkit_error ("realloc: %m");
        *err = ENOMEM;
        return -1;
      }
      bitmap_set (&requested, g, 1);
      need = true;
    }
    else if (!bitmap_get (&ckpts[nr_ckpts-1].bits, g))
      need = true;
  }
  if (!need)
    return 0;

  stat_marks_synced++;
  my_gen = batch_gen;
  while (synced_gen < my_gen) {
    if (failed) {
      *err = EIO;
      return -1;
    }
    if (!syncing) {
      /* Lead: sync the whole pending batch. */
      struct range *batch = pending;
      size_t n = nr_pending, i;
      uint64_t gen = batch_gen, seq = next_seq, off;
      int r = 0;

      pending = NULL;
      nr_pending = pending_alloc = 0;
      batch_gen++;
      if (n > 0) {
        syncing = true;
        off = HDR_SIZE + bits_size + log_bytes;
        pthread_mutex_unlock (&lock);
        r = append_record (batch, n, seq, off);
        pthread_mutex_lock (&lock);
        syncing = false;
        if (r == 0) {
          stat_syncs++;
          next_seq++;
          log_bytes += REC_HEAD + n * 16 + SHA_LEN;
          for (i = 0; i < n; ++i)
            for (g = batch[i].first; g < batch[i].first + batch[i].count;
                 ++g)
              bitmap_set (&ckpts[nr_ckpts-1].bits, g, 1);
          /* Keep the log smaller than the bits (and 1M).  With writes
           * still flowing this holds the lock for one file rewrite,
           * rarely: each granule is logged once between compactions.
           */
          if (log_bytes > MAX (bits_size, (size_t) 1 << 20))
            if (compact_active () == -1)
              r = -1;
        }
      }
      free (batch);
      if (r == -1)
        failed = true;
      else
        synced_gen = gen;
      pthread_cond_broadcast (&cond);
    }
    else
      pthread_cond_wait (&cond, &lock);
  }
  return 0;
}

void
dirty_get_stats (struct dirty_stats *st)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  memset (st, 0, sizeof *st);
  st->enabled = dir != NULL;
  st->tracking = nr_ckpts > 0;
  st->failed = failed;
  st->syncs = stat_syncs;
  st->marks_synced = stat_marks_synced;
  st->nr_checkpoints = nr_ckpts;
  if (nr_ckpts > 0)
    st->active_dirty_bytes = bits_bytes (&requested);
  if (nr_ckpts > 0 && ckpts[nr_ckpts-1].state == ST_PENDING)
    strcpy (st->pending, ckpts[nr_ckpts-1].name);
  strcpy (st->warning, warning);
}

bool
dirty_checkpoint_exists (const char *name)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return dir && find_ckpt (name) >= 0;
}

int
dirty_checkpoint_create (const char *name, bool is_pending,
                         char *err, size_t errlen)
{
  struct ckpt *p, *c;
  size_t n;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (!syncing);
  if (dir == NULL) {
    seterr (err, errlen, "checkpoints need bitmap-dir=DIR on the nbdkit "
            "command line");
    return -1;
  }
  if (!dirty_valid_name (name, err, errlen))
    return -1;
  if (find_ckpt (name) >= 0) {
    seterr (err, errlen, "checkpoint %s already exists", name);
    return -1;
  }
  if (nr_ckpts > 0 && ckpts[nr_ckpts-1].state == ST_PENDING) {
    seterr (err, errlen, "checkpoint %s is pending until its backup "
            "ends (\"release\")", ckpts[nr_ckpts-1].name);
    return -1;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): restart nbdkit");
    return -1;
  }
  /* With writes drained every requested bit is durable. */
  assert (nr_pending == 0);

  n = nr_ckpts;
  p = realloc (ckpts, (n + 1) * sizeof *ckpts);
  if (p == NULL) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  ckpts = p;
  c = &ckpts[n];
  memset (c, 0, sizeof *c);
  strcpy (c->name, name);
  strcpy (c->parent, n > 0 ? ckpts[n-1].name : "");
  c->created = time (NULL);
  c->state = is_pending ? ST_PENDING : ST_ACTIVE;
  if (bitmap_init (&c->bits, 1, nr_granules) == -1) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  if (write_file (c, NULL) == -1) {
    bitmap_free (&c->bits);
    seterr (err, errlen, "cannot write the bitmap file (see the nbdkit "
            "log)");
    return -1;
  }
  if (n > 0) {
    ckpts[n-1].state = ST_FROZEN;
    if (write_file (&ckpts[n-1], NULL) == -1) {
      /* Loading would freeze it; but tracking must go on in the new
       * file, so carry on.
       */
      nbdkit_debug ("bitmap-discard: could not rewrite %s as frozen",
                    ckpts[n-1].name);
    }
  }
  nr_ckpts++;
  if (open_active () == -1) {
    failed = true;
    seterr (err, errlen, "cannot open the new bitmap file (see the "
            "nbdkit log)");
    return -1;
  }
  nbdkit_debug ("bitmap-discard: created checkpoint %s", name);
  return 0;
}

int
dirty_checkpoint_delete (const char *name, char *err, size_t errlen)
{
  ssize_t i;
  bool was_active;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (!syncing);
  if (dir == NULL) {
    seterr (err, errlen, "checkpoints need bitmap-dir=DIR on the nbdkit "
            "command line");
    return -1;
  }
  if (!dirty_valid_name (name, err, errlen))
    return -1;
  i = find_ckpt (name);
  if (i < 0) {
    seterr (err, errlen, "no checkpoint named %s", name);
    return -1;
  }
  if (ckpts[i].state == ST_PENDING) {
    seterr (err, errlen, "checkpoint %s is pending until its backup "
            "ends: \"release result=failed\" drops it", name);
    return -1;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): restart nbdkit");
    return -1;
  }
  assert (nr_pending == 0);
  was_active = (size_t) i == nr_ckpts - 1;
  if (active_fd >= 0 && was_active) {
    close (active_fd);
    active_fd = -1;
  }
  ckpts[i].state = ST_DELETING;
  if (write_file (&ckpts[i], NULL) == -1 || finish_delete (i) == -1) {
    failed = true;
    seterr (err, errlen, "cannot update the bitmap files (see the nbdkit "
            "log); writes now fail: restart nbdkit to finish the delete");
    return -1;
  }
  /* finish_delete replaced the file of the new newest checkpoint
   * (the deleted one's parent or child) by a rename: appends must go
   * to that new file, never to the old, unlinked one.
   */
  if (open_active () == -1) {
    failed = true;
    seterr (err, errlen, "cannot open the bitmap file (see the nbdkit "
            "log)");
    return -1;
  }
  nbdkit_debug ("bitmap-discard: deleted checkpoint %s", name);
  return 0;
}

int
dirty_union_since (const char *name, struct bitmap *scope,
                   char *err, size_t errlen)
{
  ssize_t i;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL) {
    seterr (err, errlen, "incremental snapshots need bitmap-dir=DIR on "
            "the nbdkit command line");
    return -1;
  }
  i = find_ckpt (name);
  if (i < 0) {
    seterr (err, errlen, "no checkpoint named %s: take a full backup",
            name);
    return -1;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed (see the nbdkit log): "
            "the next backup must be a full one");
    return -1;
  }
  assert (scope->nblocks == nr_granules);
  for (; (size_t) i < nr_ckpts; ++i)
    bits_or (scope, &ckpts[i].bits);
  return 0;
}

void
dirty_list_json (FILE *fp)
{
  size_t i, j;
  struct bitmap u;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  fputc ('[', fp);
  /* Without memory for the union, report the lists without it. */
  if (bitmap_init (&u, 1, nr_granules) == -1)
    u.bits = NULL;
  for (i = 0; i < nr_ckpts; ++i) {
    if (u.bits) {
      bitmap_fill (&u, 0);
      for (j = i; j < nr_ckpts; ++j)
        bits_or (&u, &ckpts[j].bits);
    }
    fprintf (fp, "%s{\"name\":\"%s\",\"parent\":\"%s\",\"created\":%" PRIu64
             ",\"state\":\"%s\",\"dirty_bytes\":%" PRIu64
             ",\"changed_since_bytes\":%" PRIu64 "}",
             i ? "," : "", ckpts[i].name, ckpts[i].parent, ckpts[i].created,
             ckpts[i].state == ST_PENDING ? "pending"
             : i == nr_ckpts - 1 ? "active" : "frozen",
             bits_bytes (&ckpts[i].bits), u.bits ? bits_bytes (&u) : 0);
  }
  fputc (']', fp);
  bitmap_free (&u);
}

/* Drop the pending checkpoint, the newest (lock held, no leader): the
 * steps of a delete.  Writers may be waiting in dirty_mark meanwhile:
 * their queued granules go to the parent's file, which becomes the
 * active one, and 'requested' keeps them.
 */
static int
drop_pending_locked (char *err, size_t errlen)
{
  size_t i = nr_ckpts - 1;
  struct bitmap keep;

  if (bitmap_init (&keep, 1, nr_granules) == -1) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  memcpy (keep.bits, requested.bits, bits_size);
  if (active_fd >= 0) {
    close (active_fd);
    active_fd = -1;
  }
  ckpts[i].state = ST_DELETING;
  if (write_file (&ckpts[i], NULL) == -1 ||
      (crash_point ("marked"), finish_delete (i) == -1) ||
      open_active () == -1) {
    failed = true;
    bitmap_free (&keep);
    seterr (err, errlen, "cannot update the bitmap files (see the nbdkit "
            "log); writes now fail: restart nbdkit to finish the drop");
    return -1;
  }
  bits_or (&requested, &keep);
  bitmap_free (&keep);
  return 0;
}

int
dirty_checkpoint_settle (bool commit, char *name, char *err, size_t errlen)
{
  struct ckpt *c;
  int r;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  name[0] = '\0';
  if (dir == NULL || nr_ckpts == 0 ||
      ckpts[nr_ckpts-1].state != ST_PENDING)
    return 0;
  c = &ckpts[nr_ckpts-1];
  strcpy (name, c->name);
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): checkpoint %s stays pending; the next start drops it",
            c->name);
    return -1;
  }
  /* The file is only touched without the lock by a sync leader. */
  while (syncing)
    pthread_cond_wait (&cond, &lock);
  crash_op = commit ? "commit" : "drop";
  crash_point ("start");
  if (commit) {
    c->state = ST_ACTIVE;
    r = compact_active ();
    if (r == -1) {
      /* The file on disk still says pending: so does memory. */
      c->state = ST_PENDING;
      seterr (err, errlen, "cannot write the bitmap file of %s (see the "
              "nbdkit log): it stays pending", c->name);
    }
  }
  else
    r = drop_pending_locked (err, errlen);
  crash_point ("done");
  crash_op = NULL;
  if (r == 0)
    nbdkit_debug ("bitmap-discard: %s checkpoint %s",
                  commit ? "committed" : "dropped", name);
  return r;
}
