#!/usr/bin/env bash
# nbdkit-fleece: extents through the ramcache filter.
# SPDX-License-Identifier: BSD-3-Clause
#
# Below does not know about data held in RAM, so blocks held in the
# cache are reported as data; the rest is what below says.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version
requires_program nbdinfo
requires nbdinfo --help
requires_nbd_python

out="$(mktemp /tmp/fleece-test.XXXXXX.out)"
cleanup_fn rm -f "$out"

# 100 bytes at 70000 lie in the block [64K, 128K): the whole block is
# data, the rest of the memory disk a hole.
nbdkit -U - --filter="$RAMCACHE_FILTER" memory 1M ramcache-size=1M \
       --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 100, 70000)"
              nbdinfo --map "$uri"' > "$out"
cat "$out"
diff -u - "$out" <<'END'
         0       65536    3  hole,zero
     65536       65536    0  data
    131072      917504    3  hole,zero
END
