#!/usr/bin/env bash
# Soak: mixed load through a real WireGuard peer for DURATION while the things that happen in
# production happen: the configuration is reloaded (SIGHUP) every minute, the vendor's gateway
# (wireguard-go, same key) is restarted every 5 minutes, and the upstream is killed and started
# again now and then. Reports failed requests by cause, the broker's RSS, descriptors and sockets
# over time, and exits non-zero on a leak or on a failure that no planned fault explains.
#
#   perf/soak.sh [path/to/wgbroker]            (default: target/release/wgbroker)
#   DURATION=60 perf/soak.sh                   (seconds of load; default 1800; CI runs 60)
#   GATEWAY_EVERY=300 UPSTREAM_EVERY=170 RELOAD_EVERY=60 SAMPLE_EVERY=5
#
# Load, from the vendor's namespace, each a loop of fresh curl connections:
#   small     GET a small JSON through the proxy (token injected)        expects 200
#   denied    GET a URL no rule allows                                   expects 403
#   download  GET 4 MiB, size checked                                    expects 200
#   upload    POST 1 MiB chunked, the upstream's byte count checked      expects 200
#   connect   GET /healthcheck, 4 connections at a time                  expects 200
# A failure is explained when its request overlapped a planned fault's window: a gateway
# restart (from the kill until a request through the tunnel succeeds again) or an upstream
# outage (from the kill until the upstream listens again, plus 1 s); only requests that reach
# the upstream (not `denied`, not `connect`) are excused by an upstream outage. A reload excuses
# nothing: it must be seamless.
#
# Also exit 1 when a reload was not applied (the broker's `config.reload` log events).
# Leaks (exit 1): after the load stops and 5 s of quiet, the broker's descriptors more than 16
# above the first sample's, tunnel connections still open, or RSS in the second half of the run
# above the first half's peak by more than LEAK_MIB (default 16).
# Needs root, wireguard-go, wireguard-tools, curl, python3 (.ci/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh
BIN=${1:-target/release/wgbroker}
DURATION=${DURATION:-1800}
RELOAD_EVERY=${RELOAD_EVERY:-60}
GATEWAY_EVERY=${GATEWAY_EVERY:-300}
UPSTREAM_EVERY=${UPSTREAM_EVERY:-170}
SAMPLE_EVERY=${SAMPLE_EVERY:-5}
LEAK_MIB=${LEAK_MIB:-16}
for v in DURATION RELOAD_EVERY GATEWAY_EVERY UPSTREAM_EVERY SAMPLE_EVERY LEAK_MIB; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then echo "$v: a positive number of seconds" >&2; exit 64; fi
done
# A short run still sees every kind of fault: the gateway half-way, the upstream at a third, a
# reload every quarter. The schedule counts seconds of load: the wait for a restarted gateway to
# serve again is not part of it (the run gets longer by it).
if [ "$DURATION" -lt "$GATEWAY_EVERY" ]; then GATEWAY_EVERY=$((DURATION / 2)); fi
if [ "$DURATION" -lt "$UPSTREAM_EVERY" ]; then UPSTREAM_EVERY=$((DURATION / 3)); fi
if [ "$DURATION" -lt $((2 * RELOAD_EVERY)) ]; then RELOAD_EVERY=$((DURATION / 4)); fi
if [ "$GATEWAY_EVERY" -eq 0 ] || [ "$UPSTREAM_EVERY" -eq 0 ] || [ "$RELOAD_EVERY" -eq 0 ]; then echo "DURATION: at least 3 s" >&2; exit 64; fi
perf_require wireguard-go wg curl python3

now_ms() { date +%s%3N; }
perf_vendor_tunnel s 10.215.0
# shellcheck disable=SC2034  # read by perf_facts
WGB=$BIN
perf_facts

# The upstream: the interop fixture (download, upload with a byte count, token-checked API).
TOKEN=soak-token-$$
upstream_up() {
  perf_bg "$B" python3 tests/fixtures/upstream.py --http-port 8080 --token "$TOKEN" --log /dev/null \
    >>"$TMP/upstream.log" 2>&1
  UPID=$PERF_LAST_PID
  local _
  for _ in $(seq 100); do
    ip netns exec "$B" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null && return 0
    sleep 0.05
  done
  echo "the upstream did not come up" >&2; exit 1
}
upstream_up

cat >>"$TMP/broker.toml" <<CFG
[[allow]]
url = "http://127.0.0.1:8080/api/v3/*"
methods = ["GET"]
set_request_headers = { Authorization = "Bearer $TOKEN" }
[[allow]]
url = "http://127.0.0.1:8080/download/:n"
methods = ["GET"]
[[allow]]
url = "http://127.0.0.1:8080/upload"
methods = ["POST"]
[admin]
listen = "127.0.0.1:9464"
[log]
level = "info"
format = "json"
CFG
cp "$TMP/broker.toml" "$TMP/broker.base.toml"
perf_bg "$B" "$BIN" run -c "$TMP/broker.toml" >"$TMP/broker.log" 2>&1
BPID=$PERF_LAST_PID
perf_wait_handshake

# Gateway restart: kill wireguard-go, start it again with the same key and peer.
GWPID=$(ip netns pids "$V" | head -n 1)
gateway_restart() {
  kill -TERM "$GWPID" 2>/dev/null || true
  local _
  for _ in $(seq 100); do kill -0 "$GWPID" 2>/dev/null || break; sleep 0.05; done
  rm -f "/var/run/wireguard/$WG.sock"
  perf_wg_up "$V" "$WG"
  GWPID=$PERF_LAST_PID
  ip netns exec "$V" wg set "$WG" private-key "$TMP/v.key" listen-port 51820 peer "$BPUB" allowed-ips 10.77.0.2/32
  ip -n "$V" addr add 10.77.0.1/24 dev "$WG" 2>/dev/null || true
  ip -n "$V" link set "$WG" up
}

P=http://10.77.0.2/proxy/http://127.0.0.1:8080
C() { ip netns exec "$V" curl -s --max-time 30 "$@"; }
# worker NAME EXPECT CURL-ARGS...: requests in a loop until $TMP/stop exists; one line per request:
# start_ms end_ms name http_code ok(1/0) [detail]
worker() {
  local name=$1 expect=$2; shift 2
  local t0 t1 out code ok body="$TMP/body.$name.$BASHPID"
  while [ -d "$TMP" ] && [ ! -e "$TMP/stop" ]; do
    t0=$(now_ms)
    rm -f "$body"
    out=$(C -o "$body" -w '%{http_code} %{size_download}' "$@" 2>/dev/null) || true
    t1=$(now_ms)
    code=${out%% *}
    ok=0
    if [ "$code" = "$expect" ]; then
      case $name in
        download) [ "${out#* }" = $((4 << 20)) ] && ok=1 ;;
        upload) grep -qs "\"bytes\":$((1 << 20))," "$body" && ok=1 ;;
        *) ok=1 ;;
      esac
    fi
    echo "$t0 $t1 $name ${code:-000} $ok" >>"$TMP/requests"
  done
}
head -c $((1 << 20)) /dev/urandom >"$TMP/upload.bin"
T_START=$(now_ms)
WORKERS=""
worker small 200 "$P/api/v3/repos/acme/app" & WORKERS+=" $!"
worker denied 403 "$P/admin/secrets" & WORKERS+=" $!"
worker download 200 "$P/download/$((4 << 20))" & WORKERS+=" $!"
worker upload 200 -H 'Transfer-Encoding: chunked' --data-binary "@$TMP/upload.bin" "$P/upload" & WORKERS+=" $!"
for _ in 1 2 3 4; do worker "connect" 200 http://10.77.0.2/healthcheck & WORKERS+=" $!"; done
# On every exit path: stop the workers (ours, by PID) before perf_cleanup removes what they use.
soak_cleanup() {
  touch "$TMP/stop" 2>/dev/null || true
  # shellcheck disable=SC2086
  kill -TERM $WORKERS 2>/dev/null || true
  perf_cleanup
}
trap soak_cleanup EXIT

sample() {
  local rss fds socks conns
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$BPID/status")
  fds=$(find "/proc/$BPID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  socks=$(find "/proc/$BPID/fd" -mindepth 1 -maxdepth 1 -lname 'socket:*' | wc -l)
  conns=$(ip netns exec "$B" curl -s --max-time 5 http://127.0.0.1:9464/metrics |
    awk '/^wgbroker_tunnel_connections_open/ {s += $2} END {print s + 0}')
  echo "$(( ($(now_ms) - T_START) / 1000 )) $rss $fds $socks $conns" >>"$TMP/samples"
}

# The schedule, one second at a time.
: >"$TMP/faults"
reloads=0
for ((t = 1; t <= DURATION; t++)); do
  sleep 1
  kill -0 "$BPID" 2>/dev/null || { echo "the broker died (see its log below)" >&2; cat "$TMP/broker.log" >&2; exit 1; }
  ((t % SAMPLE_EVERY == 0 || t == 1)) && sample
  if ((t % RELOAD_EVERY == 0)); then
    # Every other reload changes the rule set (one more allowed path), so it is a real reload.
    if ((reloads % 2 == 0)); then
      { cat "$TMP/broker.base.toml"; printf '[[allow]]\nurl = "http://127.0.0.1:8080/extra/%s"\nmethods = ["GET"]\n' "$t"; } >"$TMP/broker.toml"
    else
      cp "$TMP/broker.base.toml" "$TMP/broker.toml"
    fi
    kill -HUP "$BPID"; reloads=$((reloads + 1))
  fi
  if ((t % UPSTREAM_EVERY == 0)); then
    f0=$(now_ms)
    kill -KILL "$UPID" 2>/dev/null || true
    sleep 2
    upstream_up
    echo "$f0 $(($(now_ms) + 1000)) upstream" >>"$TMP/faults"
  fi
  if ((t % GATEWAY_EVERY == 0)); then
    f0=$(now_ms)
    gateway_restart
    # The window lasts until a request through the tunnel succeeds again (at most 200 s).
    back=""
    for _ in $(seq 400); do
      if [ "$(C -o /dev/null -w '%{http_code}' --max-time 2 http://10.77.0.2/healthcheck 2>/dev/null)" = 200 ]; then
        back=$(now_ms); break
      fi
      sleep 0.5
    done
    echo "$f0 ${back:-$(($(now_ms) + 1000))} gateway" >>"$TMP/faults"
    if [ -n "$back" ]; then
      echo "gateway restart at ${t}s: served again after $(( (back - f0) / 1000 )).$(( (back - f0) % 1000 / 100 )) s"
    else
      echo "gateway restart at ${t}s: NOT served again within 200 s"
    fi
  fi
done
touch "$TMP/stop"
# shellcheck disable=SC2086
wait $WORKERS 2>/dev/null || true
sleep 5
sample

echo "=== soak: ${DURATION}s, $reloads reloads, $(grep -c gateway "$TMP/faults" || true) gateway restarts, $(grep -c upstream "$TMP/faults" || true) upstream kills; $BIN_VERSION ($BIN_SHA) at $GIT_REV, $NCPU CPUs, load $LOAD0"
# Requests by category and outcome; each failure explained by a fault window or not.
awk -v faults="$TMP/faults" '
  BEGIN { while ((getline l < faults) > 0) { split(l, f, " "); n++; fs[n] = f[1]; fe[n] = f[2]; fk[n] = f[3] } }
  {
    total[$3]++
    if ($5 == 1) { ok[$3]++; next }
    cause = "unexplained"
    for (i = 1; i <= n; i++) {
      if ($1 <= fe[i] && $2 >= fs[i]) {
        if (fk[i] == "gateway") { cause = "gateway restart"; break }
        if (fk[i] == "upstream" && ($3 == "small" || $3 == "download" || $3 == "upload")) cause = "upstream killed"
      }
    }
    fail[$3 " " cause " (HTTP " $4 ")"]++
    if (cause == "unexplained") bad++
  }
  END {
    printf "%-9s %8s %8s\n", "requests", "total", "ok"
    for (c in total) printf "%-9s %8d %8d\n", c, total[c], ok[c]
    for (k in fail) printf "failed: %-40s %d\n", k, fail[k]
    printf "unexplained failures: %d\n", bad
    exit (bad > 0)
  }' "$TMP/requests" && unexplained=0 || unexplained=1

echo "--- broker over time: seconds RSS(KiB) fds sockets tunnel-connections"
cat "$TMP/samples"
leak=0
read -r _ rss0 fds0 _ _ < <(head -n 1 "$TMP/samples")
read -r _ _ fds1 _ conns1 < <(tail -n 1 "$TMP/samples")
if [ "$fds1" -gt $((fds0 + 16)) ]; then echo "LEAK: descriptors $fds0 -> $fds1"; leak=1; fi
if [ "$conns1" -gt 0 ]; then echo "LEAK: $conns1 tunnel connections open after the load stopped"; leak=1; fi
n=$(wc -l <"$TMP/samples")
if [ "$n" -ge 4 ]; then
  read -r peak1 peak2 < <(awk -v h=$((n / 2)) '
    NR <= h { if ($2 > a) a = $2 } NR > h { if ($2 > b) b = $2 } END { print a, b }' "$TMP/samples")
  echo "RSS: first sample $rss0 KiB, first-half peak $peak1 KiB, second-half peak $peak2 KiB"
  if [ "$peak2" -gt $((peak1 + LEAK_MIB * 1024)) ]; then echo "LEAK: RSS grows"; leak=1; fi
fi
applied=$(grep '"config.reload"' "$TMP/broker.log" | grep -c '"applied"' || true)
echo "reloads: $reloads sent, $applied applied"
if [ "$applied" -lt "$reloads" ]; then echo "a reload was not applied:"; grep '"config.reload"' "$TMP/broker.log" | tail -n 3; leak=1; fi
grep -E '"level":"ERROR"|panicked' "$TMP/broker.log" | head -n 5 || true
if [ "$unexplained" = 1 ] || [ "$leak" = 1 ]; then echo "soak: FAILED"; exit 1; fi
echo "soak: passed"
