# nbdkit-fleece: helpers for the nbdkit-fleece-ctl tests (sourced).
# SPDX-License-Identifier: BSD-3-Clause

source "$abs_top_srcdir/tests/test-bitmap-discard-functions.sh"

# start_stack DIR SIZE [ARGS...]: a live disk of SIZE in memory
# (DIR/live.sock) and the bitmap-discard + cbw stack in front of it
# (DIR/sock), with bitmap-dir=DIR/bm and bitmap-control=DIR/ctl.
# Register "cleanup_fn stop_stack DIR" before calling it.
start_stack ()
{
    local d="$1" size="$2"
    shift 2
    start_live_disk "$d/live.sock" "$d/live.pid" "$size"
    start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
                 --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
                 "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
                 bitmap-dir="$d/bm" bitmap-control="$d/ctl" "$@"
    wait_for "$d/ctl"
}

# expect STATUS PATTERN CMD ARGS...: run CMD, which must exit with
# STATUS and, unless PATTERN is empty, print a line matching PATTERN
# (grep -E) on stderr.  Its stdout is left in $out, stderr in $err.
expect ()
{
    local want="$1" pattern="$2" status=0
    shift 2
    out="$("$@" 2> "$tmp_err")" || status=$?
    err="$(cat "$tmp_err")"
    echo "$* -> status $status"
    echo "stdout: $out"
    echo "stderr: $err"
    if [ "$status" -ne "$want" ]; then
        echo "$0: expected exit status $want from: $*" >&2
        return 1
    fi
    if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$tmp_err"; then
        echo "$0: expected '$pattern' on stderr from: $*" >&2
        return 1
    fi
}
tmp_err="$(mktemp /tmp/tool-err.XXXXXX)"
cleanup_fn rm -f "$tmp_err"

# jq_py EXPR: evaluate the Python expression EXPR with r bound to the
# JSON object in $out.
jq_py ()
{
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' \
            "$out" "$1"
}
