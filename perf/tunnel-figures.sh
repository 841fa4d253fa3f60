#!/usr/bin/env bash
# Figures for the data plane and the proxy through a real WireGuard peer, on this machine:
#   handshake time, /healthcheck req/s and latency with wrk, a proxied small GET through the
#   tunnel to nginx, a 10 MiB download, broker RSS (idle, 1,000 open connections), CPU time per
#   executor thread.
# Runs inside two network namespaces it creates (vendor: wireguard-go + wrk + curl; broker:
# wgbroker + nginx on its loopback) and removes; kills only what it started; bounded in time.
# Needs root, wireguard-go, wireguard-tools, wrk, nginx, curl (.ci/setup installs them).
#
#   perf/tunnel-figures.sh [path/to/wgbroker]     (default: target/release/wgbroker)
#   EXTRA_TOML=$'[runtime]\nspin_before_park = "100us"' DUR=10 perf/tunnel-figures.sh
#   MANY=10000 perf/tunnel-figures.sh     (open connections for the RSS figure; default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh
BIN=${1:-target/release/wgbroker}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
DUR=${DUR:-10}
MANY=${MANY:-1000}
if ! [[ $MANY =~ ^[0-9]+$ ]] || [ "$MANY" -lt 2 ] || [ "$MANY" -gt 60000 ]; then echo "MANY: 2..60000" >&2; exit 64; fi
ulimit -n $((MANY + 1024))   # wrk holds one descriptor per connection
# perf_cleanup kills what we started, removes the namespaces, the veth and the temp dir.
perf_vendor_tunnel p 10.214.0

# Upstream: nginx on the broker namespace's loopback.
perf_upstream "$B"
echo '{"full_name":"acme/app"}' > "$TMP/www/small.json"
head -c $((10 << 20)) /dev/urandom > "$TMP/www/big.bin"

cat >> "$TMP/broker.toml" <<CFG
[[allow]]
url = "http://127.0.0.1:8080/:file"
methods = ["GET"]
set_request_headers = { Authorization = "Bearer perf-token" }
[log]
level = "error"
${EXTRA_TOML:-}
CFG
T0=$(date +%s%N)
perf_bg "$B" "$BIN" run -c "$TMP/broker.toml"; BPID=$PERF_LAST_PID
for _ in $(seq 1000); do
  hs=$(ip netns exec "$V" wg show "$WG" latest-handshakes | awk '{print $2}')
  [ "${hs:-0}" != 0 ] && break; sleep 0.005
done
T1=$(date +%s%N)
echo "handshake: $(( (T1 - T0) / 1000000 )) ms from process start (includes exec, config load, executor start)"

rss() { awk '/VmRSS/ {r = $2} /VmHWM/ {h = $2} END {print r " KiB (peak " h " KiB)"}' "/proc/$BPID/status"; }
cpu() { # per-thread CPU seconds: name=utime+stime
  for t in "/proc/$BPID"/task/*; do
    read -r -a st < "$t/stat" || continue
    printf '%s=%s ' "$(cat "$t/comm")" "$(awk -v u="${st[13]}" -v s="${st[14]}" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2fs", (u + s) / h }')"
  done; echo; }
sleep 1
echo "RSS idle: $(rss)"
W() { ip netns exec "$V" wrk "$@"; }
echo "--- /healthcheck, wrk -t2 -c64 -d${DUR}s (keep-alive)"
echo "CPU before: $(cpu)"
W -t2 -c64 -d"${DUR}s" --latency http://10.77.0.2/healthcheck | grep -E "Requests/sec|Latency|50%|90%|99%|Socket|Non-2xx"
echo "CPU after:  $(cpu)"
echo "RSS after: $(rss)"
echo "--- proxied small GET to nginx, wrk -t2 -c64 -d${DUR}s"
W -t2 -c64 -d"${DUR}s" --latency http://10.77.0.2/proxy/http://127.0.0.1:8080/small.json | grep -E "Requests/sec|Latency|50%|90%|99%|Socket|Non-2xx"
echo "CPU after:  $(cpu)"
# The broker's own UDP socket overflowing (the kernel's count in the broker's namespace).
rcvbuf_drops() { ip netns exec "$B" nstat -az UdpRcvbufErrors 2>/dev/null | awk 'NR>1 {print $2}'; }
echo "--- $MANY open connections (wrk -c$MANY, sampled mid-run)"
DROPS0=$(rcvbuf_drops)
W -t2 -c"$MANY" -d"${DUR}s" --timeout 10s http://10.77.0.2/healthcheck > "$TMP/wrkmany" & WP=$!
sleep $((DUR / 2)); echo "RSS with $MANY connections: $(rss)"
wait $WP; grep -E "Requests/sec|Socket|Non-2xx" "$TMP/wrkmany" || true
echo "datagrams dropped by the broker's UDP socket during the $MANY-connection run: $(( $(rcvbuf_drops) - DROPS0 ))"
echo "--- 10 MiB download through the tunnel"
for _ in 1 2 3; do
  ip netns exec "$V" curl -s -o /dev/null -w "%{size_download} bytes in %{time_total}s = %{speed_download} B/s\n" \
    http://10.77.0.2/proxy/http://127.0.0.1:8080/big.bin
done
for ns in "$V" "$B"; do
  echo "UDP drops in $ns: $(ip netns exec "$ns" nstat -az UdpRcvbufErrors UdpSndbufErrors 2>/dev/null | awk 'NR>1 {printf "%s=%s ", $1, $2}')"
done
echo "CPU final: $(cpu)"
echo "RSS final: $(rss)"
kill -TERM "$BPID"; wait "$BPID" 2>/dev/null; echo "broker exit status: $?"
