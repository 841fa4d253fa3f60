#!/usr/bin/env bash
# perf/gateway.sh: req/s and p99 through `wgbroker gateway` + a broker (loadtest --front) against
# the broker alone (loadtest --gateway), back to back, one nginx upstream on loopback, and the
# gateway's CPU per request. Needs nginx and a release build (BIN=...). DUR, CONN tune it.
set -euo pipefail
R=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/wgbroker}
WORK=$(mktemp -d); cd "$WORK"
DUR=${DUR:-8s}; CONN=${CONN:-16}
mkdir -p nginx/logs
cat > nginx/nginx.conf <<NG
worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:18090; location / { return 200 "ok\n"; } } }
NG
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" & NGP=$!
LK=$($R genkey); echo "$LK" > lk; KX=$($R genkey); KY=$($R genkey); GK=$($R genkey)
LP=$(echo "$LK" | $R pubkey); PX=$(echo "$KX" | $R pubkey); PY=$(echo "$KY" | $R pubkey); GP=$(echo "$GK" | $R pubkey)
common='[admin]
listen = "127.0.0.1:0"
[runtime]
pin = false
[log]
level = "warn"
[[allow]]
url = "http://127.0.0.1:18090/*"
methods = ["GET"]'
printf '[wireguard]\nprivate_key = "%s"\naddress = "10.77.0.2"\n[[wireguard.peers]]\npublic_key = "%s"\nendpoint = "127.0.0.1:52900"\nallowed_ips = ["10.77.0.1/32"]\n%s\n' "$KX" "$LP" "$common" > bx.toml
printf '[wireguard]\nprivate_key = "%s"\naddress = "10.77.1.2"\n[[wireguard.peers]]\npublic_key = "%s"\nendpoint = "127.0.0.1:52830"\nallowed_ips = ["10.77.0.1/32"]\n%s\n' "$KY" "$GP" "$common" > by.toml
printf '[gateway]\nprivate_key = "%s"\nlisten = "127.0.0.1:52830"\naddress = "10.77.0.1"\nfront = "127.0.0.1:18085"\n[[tenant]]\nname = "t"\n[[tenant.broker]]\npublic_key = "%s"\naddress = "10.77.1.2"\n[admin]\nlisten = "127.0.0.1:19005"\n[log]\nlevel = "warn"\n' "$GK" "$PY" > g.toml
$R run -c bx.toml 2> bx.log & BX=$!
$R run -c by.toml 2> by.log & BY=$!
$R gateway -c g.toml 2> g.log & GW=$!
trap 'kill $BX $BY $GW $NGP 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 3
echo "== broker alone (loadtest --gateway, userspace WireGuard+TCP driver)"
$R loadtest --gateway --private-key-file lk --broker-public-key "$PX" --listen 127.0.0.1:52900 \
   --url http://127.0.0.1:18090/x -s small --connections "$CONN" --duration "$DUR" --warmup 1s --json > alone.json
python3 -c 'import json;d=json.load(open("alone.json"));print(json.dumps({k:d[k] for k in d if k in ("requests","errors","req_per_s","latency_us")}, default=str)[:600])'
for _ in $(seq 1 20); do curl -sf -o /dev/null localhost:18085/t/t/healthcheck && break; sleep 0.5; done
cpu() { awk '{print $14+$15}' /proc/"$GW"/stat; }
echo "== gateway + broker (loadtest --front, kernel TCP clients)"
c0=$(cpu)
$R loadtest --front 127.0.0.1:18085 --front-target /t/t/proxy/http://127.0.0.1:18090/x \
   --connections "$CONN" --duration "$DUR" --warmup 1s --json > front.json
c1=$(cpu)
cat front.json
python3 - "$c0" "$c1" <<PY
import json,sys,os
d=json.load(open("front.json")); hz=os.sysconf("SC_CLK_TCK")
ticks=int(sys.argv[2])-int(sys.argv[1])
n=d["requests"]
print(f"gateway CPU over warm-up+window: {ticks/hz:.2f} s; per request (window count, upper bound): {ticks/hz/max(n,1)*1e6:.1f} us")
PY
