#!/usr/bin/env bash
# nbdkit-fleece: run the EXAMPLES of every manual page.
# SPDX-License-Identifier: BSD-3-Clause
#
# The man pages promise examples that work when pasted.  This test
# pastes them.  In the EXAMPLES section of each man/*.pod:
#
#  - verbatim lines starting with "$ " are shell commands (a line
#    ending in "\" continues on the next);
#  - those before the first =head2 set the scene (e.g. start a live
#    disk) and stay up for every example of the page;
#  - each =head2 is itself a command (its lines joined with spaces),
#    run before the "$ " commands below it; the servers it starts are
#    stopped when the next =head2 begins;
#  - an example containing the paragraph
#      =for comment test-docs-examples: skip
#    is not run (for examples that need what a test cannot have, such
#    as a remote host: say why next to it).
#
# Before running, commands are adapted to this build and sandbox:
# paths under /tmp/ and /var/tmp/ move into a private directory (which
# is also the working directory), "--filter=cbw" and friends become
# the built .so files, the plugin name "fleece" becomes the built
# plugin, an nbdkit given no socket gets a private Unix socket (never
# TCP), and an nbdkit that would go into the background runs as a
# background job instead ("-f ... &", so that its messages reach the
# log) with "-P PIDFILE", to be stopped by PID.  Each command must
# exit with status 0.

source ./functions.sh
set -e
set -x

requires_program nbdkit
requires_program nbdcopy
requires_program nbdinfo
requires_program nbdsh
requires_program qemu-img
requires_program qemu-nbd
requires_nbd_python
requires test -f "$FLEECE_PLUGIN"
requires test -f "$CBW_FILTER"

tmp="$(mktemp -d /tmp/fleece-docs.XXXXXX)"

# Stop the servers listed in $tmp/servers-$1 (scope "page" or
# "example"), by PID, and remove the sockets they leave behind.
stop_servers ()
{
    # Cleanup hooks run with a different IFS: set ours.
    local IFS=$' \t\n' list="$tmp/servers-$1" pidfile sock
    [ -f "$list" ] || return 0
    while read -r pidfile sock; do
        if [ -s "$pidfile" ]; then
            kill_pid "$(cat "$pidfile")"
        fi
        rm -f "$pidfile" "$sock"
    done < "$list"
    rm -f "$list"
}
# Hooks run in this order: servers first, then their directory.
cleanup_fn stop_servers example
cleanup_fn stop_servers page
cleanup_fn rm -rf "$tmp"

# Turn one page's EXAMPLES into a list of steps, one per line:
#   SCENE <command> | HEAD <command> | CMD <command>
# with commands already adapted (see above).  Written in Python,
# which the test needs anyway for nbdsh.
extract ()
{
    python3 - "$1" "$tmp" "$2" <<'EOF'
import re, sys

pod, tmp, page = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(pod).read()
m = re.search(r'^=head1 EXAMPLES\s*\n(.*?)(?=^=head1 |\Z)', text,
              re.M | re.S)
if not m:
    sys.exit("%s: no EXAMPLES section" % pod)
paras = re.split(r'\n[ \t]*\n', m.group(1))

filters = {
    "cbw": "CBW_FILTER",
    "ramcache": "RAMCACHE_FILTER",
    "bitmap-discard": "BITMAP_DISCARD_FILTER",
}
pidno = [0]

def adapt(cmd):
    # Private paths: one pass, so $tmp itself is not rewritten.
    cmd = re.sub(r'(?<![\w/.])/(?:var/)?tmp/', tmp + '/', cmd)
    words = cmd.split(' ')
    out = []
    for i, w in enumerate(words):
        f = re.fullmatch(r'--filter=([a-z-]+)', w)
        if f and f.group(1) in filters:
            w = '--filter="$%s"' % filters[f.group(1)]
        elif w == 'fleece' and words[0] == 'nbdkit':
            w = '"$FLEECE_PLUGIN"'
        out.append(w)
    cmd = ' '.join(out)
    if words[0] != 'nbdkit':
        return cmd
    # Tests never listen on TCP: a server given no socket gets a
    # private Unix socket.
    listen = {'-U', '--unix', '-p', '--port', '-s', '--single',
              '--socket-activation', '--vsock'}
    extra = ''
    run = any(w == '--run' or w.startswith('--run=') for w in words)
    if not any(w in listen or w.startswith(('--unix=', '--port='))
               for w in words):
        pidno[0] += 1
        extra += ' -U %s' % ('-' if run else
                             '%s/nbdkit-%s-%d.sock' % (tmp, page, pidno[0]))
    # A server that would go into the background runs instead in the
    # foreground of a background job, so that its messages reach the
    # test log, and records its pid, to be stopped later.
    if not run and '-f' not in words and '--foreground' not in words:
        pidno[0] += 1
        return 'nbdkit -f -P %s/nbdkit-%s-%d.pid%s%s &' % (
            tmp, page, pidno[0], extra, cmd[len('nbdkit'):])
    return 'nbdkit' + extra + cmd[len('nbdkit'):]

steps = []
in_example = False
skip = False
example = []
def end_example():
    if not skip:
        steps.extend(example)
    example.clear()

for p in paras:
    if p.startswith('=head2'):
        end_example()
        in_example = True
        skip = False
        head = ' '.join(p[len('=head2'):].split())
        example.append(('HEAD', adapt(head)))
    elif p.strip() == '=for comment test-docs-examples: skip':
        if not in_example:
            sys.exit("%s: 'skip' outside an example" % pod)
        skip = True
    elif p.startswith((' ', '\t')):
        lines = p.split('\n')
        cmd = None
        for l in lines:
            l = l.strip()
            if cmd is not None:
                cmd += ' ' + l
            elif l.startswith('$ '):
                cmd = l[2:]
            else:
                continue
            if cmd.endswith('\\'):
                cmd = cmd[:-1].rstrip()
                continue
            step = ('CMD' if in_example else 'SCENE',
                    adapt(' '.join(cmd.split())))
            (example if in_example else steps).append(step)
            cmd = None
        if cmd is not None:
            sys.exit("%s: a command ends with a backslash" % pod)
end_example()
for kind, cmd in steps:
    print(kind, cmd)
EOF
}

# Run one adapted command in the sandbox.  Servers it starts are
# remembered under $2 ("page" or "example").
run_step ()
{
    local cmd="$1" scope="$2" pidfile sock status
    pidfile="$(echo "$cmd" | sed -n 's/^nbdkit -f -P \([^ ]*\) .*/\1/p')"
    if [ -n "$pidfile" ]; then
        sock="$(echo "$cmd" | sed -n 's/.* -U \([^ ]*\) .*/\1/p')"
        echo "$pidfile $sock" >> "$tmp/servers-$scope"
    fi
    echo "+ example: $cmd"
    # TMPDIR: default fleece images go to the sandbox too.  Clients
    # write to a pipe, not straight into the log: nbdcopy's "-"
    # destination would overwrite a regular file from its start.
    # (Servers keep the log: they would hold a pipe open.)
    if [ -n "$pidfile" ]; then
        ( cd "$tmp" && TMPDIR="$tmp" \
              timeout -k 10 300 bash -e -o pipefail -c "$cmd" ) </dev/null
    else
        ( cd "$tmp" && TMPDIR="$tmp" \
              timeout -k 10 300 bash -e -o pipefail -c "$cmd" ) </dev/null |
            cat
        status="${PIPESTATUS[0]}"
        if [ "$status" -ne 0 ]; then
            echo "$0: example failed with status $status: $cmd"
            return 1
        fi
    fi
    if [ -n "$pidfile" ]; then
        for _ in $(seq 1 300); do
            [ -s "$pidfile" ] && break
            sleep 0.1
        done
        [ -s "$pidfile" ]
        # nbdkit writes its pidfile before the plugin's and filters'
        # .after_fork (which may create more sockets, such as a control
        # socket), but greets clients only after it: wait for the
        # greeting, then leave with NBD_OPT_ABORT: no export is opened.
        if [ -n "$sock" ]; then
            python3 -c '
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)
s.connect(sys.argv[1])
greeting = b""
while len(greeting) < 18:
    data = s.recv(18 - len(greeting))
    if not data:
        sys.exit("no NBD greeting")
    greeting += data
if greeting[:16] != b"NBDMAGICIHAVEOPT":
    sys.exit("not an NBD newstyle server")
# Client flags (fixed newstyle), then NBD_OPT_ABORT with no data.
s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(">II", 2, 0))
s.recv(4096)
' "$sock"
        fi
    fi
}

nr=0
page=0
for pod in "$abs_top_srcdir"/man/*.pod; do
    echo "== EXAMPLES of $(basename "$pod")"
    # Pidfile names are never reused within a run.
    page=$((page + 1))
    steps="$(extract "$pod" "$page")"
    while read -r -u 3 kind cmd; do
        [ -n "$kind" ] || continue
        case "$kind" in
            SCENE) run_step "$cmd" page ;;
            HEAD)  stop_servers example
                   run_step "$cmd" example
                   nr=$((nr + 1)) ;;
            CMD)   run_step "$cmd" example ;;
            *)     echo "$0: bad step $kind"; exit 99 ;;
        esac
    done 3<<< "$steps"
    stop_servers example
    stop_servers page
done

# Every page has examples, so something must have run.
test "$nr" -gt 0

# The servers are gone: the fleece images they created by default must
# be gone too (nbdkit-cbw-filter(1), FILES).
leftover="$(find "$tmp" -maxdepth 1 -name 'nbdkit-cbw-*.qcow2')"
if [ -n "$leftover" ]; then
    echo "$0: fleece images left behind: $leftover"
    exit 1
fi
echo "$0: ran $nr examples"
