#!/usr/bin/env bash
# nbdkit-fleece: bitmap files record the identity of their disk
# (bitmap-discard-disk-id and the size).  Files of another disk are
# refused at start-up, by a daemonised nbdkit too, with a message
# naming both ids, and are left untouched.  Files of format 1 (no
# identity) are taken over by the disk they are used with.  Bad ids
# are refused.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdsh
requires_program qemu-nbd

bd_dir identity

bd_live_disk 32M

# Checkpoints of the disk "vm1-sda".
bd_start_stack bitmap-discard-disk-id=vm1-sda
ctl_ok "$d/ctl" "checkpoint c1"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"1" * 4096, 0)'
ctl_ok "$d/ctl" "checkpoint c2"
bd_stop_stack

bd_refused 'belongs to the disk with bitmap-discard-disk-id="vm1-sda", but this disk has bitmap-discard-disk-id="vm2-sda"' \
    bitmap-discard-disk-id=vm2-sda
bd_refused 'belongs to the disk with bitmap-discard-disk-id="vm1-sda", but this disk has no id'
# Ids that cannot be one.
bd_refused 'bitmap-discard-disk-id: must have 1 to 63 printable' \
    bitmap-discard-disk-id=
bd_refused 'bitmap-discard-disk-id: must have 1 to 63 printable' \
    "bitmap-discard-disk-id=a b"
bd_refused 'bitmap-discard-disk-id: must have 1 to 63 printable' \
    bitmap-discard-disk-id="$(printf 'x%.0s' $(seq 64))"

# The right id loads.
bd_start_stack bitmap-discard-disk-id=vm1-sda
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:65536 c2:c1:active:0:0"
bd_stop_stack

# Format 1 files (as earlier versions wrote them): version 1, no id.
python3 - "$d"/bm/*.bitmap <<'PYEOF'
import hashlib, struct, sys
for name in sys.argv[1:]:
    f = open(name, "r+b")
    h = bytearray(f.read(4096))
    h[8:12] = struct.pack("<I", 1)
    h[216:280] = bytes(64)
    h[4064:4096] = hashlib.sha256(bytes(h[:4064])).digest()
    f.seek(0); f.write(h)
PYEOF
# They are taken over by the disk now named vm3-sda, and rewritten in
# format 2 with that id.
bd_start_stack bitmap-discard-disk-id=vm3-sda
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:65536 c2:c1:active:0:0"
bd_stop_stack
python3 - "$d"/bm/*.bitmap <<'PYEOF'
import struct, sys
for name in sys.argv[1:]:
    h = open(name, "rb").read(4096)
    assert struct.unpack("<I", h[8:12])[0] == 2, name
    assert h[216:280].rstrip(b"\0") == b"vm3-sda", name
PYEOF
bd_refused 'bitmap-discard-disk-id="vm3-sda", but this disk has bitmap-discard-disk-id="vm1-sda"' \
    bitmap-discard-disk-id=vm1-sda
