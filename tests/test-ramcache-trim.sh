#!/usr/bin/env bash
# nbdkit-fleece: data trimmed before write-back never reaches below.
# SPDX-License-Identifier: BSD-3-Clause
#
# The log filter below the ramcache filter records every request that
# reaches the plugin.  Blocks written and trimmed while still in RAM
# must show no Write (and no Trim) there, and count as dropped in the
# statistics; a block written below (by a flush) and then trimmed must
# be trimmed below.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version
requires nbdkit --filter=log null --version
requires_nbd_python

log="$(mktemp /tmp/fleece-test.XXXXXX.log)"
debug="$(mktemp /tmp/fleece-test.XXXXXX.debug)"
cleanup_fn rm -f "$log" "$debug"
rm -f "$log"

# 64K blocks (the default).  The cache (4M) is far larger than what is
# written, so nothing is written back until the flush.
#
#   [0, 192K)      written (unaligned at the end), then the whole
#                  blocks [0, 128K) trimmed: dropped, never below;
#                  the partial block [128K, 192K) is kept.
#   [1M, 1M+64K)   written, flushed (now below), then trimmed: the
#                  trim must reach below.
nbdkit -v -U - --filter="$RAMCACHE_FILTER" --filter=log memory 4M \
       ramcache-size=4M logfile="$log" \
       --run 'nbdsh -u "$uri" -c "
h.pwrite(b\"a\" * (128 * 1024 + 1000), 0)
h.trim(128 * 1024 + 500, 0)
assert h.pread(500, 128 * 1024 + 500) == b\"a\" * 500
h.pwrite(b\"b\" * 65536, 1048576)
h.flush()
h.trim(65536, 1048576)
"' 2>"$debug"

cat "$log"
grep "ramcache cleanup:" "$debug"

# Only the partial block at 128K and the block at 1M were written
# below.
writes="$(grep -c ' Write ' "$log")"
grep ' Write id=[0-9]* offset=0x20000 count=0x10000 ' "$log"
grep ' Write id=[0-9]* offset=0x100000 count=0x10000 ' "$log"
test "$writes" -eq 2

# Only the block at 1M was trimmed below.
grep ' Trim ' "$log" > "$log.trims" || :
cleanup_fn rm -f "$log.trims"
cat "$log.trims"
test "$(wc -l < "$log.trims")" -eq 1
grep ' Trim id=[0-9]* offset=0x100000 count=0x10000 ' "$log.trims"

# The statistics agree: 128K dropped, 128K written below.
grep "ramcache cleanup:.* written_below=131072 dropped=131072 " "$debug"
