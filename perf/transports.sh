#!/usr/bin/env bash
# perf/transports.sh — small-GET (healthcheck through the tunnel) over udp / tcp / tls on loopback: the test kit
# gateway (loadtest --gateway, TLS with a certificate made in process) against `wgbroker run`.
set -euo pipefail
# Usage: [BIN=...] [DUR=8s] [TRANSPORTS="udp tcp tls udp tcp tls"] perf/transports.sh
# Prints per run: requests ok, errors, req/s, p50 and p99 latency (microseconds). No bulk, no loss
# (those need an upstream and an impaired outer path: not here yet).
BIN=${BIN:-$(dirname "$0")/../target/release/wgbroker}
DUR=${DUR:-8s}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
$BIN genkey > "$D/gw.key"; GWPUB=$($BIN pubkey < "$D/gw.key")
$BIN genkey > "$D/br.key"; BRPUB=$($BIN pubkey < "$D/br.key")
for t in ${TRANSPORTS:-udp tcp tls udp tcp tls}; do
  P=$((52000 + RANDOM % 1000)); Q=$((P + 1000))
  rm -f "$D/ca.pem"
  $BIN loadtest --gateway --listen 127.0.0.1:$P --tls-listen 127.0.0.1:$Q --tls-ca-out "$D/ca.pem" \
    --broker-public-key "$BRPUB" --private-key-file "$D/gw.key" -s healthcheck --connections 4 \
    --duration "$DUR" --handshake-timeout 30s --json > "$D/out.json" 2> "$D/err" &
  LT=$!
  for _ in $(seq 100); do [ -s "$D/ca.pem" ] && break; sleep 0.1; done
  cat > "$D/broker.toml" <<TOML
[wireguard]
private_key = { file = "$D/br.key" }
address = "10.77.0.2"
transport = "$t"
ca_files = ["$D/ca.pem"]
[[wireguard.peers]]
public_key = "$GWPUB"
endpoint = "127.0.0.1:$P"
tls_endpoint = "127.0.0.1:$Q"
allowed_ips = ["10.77.0.1/32"]
[admin]
enabled = false
[log]
level = "error"
TOML
  $BIN run -c "$D/broker.toml" > "$D/broker.log" 2>&1 &
  BR=$!
  wait $LT || { cat "$D/err"; kill $BR; exit 1; }
  kill $BR; wait $BR 2>/dev/null || true
  python3 - "$t" "$D/out.json" <<'PY'
import json,sys
t,f=sys.argv[1],sys.argv[2]
r=json.load(open(f))
def find(v,k):
    if isinstance(v,dict):
        if k in v: return v[k]
        for x in v.values():
            y=find(x,k)
            if y is not None: return y
    if isinstance(v,list):
        for x in v:
            y=find(x,k)
            if y is not None: return y
print(t, "ok", find(r,"ok"), "errors", find(r,"errors_total"), "req/s", find(r,"req_per_s") or find(r,"rps"), "p50", find(r,"p50"), "p99", find(r,"p99"))
PY
done
