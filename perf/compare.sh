#!/usr/bin/env bash
# shellcheck disable=SC2046,SC2016  # PID lists are split on purpose; nginx $variables in single quotes
# perf/compare.sh — wgbroker side by side with the baseline users deploy today, in one run, on this
# machine, as medians and ratios (wgbroker / baseline).
#
#   perf/compare.sh [--json] [-h]
#   DUR=10 ROUNDS=3 perf/compare.sh                     (defaults)
#   DUR=5 ROUNDS=1 perf/compare.sh                      (quick look)
#   EXTRA_TOML="$(cat perf/profiles/default.toml)" OUT=/tmp/cmp.json perf/compare.sh
#   BIN=/path/to/wgbroker perf/compare.sh
#
# Environment: DUR (s per measured run, 10), ROUNDS (3), THREADS/CONNS (wrk for the small GET and
# the denied request, 2/64), BULK_THREADS/BULK_CONNS (wrk for the download, 1/4), BULK_MIB (size of
# the large file, 10), WARMUP (s per side before round 1, 2), SSL_SECS (openssl speed, 3 per size),
# BIN (broker binary, target/release/wgbroker; copied to a temp path first), EXTRA_TOML (appended
# to the generated wgbroker config, e.g. a perf/profiles/*.toml), OUT (also write the JSON there),
# KEEP_LOGS=dir (copy configs and raw wrk output there before the temp dir is removed),
# QUIET_WAIT=N (before each run wait up to N s for the host's foreign CPU to drop under QUIET_MAX
# cores, 0.15; for shared machines; default 0 = off), CALIBRATE (1: first measure the pieces on
# their own — upstream alone, the baseline's proxy without the tunnel, each tunnel with a trivial
# 200 — as reference points for this machine; 0: skip), CASES ("small denied bulk"), BASE_WORKERS /
# UP_WORKERS (nginx worker_processes of the baseline proxy / the upstream, auto), WG_GOMAXPROCS
# (GOMAXPROCS for both wireguard-go), WG_RMEM (bytes: the UDP receive buffer both wireguard-go get,
# see below; "" = the host's default), HOLD=N (debugging: keep the set-up alive N s after
# verification, then measure).
# --json: the JSON document goes to stdout and the human-readable report to stderr.
#
# Topology (all created here and removed on every exit path; needs root, no kernel WireGuard):
#   vendor ns:  wireguard-go (one interface, two peers) + wrk + curl      10.77.0.1
#       | veth 10.214.0.1 <-> 10.214.0.2, UDP
#   broker ns:  (a) wgbroker run -c <generated>: boringtun + smoltcp + allowlist  10.77.0.2:80
#               (b) wireguard-go (TUN) + kernel TCP + nginx reverse proxy         10.77.0.3:80
#               upstream: nginx on 127.0.0.1:8080 (small JSON, a BULK_MIB file, /files/whoami which
#               echoes the Authorization header it received), stub_status on 127.0.0.1:8081
# Both sides get the same 20-rule allowlist (rule 20, `GET http://127.0.0.1:8080/files/:file`,
# matches the small GET and the download; everything else is 403 with the same JSON body), the
# same wire protocol (METHOD /proxy/<absolute upstream URL>), the same injected
# `Authorization: Bearer ...` (wgbroker `set_request_headers`, nginx `proxy_set_header`), upstream
# keep-alive on both (wgbroker's pool: its default, 256 idle per host per shard; nginx: `keepalive
# 64` per worker, so that an uneven spread of the 64 client connections over the workers does not
# churn upstream connections), no per-request logging on either. Both are verified before anything
# is measured (200 allowed, 403 denied also by method, the injected header reaches the upstream and
# overrides the vendor's, the large file arrives whole); the run aborts otherwise. Both sides stay
# up for the whole run; the idle one is parked while the other is measured.
#
# Cases, each DUR seconds, interleaved a b per case per round, ROUNDS rounds:
#   small   GET /proxy/http://127.0.0.1:8080/files/small.json    wrk -tTHREADS -cCONNS, keep-alive
#   denied  GET /proxy/http://127.0.0.1:8080/api/v3/repos/acme/app/hooks  (403; walks the rules)
#   bulk    GET /proxy/http://127.0.0.1:8080/files/big.bin        wrk -tBULK_THREADS -cBULK_CONNS
# Per run: req/s, p50/p99/p99.9 latency (wrk's histogram, via a Lua done() hook: exact counts),
# MB/s (10^6 bytes, all bytes wrk read incl. headers), CPU-seconds of the *broker side* over the
# measured window from /proc/PID/stat utime+stime (whole thread group; wgbroker = its process;
# baseline = its wireguard-go + nginx proxy master + workers; NOT the upstream nginx, NOT the vendor
# side) per 100k requests and per GB, upstream connections opened (stub_status accepts), and the
# host's CPU not attributed to any process of ours ("foreign": other users of this shared machine,
# plus kernel work run while idle). At the end: peak RSS of the broker side (VmHWM; summed over the
# baseline's processes), medians [min..max] and ratios, and one core's ChaCha20-Poly1305 speed
# (openssl speed -evp chacha20-poly1305 -bytes 1350 / 16384) as the physical ceiling.
#
# What the comparison controls: same machine, same moment (interleaved rounds), same vendor peer,
# same upstream, same load generator and parameters, same rules/headers/response shape, same tunnel
# MTU (1420: set in wgbroker's config, whose default is 1320 for WAN paths), no pinning or nice by this script. What it does NOT control:
#   * wgbroker's own `[runtime]` pins its executors (tunnel core on CPU 0, shard on CPU 1 by
#     default); the baseline's processes float. Both sides share the 2 cores with wrk, the vendor's
#     wireguard-go and the upstream nginx — a small box under full load, not an isolated server.
#     Set EXTRA_TOML=$'[runtime]\npin = false' to compare unpinned.
#   * Kernel work is charged to whichever task is running (tick accounting): the baseline's kernel
#     TCP for the tunnel is mostly charged to its wireguard-go/nginx (counted); UDP receive on the
#     veth is charged to the *sender* (vendor side, not counted) for both sides alike.
#   * The baseline's nginx matches on its normalised URI (merge_slashes off, but percent-decoding
#     and dot-segment removal still happen) — it is the performance baseline, not an equally strict
#     canonicaliser. The upstream is plain HTTP on loopback (no TLS on either side).
#   * wireguard-go is whatever is installed (its version is printed and recorded); the vendor side
#     is the same wireguard-go for both. The baseline must be what users deploy today: .ci/setup
#     installs 0.0.20231211 (bookworm-backports on Debian 12; it calls itself v0.0.20230223), which
#     batches UDP and TUN I/O, uses TUN offloads (GSO/GRO) and asks for 7 MiB socket buffers. The
#     script warns when it finds an older one: Debian 12's own 0.0.20220316 has none of that, moves
#     a fifth of the bulk data for the same CPU and drops bursts in its 208 KiB receive buffer.
#     WG_RMEM sets the host-wide net.core.rmem_default for the run (read-only inside a namespace;
#     set before either wireguard-go starts; wgbroker sets its own buffers; the old value is put
#     back on every exit path; other programs opening sockets meanwhile get it too). It changes
#     only a wireguard-go that does not size its own buffers, i.e. the old one.
#   * smoltcp (wgbroker) recovers from a burst loss by its 1 s minimum RTO, kernel TCP (baseline)
#     with SACK/fast retransmit: losses show as download p99 stalls on wgbroker's side; drops in the
#     namespaces' UDP receive buffers are printed per run.
#   * The machine may be shared: load average is printed at start and end, and "foreign" CPU per
#     run; treat runs with high foreign CPU with suspicion.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh

JSON=0
for a in "$@"; do
  case $a in
    --json) JSON=1 ;;
    -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: perf/compare.sh [--json]   (see --help)" >&2; exit 64 ;;
  esac
done
if [ "$JSON" = 1 ]; then exec 3>&1 1>&2; fi

DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BULK_THREADS=${BULK_THREADS:-1}
BULK_CONNS=${BULK_CONNS:-4}
BULK_MIB=${BULK_MIB:-10}
WARMUP=${WARMUP:-2}
SSL_SECS=${SSL_SECS:-3}
BIN=${BIN:-target/release/wgbroker}
CALIBRATE=${CALIBRATE:-1}            # reference points before the measured runs (0 = skip)
BASE_WORKERS=${BASE_WORKERS:-auto}   # worker_processes of the baseline's nginx proxy
UP_WORKERS=${UP_WORKERS:-auto}       # worker_processes of the upstream nginx
WG_GOMAXPROCS=${WG_GOMAXPROCS:-}     # GOMAXPROCS of both wireguard-go (vendor and baseline); "" = Go's default
WG_RMEM=${WG_RMEM:-}                 # net.core.rmem_default for the run (both wireguard-go); "" = leave it
CASES=${CASES:-small denied bulk}
for c in $CASES; do case $c in small|denied|bulk) ;; *) echo "CASES: unknown case $c" >&2; exit 64 ;; esac; done
TOKEN=perf-token-$RANDOM$RANDOM
for v in DUR ROUNDS THREADS CONNS BULK_THREADS BULK_CONNS BULK_MIB WARMUP SSL_SECS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then echo "$v must be a positive integer" >&2; exit 64; fi
done
[[ $CALIBRATE =~ ^[01]$ ]] || { echo "CALIBRATE must be 0 or 1" >&2; exit 64; }
[[ ${QUIET_WAIT:-0} =~ ^[0-9]+$ ]] || { echo "QUIET_WAIT must be a whole number of seconds" >&2; exit 64; }
if [ -n "$WG_RMEM" ] && { ! [[ $WG_RMEM =~ ^[0-9]+$ ]] || [ "$WG_RMEM" -lt 4096 ] || [ "$WG_RMEM" -gt 268435456 ]; }; then
  echo "WG_RMEM must be a byte count from 4096 to 268435456" >&2; exit 64
fi
perf_require wireguard-go wg wrk nginx openssl curl ip awk

TAG=$$
V=wgcv$TAG; B=wgcb$TAG                 # namespaces
VWG=wgcv$TAG; BWG=wgcb$TAG             # wireguard-go interfaces (names unique machine-wide)
TMP=$(mktemp -d /tmp/wgcompare.XXXXXX)
chmod 755 "$TMP"                       # nginx workers run unprivileged and must read the files
perf_traps
keep_logs() { [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp -r "$TMP"/. "$KEEP_LOGS"/ 2>/dev/null; true; }
die() { echo "ABORT: $*" >&2; keep_logs; exit 1; }

cp "$BIN" "$TMP/wgbroker"              # the binary may be rebuilt under us
WGB=$TMP/wgbroker
"$WGB" genkey >/dev/null 2>&1 || die "$BIN does not run as wgbroker ('wgbroker genkey' failed)"
perf_facts

NRUNS=$((ROUNDS * $(echo "$CASES" | wc -w) * 2))
EST=$((12 + 2 * SSL_SECS + 2 * WARMUP + NRUNS * (DUR + 1) + 3 + (CALIBRATE == 1 ? 5 * (DUR < 5 ? DUR : 5) : 0)))
EST_MAX=$((EST + (NRUNS + (CALIBRATE == 1 ? 5 : 0)) * ${QUIET_WAIT:-0}))
echo "== wgbroker vs baseline (wireguard-go + nginx reverse proxy) — $(date -u +%FT%TZ)"
echo "binary: $BIN ($BIN_VERSION, sha256 $BIN_SHA; repo $GIT_REV, $GIT_DIRTY uncommitted src changes)"
echo "host: $NCPU CPUs ($CPU_MODEL), kernel $(uname -r), load average $LOAD0"
echo "tools: wireguard-go $WG_VERSION, $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version | cut -d' ' -f1-2)"
echo "runs: $ROUNDS rounds x ($CASES) x 2 sides x ${DUR}s; small/denied wrk -t$THREADS -c$CONNS," \
  "bulk wrk -t$BULK_THREADS -c$BULK_CONNS on a $BULK_MIB MiB file"
echo "wireguard-go UDP receive buffer: $([ -n "$WG_RMEM" ] && echo "$WG_RMEM bytes (WG_RMEM; host default $(sysctl -n net.core.rmem_default) restored at exit)" || echo "host default net.core.rmem_default = $(sysctl -n net.core.rmem_default) bytes")"
[ -n "${EXTRA_TOML:-}" ] && echo "EXTRA_TOML: $(echo "$EXTRA_TOML" | sed 's/[[:space:]]*#.*//' | grep -v '^\s*#' | grep -v '^\s*$' | tr '\n' ' ' | sed 's/  */ /g')"
echo "estimated time: ~${EST}s$([ "${QUIET_WAIT:-0}" -gt 0 ] && echo ", at most ${EST_MAX}s with QUIET_WAIT=${QUIET_WAIT}s per run")"
if command -v dpkg >/dev/null && ! dpkg --compare-versions "${WG_VERSION%% *}" ge 0.0.20230223 2>/dev/null; then
  echo "WARNING: wireguard-go $WG_VERSION is older than 0.0.20230223 (no batching, no offloads, 208 KiB" \
    "buffers): neither the baseline nor the vendor side is what users run today (.ci/setup installs one)"
fi
perf_load_warning
T_START=$(date +%s)

# ---------------------------------------------------------------- physical ceiling (one core)
ssl_speed() { # bytes -> bytes/s of one core
  openssl speed -evp chacha20-poly1305 -bytes "$1" -seconds "$SSL_SECS" -mr 2>/dev/null |
    awk -F: '/^\+F:/ {print $4}' | tail -1
}
echo "-- physical ceiling: openssl speed -evp chacha20-poly1305 (one core, ${SSL_SECS}s each)"
SSL_1350=$(ssl_speed 1350); SSL_16K=$(ssl_speed 16384)
for pair in "1350:$SSL_1350" "16384:$SSL_16K"; do
  awk -v b="${pair%%:*}" -v r="${pair#*:}" 'BEGIN {
    if (r == "") { printf "  -bytes %-5s  (openssl speed failed)\n", b; exit }
    printf "  -bytes %-5s  %.2f GB/s = %.1f Gbit/s = %.3f ms per MB (%.2f us per %s-byte packet)\n",
      b, r / 1e9, r * 8 / 1e9, 1e3 * 1e6 / r, 1e6 * b / r, b }'
done

# ---------------------------------------------------------------- namespaces, tunnel, upstream
perf_ns "$V"; perf_ns "$B"
perf_veth "$V" "cva$TAG" 10.214.0.1/30 "$B" "cvb$TAG" 10.214.0.2/30

VKEY=$("$WGB" genkey); VPUB=$(echo "$VKEY" | "$WGB" pubkey)   # vendor gateway
AKEY=$("$WGB" genkey); APUB=$(echo "$AKEY" | "$WGB" pubkey)   # (a) wgbroker
NKEY=$("$WGB" genkey); NPUB=$(echo "$NKEY" | "$WGB" pubkey)   # (b) baseline wireguard-go
( umask 077; echo "$VKEY" >"$TMP/v.key"; echo "$NKEY" >"$TMP/n.key" )

if [ -n "$WG_RMEM" ]; then perf_sysctl net.core.rmem_default "$WG_RMEM"; fi
GOMAXPROCS=$WG_GOMAXPROCS perf_wg_up "$V" "$VWG"
ip netns exec "$V" wg set "$VWG" private-key "$TMP/v.key" listen-port 51820 \
  peer "$APUB" allowed-ips 10.77.0.2/32 peer "$NPUB" allowed-ips 10.77.0.3/32
ip -n "$V" addr add 10.77.0.1/24 dev "$VWG"; ip -n "$V" link set "$VWG" up

# Upstream: nginx on the broker namespace's loopback (its CPU is not counted for either side).
mkdir -p "$TMP/www/files" "$TMP/up" "$TMP/px"
echo '{"id":1296269,"full_name":"acme/app","private":true,"default_branch":"main"}' >"$TMP/www/files/small.json"
head -c $((BULK_MIB << 20)) /dev/urandom >"$TMP/www/files/big.bin"
SMALL_BODY=$(cat "$TMP/www/files/small.json")
BIG_SIZE=$((BULK_MIB << 20))
cat >"$TMP/upstream.conf" <<NGX
worker_processes $UP_WORKERS; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log error;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s; sendfile on; tcp_nopush on;
  default_type application/json;
  client_body_temp_path $TMP/up/cb; proxy_temp_path $TMP/up/px; fastcgi_temp_path $TMP/up/fc;
  uwsgi_temp_path $TMP/up/uw; scgi_temp_path $TMP/up/sc;
  server {
    listen 127.0.0.1:8080 backlog=4096; root $TMP/www;
    location = /files/whoami {
      default_type text/plain;
      return 200 "authorization=\$http_authorization host=\$http_host xff=\$http_x_forwarded_for\n";
    }
  }
  server { listen 127.0.0.1:8081; location = /status { stub_status; } }
}
NGX
perf_bg "$B" nginx -e "$TMP/up/error.log" -c "$TMP/upstream.conf"; UP_PID=$PERF_LAST_PID

# The 20 rules: "METHODS ORIGIN PATH-PATTERN" (wgbroker pattern syntax; translated for nginx).
# The measured rule is the last one: nginx tries regex locations in order, wgbroker uses a trie.
RULES=(
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo"
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/pulls"
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/pulls/:number"
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/pulls/:number/files"
  "POST     http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/pulls/:number/comments"
  "POST     http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/issues/:number/comments"
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/commits/:sha"
  "POST     http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/statuses/:sha"
  "GET,POST http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/check-runs"
  "GET      http://127.0.0.1:8080 /api/v3/repos/:owner/:repo/contents/*"
  "GET      http://127.0.0.1:8080 /api/v3/orgs/:org/repos"
  "GET      http://127.0.0.1:8080 /api/v3/user"
  "GET      http://127.0.0.1:8080 /api/v4/projects/:id"
  "GET      http://127.0.0.1:8080 /api/v4/projects/:id/merge_requests"
  "POST     http://127.0.0.1:8080 /api/v4/projects/:id/merge_requests/:iid/notes"
  "GET      http://127.0.0.1:8080 /scm/:project/:repo/info/refs"
  "POST     http://127.0.0.1:8080 /scm/:project/:repo/git-upload-pack"
  "GET      http://127.0.0.2:8080 /rest/api/2/issue/:key"
  "GET      http://127.0.0.2:8080 /rest/api/2/search"
  "GET      http://127.0.0.1:8080 /files/:file"
)
[ "${#RULES[@]}" = 20 ] || die "expected 20 rules"
URL_SMALL=/proxy/http://127.0.0.1:8080/files/small.json
URL_DENIED=/proxy/http://127.0.0.1:8080/api/v3/repos/acme/app/hooks
URL_BIG=/proxy/http://127.0.0.1:8080/files/big.bin
URL_WHOAMI=/proxy/http://127.0.0.1:8080/files/whoami

token_for() { [ "$1" = http://127.0.0.1:8080 ] && echo "$TOKEN" || echo "$TOKEN-jira"; }
upname_for() { local o=${1#http://}; echo "up_${o//[.:]/_}"; }
# wgbroker pattern -> nginx regex (literal segments escaped, :name -> [^/]+, * -> .*)
to_regex() {
  local p=$1 out="" seg
  IFS=/ read -r -a segs <<<"${p#/}"
  for seg in "${segs[@]}"; do
    case $seg in
      :*) out+="/[^/]+" ;;
      '*') out+="/.*" ;;
      *) out+="/$(printf '%s' "$seg" | sed 's/[].[^$\\*+?(){}|]/\\&/g')" ;;
    esac
  done
  printf '%s' "$out"
}

# (a) wgbroker config
{
  cat <<CFG
[wireguard]
private_key = "$AKEY"
address = "10.77.0.2"
mtu = 1420
[[wireguard.peers]]
public_key = "$VPUB"
endpoint = "10.214.0.1:51820"
allowed_ips = ["10.77.0.1/32"]
CFG
  for r in "${RULES[@]}"; do
    read -r methods origin path <<<"$r"
    printf '\n[[allow]]\nurl = "%s%s"\nmethods = [%s]\nset_request_headers = { Authorization = "Bearer %s" }\n' \
      "$origin" "$path" "$(echo "$methods" | sed 's/[^,]*/"&"/g; s/,/, /g')" "$(token_for "$origin")"
  done
  printf '\n[log]\nlevel = "error"\n'
  if [ -n "${EXTRA_TOML:-}" ]; then printf '\n%s\n' "$EXTRA_TOML"; fi
} >"$TMP/broker.toml"
"$WGB" check -c "$TMP/broker.toml" >"$TMP/check.out" 2>&1 || { cat "$TMP/check.out" >&2; die "wgbroker check rejected the generated config"; }

# (b) baseline nginx reverse proxy config: same rules as regex locations, same methods, same
# header injection, same 403 body; upstream keep-alive.
{
  cat <<NGX
worker_processes $BASE_WORKERS; daemon off; pid $TMP/px/nginx.pid; error_log $TMP/px/error.log error;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  merge_slashes off; server_tokens off;
  client_body_temp_path $TMP/px/cb; proxy_temp_path $TMP/px/px; fastcgi_temp_path $TMP/px/fc;
  uwsgi_temp_path $TMP/px/uw; scgi_temp_path $TMP/px/sc;
  proxy_http_version 1.1;
  proxy_max_temp_file_size 0;      # stream large bodies through memory buffers, never to disk
  proxy_redirect off;              # redirects are returned as they are
  map \$request_method \$deny_GET { GET 0; default 1; }
  map \$request_method \$deny_POST { POST 0; default 1; }
  map \$request_method \$deny_GET_POST { GET 0; POST 0; default 1; }
NGX
  for origin in $(printf '%s\n' "${RULES[@]}" | awk '{print $2}' | sort -u); do
    printf '  upstream %s { server %s; keepalive 64; keepalive_requests 1000000; }\n' \
      "$(upname_for "$origin")" "${origin#http://}"
  done
  cat <<'NGX'
  server {
    listen 10.77.0.3:80 backlog=4096;
    error_page 403 = @denied;
    location @denied {
      default_type application/json;
      add_header X-Semgrep-Private-Link-Error 1 always;
      add_header X-Request-Id $request_id always;
      return 403 '{"error":"url is not in allowlist"}';
    }
    location = /healthcheck { default_type text/plain; return 200 'OK'; }
    location / {
      default_type application/json;
      add_header X-Semgrep-Private-Link-Error 1 always;
      add_header X-Request-Id $request_id always;
      return 403 '{"error":"url is not in allowlist"}';
    }
NGX
  for r in "${RULES[@]}"; do
    read -r methods origin path <<<"$r"
    host=${origin#http://}
    printf '    location ~ "^/proxy/%s(?<wgpath>%s)$" {\n' \
      "$(printf '%s' "$origin" | sed 's/[.]/\\./g')" "$(to_regex "$path")"
    printf '      if ($deny_%s) { return 403; }\n' "${methods//,/_}"
    printf '      proxy_pass http://%s$wgpath$is_args$args;\n' "$(upname_for "$origin")"
    printf '      proxy_set_header Host "%s";\n' "$host"
    printf '      proxy_set_header Authorization "Bearer %s";\n' "$(token_for "$origin")"
    printf '      proxy_set_header X-Forwarded-For $remote_addr;\n'
    printf '      proxy_set_header Connection "";\n'
    printf '      add_header X-Semgrep-Private-Link 1 always;\n'
    printf '      add_header X-Request-Id $request_id always;\n'
    printf '    }\n'
  done
  printf '  }\n}\n'
} >"$TMP/proxy.conf"

# (a) wgbroker
perf_bg "$B" "$WGB" run -c "$TMP/broker.toml" >"$TMP/wgbroker.log" 2>&1; A_PID=$PERF_LAST_PID
# (b) wireguard-go (TUN) + nginx
GOMAXPROCS=$WG_GOMAXPROCS perf_wg_up "$B" "$BWG"; N_WG_PID=$PERF_LAST_PID
ip netns exec "$B" wg set "$BWG" private-key "$TMP/n.key" listen-port 51821 \
  peer "$VPUB" endpoint 10.214.0.1:51820 allowed-ips 10.77.0.1/32 persistent-keepalive 20
ip -n "$B" addr add 10.77.0.3/32 dev "$BWG"; ip -n "$B" link set "$BWG" up
ip -n "$B" route add 10.77.0.1/32 dev "$BWG"
ip netns exec "$B" nginx -t -e "$TMP/px/error.log" -c "$TMP/proxy.conf" >"$TMP/nginx-t.out" 2>&1 ||
  { cat "$TMP/nginx-t.out" >&2; die "nginx rejected the generated proxy config"; }
perf_bg "$B" nginx -e "$TMP/px/error.log" -c "$TMP/proxy.conf"; N_NGX_PID=$PERF_LAST_PID

# Handshakes with both peers.
hs_ok=0
for i in $(seq 300); do
  kill -0 "$A_PID" 2>/dev/null || { cat "$TMP/wgbroker.log" >&2; die "wgbroker exited during start-up"; }
  n=$(ip netns exec "$V" wg show "$VWG" latest-handshakes | awk '$2 != 0' | wc -l)
  [ "$n" = 2 ] && { hs_ok=1; break; }
  # the baseline handshakes when it has something to send: nudge it now and then
  [ $((i % 40)) = 1 ] && { ip netns exec "$B" ping -c1 -W1 -q 10.77.0.1 >/dev/null 2>&1 || true; }
  sleep 0.05
done
[ "$hs_ok" = 1 ] || die "no WireGuard handshake with both peers within 15 s ($(ip netns exec "$V" wg show "$VWG" latest-handshakes | tr '\n' ' '))"
MTU_B=$(ip -n "$B" -o link show "$BWG" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
MTU_V=$(ip -n "$V" -o link show "$VWG" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
echo "-- tunnel up: vendor wireguard-go mtu $MTU_V; wgbroker 10.77.0.2 (mtu 1420 in its config, like both wireguard-go); baseline wireguard-go 10.77.0.3 mtu $MTU_B"

# ---------------------------------------------------------------- verification (both sides)
C() { ip netns exec "$V" curl -sS --max-time 10 "$@"; }
verify() { # side ip
  local side=$1 ip=$2 out code
  out=$(C -w '\n%{http_code}' "http://$ip$URL_SMALL") || die "$side: curl of the allowed URL failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}; out=${out%$'\n'}
  [ "$code" = 200 ] || die "$side: allowed GET gave $code, not 200: $out"
  [ "$out" = "$SMALL_BODY" ] || die "$side: allowed GET returned a different body: $out"
  out=$(C -D "$TMP/h.$side" -w '\n%{http_code}' "http://$ip$URL_DENIED") || die "$side: curl of the denied URL failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}; out=${out%$'\n'}
  [ "$code" = 403 ] || die "$side: denied GET gave $code, not 403: $out"
  case $out in *'url is not in allowlist'*) ;; *) die "$side: 403 body is not the allowlist error: $out" ;; esac
  grep -qi '^X-Semgrep-Private-Link-Error: 1' "$TMP/h.$side" || die "$side: 403 lacks X-Semgrep-Private-Link-Error"
  code=$(C -o /dev/null -w '%{http_code}' -X POST --data x "http://$ip$URL_SMALL") || die "$side: curl POST failed"
  [ "$code" = 403 ] || die "$side: POST to a GET-only rule gave $code, not 403"
  out=$(C -H 'Authorization: Bearer vendor-supplied' -w '\n%{http_code}' "http://$ip$URL_WHOAMI") || die "$side: curl whoami failed"
  code=${out##*$'\n'}; out=${out%$'\n'*}; out=${out%$'\n'}
  [ "$code" = 200 ] || die "$side: whoami gave $code: $out"
  case $out in
    "authorization=Bearer $TOKEN host=127.0.0.1:8080 "*) ;;
    *) die "$side: the upstream did not receive the injected header (and only it): $out" ;;
  esac
  code=$(C -o /dev/null -w '%{http_code} %{size_download}' "http://$ip$URL_BIG") || die "$side: download failed"
  [ "$code" = "200 $BIG_SIZE" ] || die "$side: download gave '$code', expected '200 $BIG_SIZE'"
  echo "   $side: 200 allowed, 403 denied (+ method), injected Authorization reaches upstream ($(echo "$out" | sed "s/$TOKEN/<token>/; s/ host=.*//")), ${BULK_MIB} MiB download whole"
}
echo "-- verification"
verify wgbroker 10.77.0.2
verify baseline 10.77.0.3
if [ "${HOLD:-0}" -gt 0 ]; then   # debugging: keep the set-up alive for HOLD seconds, then measure
  echo "-- holding ${HOLD}s: ip netns exec $V wrk ... http://10.77.0.2|3/...; configs in $TMP"
  sleep "$HOLD" & wait $! || true       # (a foreground sleep would defer the INT/TERM trap)
fi

# ---------------------------------------------------------------- measurement
cat >"$TMP/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT %d %d %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
LUA
side_pids() { # side -> pids whose CPU counts for it
  if [ "$1" = wgbroker ]; then echo "$A_PID"; else echo "$N_WG_PID $N_NGX_PID $(perf_children "$N_NGX_PID")"; fi
}
udp_drops() { ip netns exec "$1" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $(c["RcvbufErrors"]) }' /proc/net/snmp; }
upstream_pids() { echo "$UP_PID $(perf_children "$UP_PID")"; }
our_pids() { ip netns pids "$V" 2>/dev/null; ip netns pids "$B" 2>/dev/null; }
up_accepts() { ip netns exec "$B" curl -s --max-time 2 http://127.0.0.1:8081/status | awk 'NR==3 {print $1}'; }
alive_check() {
  kill -0 "$A_PID" 2>/dev/null || die "wgbroker died (see log above): $(tail -5 "$TMP/wgbroker.log")"
  kill -0 "$N_NGX_PID" 2>/dev/null || die "baseline nginx died"
  kill -0 "$N_WG_PID" 2>/dev/null || die "baseline wireguard-go died"
}

# side case round | requests bytes dur_us e_connect e_read e_write e_status e_timeout p50 p90 p99
# p999 max (us) | side_ticks foreign_ticks steal_ticks upstream_conns vendor_ticks upstream_ticks
# udp_rcvbuf_drops_vendor_ns udp_rcvbuf_drops_broker_ns
RESULTS=$TMP/results.tsv
: >"$RESULTS"
# run SIDE CASE ROUND SECONDS [record]
run() {
  local side=$1 case=$2 round=$3 secs=$4 record=${5:-1} ip url t c to pids t0 t1 h0 h1 s0 s1 o0 o1 k0 k1 v0 v1 u0 u1 a0 a1 d0 d1 e0 e1 res
  [ "$side" = wgbroker ] && ip=10.77.0.2 || ip=10.77.0.3
  case $case in
    small) url=$URL_SMALL; t=$THREADS; c=$CONNS; to=5 ;;
    denied) url=$URL_DENIED; t=$THREADS; c=$CONNS; to=5 ;;
    bulk) url=$URL_BIG; t=$BULK_THREADS; c=$BULK_CONNS; to=$secs ;;
  esac
  alive_check
  read -r -a pids <<<"$(side_pids "$side")"
  a0=$(up_accepts); d0=$(udp_drops "$V"); e0=$(udp_drops "$B")
  # "ours" = every process in our namespaces + our reaped children (wrk, curl) — the rest of the
  # host's busy time is foreign.
  o0=$(perf_cpu_ticks $(our_pids)); k0=$(perf_reaped_ticks)
  v0=$(perf_cpu_ticks $(ip netns pids "$V")); u0=$(perf_cpu_ticks $(upstream_pids))
  read -r h0 s0 <<<"$(perf_host_ticks)"; t0=$(perf_cpu_ticks "${pids[@]}")
  # in the background + wait, so that INT/TERM are handled at once
  timeout -k 2 $((secs + 20)) ip netns exec "$V" wrk -t"$t" -c"$c" -d"${secs}s" --timeout "${to}s" \
    --latency -s "$TMP/report.lua" "http://$ip$url" >"$TMP/wrk.$side.$case.$round" 2>&1 &
  wait $! || true
  t1=$(perf_cpu_ticks "${pids[@]}"); read -r h1 s1 <<<"$(perf_host_ticks)"
  o1=$(perf_cpu_ticks $(our_pids)); k1=$(perf_reaped_ticks)
  v1=$(perf_cpu_ticks $(ip netns pids "$V")); u1=$(perf_cpu_ticks $(upstream_pids))
  a1=$(up_accepts); d1=$(udp_drops "$V"); e1=$(udp_drops "$B")
  res=$(awk '/^WRKRESULT/ {$1=""; print; exit}' "$TMP/wrk.$side.$case.$round")
  [ -n "$res" ] || { cat "$TMP/wrk.$side.$case.$round" >&2; die "wrk gave no result for $side $case"; }
  [ "$record" = 1 ] || return 0
  # shellcheck disable=SC2086
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$side" "$case" "$round" "$(echo $res | tr ' ' '\t')" \
    "$((t1 - t0))" "$(( (h1 - h0) - (o1 - o0) - (k1 - k0) ))" "$((s1 - s0))" "$(( ${a1:-0} - ${a0:-0} ))" \
    "$(( (v1 - v0) + (k1 - k0) ))" "$((u1 - u0))" "$(( ${d1:-0} - ${d0:-0} ))" "$(( ${e1:-0} - ${e0:-0} ))" >>"$RESULTS"
  tail -1 "$RESULTS" | awk -F'\t' -v hz="$CLK_TCK" -v ncpu="$NCPU" '{
    req=$4; by=$5; d=$6/1e6; cpu=$17/hz; bad=""
    if ($2 == "denied") { if ($10 < req) bad=bad sprintf(" NON-403:%d", req - $10) }
    else if ($10 > 0) bad=bad sprintf(" NON-2xx:%d", $10)
    if ($7 + $8 + $9 + $11 > 0) bad=bad sprintf(" ERRORS(conn %d read %d write %d timeout %d)", $7, $8, $9, $11)
    if ($23 + $24 > 0) bad=bad sprintf("; UDP rcvbuf drops: vendor %d, broker ns %d", $23, $24)
    if ($2 == "bulk")
      printf "  r%s %-6s %-8s %8.1f MB/s   p50 %6.1f ms              CPU %5.2f s = %6.2f ms/MB   cores: side %.2f vendor %.2f upstream %.2f foreign %.2f; upstream conns %d%s\n",
        $3, $2, $1, by / d / 1e6, $12 / 1e3, cpu, cpu / by * 1e9, cpu / d, $21 / hz / d, $22 / hz / d, $18 / hz / d, $20, bad
    else
      printf "  r%s %-6s %-8s %8.0f req/s  p50 %5.2f ms p99 %6.2f ms  CPU %5.2f s = %5.1f us/req    cores: side %.2f vendor %.2f upstream %.2f foreign %.2f; upstream conns %d%s\n",
        $3, $2, $1, req / d, $12 / 1e3, $14 / 1e3, cpu, (req ? cpu / req * 1e6 : 0), cpu / d, $21 / hz / d, $22 / hz / d, $18 / hz / d, $20, bad
  }'
}

# quiet_wait: with QUIET_WAIT=N, wait up to N s until the host's CPU not used by us stays under
# QUIET_MAX cores for a 1 s sample (a shared machine: let someone else's build finish first).
QUIET_WAIT=${QUIET_WAIT:-0}; QUIET_MAX=${QUIET_MAX:-0.15}; QUIET_WAITED=0
quiet_wait() {
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  local start h0 h1 o0 o1 n0 n1 f _
  start=$SECONDS
  while :; do
    o0=$(perf_cpu_ticks $(our_pids)); read -r h0 _ <<<"$(perf_host_ticks)"; n0=$(date +%s%N)
    sleep 1 & wait $!
    read -r h1 _ <<<"$(perf_host_ticks)"; n1=$(date +%s%N); o1=$(perf_cpu_ticks $(our_pids))
    f=$(awk -v d=$(( (h1 - h0) - (o1 - o0) )) -v hz="$CLK_TCK" -v ns=$((n1 - n0)) 'BEGIN { printf "%.2f", d / hz / (ns / 1e9) }')
    awk -v f="$f" -v m="$QUIET_MAX" 'BEGIN { exit !(f <= m) }' && break
    if [ $((SECONDS - start)) -ge "$QUIET_WAIT" ]; then
      echo "   (host still busy: $f foreign cores after waiting ${QUIET_WAIT}s; measuring anyway)"; break
    fi
  done
  QUIET_WAITED=$((QUIET_WAITED + SECONDS - start))
}

echo "-- warm-up (${WARMUP}s per side, not recorded)"
run wgbroker small 0 "$WARMUP" 0; run baseline small 0 "$WARMUP" 0
RSS_IDLE_A=$(perf_rss_kib "$A_PID")
RSS_IDLE_B=$(perf_rss_kib $(side_pids baseline))

# Reference points on this machine (once, not interleaved): what the pieces do on their own.
CAL_JSON=""; CAL_N=0
if [ "$CALIBRATE" = 1 ]; then
  CAL_DUR=$(( DUR < 5 ? DUR : 5 ))
  echo "-- reference points (${CAL_DUR}s each, once): the pieces on their own"
  cal() { # label ns url threads conns
    local res
    quiet_wait
    timeout -k 2 $((CAL_DUR + 20)) ip netns exec "$2" wrk -t"$4" -c"$5" -d"${CAL_DUR}s" --timeout 5s \
      -s "$TMP/report.lua" "$3" >"$TMP/wrk.cal.$CAL_N" 2>&1 &
    wait $! || true
    res=$(awk '/^WRKRESULT/ {$1=""; print; exit}' "$TMP/wrk.cal.$CAL_N" || true)
    CAL_N=$((CAL_N + 1))
    [ -n "$res" ] || { echo "   $1: no result"; return 0; }
    # shellcheck disable=SC2086
    set -- "$1" $res
    awk -v l="$1" -v req="$2" -v by="$3" -v d="$4" -v p50="${10}" -v p99="${12}" -v err=$(( $5 + $6 + $7 + $8 + $9 )) 'BEGIN {
      d /= 1e6; printf "   %-58s %8.0f req/s %7.1f MB/s  p50 %6.2f ms  p99 %6.2f ms%s\n", l, req / d, by / d / 1e6, p50 / 1e3, p99 / 1e3, (err ? sprintf("  (%d errors/non-2xx)", err) : "") }'
    CAL_JSON+="${CAL_JSON:+, }\"$1\": {\"requests\": $2, \"bytes\": $3, \"duration_s\": $(awk -v d="$4" 'BEGIN {print d / 1e6}'), \"p50_us\": ${10}, \"p99_us\": ${12}}"
  }
  cal "upstream alone (wrk in broker ns, no tunnel) small GET" "$B" "http://127.0.0.1:8080/files/small.json" "$THREADS" "$CONNS"
  cal "baseline nginx proxy, no tunnel (wrk in broker ns)" "$B" "http://10.77.0.3$URL_SMALL" "$THREADS" "$CONNS"
  cal "baseline tunnel only: nginx 'return 200' via wireguard-go" "$V" "http://10.77.0.3/healthcheck" "$THREADS" "$CONNS"
  cal "wgbroker tunnel only: GET /healthcheck" "$V" "http://10.77.0.2/healthcheck" "$THREADS" "$CONNS"
  cal "upstream alone, bulk (no tunnel)" "$B" "http://127.0.0.1:8080/files/big.bin" "$BULK_THREADS" "$BULK_CONNS"
fi

echo "-- measured runs (a = wgbroker, b = baseline; interleaved)"
for round in $(seq "$ROUNDS"); do
  for case in $CASES; do
    sleep 0.5; quiet_wait; run wgbroker "$case" "$round" "$DUR"
    sleep 0.5; quiet_wait; run baseline "$case" "$round" "$DUR"
  done
done
alive_check
HWM_A=$(perf_hwm_kib "$A_PID")
HWM_B=$(perf_hwm_kib $(side_pids baseline))
HWM_B_DETAIL="wireguard-go $(perf_hwm_kib "$N_WG_PID") KiB + nginx $(perf_hwm_kib "$N_NGX_PID" $(perf_children "$N_NGX_PID")) KiB ($(perf_children "$N_NGX_PID" | wc -w) workers)"
DROPS="vendor ns $(udp_drops "$V"), broker ns $(udp_drops "$B") (whole run, incl. verification and warm-up)"
kill -TERM "$A_PID"
A_EXIT=0
for _ in $(seq 150); do kill -0 "$A_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$A_PID" 2>/dev/null; then A_EXIT=timeout; else wait "$A_PID" 2>/dev/null || A_EXIT=$?; fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)

# ---------------------------------------------------------------- summary
SUMMARY=$TMP/summary.tsv   # metric unit a_med a_min a_max b_med b_min b_max ratio better
awk -F'\t' -v hz="$CLK_TCK" '
  function add(side, key, v) { n[side, key]++; val[side, key, n[side, key]] = v; keys[key] = 1 }
  function med(side, key,   m, i, j, t, a, sum) {
    m = n[side, key]; lo = hi = "-"; if (!m) return "-"
    if (key ~ /errors/) { for (i = 1; i <= m; i++) sum += val[side, key, i]; lo = hi = sum; return sum }
    for (i = 1; i <= m; i++) a[i] = val[side, key, i]
    for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    lo = a[1]; hi = a[m]
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  {
    side = $1; c = $2; req = $4; by = $5; d = $6 / 1e6; cpu = $17 / hz
    if (c == "bulk") {
      add(side, "bulk MB/s", by / d / 1e6)
      add(side, "bulk CPU-s per GB", cpu / by * 1e9)
      add(side, "bulk download p50 ms", $12 / 1e3)
      add(side, "bulk download p99 ms", $14 / 1e3)
      add(side, "bulk side CPU cores", cpu / d)
    } else {
      add(side, c " req/s", req / d)
      add(side, c " p50 ms", $12 / 1e3)
      add(side, c " p99 ms", $14 / 1e3)
      add(side, c " p99.9 ms", $15 / 1e3)
      add(side, c " CPU-s per 100k req", cpu / req * 1e5)
      add(side, c " side CPU cores", cpu / d)
    }
    add(side, c " foreign CPU cores", $18 / hz / d)
    add(side, c " upstream conns opened", $20)
    add(side, c " errors", $7 + $8 + $9 + $11 + (c == "denied" ? req - $10 : $10))
  }
  END {
    split("small req/s|small p50 ms|small p99 ms|small p99.9 ms|small CPU-s per 100k req|small side CPU cores|small foreign CPU cores|small upstream conns opened|small errors|" \
          "denied req/s|denied p50 ms|denied p99 ms|denied p99.9 ms|denied CPU-s per 100k req|denied side CPU cores|denied foreign CPU cores|denied errors|" \
          "bulk MB/s|bulk download p50 ms|bulk download p99 ms|bulk CPU-s per GB|bulk side CPU cores|bulk foreign CPU cores|bulk errors", order, "|")
    for (i = 1; order[i] != ""; i++) {
      k = order[i]
      am = med("wgbroker", k); alo = lo; ahi = hi
      bm = med("baseline", k); blo = lo; bhi = hi
      higher = (k ~ /req\/s|MB\/s/)
      ratio = (am != "-" && bm != "-" && bm + 0 != 0 && k !~ /errors/) ? am / bm : "-"
      better = "-"
      if (ratio != "-" && k !~ /cores|conns/) better = ((higher && ratio > 1) || (!higher && ratio < 1)) ? "wgbroker" : "baseline"
      if (ratio != "-" && k !~ /cores|conns/ && ratio > 0.97 && ratio < 1.03) better = "~even"
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k, am, alo, ahi, bm, blo, bhi, ratio, better
    }
  }' "$RESULTS" >"$SUMMARY"

fmt() { awk -v v="$1" 'BEGIN { if (v == "" || v == "-") print "-"; else if (v + 0 >= 1000) printf "%.0f", v; else if (v + 0 >= 100) printf "%.1f", v; else if (v + 0 >= 10) printf "%.2f", v; else printf "%.3f", v }'; }
echo
echo "== summary: medians over $ROUNDS round(s) [min..max]; ratio = wgbroker / baseline"
printf '%-30s %-26s %-26s %8s  %s\n' metric wgbroker "baseline (wg-go + nginx)" ratio better
while IFS=$'\t' read -r k am alo ahi bm blo bhi ratio better; do
  [ "$am" = - ] && [ "$bm" = - ] && continue   # a case that was not run (CASES)
  if [ "$ROUNDS" -gt 1 ]; then
    acol="$(fmt "$am") [$(fmt "$alo")..$(fmt "$ahi")]"; bcol="$(fmt "$bm") [$(fmt "$blo")..$(fmt "$bhi")]"
  else acol=$(fmt "$am"); bcol=$(fmt "$bm"); fi
  printf '%-30s %-26s %-26s %8s  %s\n' "$k" "$acol" "$bcol" "$(awk -v r="$ratio" 'BEGIN { if (r == "-") print "-"; else printf "%.2f", r }')" "$better"
  case $k in
    "small CPU-s per 100k req"|"denied CPU-s per 100k req")
      printf '%-30s %-26s %-26s\n' "  = us CPU per request" "$(fmt "$(awk -v v="$am" 'BEGIN {print v * 10}')")" "$(fmt "$(awk -v v="$bm" 'BEGIN {print v * 10}')")" ;;
    "bulk CPU-s per GB")
      printf '%-30s %-26s %-26s\n' "  = ms CPU per MB" "$(fmt "$am")" "$(fmt "$bm")" ;;
  esac
done <"$SUMMARY"
printf '%-30s %-26s %-26s %8s  %s\n' "peak RSS MiB (VmHWM)" "$(fmt "$(awk -v k="$HWM_A" 'BEGIN {print k / 1024}')")" \
  "$(fmt "$(awk -v k="$HWM_B" 'BEGIN {print k / 1024}')")" "$(awk -v a="$HWM_A" -v b="$HWM_B" 'BEGIN {printf "%.2f", a / b}')" \
  "$(awk -v a="$HWM_A" -v b="$HWM_B" 'BEGIN {print (a < b) ? "wgbroker" : "baseline"}')"
printf '%-30s %-26s %-26s\n' "RSS after warm-up MiB" "$(fmt "$(awk -v k="$RSS_IDLE_A" 'BEGIN {print k / 1024}')")" "$(fmt "$(awk -v k="$RSS_IDLE_B" 'BEGIN {print k / 1024}')")"
echo "baseline peak RSS: $HWM_B_DETAIL"
awk -v a="$SSL_1350" -v b="$SSL_16K" 'BEGIN {
  if (a != "" && b != "")
    printf "ceiling (one core, openssl chacha20-poly1305): %.2f GB/s (%.3f ms/MB) at 1350 B, %.2f GB/s (%.3f ms/MB) at 16 KiB\n",
      a / 1e9, 1e9 / a, b / 1e9, 1e9 / b }'
echo "UDP receive-buffer drops: $DROPS"
echo "wgbroker exit status on SIGTERM: $A_EXIT"
for f in wgbroker.log px/error.log up/error.log; do
  if [ -s "$TMP/$f" ]; then echo "log $f: $(wc -l <"$TMP/$f") lines, e.g.: $(head -c 300 "$TMP/$f" | head -1)"; fi
done
echo "load average: $LOAD0 at start, $LOAD1 at end; wall time $((T_END - T_START))s (estimated ${EST}s$([ "$QUIET_WAIT" -gt 0 ] && echo ", ${QUIET_WAITED}s of it waiting for a quiet host"))"
echo "notes: ratio = wgbroker / baseline; 'better' = the side that wins the row (higher req/s and MB/s, lower"
echo "       latency, CPU and RSS; ~even within 3%). CPU = utime+stime of the broker side only (wgbroker"
echo "       process; baseline = wireguard-go + nginx master + workers); 'cores' = CPU-s per second of the run;"
echo "       'foreign' = host CPU not charged to any process of ours (other users of the machine; ~0 when quiet,"
echo "       slightly negative because process CPU includes hypervisor steal time)."

# ---------------------------------------------------------------- JSON
json() {
  awk -F'\t' -v hz="$CLK_TCK" '
    BEGIN { printf "  \"runs\": [" }
    { printf "%s\n    {\"side\": \"%s\", \"case\": \"%s\", \"round\": %d, \"requests\": %d, \"bytes\": %d, \"duration_s\": %.6f, " \
        "\"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, \"status_ge_400\": %d, \"timeout\": %d}, " \
        "\"latency_us\": {\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p99_9\": %d, \"max\": %d}, " \
        "\"side_cpu_s\": %.2f, \"vendor_cpu_s\": %.2f, \"upstream_cpu_s\": %.2f, \"foreign_cpu_s\": %.2f, \"steal_s\": %.2f, \"upstream_conns_opened\": %d, " \
        "\"udp_rcvbuf_drops\": {\"vendor_ns\": %d, \"broker_ns\": %d}}",
        (NR > 1 ? "," : ""), $1, $2, $3, $4, $5, $6 / 1e6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
        $17 / hz, $21 / hz, $22 / hz, $18 / hz, $19 / hz, $20, $23, $24 }
    END { printf "\n  ],\n" }' "$RESULTS"
  awk -F'\t' '
    function nul(v) { return v == "-" ? "null" : v }
    BEGIN { printf "  \"summary\": {" }
    { printf "%s\n    \"%s\": {\"wgbroker\": %s, \"baseline\": %s, \"ratio\": %s, \"wgbroker_range\": [%s, %s], \"baseline_range\": [%s, %s], \"better\": \"%s\"}",
        (NR > 1 ? "," : ""), $1, nul($2), nul($5), nul($8), nul($3), nul($4), nul($6), nul($7), $9 }
    END { printf "\n  },\n" }' "$SUMMARY"
}
{
  echo "{"
  printf '  "when": "%s", "binary": {"path": "%s", "version": "%s", "sha256_12": "%s", "git_rev": "%s", "uncommitted_src_changes": %d},\n' \
    "$(date -u -d "@$T_START" +%FT%TZ)" "$BIN" "$BIN_VERSION" "$BIN_SHA" "$GIT_REV" "$GIT_DIRTY"
  printf '  "host": {"cpus": %d, "cpu_model": "%s", "kernel": "%s", "loadavg_start": "%s", "loadavg_end": "%s"},\n' \
    "$NCPU" "$CPU_MODEL" "$(uname -r)" "$LOAD0" "$LOAD1"
  printf '  "params": {"dur_s": %d, "rounds": %d, "cases": "%s", "threads": %d, "conns": %d, "bulk_threads": %d, "bulk_conns": %d, "bulk_mib": %d, "base_workers": "%s", "up_workers": "%s", "wireguard_go": "%s", "wg_gomaxprocs": "%s", "wg_rmem": "%s", "quiet_wait_s": %d, "extra_toml": %s},\n' \
    "$DUR" "$ROUNDS" "$CASES" "$THREADS" "$CONNS" "$BULK_THREADS" "$BULK_CONNS" "$BULK_MIB" "$BASE_WORKERS" "$UP_WORKERS" "$WG_VERSION" "$WG_GOMAXPROCS" "${WG_RMEM:-default $(sysctl -n net.core.rmem_default)}" "$QUIET_WAIT" \
    "$(printf '%s' "${EXTRA_TOML:-}" | awk 'BEGIN { printf "\"" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); printf "%s\\n", $0 } END { printf "\"" }')"
  printf '  "ceiling": {"chacha20_poly1305_bytes_per_s_1350": %s, "chacha20_poly1305_bytes_per_s_16384": %s},\n' "${SSL_1350:-null}" "${SSL_16K:-null}"
  printf '  "peak_rss_kib": {"wgbroker": %d, "baseline": %d}, "rss_after_warmup_kib": {"wgbroker": %d, "baseline": %d},\n' \
    "$HWM_A" "$HWM_B" "$RSS_IDLE_A" "$RSS_IDLE_B"
  printf '  "reference_points": {%s},\n' "$CAL_JSON"
  json
  printf '  "wgbroker_exit_status": "%s", "wall_s": %d\n}\n' "$A_EXIT" "$((T_END - T_START))"
} >"$TMP/result.json"
[ -n "${OUT:-}" ] && cp "$TMP/result.json" "$OUT" && echo "JSON written to $OUT"
[ "$JSON" = 1 ] && cat "$TMP/result.json" >&3
keep_logs
exit 0
