#!/usr/bin/env bash
# Slow and bursty vendors against one broker through a real wireguard-go: does the broker close
# what it must, does its memory stay bounded while connections are held and come back once they
# are gone, and is a download after the bursts as fast as on a fresh broker?
#
#   1. A fresh broker: idle RSS, then a DL_MIB download through the tunnel (best of 2).
#   2. WAVES waves of HELD slow connections (perf/slow-holder.py in the vendor namespace: a third
#      silent heads, a third dripping heads, a third stalled request bodies), each held HOLD
#      seconds and then closed; per wave: what the broker closed and answered, peak RSS (VmHWM,
#      reset before the wave), RSS per held connection, and RSS SETTLE seconds after the broker
#      serves no connection any more, with what its tunnel stacks hold (its /metrics).
#   3. BURSTS bursts of wrk -c$MANY -d${BURST}s on /healthcheck, each followed by the download
#      (right after the burst), then the same settled figures.
#   4. The DL_MIB download again (best of 2), against the fresh figure.
# Runs inside two network namespaces it creates (vendor: wireguard-go, the holder, wrk, curl;
# broker: wgbroker and nginx on its loopback) and removes; kills only what it started; every
# step is bounded in count and time (a few minutes in all).
# Needs root, python3, wireguard-go, wireguard-tools, wrk, nginx, curl (.ci/setup installs them).
#
#   perf/slow-vendors.sh [path/to/wgbroker]      (default: target/release/wgbroker)
#   HELD=2000 WAVES=2 HOLD=8 SETTLE=15 MANY=10000 BURSTS=1 BURST=10 DL_MIB=256 perf/slow-vendors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh
BIN=${1:-target/release/wgbroker}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
HELD=${HELD:-2000}; WAVES=${WAVES:-2}; HOLD=${HOLD:-8}; SETTLE=${SETTLE:-15}
MANY=${MANY:-10000}; BURSTS=${BURSTS:-1}; BURST=${BURST:-10}; DL_MIB=${DL_MIB:-256}
num() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then echo "$1: $3..$4" >&2; exit 64; fi
}
num HELD "$HELD" 3 20000; num WAVES "$WAVES" 0 10; num HOLD "$HOLD" 1 120; num SETTLE "$SETTLE" 1 120
num MANY "$MANY" 2 60000; num BURSTS "$BURSTS" 0 10; num BURST "$BURST" 1 60; num DL_MIB "$DL_MIB" 1 2048
ulimit -n $(( (MANY > HELD ? MANY : HELD) + 1024 ))
# perf_cleanup kills what we started, removes the namespaces, the veth and the temp dir.
perf_vendor_tunnel s 10.215.0

# Upstream: nginx on the broker namespace's loopback; /upload answers at once (the stalled bodies
# never get that far).
perf_upstream "$B" 'location = /upload { return 204; }'
head -c $((DL_MIB << 20)) /dev/zero > "$TMP/www/big.bin"

cat >> "$TMP/broker.toml" <<CFG
[inbound]
head_timeout = "3s"
body_timeout = "3s"
[[allow]]
url = "http://127.0.0.1:8080/:file"
methods = ["GET", "POST"]
[log]
level = "error"
${EXTRA_TOML:-}
CFG
perf_bg "$B" "$BIN" run -c "$TMP/broker.toml"; BPID=$PERF_LAST_PID
perf_wait_handshake

kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$BPID/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
download() { # best of 2, seconds
  local best="" t _
  for _ in 1 2; do
    t=$(ip netns exec "$V" curl -s -o /dev/null --max-time 300 -w "%{time_total}" \
      http://10.77.0.2/proxy/http://127.0.0.1:8080/big.bin) || t=999
    best=$(awk -v a="${best:-$t}" -v b="$t" 'BEGIN { print (b < a ? b : a) }')
  done
  echo "$best"
}
settle() { sleep "$SETTLE"; kib VmRSS; }
metric() { # metric NAME: one sample from the broker's admin listener (0 when absent)
  ip netns exec "$B" curl -s --max-time 5 http://127.0.0.1:9000/metrics |
    awk -v n="$1" '$1 == n {v = $2} END {print v + 0}'
}
gone() { # waits (at most 120 s) until the broker serves no connection; prints how long it took
  local t0=$SECONDS
  while [ "$(metric wgbroker_tunnel_connections_open)" != 0 ] && [ $((SECONDS - t0)) -lt 120 ]; do sleep 1; done
  echo "$((SECONDS - t0))"
}
tables() { # what the broker's tunnel stacks hold, from its admin listener
  ip netns exec "$B" curl -s --max-time 5 http://127.0.0.1:9000/metrics | awk '
    /^wgbroker_tunnel_connections_open / {o = $2} /^wgbroker_tunnel_sockets\{role="listener"\}/ {l = $2}
    /^wgbroker_tunnel_sockets\{role="connection"\}/ {c = $2} /^wgbroker_tunnel_socket_slots / {s = $2}
    /^wgbroker_tunnel_table_capacity / {t = $2} /^wgbroker_packet_buffers_idle / {b = $2}
    END { printf "open %s, sockets %s listening + %s connected, %s slots, map room %s, idle packet buffers %s\n", o, l, c, s, t, b }'
}

sleep 1
IDLE=$(kib VmRSS)
echo "fresh broker: RSS $(mib "$IDLE"); $(tables)"
FRESH=$(download)
echo "fresh: ${DL_MIB} MiB download in ${FRESH} s (best of 2); RSS $(mib "$(settle)") ${SETTLE} s later"

for w in $(seq "$WAVES"); do
  echo 5 > "/proc/$BPID/clear_refs"   # resets VmHWM to the current RSS
  BEFORE=$(kib VmRSS)
  echo "--- wave $w: $HELD slow connections held ${HOLD} s"
  ip netns exec "$V" python3 perf/slow-holder.py --count "$HELD" --hold "$HOLD" | tee "$TMP/wave" | sed 's/^/  /'
  HWM=$(kib VmHWM); HELD_AT_ONCE=$(awk '/^held at once:/ {print $4}' "$TMP/wave")
  WAITED=$(gone); AFTER=$(settle)
  echo "wave $w: RSS before $(mib "$BEFORE"), peak $(mib "$HWM") (+$(mib $((HWM - BEFORE)))," \
    "$(awk -v d=$((HWM - BEFORE)) -v n="${HELD_AT_ONCE:-0}" 'BEGIN { printf "%.1f", n ? d / n : 0 }') KiB per held connection)," \
    "every connection gone ${WAITED} s after the holder closed its own, settled $(mib "$AFTER") ${SETTLE} s later ($(mib $((AFTER - IDLE))) over fresh idle)"
  echo "  then: $(tables)"
done

for b in $(seq "$BURSTS"); do
  echo 5 > "/proc/$BPID/clear_refs"
  echo "--- burst $b: wrk -t2 -c$MANY -d${BURST}s /healthcheck"
  ip netns exec "$V" wrk -t2 -c"$MANY" -d"${BURST}s" --timeout 10s http://10.77.0.2/healthcheck \
    | grep -E "Requests/sec|Socket|Non-2xx" | sed 's/^/  /' || true
  HWM=$(kib VmHWM)
  echo "  right after: $(tables)"
  NOW=$(download)
  echo "  ${DL_MIB} MiB download right after the burst: ${NOW} s ($(awk -v a="$NOW" -v f="$FRESH" 'BEGIN { printf "%.2f", a / f }')x fresh)"
  # A vendor's close lost in the burst (an RST is never resent) leaves its connection to the
  # broker's idle timeout: "gone" is when the broker serves none.
  WAITED=$(gone); AFTER=$(settle)
  echo "burst $b: peak RSS $(mib "$HWM"); every connection gone after ${WAITED} s; settled $(mib "$AFTER") ${SETTLE} s later ($(mib $((AFTER - IDLE))) over fresh idle)"
  echo "  then: $(tables)"
done

AFTER_DL=$(download)
echo "after the waves and bursts: ${DL_MIB} MiB download in ${AFTER_DL} s (best of 2) against ${FRESH} s fresh" \
  "($(awk -v a="$AFTER_DL" -v f="$FRESH" 'BEGIN { printf "%.2f", a / f }')x)"
echo "final RSS $(mib "$(kib VmRSS)") (fresh idle $(mib "$IDLE"))"
kill -TERM "$BPID"; wait "$BPID" 2>/dev/null; echo "broker exit status: $?"
