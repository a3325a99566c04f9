#!/usr/bin/env bash
# nbdkit-fleece: qemu-nbd as the live disk.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is qemu-nbd serving a qcow2 image (with discard, and
# --shared so that several clients may connect).  Through the fleece
# plugin everything passes through (same checks as
# test-fleece-passthrough.sh), qemu-img compare agrees, and the whole
# stack (cbw + fleece over qemu-nbd serving a raw file) gives an exact
# point-in-time copy under concurrent writers (pit-torture).

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires
requires_program qemu-nbd
requires_program qemu-img
requires_program nbdcopy

# start_qemu_nbd FORMAT IMAGE
start_qemu_nbd ()
{
    rm -f "$live_sock" "$tmp/qemu-nbd.pid"
    qemu-nbd -f "$1" --discard=unmap --shared=8 --persistent \
             --cache=writeback --aio=threads -k "$live_sock" \
             --pid-file="$tmp/qemu-nbd.pid" --fork "$2"
    qemu_pid="$(cat "$tmp/qemu-nbd.pid")"
    track_pid "$qemu_pid"
}

qemu-img create -q -f qcow2 "$tmp/live.qcow2" 16M
start_qemu_nbd qcow2 "$tmp/live.qcow2"
start_fleece live="$live_uri"
passthrough_check "$live_uri" "$fleece_uri"
timeout 120 qemu-img compare -f raw -F raw "$live_uri" "$fleece_uri"
kill_pid "$fleece_pid"
kill_pid "$qemu_pid"
timeout 60 qemu-img check "$tmp/live.qcow2"

# The whole stack over qemu-nbd.
if [ -x "$TESTS_BIN/pit-torture" ] &&
       nbdkit --filter="$CBW_FILTER" "$FLEECE_PLUGIN" --version \
              >/dev/null 2>&1; then
    truncate -s 24M "$tmp/live.img"
    start_qemu_nbd raw "$tmp/live.img"
    rm -f "$tmp/cbw.sock"
    start_nbdkit -P "$tmp/cbw.pid" -U "$tmp/cbw.sock" \
                 --filter="$CBW_FILTER" "$FLEECE_PLUGIN" live="$live_uri" \
                 cbw-image="$tmp/fleece.qcow2"
    w="nbd+unix:///?socket=$tmp/cbw.sock"
    s="nbd+unix:///snapshot?socket=$tmp/cbw.sock"
    timeout 120 "$TESTS_BIN/pit-torture" -F -S 31 "$w"
    cp "$tmp/live.img" "$tmp/ref.img"
    timeout 300 "$TESTS_BIN/pit-torture" -S 31 -w 3 -r 3 -n 1000 \
            -x "nbdcopy --connections=4 '$s' '$tmp/copy.img' &&
                cmp '$tmp/copy.img' '$tmp/ref.img'" \
            "$w" "$s" "$tmp/ref.img"
    ! cmp -s "$tmp/live.img" "$tmp/ref.img" || exit 1
fi
