/* nbdkit-fleece: cbw filter, the qcow2 fleece image and its qemu-nbd.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * By default cbw creates a qcow2 (cbw-image=FILE, or a new file in
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
 * qemu-nbd locks the image, so there is exactly one connection (see
 * store.c).  qemu-nbd exits when that connection closes, including
 * when nbdkit dies.  If it dies first, store.c closes the connection
 * (libnbd reaps the child), removes the image and calls
 * qemu_store_create again for the next snapshot.
 *
 * Files: cbw never overwrites a file it did not create.  The name is
 * reserved with O_CREAT|O_EXCL once nbdkit has forked, and only a
 * file we created is removed at exit (unless cbw-keep-image=true):
 * at .unload, or by qemu_store_exit_cleanup when nbdkit exits
 * without unloading us.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
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
#include "rounding.h"
#include "store-qemu.h"

extern char **environ;

/* Parameters. */
static char *image;                     /* cbw-image, absolute */
static bool image_default;              /* image is our $TMPDIR choice */
static bool keep_image;                 /* cbw-keep-image */
static char *qemu_nbd;                  /* cbw-qemu-nbd, NULL: default */
static char *qemu_img;                  /* cbw-qemu-img, NULL: default */

/* True once we created the image file, so it is ours to remove. */
static bool created_image;

/* The socket libnbd made for qemu-nbd (socket activation), in a
 * directory of its own, or "".  libnbd removes both in nbd_close; we
 * only need it when nbdkit exits without unloading us.
 */
static char sact_path[sizeof ((struct sockaddr_un *) 0)->sun_path];

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

/* A parameter of the qcow2 store?  See store-qemu.h. */
int
qemu_store_config (const char *key, const char *value)
{
  if (strcmp (key, "cbw-image") == 0) {
    free (image);
    image = nbdkit_absolute_path (value);
    if (image == NULL)
      return -1;
    return 1;
  }
  if (strcmp (key, "cbw-keep-image") == 0) {
    if (param_bool ("cbw", key, value, &keep_image) == -1)
      return -1;
    return 1;
  }
  if (strcmp (key, "cbw-qemu-nbd") == 0)
    return program_param (value, &qemu_nbd);
  if (strcmp (key, "cbw-qemu-img") == 0)
    return program_param (value, &qemu_img);
  return 0;
}

/* Defaults and cross-checks. */
int
qemu_store_config_complete (bool uri_store)
{
  struct stat st;

  if (uri_store) {
    if (image) {
      nbdkit_error ("cbw: cbw-image and cbw-store cannot be used together");
      return -1;
    }
    if (keep_image) {
      nbdkit_error ("cbw: cbw-keep-image applies to cbw-image, "
                    "not to cbw-store");
      return -1;
    }
    return 0;
  }

  if ((qemu_nbd == NULL && (qemu_nbd = strdup ("qemu-nbd")) == NULL) ||
      (qemu_img == NULL && (qemu_img = strdup ("qemu-img")) == NULL)) {
    nbdkit_error ("strdup: %m");
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

/* The directory the image goes in: a new string, or NULL. */
static char *
image_dir (void)
{
  CLEANUP_FREE char *copy = NULL;
  const char *tmpdir = getenv ("TMPDIR") ?: "/var/tmp";
  char *ret;

  if (image == NULL)
    ret = strdup (tmpdir);
  else {
    copy = strdup (image);
    ret = copy ? strdup (dirname (copy)) : NULL;
  }
  if (ret == NULL)
    nbdkit_error ("strdup: %m");
  return ret;
}

/* Checks before nbdkit forks. */
int
qemu_store_get_ready (void)
{
  CLEANUP_FREE char *dir = NULL;

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
  /* The image itself is created after the fork; a directory it
   * cannot go in is refused now, while nbdkit can still exit with
   * the message.
   */
  dir = image_dir ();
  if (dir == NULL)
    return -1;
  if (access (dir, W_OK | X_OK) == -1) {
    nbdkit_error ("cbw: cannot create the fleece image in %s: %m "
                  "(%s)", dir, image ? "check cbw-image=FILE"
                                     : "set TMPDIR or cbw-image=FILE");
    return -1;
  }
  return 0;
}

/* Reserve the image's name with O_EXCL, so that it is ours.  Done
 * after nbdkit has forked and bound its sockets: from then on nbdkit
 * either serves and unloads us at exit (which removes the image), or
 * fails in qemu_store_create, which removes it itself.  The default
 * name is chosen once and used again for later stores.
 */
static int
reserve_image (void)
{
  const char *tmpdir = getenv ("TMPDIR") ?: "/var/tmp";
  int fd;

  assert (!created_image);
  if (image) {
    fd = open (image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
      if (errno == EEXIST)
        nbdkit_error ("cbw: %s%s already exists; cbw never overwrites "
                      "a file it did not create",
                      image_default ? "" : "cbw-image=", image);
      else
        nbdkit_error ("cbw: cannot create %s%s: %m",
                      image_default ? "" : "cbw-image=", image);
      return -1;
    }
  }
  else {
    if (asprintf (&image, "%s/nbdkit-cbw-XXXXXX.qcow2", tmpdir) == -1) {
      image = NULL;
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    image_default = true;
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

/* Note where libnbd put qemu-nbd's socket: the address CONN is
 * connected to.
 */
static void
remember_sact_path (struct nbdconn *conn)
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

/* Create the qcow2 at 'image' (already reserved) and connect CONN to
 * a qemu-nbd serving it.
 */
static int
start_qemu_nbd (uint64_t size, uint32_t cluster_size, struct nbdconn *conn)
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
  remember_sact_path (conn);
  return 0;
}

/* A fresh image and qemu-nbd, CONN connected to it. */
int
qemu_store_create (uint64_t size, uint32_t cluster_size,
                   struct nbdconn *conn)
{
  if (reserve_image () == -1)
    return -1;
  if (start_qemu_nbd (size, cluster_size, conn) == -1) {
    qemu_store_remove (false);
    return -1;
  }
  return 0;
}

/* The connection was closed. */
void
qemu_store_disconnected (void)
{
  sact_path[0] = '\0';           /* nbd_close removed it */
}

/* Remove the image we created (see store-qemu.h). */
void
qemu_store_remove (bool at_exit)
{
  if (created_image && !(at_exit && keep_image)) {
    if (unlink (image) == -1 && errno != ENOENT)
      nbdkit_debug ("cbw: cannot remove %s: %m", image);
  }
  created_image = false;
}

/* Free the parameters. */
void
qemu_store_free (void)
{
  free (image);
  free (qemu_nbd);
  free (qemu_img);
  image = qemu_nbd = qemu_img = NULL;
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
qemu_store_exit_cleanup (void)
{
  char *slash;

  qemu_store_remove (true);
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

/* Space the image takes on disk. */
int64_t
qemu_store_allocated_bytes (void)
{
  struct stat st;

  if (!created_image || stat (image, &st) == -1)
    return -1;
  return (int64_t) st.st_blocks * 512;
}
