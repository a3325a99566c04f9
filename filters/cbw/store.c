/* nbdkit-fleece: cbw filter, the fleece store.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The fleece store holds the point-in-time copies of clusters that
 * writers have since changed.  It is addressed like the live disk: a
 * cluster at offset X of the disk is kept at offset X of the store,
 * so the store needs no index of its own and a sparse qcow2 of the
 * disk's size costs only what is preserved.
 *
 * By default cbw creates that qcow2 (cbw-image=FILE, or a new file in
 * $TMPDIR) and serves it with a qemu-nbd child started by libnbd via
 * systemd socket activation:
 *
 *   qemu-nbd --image-opts --discard=unmap --detect-zeroes=unmap
 *            --cache=unsafe driver=qcow2,file.filename=FILE,l2-cache-size=4M
 *
 * --discard=unmap makes our TRIMs free space in the file;
 * --detect-zeroes=unmap stores zero clusters without data;
 * --cache=unsafe because the store is scratch space: it is worthless
 * after a crash (the snapshot is gone), so flushing it buys nothing;
 * l2-cache-size=4M because qemu's default L2 cache grows with the
 * disk's size (tens of MiB at 1 TiB) and ours is a scratch image read
 * mostly once.
 *
 * qemu-nbd locks the image, so there is exactly one connection, shared
 * by all threads (common/nbdconn.c).  qemu-nbd exits when that
 * connection closes, including when nbdkit dies.
 *
 * The RAM tier: with cbw-ram=SIZE, the ramcache engine (from
 * filters/ramcache, the same code as the ramcache filter) sits
 * between cbw and the qcow2.  A copy-before-write then costs a memory
 * copy, snapshot reads of fresh copies come from RAM, and clusters the
 * backup releases before they are written back never reach the disk.
 * Its blocks are our clusters.  Without it, the calls below go to the
 * NBD connection directly.
 *
 * Files: cbw never overwrites a file it did not create.  The name is
 * reserved with O_CREAT|O_EXCL once nbdkit has forked, and only a
 * file we created is removed at exit (unless cbw-keep-image=true):
 * at .unload, or by store_exit_cleanup when nbdkit exits without
 * unloading us.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libnbd.h>
#include <nbdkit-filter.h>

#include "cleanup.h"
#include "nbdconn.h"
#include "params.h"
#include "ramcache-engine.h"
#include "rounding.h"
#include "store.h"

extern char **environ;

/* Parameters. */
static char *image;                     /* cbw-image, absolute */
static const char *store_uri;           /* cbw-store */
static bool keep_image;                 /* cbw-keep-image */
static char *qemu_nbd;                  /* cbw-qemu-nbd, NULL: default */
static char *qemu_img;                  /* cbw-qemu-img, NULL: default */
static uint64_t ram_limit;              /* cbw-ram, 0 = no RAM tier */

/* True once we created the image file, so it is ours to remove. */
static bool created_image;

/* The socket libnbd made for qemu-nbd (socket activation), in a
 * directory of its own, or "".  libnbd removes both in nbd_close; we
 * only need it when nbdkit exits without unloading us.
 */
static char sact_path[sizeof ((struct sockaddr_un *) 0)->sun_path];

/* The connection to the store, from store_open on. */
static struct nbdconn *conn;

/* The size of the live disk, which is what we use of the store (a
 * qcow2 is rounded up to 512 bytes; a cbw-store may be larger).
 */
static uint64_t disk_size;

/* The RAM tier in front of it, if cbw-ram was given. */
static struct ramcache *ram;

/* A program parameter: a name looked up on $PATH, or a path, made
 * absolute now because a daemonised nbdkit changes directory to /
 * before the program is started.  Returns 1, or -1 on error.
 */
static int
program_param (const char *value, char **prog)
{
  free (*prog);
  *prog = strchr (value, '/') ? nbdkit_absolute_path (value)
                              : strdup (value);
  if (*prog == NULL) {
    nbdkit_error ("cbw: %s: %m", value);
    return -1;
  }
  return 1;
}

int
store_config (const char *key, const char *value)
{
  if (strcmp (key, "cbw-image") == 0) {
    free (image);
    image = nbdkit_absolute_path (value);
    if (image == NULL)
      return -1;
    return 1;
  }
  if (strcmp (key, "cbw-store") == 0) {
    store_uri = value;
    return 1;
  }
  if (strcmp (key, "cbw-keep-image") == 0) {
    if (param_bool ("cbw", key, value, &keep_image) == -1)
      return -1;
    return 1;
  }
  if (strcmp (key, "cbw-ram") == 0) {
    int64_t n;

    if (param_size ("cbw", key, value, &n) == -1)
      return -1;
    ram_limit = n;
    return 1;
  }
  if (strcmp (key, "cbw-qemu-nbd") == 0)
    return program_param (value, &qemu_nbd);
  if (strcmp (key, "cbw-qemu-img") == 0)
    return program_param (value, &qemu_img);
  return 0;
}

int
store_config_complete (void)
{
  struct stat st;

  if ((qemu_nbd == NULL && (qemu_nbd = strdup ("qemu-nbd")) == NULL) ||
      (qemu_img == NULL && (qemu_img = strdup ("qemu-img")) == NULL)) {
    nbdkit_error ("strdup: %m");
    return -1;
  }

  if (image && store_uri) {
    nbdkit_error ("cbw: cbw-image and cbw-store cannot be used together");
    return -1;
  }
  if (store_uri && keep_image) {
    nbdkit_error ("cbw: cbw-keep-image applies to cbw-image, "
                  "not to cbw-store");
    return -1;
  }
  if (image && lstat (image, &st) == 0) {
    nbdkit_error ("cbw: cbw-image=%s already exists; cbw never "
                  "overwrites a file it did not create: remove it "
                  "or name a new file", image);
    return -1;
  }
  return 0;
}

/* Is PROG runnable: a path to an executable, or a name on $PATH? */
static bool
program_exists (const char *prog)
{
  const char *path, *p, *end;
  char buf[4096];

  if (strchr (prog, '/'))
    return access (prog, X_OK) == 0;
  path = getenv ("PATH");
  if (path == NULL)
    path = "/usr/bin:/bin";
  for (p = path; *p; p = *end ? end + 1 : end) {
    end = strchrnul (p, ':');
    if (snprintf (buf, sizeof buf, "%.*s/%s",
                  (int) (end - p), p, prog) < (int) sizeof buf &&
        access (buf, X_OK) == 0)
      return true;
  }
  return false;
}

/* Remove the image we created, unless it is to be kept. */
static void
remove_image (void)
{
  if (created_image && !keep_image) {
    if (unlink (image) == -1 && errno != ENOENT)
      nbdkit_debug ("cbw: cannot remove %s: %m", image);
  }
  created_image = false;
}

int
store_get_ready (void)
{
  if (store_uri)
    return 0;

  if (!program_exists (qemu_nbd)) {
    nbdkit_error ("cbw: %s not found: the fleece image is served by "
                  "qemu-nbd (Debian package qemu-utils); install it or "
                  "set cbw-qemu-nbd=PATH", qemu_nbd);
    return -1;
  }
  if (!program_exists (qemu_img)) {
    nbdkit_error ("cbw: %s not found: the fleece image is created by "
                  "qemu-img (Debian package qemu-utils); install it or "
                  "set cbw-qemu-img=PATH", qemu_img);
    return -1;
  }
  return 0;
}

/* Reserve the image's name with O_EXCL, so that it is ours.  Done
 * after nbdkit has forked and bound its sockets: from then on nbdkit
 * either serves and unloads us at exit (store_close removes the
 * image), or fails in store_open, which removes it itself.
 */
static int
reserve_image (void)
{
  int fd;

  if (image) {
    fd = open (image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
      if (errno == EEXIST)
        nbdkit_error ("cbw: cbw-image=%s already exists; cbw never "
                      "overwrites a file it did not create", image);
      else
        nbdkit_error ("cbw: cannot create cbw-image=%s: %m", image);
      return -1;
    }
  }
  else {
    const char *tmpdir = getenv ("TMPDIR") ?: "/var/tmp";

    if (asprintf (&image, "%s/nbdkit-cbw-XXXXXX.qcow2", tmpdir) == -1) {
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    fd = mkostemps (image, strlen (".qcow2"), O_CLOEXEC);
    if (fd == -1) {
      nbdkit_error ("cbw: cannot create a fleece image in %s: %m "
                    "(set TMPDIR or cbw-image=FILE)", tmpdir);
      return -1;
    }
  }
  close (fd);
  created_image = true;
  nbdkit_debug ("cbw: fleece image %s", image);
  return 0;
}

/* qemu's --image-opts string for the qcow2 at PATH.  A comma in an
 * option value is written twice.
 */
static char *
image_options (const char *path)
{
  const char *prefix = "driver=qcow2,file.filename=";
  const char *suffix = ",l2-cache-size=4M";
  char *ret, *p;

  ret = malloc (strlen (prefix) + 2 * strlen (path) + strlen (suffix) + 1);
  if (ret == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  p = stpcpy (ret, prefix);
  for (; *path; path++) {
    if (*path == ',')
      *p++ = ',';
    *p++ = *path;
  }
  strcpy (p, suffix);
  return ret;
}

/* Run ARGV, wait for it, and fail unless it exits with 0. */
static int
run_command (char **argv)
{
  pid_t pid;
  int r, status;

  r = posix_spawnp (&pid, argv[0], NULL, NULL, argv, environ);
  if (r != 0) {
    errno = r;
    nbdkit_error ("cbw: cannot run %s: %m", argv[0]);
    return -1;
  }
  while (waitpid (pid, &status, 0) == -1) {
    if (errno != EINTR) {
      nbdkit_error ("cbw: waitpid: %m");
      return -1;
    }
  }
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    nbdkit_error ("cbw: %s failed (status 0x%x)", argv[0], status);
    return -1;
  }
  return 0;
}

/* The store below the RAM tier: the NBD connection. */
static int
below_pread (void *opaque, void *buf, uint32_t count, uint64_t offset,
             int *err)
{
  return nbdconn_pread (conn, buf, count, offset, 0, err);
}

static int
below_pwrite (void *opaque, const void *buf, uint32_t count,
              uint64_t offset, int *err)
{
  return nbdconn_pwrite (conn, buf, count, offset, 0, err);
}

static int
below_trim (void *opaque, uint32_t count, uint64_t offset, int *err)
{
  if (nbd_can_trim (nbdconn_handle (conn)) != 1)
    return 0;
  return nbdconn_trim (conn, count, offset, 0, err);
}

/* Note where libnbd put qemu-nbd's socket: the address our
 * connection is connected to.
 */
static void
remember_sact_path (void)
{
  struct sockaddr_un addr;
  socklen_t len = sizeof addr;
  int fd = nbd_aio_get_fd (nbdconn_handle (conn));

  memset (&addr, 0, sizeof addr);
  if (fd >= 0 &&
      getpeername (fd, (struct sockaddr *) &addr, &len) == 0 &&
      addr.sun_family == AF_UNIX && addr.sun_path[0] == '/')
    memcpy (sact_path, addr.sun_path, sizeof sact_path - 1);
}

/* When nbdkit fails after our .after_fork (a filter above refuses
 * to start, say), it exits without calling .unload.  This destructor
 * still runs then, at exit, and removes the image we created and
 * libnbd's socket directory; qemu-nbd exits by itself when our
 * connection closes.  After a normal .unload there is nothing left
 * for it to do.  (Not atexit: a handler registered from a shared
 * object that nbdkit unloads would be called after the unload.)
 */
static void __attribute__ ((destructor))
store_exit_cleanup (void)
{
  char *slash;

  remove_image ();
  if (sact_path[0]) {
    unlink (sact_path);
    slash = strrchr (sact_path, '/');
    if (slash && slash != sact_path) {
      *slash = '\0';
      rmdir (sact_path);
    }
    sact_path[0] = '\0';
  }
}

/* Create the qcow2 at 'image' (already reserved) and connect to a
 * qemu-nbd serving it.
 */
static int
start_qemu_nbd (uint64_t size, uint32_t cluster_size)
{
  char opts[64], sizestr[32];
  CLEANUP_FREE char *image_opts = NULL;
  /* qcow2 clusters are 512 bytes to 2 MiB.  Matching our cluster
   * size lets a TRIM of one cluster free its space.
   */
  uint32_t qcow2_cluster = MIN (MAX (cluster_size, 512u), 2u << 20);
  char *img_argv[] = { qemu_img, "create", "-q", "-f", "qcow2",
                       "-o", opts, image, sizestr, NULL };
  char *nbd_argv[] = { qemu_nbd, "--image-opts",
                       "--discard=unmap", "--detect-zeroes=unmap",
                       "--cache=unsafe", NULL, NULL };

  assert (image != NULL);
  snprintf (opts, sizeof opts, "cluster_size=%" PRIu32, qcow2_cluster);
  snprintf (sizestr, sizeof sizestr, "%" PRIu64, size);
  image_opts = image_options (image);
  if (image_opts == NULL)
    return -1;
  nbd_argv[5] = image_opts;
  if (run_command (img_argv) == -1 ||
      nbdconn_connect_argv (conn, nbd_argv) == -1)
    return -1;
  remember_sact_path ();
  return 0;
}

static int
open_store (uint64_t size, uint32_t cluster_size)
{
  const struct ramcache_below below = {
    .pread = below_pread, .pwrite = below_pwrite, .trim = below_trim,
  };
  int64_t store_size;

  disk_size = size;
  conn = nbdconn_new ("cbw: fleece store");
  if (conn == NULL)
    return -1;

  if (store_uri) {
    if (nbdconn_connect_uri (conn, store_uri) == -1)
      return -1;
  }
  else if (reserve_image () == -1 ||
           start_qemu_nbd (size, cluster_size) == -1)
    return -1;

  store_size = nbd_get_size (nbdconn_handle (conn));
  if (store_size == -1) {
    nbdkit_error ("cbw: fleece store: cannot get size: %s",
                  nbd_get_error ());
    return -1;
  }
  if ((uint64_t) store_size < size) {
    nbdkit_error ("cbw: fleece store is %" PRIi64 " bytes, smaller than "
                  "the live disk (%" PRIu64 " bytes)", store_size, size);
    return -1;
  }
  if (nbd_is_read_only (nbdconn_handle (conn)) == 1) {
    nbdkit_error ("cbw: fleece store is read-only");
    return -1;
  }
  if (nbd_can_trim (nbdconn_handle (conn)) != 1)
    nbdkit_debug ("cbw: fleece store cannot trim: released clusters "
                  "will not free space");

  if (nbdconn_start (conn) == -1)
    return -1;

  if (ram_limit > 0) {
    ram = ramcache_new (ram_limit, cluster_size, size, &below);
    if (ram == NULL || ramcache_start (ram) == -1)
      return -1;
    nbdkit_debug ("cbw: RAM tier of %" PRIu64 " bytes in front of the "
                  "fleece store", ram_limit);
  }
  return 0;
}

int
store_open (uint64_t size, uint32_t cluster_size)
{
  if (open_store (size, cluster_size) == -1) {
    /* nbdkit will exit: leave no image behind. */
    remove_image ();
    return -1;
  }
  return 0;
}

void
store_close (void)
{
  if (ram) {
    ramcache_debug_stats (ram, "cbw: RAM tier");
    ramcache_free (ram);
    ram = NULL;
  }
  nbdconn_close (conn);
  conn = NULL;
  sact_path[0] = '\0';           /* nbd_close removed it */
  remove_image ();
  free (image);
  free (qemu_nbd);
  free (qemu_img);
  image = qemu_nbd = qemu_img = NULL;
}

int
store_read (void *buf, uint32_t count, uint64_t offset, int *err)
{
  if (ram)
    return ramcache_pread (ram, buf, count, offset, err);
  return nbdconn_pread (conn, buf, count, offset, 0, err);
}

int
store_write_owned (void *buf, uint32_t count, uint64_t offset,
                   const struct timespec *deadline, int *err)
{
  if (ram) {
    /* Into RAM; only a full tier makes this wait, and the deadline
     * bounds that wait.
     */
    int r = deadline ?
      ramcache_pwrite_deadline (ram, buf, count, offset, deadline, err) :
      ramcache_pwrite (ram, buf, count, offset, err);
    free (buf);
    return r;
  }
  if (deadline)
    return nbdconn_pwrite_owned_deadline (conn, buf, count, offset, 0,
                                          deadline, err);
  else {
    int r = nbdconn_pwrite (conn, buf, count, offset, 0, err);
    free (buf);
    return r;
  }
}

int
store_trim (uint64_t count, uint64_t offset, int *err)
{
  /* NBD requests are at most 4 GiB - 1; 1 GiB pieces keep
   * alignment.
   */
  const uint64_t piece = UINT64_C (1) << 30;

  if (!ram && nbd_can_trim (nbdconn_handle (conn)) != 1)
    return 0;
  while (count > 0) {
    uint32_t n = MIN (count, piece);

    if (ram) {
      if (ramcache_trim (ram, n, offset, err) == -1)
        return -1;
    }
    else if (nbdconn_trim (conn, n, offset, 0, err) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
store_extents (uint32_t count, uint64_t offset,
               struct nbdkit_extents *extents, int *err)
{
  /* Through the RAM tier, allocation is not known cheaply: say data,
   * which is always correct.
   */
  if (ram) {
    if (nbdkit_add_extent (extents, offset, count, 0) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
  return nbdconn_extents (conn, count, offset, 0, extents, err);
}

int
store_wipe (int *err)
{
  nbdconn_wait_idle (conn);
  return store_trim (disk_size, 0, err);
}

int
store_wipe_ranges (store_range_fn next_range, void *opaque, int *err)
{
  uint64_t offset, count;

  nbdconn_wait_idle (conn);
  while (next_range (opaque, &offset, &count))
    if (store_trim (count, offset, err) == -1)
      return -1;
  return 0;
}

void
store_status_json (char *buf, size_t len)
{
  struct ramcache_stats st;

  if (ram == NULL) {
    snprintf (buf, len, "\"ram_limit\":0");
    return;
  }
  ramcache_get_stats (ram, &st);
  snprintf (buf, len,
            "\"ram_limit\":%" PRIu64 ",\"ram_held_bytes\":%" PRIu64 ","
            "\"ram_dirty_bytes\":%" PRIu64 ","
            "\"ram_written_below_bytes\":%" PRIu64 ","
            "\"ram_dropped_bytes\":%" PRIu64 ","
            "\"ram_writer_stalls\":%" PRIu64,
            st.limit, st.held_bytes, st.dirty_bytes,
            st.written_below_bytes, st.dropped_bytes, st.writer_stalls);
}

int64_t
store_allocated_bytes (void)
{
  struct stat st;

  if (image == NULL || stat (image, &st) == -1)
    return -1;
  return (int64_t) st.st_blocks * 512;
}
