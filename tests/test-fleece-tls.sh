#!/usr/bin/env bash
# nbdkit-fleece: TLS to the live disk (PSK and X.509).
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is nbdkit --tls=require.  With a PSK (psktool) and
# with X.509 certificates (a CA, a server and a client certificate
# made here with certtool), fleece connects with tls=require, data
# passes both ways, and the link comes back over TLS after the live
# server restarts (the key files are read again, from absolute paths,
# after nbdkit has daemonised and changed directory).  A wrong PSK, a
# client certificate from another CA (the live server verifies its
# clients), and no TLS at all each stop fleece at start-up with a
# message about TLS; bad TLS parameters are refused naming the key.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires
requires_program psktool
requires_program certtool

# start_live ARGS...: nbdkit --tls=require ARGS... memory -> $live_pid
start_live ()
{
    rm -f "$live_sock"
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" --tls=require "$@" \
                 memory 4M
    live_pid="$pid"
}

# refused TEXT ARGS...: fleece ARGS... does not start, saying TEXT.
refused ()
{
    local text="$1" status=0
    shift
    timeout -k 5 "$startup_timeout" \
            nbdkit -f -U "$tmp/refused.sock" "$FLEECE_PLUGIN" "$@" \
            2>"$tmp/refused.log" || status=$?
    cat "$tmp/refused.log"
    failed_at_startup "$status"
    grep -- "$text" "$tmp/refused.log"
}

# check_link: data through fleece, then a restart of the live server
# (same arguments) that the link survives.
check_link ()
{
    timeout 60 nbdsh -u "$fleece_uri" -c '
h.pwrite(b"\x42" * 65536, 4096)
assert h.pread(65536, 4096) == b"\x42" * 65536
assert h.get_size() == 4 << 20
'
    kill -9 "$live_pid"
    while pid_alive "$live_pid"; do sleep 0.1; done
    start_live "$@"
    # The memory disk starts empty again: reads see zeroes.
    timeout 60 nbdsh -u "$fleece_uri" -c '
assert h.pread(4096, 4096) == bytes(4096)
h.pwrite(b"\x43" * 512, 0)
assert h.pread(512, 0) == b"\x43" * 512
'
    grep 'connection lost' "$tmp/fleece.log"
    kill_pid "$fleece_pid"
}

# cd into $tmp, so that relative key paths must be made absolute.
cd "$tmp"

# PSK.
psktool -u alice -p keys.psk
psktool -u alice -p wrong.psk
start_live --tls-psk="$tmp/keys.psk"
fleece_opts=(-v)
start_fleece live="$live_uri" tls=require tls-psk=keys.psk \
             tls-username=alice
check_link --tls-psk="$tmp/keys.psk"
refused 'check tls' live="$live_uri" tls=require tls-psk=wrong.psk \
        tls-username=alice
refused 'requires TLS' live="$live_uri"
kill_pid "$live_pid"

# X.509.
mkdir sdir cdir odir
cat > ca.info <<'INFO'
cn = fleece test CA
ca
cert_signing_key
expiration_days = 2
INFO
cat > server.info <<'INFO'
organization = fleece test
cn = localhost
dns_name = localhost
tls_www_server
signing_key
expiration_days = 2
INFO
cat > client.info <<'INFO'
organization = fleece test
cn = client
tls_www_client
signing_key
expiration_days = 2
INFO
# make_ca DIR: a CA (key in DIR/../DIR-ca-key.pem, cert DIR/ca-cert.pem).
make_ca ()
{
    certtool --generate-privkey --key-type=ecdsa --outfile "$1-ca-key.pem"
    certtool --generate-self-signed --load-privkey "$1-ca-key.pem" \
             --template ca.info --outfile "$1/ca-cert.pem"
}
# make_cert CA DIR NAME: DIR/NAME-{key,cert}.pem signed by CA.
make_cert ()
{
    certtool --generate-privkey --key-type=ecdsa --outfile "$2/$3-key.pem"
    certtool --generate-certificate --load-ca-certificate "$1/ca-cert.pem" \
             --load-ca-privkey "$1-ca-key.pem" \
             --load-privkey "$2/$3-key.pem" --template "$3.info" \
             --outfile "$2/$3-cert.pem"
}
make_ca sdir
cp sdir/ca-cert.pem cdir/
make_cert sdir sdir server
make_cert sdir cdir client
# odir: a client whose CA is another one.
make_ca odir
make_cert odir odir client
# The live server checks our certificate (libnbd does not check the
# server's name on a Unix socket, so the refusal comes from there).
start_live --tls-certificates="$tmp/sdir" --tls-verify-peer
: > "$tmp/fleece.log"
start_fleece live="$live_uri" tls=require tls-certificates=cdir
check_link --tls-certificates="$tmp/sdir" --tls-verify-peer
refused 'check tls' live="$live_uri" tls=require tls-certificates=odir
kill_pid "$live_pid"

# Bad parameters, each named.
refused 'tls-psk=.*missing' live="$live_uri" tls=require \
        tls-psk="$tmp/missing"
refused 'tls-certificates=.*not a directory' live="$live_uri" \
        tls=require tls-certificates=keys.psk
refused 'tls=maybe' live="$live_uri" tls=maybe
refused 'TLS is off' live="$live_uri" tls-psk=keys.psk
refused 'tls=off' live="nbds+unix:///?socket=$live_sock" tls=off
