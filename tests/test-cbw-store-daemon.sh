#!/usr/bin/env bash
# nbdkit-fleece: store checks refuse a daemonised start.
# SPDX-License-Identifier: BSD-3-Clause
#
# nbdkit without -f forks into the background once it is ready; a
# check that runs after that cannot change its exit status.  Every
# store check that can refuse a start must run before: started
# daemonised (-P, no -f), nbdkit must exit non-zero with the message,
# and leave no server behind, for
# - cbw-ram larger than the machine's memory (1E);
# - cbw-image in a directory that does not exist;
# - cbw-store naming a server that is not there.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_live 4M

# refused MESSAGE ARGS...: a daemonised start with ARGS fails with
# MESSAGE on stderr.
refused ()
{
    local msg="$1" status=0
    shift
    rm -f "$tmp/cbw.pid" "$tmp/cbw.sock" "$tmp/err"
    timeout -k 5 "$startup_timeout" \
            nbdkit -P "$tmp/cbw.pid" -U "$tmp/cbw.sock" \
            --filter="$CBW_FILTER" "$FLEECE_PLUGIN" live="$live_uri" \
            "$@" 2>"$tmp/err" || status=$?
    cat "$tmp/err"
    if [ -s "$tmp/cbw.pid" ]; then
        # A server was left behind: stop it, then fail.
        kill_pid "$(cat "$tmp/cbw.pid")"
        echo "$0: nbdkit $* daemonised instead of refusing" >&2
        exit 1
    fi
    failed_at_startup "$status"
    grep -F -- "$msg" "$tmp/err"
}

refused "cbw-ram=1152921504606846976 is more than this machine's memory" \
        cbw-ram=1E
refused "cannot create the fleece image in $tmp/none" \
        cbw-image="$tmp/none/fleece.qcow2"
refused "cbw-store=nbd+unix:///?socket=$tmp/none.sock: cannot connect" \
        cbw-store="nbd+unix:///?socket=$tmp/none.sock"
