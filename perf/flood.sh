#!/usr/bin/env bash
# Garbage and replayed datagrams cost nothing: served req/s through a real wireguard-go with and
# without a flood of hostile datagrams at the broker's UDP port, alternating in one run, with the
# broker's CPU time and its drop counter per phase.
#
#   perf/flood.sh [path/to/wgbroker]            (default: target/release/wgbroker)
#   ROUNDS=2 DUR=10 RATE=20000 CONNS=16 perf/flood.sh
#
# Each round runs two phases of DUR+2 s each, "quiet" then "flood": wrk -t1 -c$CONNS on
# /healthcheck from the vendor's namespace; in the flood phase perf/flood.py first captures (up to
# 2 s) the datagrams wireguard-go sends the broker, then sends RATE datagrams a second for DUR s
# from another socket in the vendor's namespace: random garbage, well-formed data headers with
# unknown indices, random handshake initiations (MAC1 fails) and replays of the captured
# datagrams (a quarter each). Per phase: wrk's req/s, the broker's CPU (user+sys) seconds, CPU
# milliseconds per 1,000 requests, and the broker's wgbroker_datagrams_dropped_total delta next to
# what the flooder sent. The cost of the flood is the difference between the phases, in req/s and
# in broker CPU per request; the machine's other load is noise (uptime printed at start and end).
# Runs in two namespaces it creates and removes; kills only what it started; bounded in time
# (ROUNDS * 2 * (DUR + 2) s plus set-up) and datagrams (RATE * DUR per flood phase).
# Needs root, wireguard-go, wireguard-tools, wrk, python3, curl (.ci/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh
BIN=${1:-target/release/wgbroker}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
ROUNDS=${ROUNDS:-2}; DUR=${DUR:-10}; RATE=${RATE:-20000}; CONNS=${CONNS:-16}
for v in ROUNDS DUR RATE CONNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then echo "$v: a positive integer" >&2; exit 64; fi
done
if [ "$ROUNDS" -gt 10 ] || [ "$DUR" -gt 120 ] || [ "$RATE" -gt 200000 ] || [ "$CONNS" -gt 1000 ]; then
  echo "ROUNDS <= 10, DUR <= 120, RATE <= 200000, CONNS <= 1000" >&2; exit 64
fi
perf_require wireguard-go wg wrk python3 curl

perf_vendor_tunnel f 10.216.0
# shellcheck disable=SC2034  # read by perf_facts
WGB=$BIN
perf_facts
# The broker on a known UDP port (the flooder's target) and its metrics on its loopback.
sed -i 's/^address = "10.77.0.2"$/address = "10.77.0.2"\nlisten_port = 51821/' "$TMP/broker.toml"
cat >>"$TMP/broker.toml" <<CFG
[admin]
listen = "127.0.0.1:9464"
[log]
level = "warn"
CFG
perf_bg "$B" "$BIN" run -c "$TMP/broker.toml" >"$TMP/broker.log" 2>&1
BPID=$PERF_LAST_PID
perf_wait_handshake
dropped() {
  ip netns exec "$B" curl -s --max-time 5 http://127.0.0.1:9464/metrics |
    awk '$1 == "wgbroker_datagrams_dropped_total" { print $2 + 0 }'
}
W() { ip netns exec "$V" wrk -t1 -c"$CONNS" -d"$1"s http://10.77.0.2/healthcheck; }
W 2 >/dev/null   # warm-up

echo "=== flood: $BIN_VERSION ($BIN_SHA) at $GIT_REV, $NCPU CPUs, load $LOAD0; ROUNDS=$ROUNDS DUR=$DUR RATE=$RATE CONNS=$CONNS"
perf_load_warning
printf '%-6s %-6s %10s %10s %12s %10s  %s\n' round phase req/s cpu_s cpu_ms/1kreq dropped flood
for r in $(seq "$ROUNDS"); do
  for phase in quiet flood; do
    d0=$(dropped); c0=$(perf_cpu_ticks "$BPID")
    fpid=""
    if [ "$phase" = flood ]; then
      ip netns exec "$V" python3 perf/flood.py --iface "v$WG" --to 10.216.0.2:51821 \
        --rate "$RATE" --seconds "$DUR" >"$TMP/flood.json" 2>"$TMP/flood.err" &
      fpid=$!
    fi
    rps=$(W $((DUR + 2)) | awk '/^Requests\/sec/ { print $2 }')
    [ -z "$fpid" ] || wait "$fpid"
    c1=$(perf_cpu_ticks "$BPID"); d1=$(dropped)
    kill -0 "$BPID" 2>/dev/null || { echo "the broker died:" >&2; cat "$TMP/broker.log" >&2; exit 1; }
    cpu=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    per=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v r="$rps" -v d=$((DUR + 2)) \
      'BEGIN { printf "%.2f", (r > 0) ? 1e6 * t / hz / (r * d) : 0 }')
    flood=""
    [ "$phase" = quiet ] || flood=$(cat "$TMP/flood.json" "$TMP/flood.err")
    printf '%-6s %-6s %10s %10s %12s %10s  %s\n' "$r" "$phase" "$rps" "$cpu" "$per" \
      "$(awk -v a="$d0" -v b="$d1" 'BEGIN { print b - a }')" "$flood"
  done
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
