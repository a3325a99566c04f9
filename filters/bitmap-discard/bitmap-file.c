/* nbdkit-fleece: bitmap-discard filter, the on-disk format of a
 * checkpoint's bitmap file.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * bitmap-discard-dir holds one file NAME.bitmap per checkpoint:
 *
 *   0     4096 byte header, little endian (offsets below), ending in
 *         the SHA-256 of its first 4064 bytes;
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
 * either the old or the new one.  Records are appended and
 * fdatasync'd.  Only regular files are ever opened for reading, and
 * never through a symlink, so no special file can block the start.
 *
 * Version 2 added the disk identity (bitmap-discard-disk-id).  A
 * version 1 file loads with old_format set and no identity; the
 * caller rewrites it (as version 2) once the directory is accepted.
 *
 * This file holds no state: the caller (chain.c) serializes.
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
#include <sys/stat.h>
#include <sys/types.h>

#include <nbdkit-filter.h>

#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>

#include "bitmap.h"
#include "cleanup.h"
#include "bitmap-file.h"

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
#define HDR_DISK_ID       216   /* 64 bytes, NUL padded (version 2) */
#define HDR_SHA           4064  /* 32 bytes: SHA-256 of bytes 0..4063 */
#define MAGIC             "NBDKBMAP"
#define FORMAT_VERSION    2
#define OLDEST_VERSION    1     /* still read, then rewritten */
#define REC_MAGIC         0x524c4442 /* "BDLR" little endian */
#define REC_HEAD          16
#define SHA_LEN           32

const char *bmfile_crash_op;

/* Little endian fields. */
static void
put32 (unsigned char *p, uint32_t v)
{
  v = htole32 (v);
  memcpy (p, &v, 4);
}

static void
put64 (unsigned char *p, uint64_t v)
{
  v = htole64 (v);
  memcpy (p, &v, 8);
}

static uint32_t
get32 (const unsigned char *p)
{
  uint32_t v;

  memcpy (&v, p, 4);
  return le32toh (v);
}

static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v;

  memcpy (&v, p, 8);
  return le64toh (v);
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

void
bmfile_crash_point (const char *point)
{
  const char *want = getenv ("BITMAP_DISCARD_TEST_CRASH");
  char here[64];

  if (want == NULL || bmfile_crash_op == NULL)
    return;
  snprintf (here, sizeof here, "%s:%s", bmfile_crash_op, point);
  if (strcmp (want, here) == 0) {
    nbdkit_debug ("bitmap-discard: test crash at %s", here);
    kill (getpid (), SIGKILL);
  }
}

void
bmfile_set_size (struct bmfile_geometry *g, uint64_t size)
{
  g->disk_size = size;
  g->nr_granules = (size + g->granularity - 1) / g->granularity;
  g->bits_size = (g->nr_granules + 7) / 8;
}

uint64_t
bmfile_log_start (const struct bmfile_geometry *g)
{
  return HDR_SIZE + g->bits_size;
}

size_t
bmfile_record_size (size_t n)
{
  return REC_HEAD + n * 16 + SHA_LEN;
}

/* dir/NAME.bitmapSUFFIX, or NULL with an error logged. */
static char *
file_path (const char *dir, const char *name, const char *suffix)
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
sync_dir (const char *dir)
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

/* A new header for checkpoint c (HDR_SIZE bytes, caller frees). */
static unsigned char *
make_header (const struct bmfile_geometry *g, const struct bmfile_info *c,
             const struct bitmap *bits)
{
  unsigned char *hdr = calloc (1, HDR_SIZE);

  if (hdr == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  memcpy (hdr + HDR_MAGIC, MAGIC, 8);
  put32 (hdr + HDR_VERSION, FORMAT_VERSION);
  put32 (hdr + HDR_HDRSIZE, HDR_SIZE);
  put64 (hdr + HDR_DISK_SIZE, g->disk_size);
  put32 (hdr + HDR_GRANULARITY, g->granularity);
  put32 (hdr + HDR_STATE, c->state);
  put64 (hdr + HDR_CREATED, c->created);
  put64 (hdr + HDR_BITS_SIZE, g->bits_size);
  put64 (hdr + HDR_NR_GRANULES, g->nr_granules);
  memcpy (hdr + HDR_NAME, c->name, strlen (c->name));
  memcpy (hdr + HDR_PARENT, c->parent, strlen (c->parent));
  memcpy (hdr + HDR_DISK_ID, g->disk_id, strlen (g->disk_id));
  if (sha256 (bits->bits, g->bits_size, hdr + HDR_BITS_SHA) == -1 ||
      sha256 (hdr, HDR_SHA, hdr + HDR_SHA) == -1) {
    free (hdr);
    return NULL;
  }
  return hdr;
}

int
bmfile_write (const char *dir, const struct bmfile_geometry *g,
              const struct bmfile_info *c, const struct bitmap *bits,
              int *fdp)
{
  CLEANUP_FREE char *path = file_path (dir, c->name, "");
  CLEANUP_FREE char *tmp = file_path (dir, c->name, ".tmp");
  CLEANUP_FREE unsigned char *hdr = NULL;
  int fd;

  if (!path || !tmp)
    return -1;
  hdr = make_header (g, c, bits);
  if (hdr == NULL)
    return -1;

  /* Never open what a crash or someone else left at tmp (it could be
   * a FIFO or a symlink): remove it and create the file anew.
   */
  if (unlink (tmp) == -1 && errno != ENOENT) {
    nbdkit_error ("bitmap-discard: unlink: %s: %m", tmp);
    return -1;
  }
  fd = open (tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd == -1) {
    nbdkit_error ("bitmap-discard: open: %s: %m", tmp);
    return -1;
  }
  if (write_all (fd, hdr, HDR_SIZE, 0) == -1 ||
      write_all (fd, bits->bits, g->bits_size, HDR_SIZE) == -1 ||
      fsync (fd) == -1) {
    nbdkit_error ("bitmap-discard: write: %s: %m", tmp);
    close (fd);
    unlink (tmp);
    return -1;
  }
  bmfile_crash_point ("written");
  if (rename (tmp, path) == -1) {
    nbdkit_error ("bitmap-discard: rename: %s: %m", path);
    close (fd);
    unlink (tmp);
    return -1;
  }
  bmfile_crash_point ("renamed");
  if (sync_dir (dir) == -1) {
    close (fd);
    return -1;
  }
  if (fdp)
    *fdp = fd;
  else
    close (fd);
  return 0;
}

int
bmfile_unlink (const char *dir, const char *name)
{
  CLEANUP_FREE char *path = file_path (dir, name, "");

  if (!path)
    return -1;
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("bitmap-discard: unlink: %s: %m", path);
    return -1;
  }
  bmfile_crash_point ("unlinked");
  return sync_dir (dir);
}

/* Read a whole file.  Only a regular file is read: opening does not
 * follow a symlink or wait for a FIFO's writer (O_NONBLOCK), so no
 * stray special file in bitmap-discard-dir can hang the start.
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

/* Check the header's own checksum, magic and version. */
static int
check_header (const char *path, const unsigned char *buf, size_t len)
{
  unsigned char sha[SHA_LEN];
  uint32_t version;

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
  version = get32 (buf + HDR_VERSION);
  if (version < OLDEST_VERSION || version > FORMAT_VERSION ||
      get32 (buf + HDR_HDRSIZE) != HDR_SIZE) {
    nbdkit_error ("bitmap-discard: %s: format version %" PRIu32 " is not "
                  "supported (this filter reads versions %d to %d): use "
                  "the nbdkit-fleece version that wrote it, or"
                  WHAT_TO_DO, path, version, OLDEST_VERSION,
                  FORMAT_VERSION);
    return -1;
  }
  return 0;
}

/* Check that the header describes the same disk as g (setting g's
 * size if geom_from is NULL) and fill in c.
 */
static int
parse_header (const char *path, const char *fname,
              const unsigned char *buf, size_t len,
              struct bmfile_geometry *g, const char *geom_from,
              struct bmfile_info *c)
{
  uint64_t size = get64 (buf + HDR_DISK_SIZE);
  char id[DISK_ID_MAX + 2] = "", err[128];

  c->old_format = get32 (buf + HDR_VERSION) < FORMAT_VERSION;
  if (!c->old_format)
    memcpy (id, buf + HDR_DISK_ID, DISK_ID_MAX + 1);
  if (geom_from == NULL)
    bmfile_set_size (g, size);
  else if (size != g->disk_size) {
    nbdkit_error ("bitmap-discard: %s: made for a disk of %" PRIu64
                  " bytes, but %s.bitmap for one of %" PRIu64 " bytes: "
                  "the files come from different disks" UNTRUSTED,
                  path, size, geom_from, g->disk_size);
    return -1;
  }
  if (get32 (buf + HDR_GRANULARITY) != g->granularity) {
    nbdkit_error ("bitmap-discard: %s: written with bitmap-discard-"
                  "granularity=%" PRIu32 ", but it is %" PRIu32 " now: "
                  "use the same granularity, or" WHAT_TO_DO,
                  path, get32 (buf + HDR_GRANULARITY), g->granularity);
    return -1;
  }
  if (!c->old_format && strcmp (id, g->disk_id) != 0) {
    nbdkit_error ("bitmap-discard: %s: belongs to the disk with "
                  "bitmap-discard-disk-id=\"%s\", but this disk has "
                  "%s%s%s: is bitmap-discard-dir the right one for this "
                  "disk?  If it is and the disk was renamed, give its old "
                  "id; "
                  "otherwise" WHAT_TO_DO, path, id,
                  g->disk_id[0] ? "bitmap-discard-disk-id=\"" : "no id",
                  g->disk_id, g->disk_id[0] ? "\"" : "");
    return -1;
  }
  if (get64 (buf + HDR_BITS_SIZE) != g->bits_size ||
      get64 (buf + HDR_NR_GRANULES) != g->nr_granules ||
      len < HDR_SIZE + g->bits_size ||
      buf[HDR_NAME + CKPT_NAME_MAX] != 0 ||
      buf[HDR_PARENT + CKPT_NAME_MAX] != 0 ||
      id[DISK_ID_MAX] != 0) {
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
  return 0;
}

/* Is there a valid record at pos?  Its length goes into *reclen. */
static bool
record_ok (const unsigned char *buf, size_t len, size_t pos,
           size_t *reclen)
{
  unsigned char sha[SHA_LEN];

  *reclen = 0;
  if (len - pos < REC_HEAD + SHA_LEN || get32 (buf + pos) != REC_MAGIC)
    return false;
  *reclen = bmfile_record_size (get32 (buf + pos + 4));
  if (len - pos < *reclen)
    return false;
  return sha256 (buf + pos, *reclen - SHA_LEN, sha) == 0 &&
    memcmp (sha, buf + pos + *reclen - SHA_LEN, SHA_LEN) == 0;
}

/* Set the bits of the valid record at pos; -1 if out of range. */
static int
apply_record (const unsigned char *buf, size_t pos,
              const struct bmfile_geometry *g, struct bitmap *bits)
{
  uint32_t nr = get32 (buf + pos + 4), i;

  for (i = 0; i < nr; ++i) {
    uint64_t first = get64 (buf + pos + REC_HEAD + i * 16);
    uint64_t count = get64 (buf + pos + REC_HEAD + i * 16 + 8);
    uint64_t gr;

    if (first > g->nr_granules || count > g->nr_granules - first)
      return -1;
    for (gr = first; gr < first + count; ++gr)
      bitmap_set (bits, gr, 1);
  }
  return 0;
}

/* Replay the log after the bits.  A bad record at the very end may be
 * a torn append (it then ends the file exactly or is cut short): be
 * safe and mark everything.  Elsewhere it is corruption.
 */
static int
replay_log (const char *path, const char *fname, const unsigned char *buf,
            size_t len, const struct bmfile_geometry *g,
            struct bitmap *bits, char *warning, size_t warnlen)
{
  size_t pos = bmfile_log_start (g), reclen;

  while (pos < len) {
    if (!record_ok (buf, len, pos, &reclen)) {
      if (reclen == 0 || len - pos <= reclen) {
        bitmap_fill (bits, 1);
        snprintf (warning, warnlen,
                  "%s: the last change record was incomplete (torn "
                  "write?): every granule is marked changed, so the "
                  "next incremental copies the whole disk", fname);
        nbdkit_debug ("bitmap-discard: %s", warning);
        return 0;
      }
      nbdkit_error ("bitmap-discard: %s: a change record at byte %zu "
                    "fails its checksum: the file is corrupted"
                    UNTRUSTED, path, pos);
      return -1;
    }
    if (apply_record (buf, pos, g, bits) == -1) {
      nbdkit_error ("bitmap-discard: %s: a change record at byte %zu "
                    "is out of range" UNTRUSTED, path, pos);
      return -1;
    }
    pos += reclen;
  }
  return 0;
}

int
bmfile_load (const char *dir, const char *fname,
             struct bmfile_geometry *g, const char *geom_from,
             struct bmfile_info *c, struct bitmap *bits,
             char *warning, size_t warnlen)
{
  CLEANUP_FREE char *path = NULL;
  CLEANUP_FREE unsigned char *buf = NULL;
  unsigned char sha[SHA_LEN];
  size_t len;

  if (asprintf (&path, "%s/%s", dir, fname) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  buf = read_file (path, &len);
  if (buf == NULL ||
      check_header (path, buf, len) == -1 ||
      parse_header (path, fname, buf, len, g, geom_from, c) == -1)
    return -1;
  if (sha256 (buf + HDR_SIZE, g->bits_size, sha) == -1)
    return -1;
  if (memcmp (sha, buf + HDR_BITS_SHA, SHA_LEN) != 0) {
    nbdkit_error ("bitmap-discard: %s: checksum mismatch in the bits: "
                  "the file is corrupted" UNTRUSTED, path);
    return -1;
  }
  if (bitmap_init (bits, 1, g->nr_granules) == -1) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  memcpy (bits->bits, buf + HDR_SIZE, g->bits_size);
  if (replay_log (path, fname, buf, len, g, bits, warning, warnlen) == -1) {
    bitmap_free (bits);
    return -1;
  }
  return 0;
}

int
bmfile_append (int fd, const char *dir, const struct range *r, size_t n,
               uint64_t seq, uint64_t offset)
{
  size_t reclen = bmfile_record_size (n), i;
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
  if (write_all (fd, rec, reclen, offset) == -1 || fdatasync (fd) == -1) {
    nbdkit_error ("bitmap-discard: cannot make dirty bits durable in "
                  "%s: %m: writes fail from now on, to protect the "
                  "incremental backups", dir);
    return -1;
  }
  return 0;
}
