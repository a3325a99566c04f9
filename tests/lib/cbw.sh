# nbdkit-fleece: helpers for the cbw tests (not a test: the
# test-cbw-*.sh scripts source it after functions.sh).
# SPDX-License-Identifier: BSD-3-Clause
#
#   cbw_requires            skip unless the stack and its tools work
#   tmp                     a private directory, removed at exit
#   live_sock, live_uri     where the live disk is served ($tmp/live.sock)
#   start_live SIZE [FILE]  the live disk (memory, or file FILE)
#                           -> $live_sock $live_uri $live_pid
#   start_parking_live FILE TENTHS
#                           a 1 MiB live disk ($tmp/disk.img, all 0x11,
#                           nbdkit eval) on which a read of exactly
#                           4097 bytes creates $tmp/r-started, then
#                           waits until FILE exists (at most TENTHS
#                           tenths of a second) -> as start_live
#   start_cbw ARGS...       nbdkit --filter=cbw fleece live=$live_uri ARGS
#                           -> $sock $writer_uri $snap_uri $status_uri
#                              $cbw_pid (a cbw-image in $tmp by default,
#                              none with cbw_default_image=1)
#   cbw_status              print the cbw-status JSON line
#   status_field NAME       print one field of it
#   wait_status NAME VALUE  wait (at most 60 s) until the field is VALUE
#   allocated FILE          bytes allocated to FILE (st_blocks * 512)
#   hold_snapshot [URI]     a background client keeps "snapshot" open
#                           (so the PIT stays) until release_snapshot;
#                           waits until its connection is up
#   release_snapshot        close it (cleanly) and wait for it
#   start_failing_store     a 4M fleece store (for cbw-store=) whose
#                           writes and zeroes fail with EIO while the
#                           file $tmp/fail exists -> $store_sock

cbw_requires ()
{
    requires nbdkit --filter="$CBW_FILTER" "$FLEECE_PLUGIN" --version
    requires_program qemu-img
    requires_program qemu-nbd
    requires_program nbdsh
    requires_nbd_python
}

tmp="$(mktemp -d /tmp/fleece-test.XXXXXX)"
cleanup_fn rm -rf "$tmp"

# Where the live disk is served (by start_live, or by the test).
live_sock="$tmp/live.sock"
live_uri="nbd+unix:///?socket=$live_sock"

start_live ()
{
    live_sock="$tmp/live.sock"
    live_uri="nbd+unix:///?socket=$live_sock"
    rm -f "$live_sock"
    start_live_disk "$live_sock" "$tmp/live.pid" "$1" "$2"
    live_pid="$pid"
}

start_parking_live ()
{
    live_sock="$tmp/live.sock"
    live_uri="nbd+unix:///?socket=$live_sock"
    rm -f "$live_sock" "$tmp/r-started"
    cat > "$tmp/pread.sh" <<SH
#!/bin/bash
# \$1=pread \$2=handle \$3=count \$4=offset
if [ "\$3" = 4097 ]; then
    touch "$tmp/r-started"
    for i in \$(seq 1 $2); do
        [ -e "$1" ] && break
        sleep 0.1
    done
fi
dd if="$tmp/disk.img" iflag=skip_bytes,count_bytes skip="\$4" \\
   count="\$3" status=none
SH
    cat > "$tmp/pwrite.sh" <<SH
#!/bin/bash
dd of="$tmp/disk.img" oflag=seek_bytes conv=notrunc seek="\$4" status=none
SH
    chmod +x "$tmp/pread.sh" "$tmp/pwrite.sh"
    /usr/bin/python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\x11" * (1 << 20))' "$tmp/disk.img"
    nbdkit_cmd="$plain_nbdkit" \
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" eval \
                 thread_model='echo parallel' get_size='echo 1048576' \
                 pread="$tmp/pread.sh"' "$@"' \
                 pwrite="$tmp/pwrite.sh"' "$@"' \
                 can_write='exit 0' flush='exit 0'
    live_pid="$pid"
}

start_cbw ()
{
    local image=cbw-image="$tmp/fleece.qcow2" a
    for a in "$@"; do
        case "$a" in cbw-image=*|cbw-store=*) image= ;; esac
    done
    # cbw_default_image=1: let cbw pick its default image file.
    [ -z "$cbw_default_image" ] || image=
    sock="$tmp/cbw.sock"
    writer_uri="nbd+unix:///?socket=$sock"
    snap_uri="nbd+unix:///snapshot?socket=$sock"
    status_uri="nbd+unix:///cbw-status?socket=$sock"
    rm -f "$sock"
    start_nbdkit -P "$tmp/cbw.pid" -U "$sock" \
                 --filter="$CBW_FILTER" "$FLEECE_PLUGIN" live="$live_uri" \
                 $image "$@"
    cbw_pid="$pid"
}

cbw_status ()
{
    timeout 60 nbdsh -u "$status_uri" \
            -c 'print(h.pread(h.get_size(), 0).decode().strip())'
}

status_field ()
{
    cbw_status |
        python3 -c 'import json, sys
v = json.load(sys.stdin)[sys.argv[1]]
print(json.dumps(v))' "$1"
}

wait_status ()
{
    local i
    for i in $(seq 1 600); do
        [ "$(status_field "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    echo "$0: cbw-status $1 did not become $2: $(cbw_status)" >&2
    return 1
}

allocated ()
{
    echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") ))
}

# wait_allocated_ge FILE BYTES: a writer's request returns before its
# copy's store write lands (copy.c, "Detached publish"), so the fleece
# image grows shortly after; wait up to 30 s for FILE to take BYTES.
wait_allocated_ge ()
{
    local i
    for i in $(seq 1 300); do
        [ "$(allocated "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    echo "$0: $1 takes $(allocated "$1") bytes, fewer than $2" >&2
    return 1
}

hold_snapshot ()
{
    local uri="${1:-$snap_uri}" i
    rm -f "$tmp/hold.fifo" "$tmp/hold.up"
    mkfifo "$tmp/hold.fifo"
    # nbdsh connects, says so, and waits for EOF on its stdin.
    timeout 300 nbdsh -u "$uri" \
            -c "open('$tmp/hold.up', 'w').close()" \
            -c 'import sys; sys.stdin.read()' <"$tmp/hold.fifo" &
    hold_pid=$!
    track_pid "$hold_pid"
    exec {hold_fd}>"$tmp/hold.fifo"
    for i in $(seq 1 600); do
        [ -e "$tmp/hold.up" ] && return 0
        kill -0 "$hold_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$0: hold_snapshot: the holder did not connect" >&2
    return 1
}

release_snapshot ()
{
    exec {hold_fd}>&-
    wait "$hold_pid"
}

start_failing_store ()
{
    store_sock="$tmp/store.sock"
    start_nbdkit -P "$tmp/store.pid" -U "$store_sock" \
                 --filter=error memory 4M \
                 error-pwrite=EIO error-pwrite-rate=100% \
                 error-pwrite-file="$tmp/fail" \
                 error-zero=EIO error-zero-rate=100% \
                 error-zero-file="$tmp/fail"
}
