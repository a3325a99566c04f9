#!/usr/bin/env bash
# nbdkit-fleece: set up a Debian 12 machine and build the project.
# SPDX-License-Identifier: BSD-3-Clause
#
#   bash scripts/setup.sh
#
# 1. Installs the Debian packages that the build and the tests need,
#    if any is missing (as root, or with sudo under CI=true; otherwise
#    prints the apt-get command to run and stops).
# 2. Generates the build system (autoreconf -fi) if it is missing or
#    older than configure.ac.
# 3. Configures out of tree, in ./build, unless already configured
#    with the same arguments.
# 4. Builds (make -j2).
#
# Safe to run again: each step is skipped when there is nothing to do.
#
# Environment:
#   BUILD_DIR       build directory (default: build, in the source tree)
#   CONFIGURE_ARGS  extra arguments for configure, for example
#                   "--enable-sanitizers=address,undefined"
#   JOBS            parallel make jobs (default 2)

set -euo pipefail

srcdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builddir="${BUILD_DIR:-$srcdir/build}"
configure_args="${CONFIGURE_ARGS:-}"
jobs="${JOBS:-2}"

say () { echo "==> setup: $*" >&2; }

# The packages, by what needs them.
packages=(
    # Build: compiler, autotools, libraries.
    gcc libc6-dev make autoconf automake libtool pkg-config
    nbdkit-plugin-dev libnbd-dev libgnutls28-dev libjson-c-dev
    # Man pages: pod2man and podchecker.
    perl
    # Run and test: the server, the NBD clients, nbdsh and the python
    # nbd module, qemu-img/qemu-nbd/qemu-io for the fleece image.
    nbdkit libnbd-bin python3-libnbd qemu-utils
    # Used by the tests and scripts: timeout, cmp, hexdump; socat
    # talks to the bitmap-discard control socket.
    coreutils diffutils bsdextrautils socat
    # psktool and certtool make the keys of the TLS tests.
    gnutls-bin
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null |
            grep -q '^ii'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    say "missing packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif [ -n "${CI:-}" ] && command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        echo "Please install them, as root:" >&2
        echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y "${missing[@]}" </dev/null
else
    say "all packages are installed"
fi

cd "$srcdir"

# The build system.  make regenerates Makefile.in files itself when a
# Makefile.am changes; a changed configure.ac or a new directory needs
# autoreconf.
need_autoreconf=false
if [ ! -x configure ] || [ configure.ac -nt configure ]; then
    need_autoreconf=true
else
    while read -r am; do
        if [ ! -f "${am%.am}.in" ]; then
            need_autoreconf=true
        fi
    done < <(find . -name Makefile.am -not -path './build*/*')
fi
if $need_autoreconf; then
    say "autoreconf -fi"
    mkdir -p m4                 # AC_CONFIG_MACRO_DIR; not in git
    autoreconf -fi
fi

if [ -f config.status ] && [ "$builddir" != "$srcdir" ]; then
    echo "setup: the source tree itself has been configured;" \
         "run 'make distclean' in $srcdir first" >&2
    exit 1
fi

# Configure, out of tree.
mkdir -p "$builddir"
stamp="$builddir/.setup-configure-args"
if [ ! -f "$builddir/config.status" ] ||
       [ configure -nt "$builddir/config.status" ] ||
       [ "$(cat "$stamp" 2>/dev/null)" != "$configure_args" ]; then
    say "configure $configure_args (in $builddir)"
    reconfigure=false
    if [ -f "$builddir/config.status" ]; then
        reconfigure=true
    fi
    # shellcheck disable=SC2086
    (cd "$builddir" && "$srcdir/configure" $configure_args)
    echo "$configure_args" > "$stamp"
    # Objects do not depend on the compiler flags that configure chose
    # (e.g. sanitizers): rebuild them all.
    if $reconfigure; then
        make -C "$builddir" clean >/dev/null
    fi
else
    say "already configured in $builddir"
fi

say "make -j$jobs"
make -C "$builddir" -j"$jobs"
say "built in $builddir"
