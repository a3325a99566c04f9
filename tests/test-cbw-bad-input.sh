#!/usr/bin/env bash
# nbdkit-fleece: bad parameters and environments give a clear error,
# never a crash or a server that runs anyway.
# SPDX-License-Identifier: BSD-3-Clause
#
# Each case runs nbdkit in the foreground under timeout: it must exit
# with an error status (not 124, the timeout, and not a signal) and
# its stderr must name the bad parameter (or the bad value).  An
# existing cbw-image file is refused and left untouched (checksum).
# Finally a working server refuses unknown export names and keeps
# running.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_live 4M

# bad PATTERN ARGS...: nbdkit ARGS must fail, stderr matching PATTERN.
# Every case runs; the failures are listed at the end.
failures=()
bad ()
{
    local pattern="$1" r=0
    shift
    rm -f "$tmp/bad.sock"
    timeout -k 5 "$startup_timeout" nbdkit -f -U "$tmp/bad.sock" "$@" \
            </dev/null >"$tmp/out" 2>"$tmp/err" || r=$?
    cat "$tmp/out" "$tmp/err"
    if ! failed_at_startup "$r"; then
        failures+=("nbdkit $*: exit status $r, expected an error")
    elif ! grep -E -- "$pattern" "$tmp/err"; then
        failures+=("nbdkit $*: the error does not mention $pattern")
    fi
}

cbw=(--filter="$CBW_FILTER" "$FLEECE_PLUGIN")
ok_live=live="$live_uri"
img=cbw-image="$tmp/fleece.qcow2"

# The fleece plugin's live=.
bad 'live' "${cbw[@]}" "$img"
bad 'live' "$FLEECE_PLUGIN"
bad 'live|cannot connect|nosuch' "${cbw[@]}" "$img" \
    live="nbd+unix:///?socket=$tmp/nosuch.sock"
bad 'live|cannot connect|nosuch' "$FLEECE_PLUGIN" \
    live="nbd+unix:///?socket=$tmp/nosuch.sock"
bad 'live|URI|uri' "$FLEECE_PLUGIN" live="not a uri"

# cbw-cluster-size: power of 2, 4K..16M.
for v in 3000 65537 2K 1 0 32M 1G -4096 banana; do
    bad 'cbw-cluster-size' "${cbw[@]}" "$ok_live" "$img" cbw-cluster-size=$v
done
# cbw-on-error, cbw-timeout, cbw-linger, cbw-keep-image.
for v in foo break break-snapshots BREAK-WRITE ''; do
    bad 'cbw-on-error' "${cbw[@]}" "$ok_live" "$img" cbw-on-error="$v"
done
for v in -1 abc 1s 0x '' nan inf -0.5; do
    bad 'cbw-timeout' "${cbw[@]}" "$ok_live" "$img" cbw-timeout="$v"
    bad 'cbw-linger' "${cbw[@]}" "$ok_live" "$img" cbw-linger="$v"
done
bad 'cbw-keep-image' "${cbw[@]}" "$ok_live" "$img" \
    cbw-keep-image=maybe

# Programs that are not there.
bad 'cbw-qemu-nbd|/nonexistent' "${cbw[@]}" "$ok_live" "$img" \
    cbw-qemu-nbd=/nonexistent/qemu-nbd
bad 'cbw-qemu-img|/nonexistent' "${cbw[@]}" "$ok_live" "$img" \
    cbw-qemu-img=/nonexistent/qemu-img
! test -e "$tmp/fleece.qcow2" || exit 1

# An existing image is refused and left alone: a file of our own,
# and a real qcow2.
for kind in raw qcow2; do
    rm -f "$tmp/existing"
    if [ $kind = raw ]; then
        printf 'precious data\n' > "$tmp/existing"
    else
        qemu-img create -q -f qcow2 "$tmp/existing" 4M
    fi
    sum="$(md5sum < "$tmp/existing")"
    stat -c '%s %Y' "$tmp/existing" > "$tmp/stat1"
    bad 'cbw-image|exists' "${cbw[@]}" "$ok_live" \
        cbw-image="$tmp/existing"
    [ "$sum" = "$(md5sum < "$tmp/existing")" ]
    stat -c '%s %Y' "$tmp/existing" | cmp - "$tmp/stat1"
done

# A store that cannot be reached, or is too small.
bad 'cbw-store|connect|nosuch' "${cbw[@]}" "$ok_live" \
    cbw-store="nbd+unix:///?socket=$tmp/nosuch.sock"
start_nbdkit -P "$tmp/small.pid" -U "$tmp/small.sock" memory 1M
bad 'cbw-store|size|small' "${cbw[@]}" "$ok_live" \
    cbw-store="nbd+unix:///?socket=$tmp/small.sock"

if [ ${#failures[@]} -gt 0 ]; then
    printf "FAILED: %s\n" "${failures[@]}" >&2
    exit 1
fi

# Unknown export names are refused; the server keeps serving.
start_cbw
for name in nosuch snap snapshot/ 'cbw-status2' '../snapshot'; do
    if timeout 60 nbdsh -u "nbd+unix:///$name?socket=$sock" -c 'pass'; then
        echo "$0: export \"$name\" was not refused" >&2
        exit 1
    fi
done
kill -0 "$cbw_pid"
[ "$(status_field state)" = '"none"' ]

# Relative program paths are taken from the directory nbdkit was
# started in, although a daemonised nbdkit changes to / before it
# starts them.
kill_pid "$cbw_pid"
mkdir "$tmp/tools"
ln -s "$(command -v qemu-nbd)" "$tmp/tools/qemu-nbd"
ln -s "$(command -v qemu-img)" "$tmp/tools/qemu-img"
pushd "$tmp"
start_cbw cbw-qemu-nbd=tools/qemu-nbd cbw-qemu-img=./tools/qemu-img
popd
timeout 60 nbdsh -u "$snap_uri" -c 'assert h.get_size() > 0'
[ "$(status_field state)" = '"none"' ] || wait_status state '"none"'
