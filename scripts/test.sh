#!/usr/bin/env bash
# nbdkit-fleece: set everything up and run the test suite.
# SPDX-License-Identifier: BSD-3-Clause
#
#   bash scripts/test.sh
#
# Runs scripts/setup.sh (packages, autoreconf, configure, make), then
# "make -C build check", and prints one line per test with its result.
# Exits with the status of make check.
#
# Environment: as for scripts/setup.sh (BUILD_DIR, CONFIGURE_ARGS,
# JOBS); TESTS="test-a.sh test-b.sh" runs only those tests.

set -euo pipefail

srcdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builddir="${BUILD_DIR:-$srcdir/build}"

bash "$srcdir/scripts/setup.sh"

# Results of earlier runs would be counted too: start clean.
find "$builddir" -name '*.trs' -delete
rm -f "$builddir/tests/test-suite.log"

status=0
if [ -n "${TESTS:-}" ]; then
    make -C "$builddir" check TESTS="$TESTS" || status=$?
else
    make -C "$builddir" check || status=$?
fi

echo
echo "Test results (logs in $builddir/tests/*.log):"
found=false
while read -r trs; do
    found=true
    result="$(sed -n 's/^:test-result: *//p' "$trs" | head -1)"
    printf '  %-6s %s\n' "${result:-?}" "$(basename "$trs" .trs)"
done < <(find "$builddir" -name '*.trs' | sort)
$found || echo "  (no test ran)"
echo "make check exit status: $status"
exit "$status"
