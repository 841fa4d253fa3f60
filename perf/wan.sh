#!/usr/bin/env bash
# perf/wan.sh — wgbroker's TCP against the Linux kernel's over a WAN (issue 19): one-way delay and
# per-datagram loss between a real wireguard-go vendor side and (a) wgbroker, (b) the reference
# path users deploy today (wireguard-go + kernel TCP + an nginx reverse proxy) with the kernel's
# congestion control set to CUBIC and to BBR. One interleaved run, one table of times and ratios.
#
#   perf/wan.sh [-h]
#   QUICK=1 perf/wan.sh                                 (smoke: 15 ms x 1 %, 2 MiB; about a minute)
#   DELAYS="15" LOSSES="0 0.1 1" perf/wan.sh
#   DELAYS="2 15 50" LOSSES="0 0.1 0.5 1 3" OUT=/tmp/wan.json perf/wan.sh
#   BIN=/path/to/wgbroker ROUNDS=3 perf/wan.sh
#
# Environment: DELAYS (one-way delay in ms, each direction; "2 15 50"), LOSSES (per-datagram loss
# in %, each direction; "0 0.1 1 3"), CASES ("download upload small"), SIDES ("wgbroker cubic bbr"),
# ROUNDS (1), SIZE_MIB (download and upload size, 10), TIMEOUT (s a transfer may take before it
# is reported as "not done", 60), DUR (s per small-GET run, 5), SMALL_CONNS (wrk connections, 4),
# JITTER (ms, 0), SEED (1; a case's seed is SEED + its number, the same for every side), MTU
# (tunnel MTU of both brokers and the vendor, 1420), VENDOR_CC (congestion control of the vendor's
# kernel TCP while wgbroker is measured, cubic), RELAY_NICE (nice value of the relay, -5: the
# path should not wait for a busy CPU more than the endpoints do; its lateness is recorded), BIN (target/release/wgbroker; copied first),
# RELAY_BIN (the binary whose hidden `relay` command is the WAN; default BIN, or
# target/release/wgbroker when BIN has none), EXTRA_TOML (appended to wgbroker's config), OUT (write
# the JSON there), KEEP_LOGS=dir (copy configs, relay and curl output there), QUICK=1 (DELAYS=15
# LOSSES=1 SIZE_MIB=2 TIMEOUT=20 DUR=2 unless set).
#
# Topology (created here, removed on every exit path; root, no kernel WireGuard, no netem):
#   vendor ns V:  wireguard-go (one interface, two peers) + curl + wrk              10.77.0.1
#       | veth 10.214.0.1 <-> 10.214.0.2
#   relay ns R:   `wgbroker relay` (no IP forwarding: nothing crosses R but through it), two pipes:
#                 "wgbroker" 10.214.0.2:40001 <-> 10.215.0.1:51820
#                 "kernel"   10.214.0.2:40002 <-> 10.215.0.1:51821
#                 each direction: one-way delay DELAY (+-JITTER, order kept), loss LOSS % drawn
#                 per datagram from its own seeded stream, queue limit 32 MiB (its drops counted
#                 apart); restarted for every run with that run's delay, loss and seed
#       | veth 10.215.0.1 <-> 10.215.0.2
#   broker ns B:  (a) wgbroker run (boringtun + smoltcp + allowlist)   10.77.0.2:80, UDP 51830
#                 (b) wireguard-go (TUN) + kernel TCP + nginx proxy      10.77.0.3:80, UDP 51831
#                 upstream: nginx on 127.0.0.1:8080 (files/small.json, files/big.bin of SIZE_MIB,
#                 /upload reads the whole body and answers its length)
#
# Sides: "wgbroker"; "cubic" and "bbr" = the reference path with net.ipv4.tcp_congestion_control
# set to that algorithm in the broker AND the vendor namespace (a namespace has its own; an
# accepted socket takes the namespace's default when it is accepted: nginx does not set
# TCP_CONGESTION; the host must allow the algorithm for namespaces: the script adds it to
# net.ipv4.tcp_allowed_congestion_control for the run and restores the list). A download's sender is the broker side (wgbroker's smoltcp; the reference's
# nginx proxy socket); an upload's sender is the vendor's kernel TCP (curl), so for uploads the
# sides differ in the receiver (and "bbr" also in the sender); while wgbroker is measured the
# vendor namespace uses VENDOR_CC. The algorithm in use is checked with `ss -ti` before measuring.
#
# Cases, each at every DELAYS x LOSSES, interleaved: for every (delay, loss, case) the sides run
# one after the other, in the order of SIDES in odd rounds and reversed in even rounds:
#   download  curl GET /proxy/http://127.0.0.1:8080/files/big.bin (a new connection; time_total)
#   upload    curl POST /proxy/http://127.0.0.1:8080/upload, SIZE_MIB body (`Expect:` off)
#   small     wrk -t1 -cSMALL_CONNS -dDUR keep-alive GET of files/small.json: p50/p99 latency
# A transfer still running after TIMEOUT s is "not done" (its bytes so far are recorded); ratios
# with it are bounds. Per run the relay's counters (datagrams offered and lost per direction, any
# other drop, how late it sent) and the UDP receive-buffer drops of all three namespaces are
# recorded: the loss a run saw is printed next to the one asked for.
#
# Output: one line per run as it finishes, then per case a table: seconds (or p50/p99 ms) per side
# (median over ROUNDS) and ratio = reference / wgbroker (above 1: wgbroker faster; issue 19's
# target is >= 0.8, i.e. wgbroker within 1.25x of the kernel). OUT=file gets the JSON.
#
# Time: every transfer is bounded by TIMEOUT, every small-GET run by DUR; the script prints its
# upper bound at start. With today's wgbroker (smoltcp 0.14: 1 s minimum RTO, go-back-N) much of a
# run is its "not done after 60 s" downloads: on the 2-vCPU development VM (loaded by other builds)
# LOSSES="0 0.1 0.5 1 3" took 30 min (bound 99 min), so the default set (3 delays x 4 losses x
# 3 cases x 3 sides, ROUNDS=1) takes about 25 min (bound about 80 min). QUICK=1 took 43 s.
#
# What it does not control: the machine may be shared (load average printed; the busy cores of
# the whole host during each run are recorded); there is no bandwidth limit on the path (the
# relay forwards as fast as the CPU lets it, so a loss-free run measures CPU as much as TCP);
# WireGuard handshakes cross the lossy path too (a lost one is retried after 5 s; data keeps
# flowing on the old session meanwhile); the relay restarts between runs, so keep-alive state
# survives but nothing is in flight.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh

for a in "$@"; do
  case $a in
    -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: perf/wan.sh   (settings by environment, see --help)" >&2; exit 64 ;;
  esac
done

if [ "${QUICK:-0}" = 1 ]; then
  DELAYS=${DELAYS:-15}; LOSSES=${LOSSES:-1}; SIZE_MIB=${SIZE_MIB:-2}; TIMEOUT=${TIMEOUT:-20}; DUR=${DUR:-2}
fi
DELAYS=${DELAYS:-2 15 50}
LOSSES=${LOSSES:-0 0.1 1 3}
CASES=${CASES:-download upload small}
SIDES=${SIDES:-wgbroker cubic bbr}
ROUNDS=${ROUNDS:-1}
SIZE_MIB=${SIZE_MIB:-10}
TIMEOUT=${TIMEOUT:-60}
DUR=${DUR:-5}
SMALL_CONNS=${SMALL_CONNS:-4}
JITTER=${JITTER:-0}
SEED=${SEED:-1}
MTU=${MTU:-1420}
RELAY_NICE=${RELAY_NICE:--5}
VENDOR_CC=${VENDOR_CC:-cubic}
BIN=${BIN:-target/release/wgbroker}

for v in ROUNDS SIZE_MIB TIMEOUT DUR SMALL_CONNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then echo "$v must be a positive integer" >&2; exit 64; fi
done
[ "$SIZE_MIB" -le 1024 ] || { echo "SIZE_MIB must be at most 1024" >&2; exit 64; }
if [ "$TIMEOUT" -gt 3600 ] || [ "$DUR" -gt 600 ]; then echo "TIMEOUT at most 3600, DUR at most 600" >&2; exit 64; fi
if ! [[ $RELAY_NICE =~ ^-?[0-9]+$ ]] || [ "$RELAY_NICE" -lt -20 ] || [ "$RELAY_NICE" -gt 19 ]; then
  echo "RELAY_NICE must be -20..19" >&2; exit 64
fi
[[ $SEED =~ ^[0-9]{1,15}$ ]] || { echo "SEED must be a whole number" >&2; exit 64; }
if ! [[ $MTU =~ ^[0-9]+$ ]] || [ "$MTU" -lt 1280 ] || [ "$MTU" -gt 1420 ]; then echo "MTU must be 1280..1420" >&2; exit 64; fi
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
below() { awk -v x="$1" -v m="$2" 'BEGIN { exit !(x < m) }'; }   # X < MAX
for d in $DELAYS; do
  if ! num "$d" || ! below "$d" 10001; then echo "DELAYS: $d is not a delay in ms (0..10000)" >&2; exit 64; fi
done
for l in $LOSSES; do
  if ! num "$l" || ! below "$l" 100; then echo "LOSSES: $l is not a loss in % (0..<100)" >&2; exit 64; fi
done
num "$JITTER" || { echo "JITTER must be a number of ms" >&2; exit 64; }
for c in $CASES; do case $c in download|upload|small) ;; *) echo "CASES: unknown case $c" >&2; exit 64 ;; esac; done
for s in $SIDES; do case $s in wgbroker|cubic|bbr) ;; *) echo "SIDES: unknown side $s" >&2; exit 64 ;; esac; done
case $VENDOR_CC in cubic|bbr|reno) ;; *) echo "VENDOR_CC must be cubic, bbr or reno" >&2; exit 64 ;; esac
if [ -z "$DELAYS" ] || [ -z "$LOSSES" ] || [ -z "$CASES" ] || [ -z "$SIDES" ]; then
  echo "DELAYS, LOSSES, CASES and SIDES must not be empty" >&2; exit 64
fi
perf_require wireguard-go wg wrk nginx curl ip ss awk sysctl

# BBR: built in, or the tcp_bbr module (loading a module is not undone at exit; say so).
if [[ " $SIDES $VENDOR_CC " == *" bbr "* ]] && ! grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control; then
  if command -v modprobe >/dev/null && modprobe tcp_bbr 2>/dev/null; then
    echo "note: loaded the tcp_bbr module (it stays loaded)"
  fi
  grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control ||
    { echo "this kernel has no BBR (tcp_available_congestion_control: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)); set SIDES without bbr" >&2; exit 1; }
fi

TAG=$$
V=wgwv$TAG; R=wgwr$TAG; B=wgwb$TAG      # namespaces
VWG=wgwv$TAG; BWG=wgwb$TAG              # wireguard-go interfaces (names unique machine-wide)
TMP=$(mktemp -d /tmp/wgwan.XXXXXX)
chmod 755 "$TMP"                        # nginx workers run unprivileged and must read the files
perf_traps
keep_logs() { # configs, logs, results and every run's relay counters; not the binaries and files
  [ -n "${KEEP_LOGS:-}" ] || return 0
  mkdir -p "$KEEP_LOGS" &&
    tar -C "$TMP" --exclude=./www --exclude=./wgbroker --exclude=./relay -cf - . 2>/dev/null | tar -C "$KEEP_LOGS" -xf - 2>/dev/null
  true
}
die() { echo "ABORT: $*" >&2; keep_logs; exit 1; }

cp "$BIN" "$TMP/wgbroker"               # the binary may be rebuilt under us
WGB=$TMP/wgbroker
"$WGB" genkey >/dev/null 2>&1 || die "$BIN does not run as wgbroker ('wgbroker genkey' failed)"
RELAY_BIN=${RELAY_BIN:-}
if [ -z "$RELAY_BIN" ]; then
  if "$WGB" relay --help >/dev/null 2>&1; then RELAY_BIN=$BIN; else RELAY_BIN=target/release/wgbroker; fi
fi
[ -x "$RELAY_BIN" ] || die "no relay binary at $RELAY_BIN"
cp "$RELAY_BIN" "$TMP/relay"
"$TMP/relay" relay --help >/dev/null 2>&1 || die "$RELAY_BIN has no 'relay' command: set RELAY_BIN to a wgbroker built from this tree"
perf_facts
BIG_SIZE=$((SIZE_MIB << 20))

n_words() { echo "$1" | wc -w; }
NGROUPS=$(( $(n_words "$DELAYS") * $(n_words "$LOSSES") * ROUNDS ))
NSIDES=$(n_words "$SIDES")
NXFER=0; NSMALL=0
for c in $CASES; do if [ "$c" = small ]; then NSMALL=$((NGROUPS * NSIDES)); else NXFER=$((NXFER + NGROUPS * NSIDES)); fi; done
EST_MAX=$((25 + NXFER * (TIMEOUT + 2) + NSMALL * (DUR + 3)))
echo "== wgbroker vs the kernel's TCP over a WAN (wireguard-go vendor, one UDP relay) — $(date -u +%FT%TZ)"
echo "binary: $BIN ($BIN_VERSION, sha256 $BIN_SHA; repo $GIT_REV, $GIT_DIRTY uncommitted src changes); relay: $RELAY_BIN"
echo "host: $NCPU CPUs ($CPU_MODEL), kernel $(uname -r), load average $LOAD0"
echo "tools: wireguard-go $WG_VERSION, $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(curl --version | head -1 | cut -d' ' -f1-2), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "runs: delays {$DELAYS} ms x losses {$LOSSES} % x cases {$CASES} x sides {$SIDES} x $ROUNDS round(s);" \
  "$SIZE_MIB MiB transfers (timeout ${TIMEOUT}s), small GET wrk -t1 -c$SMALL_CONNS -d${DUR}s; jitter ${JITTER} ms; MTU $MTU; seed $SEED"
echo "upper bound on the time: ~${EST_MAX}s (every transfer and run bounded); usually far less"
perf_load_warning
T_START=$(date +%s)

# A namespace other than the host's may only make an algorithm its default when the host lists it
# in net.ipv4.tcp_allowed_congestion_control (EPERM otherwise): add the missing ones for the run
# (host-wide; the old list is put back on every exit path).
ALLOWED=$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
want_allowed=$ALLOWED
for cc in $SIDES $VENDOR_CC; do
  [ "$cc" = wgbroker ] && continue
  [[ " $want_allowed " == *" $cc "* ]] || want_allowed="$want_allowed $cc"
done
if [ "$want_allowed" != "$ALLOWED" ]; then
  perf_sysctl net.ipv4.tcp_allowed_congestion_control "$want_allowed"
  echo "net.ipv4.tcp_allowed_congestion_control: '$want_allowed' for the run (host value '$ALLOWED' restored at exit)"
fi

# ---------------------------------------------------------------- namespaces, tunnel, relay
perf_ns "$V"; perf_ns "$R"; perf_ns "$B"
perf_veth "$V" "wva$TAG" 10.214.0.1/30 "$R" "wvr$TAG" 10.214.0.2/30
perf_veth "$R" "wrb$TAG" 10.215.0.1/30 "$B" "wbr$TAG" 10.215.0.2/30
ip netns exec "$R" sysctl -q -w net.ipv4.ip_forward=0   # the default in a new namespace; make sure
TCP_RMEM=$(ip netns exec "$B" sysctl -n net.ipv4.tcp_rmem | tr -s '\t ' ' ')
TCP_WMEM=$(ip netns exec "$B" sysctl -n net.ipv4.tcp_wmem | tr -s '\t ' ' ')
echo "kernel TCP buffers in the namespaces: tcp_rmem $TCP_RMEM, tcp_wmem $TCP_WMEM (autotuned up to the last figure)"

VKEY=$("$WGB" genkey); VPUB=$(echo "$VKEY" | "$WGB" pubkey)   # vendor gateway
AKEY=$("$WGB" genkey); APUB=$(echo "$AKEY" | "$WGB" pubkey)   # (a) wgbroker
NKEY=$("$WGB" genkey); NPUB=$(echo "$NKEY" | "$WGB" pubkey)   # (b) reference wireguard-go
( umask 077; echo "$VKEY" >"$TMP/v.key"; echo "$NKEY" >"$TMP/n.key" )

perf_wg_up "$V" "$VWG"
ip netns exec "$V" wg set "$VWG" private-key "$TMP/v.key" listen-port 51820 \
  peer "$APUB" endpoint 10.214.0.2:40001 allowed-ips 10.77.0.2/32 \
  peer "$NPUB" endpoint 10.214.0.2:40002 allowed-ips 10.77.0.3/32
ip -n "$V" link set "$VWG" mtu "$MTU"
ip -n "$V" addr add 10.77.0.1/24 dev "$VWG"; ip -n "$V" link set "$VWG" up

PIPE_WGB=wgbroker=10.214.0.2:40001,10.214.0.1:51820,10.215.0.1:51820,10.215.0.2:51830
PIPE_KERNEL=kernel=10.214.0.2:40002,10.214.0.1:51820,10.215.0.1:51821,10.215.0.2:51831
RELAY_PID=""
# relay_start DELAY_MS LOSS_PCT SEED: the relay for one run; waits until it is ready.
relay_start() {
  local i
  : >"$TMP/relay.out"
  perf_bg "$R" nice -n "$RELAY_NICE" "$TMP/relay" relay --pipe "$PIPE_WGB" --pipe "$PIPE_KERNEL" \
    --delay "$1ms" --jitter "${JITTER}ms" --loss "$2%" --seed "$3" \
    --max-time "$((TIMEOUT + DUR + 60))s" >"$TMP/relay.out" 2>>"$TMP/relay.err"
  RELAY_PID=$PERF_LAST_PID
  for i in $(seq 100); do
    grep -q '^relay ready' "$TMP/relay.out" && return 0
    kill -0 "$RELAY_PID" 2>/dev/null || die "the relay exited at start: $(tail -3 "$TMP/relay.err")"
    [ "$i" = 100 ] || sleep 0.05
  done
  die "the relay did not get ready in 5 s"
}
# relay_stop: SIGTERM, wait (bounded), leave its counter lines in $TMP/relay.out.
relay_stop() {
  local _
  [ -n "$RELAY_PID" ] || return 0
  kill -TERM "$RELAY_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$RELAY_PID" 2>/dev/null && die "the relay did not stop within 5 s of SIGTERM"
  wait "$RELAY_PID" 2>/dev/null || die "the relay failed: $(tail -3 "$TMP/relay.err")"
  RELAY_PID=""
}
# relay_counters PIPE: "v2b_offered v2b_lost b2v_offered b2v_lost other_drops late_max_us" of the
# last run (a = vendor side, b = broker side).
relay_counters() {
  awk -v p="$1" '
    function val(k,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return 0 }
    $1 == "relay" && $2 == "pipe=" p {
      other += val("overflow") + val("send_failed") + val("truncated") + val("foreign")
      late = (val("late_max_us") > late) ? val("late_max_us") : late
      if ($3 == "dir=a>b") { vo = val("offered"); vl = val("lost") } else { bo = val("offered"); bl = val("lost") }
    }
    END { printf "%d %d %d %d %d %d\n", vo, vl, bo, bl, other, late }' "$TMP/relay.out"
}

# ---------------------------------------------------------------- upstream, brokers
mkdir -p "$TMP/www/files" "$TMP/up" "$TMP/px"
echo '{"id":1296269,"full_name":"acme/app","private":true,"default_branch":"main"}' >"$TMP/www/files/small.json"
head -c "$BIG_SIZE" /dev/urandom >"$TMP/www/files/big.bin"
SMALL_BODY=$(cat "$TMP/www/files/small.json")
# /upload: nginx reads the whole body (request buffering, in memory) before it passes it to the
# sink on 8082, which answers the Content-Length it got: the answer comes after the last byte.
cat >"$TMP/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log error;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s; sendfile on; tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $TMP/up/cb; proxy_temp_path $TMP/up/px; fastcgi_temp_path $TMP/up/fc;
  uwsgi_temp_path $TMP/up/uw; scgi_temp_path $TMP/up/sc;
  server {
    listen 127.0.0.1:8080 backlog=4096; root $TMP/www;
    location = /upload {
      client_max_body_size 2g; client_body_buffer_size $((BIG_SIZE + 65536)); proxy_request_buffering on;
      proxy_http_version 1.1; proxy_pass http://127.0.0.1:8082;
    }
  }
  server { listen 127.0.0.1:8082; client_max_body_size 2g; location / { default_type text/plain; return 200 "\$content_length\n"; } }
}
NGX
perf_bg "$B" nginx -e "$TMP/up/error.log" -c "$TMP/upstream.conf"; UP_PID=$PERF_LAST_PID
URL_SMALL=/proxy/http://127.0.0.1:8080/files/small.json
URL_BIG=/proxy/http://127.0.0.1:8080/files/big.bin
URL_UP=/proxy/http://127.0.0.1:8080/upload
URL_DENIED=/proxy/http://127.0.0.1:8080/admin/users

# (a) wgbroker: the two rules the cases need; everything else is denied.
cat >"$TMP/broker.toml" <<CFG
[wireguard]
private_key = "$AKEY"
address = "10.77.0.2"
mtu = $MTU
listen_port = 51830
[[wireguard.peers]]
public_key = "$VPUB"
endpoint = "10.215.0.1:51820"
allowed_ips = ["10.77.0.1/32"]

[[allow]]
url = "http://127.0.0.1:8080/files/:file"
methods = ["GET"]

[[allow]]
url = "http://127.0.0.1:8080/upload"
methods = ["POST"]

[log]
level = "error"
CFG
if [ -n "${EXTRA_TOML:-}" ]; then printf '\n%s\n' "$EXTRA_TOML" >>"$TMP/broker.toml"; fi
"$WGB" check -c "$TMP/broker.toml" >"$TMP/check.out" 2>&1 || { cat "$TMP/check.out" >&2; die "wgbroker check rejected the generated config"; }
perf_bg "$B" "$WGB" run -c "$TMP/broker.toml" >"$TMP/wgbroker.log" 2>&1; A_PID=$PERF_LAST_PID

# (b) the reference: wireguard-go (TUN) + nginx reverse proxy with the same two rules. The upload
# streams through (no request buffering), like wgbroker; the download is proxied the usual way.
cat >"$TMP/proxy.conf" <<NGX
worker_processes auto; daemon off; pid $TMP/px/nginx.pid; error_log $TMP/px/error.log error;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s; merge_slashes off; server_tokens off;
  client_body_temp_path $TMP/px/cb; proxy_temp_path $TMP/px/px; fastcgi_temp_path $TMP/px/fc;
  uwsgi_temp_path $TMP/px/uw; scgi_temp_path $TMP/px/sc;
  proxy_http_version 1.1; proxy_max_temp_file_size 0; proxy_redirect off;
  upstream up { server 127.0.0.1:8080; keepalive 16; }
  server {
    listen 10.77.0.3:80 backlog=4096;
    location ~ "^/proxy/http://127\\.0\\.0\\.1:8080(?<wgpath>/files/[^/]+)\$" {
      limit_except GET { deny all; }
      proxy_pass http://up\$wgpath; proxy_set_header Host "127.0.0.1:8080"; proxy_set_header Connection "";
    }
    location ~ "^/proxy/http://127\\.0\\.0\\.1:8080(?<wgpath>/upload)\$" {
      limit_except POST { deny all; }
      client_max_body_size 2g; proxy_request_buffering off;
      proxy_pass http://up\$wgpath; proxy_set_header Host "127.0.0.1:8080"; proxy_set_header Connection "";
    }
    location / { default_type application/json; return 403 '{"error":"url is not in allowlist"}'; }
  }
}
NGX
perf_wg_up "$B" "$BWG"; N_WG_PID=$PERF_LAST_PID
ip netns exec "$B" wg set "$BWG" private-key "$TMP/n.key" listen-port 51831 \
  peer "$VPUB" endpoint 10.215.0.1:51821 allowed-ips 10.77.0.1/32 persistent-keepalive 20
ip -n "$B" link set "$BWG" mtu "$MTU"
ip -n "$B" addr add 10.77.0.3/32 dev "$BWG"; ip -n "$B" link set "$BWG" up
ip -n "$B" route add 10.77.0.1/32 dev "$BWG"
ip netns exec "$B" nginx -t -e "$TMP/px/error.log" -c "$TMP/proxy.conf" >"$TMP/nginx-t.out" 2>&1 ||
  { cat "$TMP/nginx-t.out" >&2; die "nginx rejected the generated proxy config"; }
perf_bg "$B" nginx -e "$TMP/px/error.log" -c "$TMP/proxy.conf"; N_NGX_PID=$PERF_LAST_PID

alive_check() {
  kill -0 "$A_PID" 2>/dev/null || die "wgbroker died: $(tail -5 "$TMP/wgbroker.log")"
  kill -0 "$N_NGX_PID" 2>/dev/null || die "the reference nginx died"
  kill -0 "$N_WG_PID" 2>/dev/null || die "the reference wireguard-go died"
  kill -0 "$UP_PID" 2>/dev/null || die "the upstream nginx died"
}

# Handshakes with both peers, through a clean relay.
relay_start 0 0 "$SEED"
hs_ok=0
for i in $(seq 300); do
  alive_check
  n=$(ip netns exec "$V" wg show "$VWG" latest-handshakes | awk '$2 != 0' | wc -l)
  [ "$n" = 2 ] && { hs_ok=1; break; }
  [ $((i % 40)) = 1 ] && { ip netns exec "$B" ping -c1 -W1 -q 10.77.0.1 >/dev/null 2>&1 || true; }
  sleep 0.05
done
[ "$hs_ok" = 1 ] || die "no WireGuard handshake with both peers through the relay within 15 s"
echo "-- tunnel up through the relay: wgbroker 10.77.0.2, reference wireguard-go 10.77.0.3, MTU $MTU"

# ---------------------------------------------------------------- verification
set_cc() { # ALGORITHM: the broker and the vendor namespace's default congestion control
  ip netns exec "$B" sysctl -q -w net.ipv4.tcp_congestion_control="$1"
  ip netns exec "$V" sysctl -q -w net.ipv4.tcp_congestion_control="$1"
}
C() { ip netns exec "$V" curl -sS --max-time 30 "$@"; }
verify() { # side ip
  local side=$1 ip=$2 out code
  out=$(C -w '\n%{http_code}' "http://$ip$URL_SMALL") || die "$side: the small GET failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}; out=${out%$'\n'}
  if [ "$code" != 200 ] || [ "$out" != "$SMALL_BODY" ]; then die "$side: small GET gave $code: $out"; fi
  code=$(C -o /dev/null -w '%{http_code}' "http://$ip$URL_DENIED") || die "$side: the denied GET failed"
  [ "$code" = 403 ] || die "$side: a URL outside the rules gave $code, not 403"
  code=$(C -o "$TMP/verify.big" -w '%{http_code} %{size_download}' "http://$ip$URL_BIG") || die "$side: the download failed"
  [ "$code" = "200 $BIG_SIZE" ] || die "$side: the download gave '$code', expected '200 $BIG_SIZE'"
  cmp -s "$TMP/verify.big" "$TMP/www/files/big.bin" ||
    die "$side: the download is not byte-exact"
  rm -f "$TMP/verify.big"
  out=$(C -H 'Expect:' -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/www/files/big.bin" \
    -w '\n%{http_code}' "http://$ip$URL_UP") || die "$side: the upload failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}; out=${out%$'\n'}
  if [ "$code" != 200 ] || [ "$out" != "$BIG_SIZE" ]; then
    die "$side: the upload gave $code, the upstream read '$out' bytes, expected $BIG_SIZE"
  fi
  echo "   $side: small GET 200, other URL 403, $SIZE_MIB MiB download byte-exact, $SIZE_MIB MiB upload read whole by the upstream"
}
# check_cc ALGORITHM: a slow download through the reference path; `ss -ti` must show ALGORITHM on
# the proxy's sending socket (broker ns) and on the vendor's socket.
check_cc() {
  local want=$1 pid got_b="" got_v="" _
  set_cc "$want"
  ip netns exec "$V" curl -sS -o /dev/null --limit-rate 100K --max-time 5 "http://10.77.0.3$URL_BIG" 2>/dev/null &
  pid=$!
  for _ in $(seq 40); do
    got_b=$(ip netns exec "$B" ss -tinH state established '( sport = :80 )' 2>/dev/null | grep -ow -e cubic -e bbr -e reno | head -1 || true)
    got_v=$(ip netns exec "$V" ss -tinH state established '( dport = :80 )' 2>/dev/null | grep -ow -e cubic -e bbr -e reno | head -1 || true)
    [ -n "$got_b" ] && [ -n "$got_v" ] && break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ "$got_b" != "$want" ] || [ "$got_v" != "$want" ]; then
    die "congestion control $want not in use: broker-side socket '${got_b:-none}', vendor socket '${got_v:-none}'"
  fi
  echo "   $want: in use on the proxy's sending socket and on the vendor's (ss -ti)"
}
echo "-- verification (clean path)"
alive_check
set_cc "$VENDOR_CC"
[[ " $SIDES " == *" wgbroker "* ]] && verify wgbroker 10.77.0.2
if [[ " $SIDES " == *" cubic "* || " $SIDES " == *" bbr "* ]]; then verify reference 10.77.0.3; fi
for s in $SIDES; do [ "$s" = wgbroker ] || check_cc "$s"; done
relay_stop

# ---------------------------------------------------------------- measurement
cat >"$TMP/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %d %d %d\n", summary.requests,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status, e.timeout))
end
LUA
# shellcheck disable=SC2016  # an awk program
udp_drops() { ip netns exec "$1" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $(c["RcvbufErrors"]) }' /proc/net/snmp; }
all_udp_drops() { echo $(( $(udp_drops "$V") + $(udp_drops "$R") + $(udp_drops "$B") )); }

# Columns: case delay loss side round seed done time_s bytes code requests p50_us p99_us errors
# v2b_offered v2b_lost b2v_offered b2v_lost relay_other_drops late_max_us udp_rcvbuf_drops
# host_busy_cores cc
RESULTS=$TMP/results.tsv
: >"$RESULTS"
# run CASE SIDE DELAY LOSS ROUND SEED
run() {
  local case=$1 side=$2 d=$3 l=$4 round=$5 seed=$6 ip pipe cc rc=0 out code bytes t done=0
  local req=0 p50=0 p99=0 err=0 to=0 dr0 dr1 h0 h1 n0 n1 _s busy counters
  if [ "$side" = wgbroker ]; then ip=10.77.0.2; pipe=wgbroker; cc=$VENDOR_CC; else ip=10.77.0.3; pipe=kernel; cc=$side; fi
  alive_check
  set_cc "$cc"
  relay_start "$d" "$l" "$seed"
  dr0=$(all_udp_drops); read -r h0 _s <<<"$(perf_host_ticks)"; n0=$(date +%s%N)
  case $case in
    download)
      timeout -k 2 $((TIMEOUT + 15)) ip netns exec "$V" curl -sS -o /dev/null --max-time "$TIMEOUT" \
        -w '%{http_code} %{size_download} %{time_total}' "http://$ip$URL_BIG" >"$TMP/run.out" 2>"$TMP/run.err" &
      wait $! || rc=$?
      read -r code bytes t <"$TMP/run.out" || true
      [ "${code:-0}" = 200 ] && [ "${bytes:-0}" = "$BIG_SIZE" ] && done=1 ;;
    upload)
      : >"$TMP/run.body"
      timeout -k 2 $((TIMEOUT + 15)) ip netns exec "$V" curl -sS -o "$TMP/run.body" --max-time "$TIMEOUT" \
        -H 'Expect:' -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/www/files/big.bin" \
        -w '%{http_code} %{size_upload} %{time_total}' "http://$ip$URL_UP" >"$TMP/run.out" 2>"$TMP/run.err" &
      wait $! || rc=$?
      read -r code bytes t <"$TMP/run.out" || true
      [ "${code:-0}" = 200 ] && [ "$(tr -d '\n' <"$TMP/run.body")" = "$BIG_SIZE" ] && done=1 ;;
    small)
      timeout -k 2 $((DUR + TIMEOUT + 15)) ip netns exec "$V" wrk -t1 -c"$SMALL_CONNS" -d"${DUR}s" \
        --timeout "${TIMEOUT}s" -s "$TMP/report.lua" "http://$ip$URL_SMALL" >"$TMP/run.out" 2>"$TMP/run.err" &
      wait $! || rc=$?
      out=$(awk '/^WRKRESULT/ {$1 = ""; print; exit}' "$TMP/run.out")
      read -r req p50 p99 err to <<<"${out:-0 0 0 0 0}"
      code=200; bytes=0; t=$DUR
      [ "$req" -gt 0 ] && done=1 ;;
  esac
  n1=$(date +%s%N); read -r h1 _s <<<"$(perf_host_ticks)"; dr1=$(all_udp_drops)
  relay_stop
  { echo "## $case $side delay ${d}ms loss ${l}% round $round seed $seed"; cat "$TMP/relay.out"; } >>"$TMP/relay.all"
  counters=$(relay_counters "$pipe")
  busy=$(awk -v d=$((h1 - h0)) -v hz="$CLK_TCK" -v ns=$((n1 - n0)) 'BEGIN { printf "%.2f", d / hz / (ns / 1e9) }')
  [ "$done" = 1 ] || t=$TIMEOUT
  [ "$case" = small ] || [ "$done" = 1 ] || [ "$rc" = 0 ] || [ "$rc" = 28 ] ||
    echo "   ($case $side: curl exit $rc: $(head -c 200 "$TMP/run.err"))"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$case" "$d" "$l" "$side" "$round" "$seed" "$done" "${t:-$TIMEOUT}" "${bytes:-0}" "${code:-0}" \
    "$req" "$p50" "$p99" "$((err + to))" "$(echo "$counters" | tr ' ' '\t')" "$((dr1 - dr0))" "$busy"$'\t'"$cc" >>"$RESULTS"
  tail -1 "$RESULTS" | awk -F'\t' -v size="$BIG_SIZE" -v tmo="$TIMEOUT" '{
    lv = ($15 ? 100 * $16 / $15 : 0); lb = ($17 ? 100 * $18 / $17 : 0)
    if ($1 == "small")
      what = sprintf("%6d req  p50 %8.1f ms  p99 %8.1f ms%s", $11, $12 / 1e3, $13 / 1e3, ($14 ? sprintf("  (%d errors/timeouts)", $14) : ""))
    else if ($7 == 1) what = sprintf("%8.2f s", $8)
    else what = sprintf("not done after %d s (%.1f of %.1f MB%s)", tmo, $9 / 1e6, size / 1e6, ($10 != 200 && $10 != 0 ? ", HTTP " $10 : ""))
    extra = ""
    if ($19 > 0) extra = extra sprintf("; relay other drops %d", $19)
    if ($21 > 0) extra = extra sprintf("; UDP rcvbuf drops %d", $21)
    printf "  r%s %5s ms %5s %%  %-8s %-8s %s   [loss seen v>b %.2f%% of %d, b>v %.2f%% of %d; late max %.1f ms; host busy %s cores%s]\n",
      $5, $2, $3, $1, $4, what, lv, $15, lb, $17, $20 / 1e3, $22, extra }'
}

echo "-- measured runs (interleaved; loss seen = datagrams the relay dropped / offered, per direction)"
group=0
for round in $(seq "$ROUNDS"); do
  order=$SIDES
  [ $((round % 2)) = 0 ] && order=$(echo "$SIDES" | awk '{ for (i = NF; i >= 1; i--) printf "%s%s", $i, (i > 1 ? " " : "") }')
  for d in $DELAYS; do
    for l in $LOSSES; do
      for case in $CASES; do
        group=$((group + 1))
        for side in $order; do run "$case" "$side" "$d" "$l" "$round" "$((SEED + group))"; done
      done
    done
  done
done
alive_check
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)

# ---------------------------------------------------------------- summary
# case delay loss | per side: median time (INF = not done) or p50/p99, seen loss | ratios
SUMMARY=$TMP/summary.tsv
awk -F'\t' -v sides="$SIDES" -v cases="$CASES" -v delays="$DELAYS" -v losses="$LOSSES" '
  function med(arr, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
    return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
  }
  {
    k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4; n[k]++
    tm[k, n[k]] = ($7 == 1) ? $8 : 1e18
    p50[k, n[k]] = $12; p99[k, n[k]] = ($11 > 0) ? $13 : 1e18
    off[k] += $15 + $17; lost[k] += $16 + $18; bytes[k, n[k]] = $9
  }
  END {
    ns = split(sides, S, " "); nc = split(cases, C, " "); nd = split(delays, D, " "); nl = split(losses, L, " ")
    for (ci = 1; ci <= nc; ci++) for (di = 1; di <= nd; di++) for (li = 1; li <= nl; li++) {
      line = C[ci] "\t" D[di] "\t" L[li]
      for (si = 1; si <= ns; si++) {
        k = C[ci] SUBSEP D[di] SUBSEP L[li] SUBSEP S[si]; m = n[k]
        if (!m) { line = line "\t-\t-\t-\t-"; continue }
        for (i = 1; i <= m; i++) { a[i] = tm[k, i]; b[i] = p50[k, i]; c[i] = p99[k, i]; e[i] = bytes[k, i] }
        v = (C[ci] == "small") ? med(c, m) : med(a, m)
        line = line "\t" v "\t" med(b, m) "\t" med(e, m) "\t" (off[k] ? lost[k] / off[k] * 100 : 0)
      }
      print line
    }
  }' "$RESULTS" >"$SUMMARY"

fmt_t() { awk -v v="$1" -v b="$2" -v tmo="$TIMEOUT" 'BEGIN {
  if (v == "-") print "-"; else if (v + 0 >= 1e17) printf "not done after %ds (%.1f MB)", tmo, b / 1e6
  else if (v + 0 >= 10) printf "%.1f s", v; else printf "%.2f s", v }'; }
fmt_p() { awk -v p50="$1" -v p99="$2" 'BEGIN { if (p99 == "-") print "-"; else if (p99 + 0 >= 1e17) print "no request done"; else printf "%.1f / %.1f ms", p50 / 1e3, p99 / 1e3 }'; }
ratio() { awk -v r="$1" -v w="$2" -v tmo="$TIMEOUT" 'BEGIN {
  if (r == "-" || w == "-") { print "-"; exit }
  ri = (r + 0 >= 1e17); wi = (w + 0 >= 1e17)
  # a bound rounds outwards: "< x" up, "> x" down
  if (ri && wi) print "-"; else if (wi) printf "< %.2f", int(r / tmo * 100 + 0.999999) / 100
  else if (ri) printf "> %.2f", int(tmo / w * 100) / 100; else printf "%.2f", r / w }'; }
ratio_p() { awk -v r="$1" -v w="$2" 'BEGIN { if (r == "-" || w == "-" || r + 0 >= 1e17 || w + 0 >= 1e17 || w + 0 == 0) print "-"; else printf "%.2f", r / w }'; }
side_title() { case $1 in wgbroker) echo wgbroker ;; cubic) echo "kernel CUBIC" ;; bbr) echo "kernel BBR" ;; esac; }

read -r -a SIDE_ARR <<<"$SIDES"
echo
echo "== summary ($ROUNDS round(s), medians): ratio = reference / wgbroker (> 1: wgbroker faster; issue 19's target: >= 0.8)"
for case in $CASES; do
  echo
  case $case in
    download) echo "-- $SIZE_MIB MiB download (seconds; a new connection each)" ;;
    upload) echo "-- $SIZE_MIB MiB upload (seconds; POST, the upstream reads it all)" ;;
    small) echo "-- small GET, wrk -c$SMALL_CONNS for ${DUR}s: latency p50 / p99; ratios of p99" ;;
  esac
  hdr=$(printf '%-8s %-6s' delay loss)
  for s in "${SIDE_ARR[@]}"; do hdr+=$(printf ' %-30s' "$(side_title "$s")"); done
  if [[ " $SIDES " == *" wgbroker "* ]]; then
    for s in "${SIDE_ARR[@]}"; do [ "$s" = wgbroker ] || hdr+=$(printf ' %-13s' "$(side_title "$s" | sed 's/kernel //')/wgbroker"); done
  fi
  hdr+=$(printf ' %s' "loss seen")
  echo "$hdr"
  while IFS=$'\t' read -r -a f; do
    [ "${f[0]}" = "$case" ] || continue
    line=$(printf '%-8s %-6s' "${f[1]} ms" "${f[2]} %")
    wv="-"; seen=""
    for i in "${!SIDE_ARR[@]}"; do
      v=${f[$((3 + 4 * i))]}; p50=${f[$((4 + 4 * i))]}; b=${f[$((5 + 4 * i))]}; ls=${f[$((6 + 4 * i))]}
      if [ "$case" = small ]; then cell=$(fmt_p "$p50" "$v"); else cell=$(fmt_t "$v" "$b"); fi
      line+=$(printf ' %-30s' "$cell")
      [ "${SIDE_ARR[$i]}" = wgbroker ] && wv=$v
      seen+="${seen:+/}$(awk -v x="$ls" 'BEGIN { if (x == "-") print "-"; else printf "%.2f", x }')"
    done
    if [[ " $SIDES " == *" wgbroker "* ]]; then
      for i in "${!SIDE_ARR[@]}"; do
        [ "${SIDE_ARR[$i]}" = wgbroker ] && continue
        v=${f[$((3 + 4 * i))]}
        if [ "$case" = small ]; then line+=$(printf ' %-13s' "$(ratio_p "$v" "$wv")"); else line+=$(printf ' %-13s' "$(ratio "$v" "$wv")"); fi
      done
    fi
    echo "$line ${seen} %"
  done <"$SUMMARY"
done
echo
echo "loss seen: datagrams the relay dropped at random / offered, both directions, per side in the column order"
echo "(the asked-for loss; relay queue, send and UDP receive-buffer drops are printed per run above when not 0)."
echo "load average: $LOAD0 at start, $LOAD1 at end; wall time $((T_END - T_START))s (upper bound ${EST_MAX}s)"

# ---------------------------------------------------------------- JSON
{
  echo "{"
  printf '  "when": "%s", "binary": {"path": "%s", "version": "%s", "sha256_12": "%s", "git_rev": "%s", "uncommitted_src_changes": %d},\n' \
    "$(date -u -d "@$T_START" +%FT%TZ)" "$BIN" "$BIN_VERSION" "$BIN_SHA" "$GIT_REV" "$GIT_DIRTY"
  printf '  "host": {"cpus": %d, "cpu_model": "%s", "kernel": "%s", "loadavg_start": "%s", "loadavg_end": "%s", "wireguard_go": "%s", "tcp_rmem": "%s", "tcp_wmem": "%s"},\n' \
    "$NCPU" "$CPU_MODEL" "$(uname -r)" "$LOAD0" "$LOAD1" "$WG_VERSION" "$TCP_RMEM" "$TCP_WMEM"
  printf '  "params": {"delays_ms": "%s", "losses_pct": "%s", "cases": "%s", "sides": "%s", "rounds": %d, "size_mib": %d, "timeout_s": %d, "dur_s": %d, "small_conns": %d, "jitter_ms": "%s", "seed": %s, "mtu": %d, "vendor_cc": "%s", "extra_toml": %s},\n' \
    "$DELAYS" "$LOSSES" "$CASES" "$SIDES" "$ROUNDS" "$SIZE_MIB" "$TIMEOUT" "$DUR" "$SMALL_CONNS" "$JITTER" "$SEED" "$MTU" "$VENDOR_CC" \
    "$(printf '%s' "${EXTRA_TOML:-}" | awk 'BEGIN { printf "\"" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); printf "%s\\n", $0 } END { printf "\"" }')"
  awk -F'\t' 'BEGIN { printf "  \"runs\": [" }
    { printf "%s\n    {\"case\": \"%s\", \"delay_ms\": %s, \"loss_pct\": %s, \"side\": \"%s\", \"cc\": \"%s\", \"round\": %d, \"seed\": %s, \"done\": %s, \"time_s\": %s, \"bytes\": %d, \"http_code\": %d, " \
        "\"requests\": %d, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d, \"relay\": {\"vendor_to_broker\": {\"offered\": %d, \"lost\": %d}, \"broker_to_vendor\": {\"offered\": %d, \"lost\": %d}, \"other_drops\": %d, \"late_max_us\": %d}, " \
        "\"udp_rcvbuf_drops\": %d, \"host_busy_cores\": %s}",
        (NR > 1 ? "," : ""), $1, $2, $3, $4, $23, $5, $6, ($7 == 1 ? "true" : "false"), $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22 }
    END { printf "\n  ],\n" }' "$RESULTS"
  awk -F'\t' -v sides="$SIDES" '
    function num(v) { return (v == "-" || v + 0 >= 1e17) ? "null" : v }
    BEGIN { printf "  \"summary\": [" }
    {
      ns = split(sides, S, " ")
      printf "%s\n    {\"case\": \"%s\", \"delay_ms\": %s, \"loss_pct\": %s", (NR > 1 ? "," : ""), $1, $2, $3
      for (i = 1; i <= ns; i++) {
        t = $(4 + 4 * (i - 1)); p = $(5 + 4 * (i - 1)); b = $(6 + 4 * (i - 1)); l = $(7 + 4 * (i - 1))
        if ($1 == "small") printf ", \"%s\": {\"p50_us\": %s, \"p99_us\": %s, \"loss_seen_pct\": %s}", S[i], num(p), num(t), num(l)
        else printf ", \"%s\": {\"time_s\": %s, \"done\": %s, \"bytes\": %s, \"loss_seen_pct\": %s}", S[i], num(t), (t == "-" || t + 0 >= 1e17 ? "false" : "true"), num(b), num(l)
      }
      printf "}"
    }
    END { printf "\n  ],\n" }' "$SUMMARY"
  printf '  "wall_s": %d\n}\n' "$((T_END - T_START))"
} >"$TMP/result.json"
if [ -n "${OUT:-}" ]; then cp "$TMP/result.json" "$OUT" && echo "JSON written to $OUT"; fi
keep_logs
exit 0
