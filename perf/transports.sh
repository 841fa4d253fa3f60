#!/usr/bin/env bash
# perf/transports.sh — WireGuard over udp, tcp and tls (issue 17): small-GET latency and bulk MB/s
# between the test kit's gateway (`wgbroker loadtest --gateway --tls-listen`) and `wgbroker run`,
# on a clean path and with per-packet loss on the outer path, in one interleaved run.
#
#   perf/transports.sh [-h]
#   LOSSES="0 1" CASES="small bulk" ROUNDS=2 OUT=/tmp/t.json perf/transports.sh
#   EXTRA='[netstack]
#   congestion = "bbr"' perf/transports.sh              (the broker's inner TCP with BBR)
#
# Environment: TRANSPORTS ("udp tcp tls"), CASES ("small bulk"), LOSSES (per-packet loss of the
# outer path in %, each direction, 0..<100 in steps of 0.01; "0 1"), ROUNDS (2; the transports run
# in their order in odd rounds and reversed in even ones), DUR (s per small run, 8), BULK_DUR (s
# per bulk run, 15), SIZE_MIB (one download, 10), SMALL_CONNS (4), BULK_CONNS (1), EXTRA (TOML
# appended to the broker's configuration), BIN (target/release/wgbroker; copied first), OUT (JSON).
#
# Topology (created here, removed on every exit path; root, nftables, no netem needed):
#   gateway ns G: wgbroker loadtest --gateway: UDP and plain TCP on 10.214.0.1:PORT (a new port
#                 per run), TLS on 10.214.0.1:443 (self-signed for that IP; the broker trusts it
#                 via ca_files)
#       | veth 10.214.0.1 <-> 10.214.0.2
#   broker ns B:  wgbroker run (transport forced to the one measured) + nginx upstream on
#                 127.0.0.1:8080 (files/small.json, files/big.bin of SIZE_MIB)
# Loss: an nftables table in B drops LOSS % of the UDP and TCP packets entering and leaving B's
# veth, each drawn on its own (`numgen random`): for udp that is the WireGuard datagrams, for
# tcp/tls the segments of the outer kernel TCP stream (the kernel retransmits them; the inner
# TCP of the broker sees delay, not loss). The same rule for every transport. Counted packets give
# the loss seen.
#
# Cases: small  loadtest -s small --connections SMALL_CONNS for DUR s (GET files/small.json through
#               the allowlist to the upstream): req/s, p50, p99
#        bulk   loadtest -s download of big.bin, BULK_CONNS connections, BULK_DUR s: MB/s of the
#               downloads finished in the window, and the median time of one download
# Output: one line per run, then per case and loss the medians over ROUNDS and the ratios tcp/udp
# and tls/udp (throughput: higher is better, so ratio = x/udp; p99: ratio = udp/x, so that below
# 1 means worse than udp in both; issue 17's target is >= 0.7 on a clean path).
# Time: at most ROUNDS x LOSSES x TRANSPORTS x (DUR + BULK_DUR + about 10 s); printed at start.
# Not controlled: the machine may be shared (load average printed at start and end); no
# bandwidth limit or delay on the path (loopback-class veth: a clean run measures CPU as much as
# the transport).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=perf/lib.sh
. perf/lib.sh

for a in "$@"; do
  case $a in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: perf/transports.sh   (settings by environment, see --help)" >&2; exit 64 ;;
  esac
done

TRANSPORTS=${TRANSPORTS:-udp tcp tls}
CASES=${CASES:-small bulk}
LOSSES=${LOSSES:-0 1}
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-8}
BULK_DUR=${BULK_DUR:-15}
SIZE_MIB=${SIZE_MIB:-10}
SMALL_CONNS=${SMALL_CONNS:-4}
BULK_CONNS=${BULK_CONNS:-1}
BIN=${BIN:-target/release/wgbroker}
for v in ROUNDS DUR BULK_DUR SIZE_MIB SMALL_CONNS BULK_CONNS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then echo "$v must be a positive integer" >&2; exit 64; fi
done
if [ "$ROUNDS" -gt 10 ] || [ "$DUR" -gt 300 ] || [ "$BULK_DUR" -gt 300 ] || [ "$SIZE_MIB" -gt 1024 ] ||
  [ "$SMALL_CONNS" -gt 256 ] || [ "$BULK_CONNS" -gt 64 ]; then
  echo "bounds: ROUNDS <= 10, DUR and BULK_DUR <= 300, SIZE_MIB <= 1024, SMALL_CONNS <= 256, BULK_CONNS <= 64" >&2; exit 64
fi
for t in $TRANSPORTS; do case $t in udp|tcp|tls) ;; *) echo "TRANSPORTS: unknown $t" >&2; exit 64 ;; esac; done
for c in $CASES; do case $c in small|bulk) ;; *) echo "CASES: unknown $c" >&2; exit 64 ;; esac; done
for l in $LOSSES; do
  if ! [[ $l =~ ^[0-9]{1,2}(\.[0-9]{1,2})?$ ]]; then echo "LOSSES: $l is not a loss in % (0..<100, two decimals)" >&2; exit 64; fi
done
if [ -z "$TRANSPORTS" ] || [ -z "$CASES" ] || [ -z "$LOSSES" ]; then echo "TRANSPORTS, CASES and LOSSES must not be empty" >&2; exit 64; fi
[[ " $TRANSPORTS " == *" udp "* ]] || { echo "TRANSPORTS must include udp (the ratios are to it)" >&2; exit 64; }
perf_require nft nginx ip python3

TAG=$$
G=wgtg$TAG; B=wgtb$TAG
TMP=$(mktemp -d /tmp/wgtransports.XXXXXX)
chmod 755 "$TMP"                        # nginx workers run unprivileged and must read the files
perf_traps
die() { echo "ABORT: $*" >&2; exit 1; }
cp "$BIN" "$TMP/wgbroker"
WGB=$TMP/wgbroker
"$WGB" genkey >/dev/null 2>&1 || die "$BIN does not run as wgbroker"
perf_facts

n_words() { echo "$1" | wc -w; }
NCASE_S=0
for c in $CASES; do if [ "$c" = small ]; then NCASE_S=$((NCASE_S + DUR + 5)); else NCASE_S=$((NCASE_S + BULK_DUR + 5)); fi; done
EST_MAX=$((10 + ROUNDS * $(n_words "$LOSSES") * $(n_words "$TRANSPORTS") * (NCASE_S + 35)))
echo "== WireGuard transports: udp / tcp / tls — $(date -u +%FT%TZ)"
echo "binary: $BIN ($BIN_VERSION, sha256 $BIN_SHA; repo $GIT_REV, $GIT_DIRTY uncommitted src changes)"
echo "host: $NCPU CPUs ($CPU_MODEL), kernel $(uname -r), load average $LOAD0"
echo "runs: transports {$TRANSPORTS} x cases {$CASES} x losses {$LOSSES} % x $ROUNDS round(s); small -c$SMALL_CONNS ${DUR}s," \
  "bulk $SIZE_MIB MiB downloads -c$BULK_CONNS ${BULK_DUR}s${EXTRA:+; EXTRA: $(echo "$EXTRA" | tr '\n' ' ')}"
echo "upper bound on the time: ~${EST_MAX}s (usually well under)"
perf_load_warning
T_START=$(date +%s)

perf_ns "$G"; perf_ns "$B"
VETH_B=wtb$TAG
perf_veth "$G" "wtg$TAG" 10.214.0.1/24 "$B" "$VETH_B" 10.214.0.2/24

mkdir -p "$TMP/www/files" "$TMP/up"
echo '{"id":1296269,"full_name":"acme/app","private":true,"default_branch":"main"}' >"$TMP/www/files/small.json"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$TMP/www/files/big.bin"
cat >"$TMP/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log error;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s; sendfile on; tcp_nopush on;
  default_type application/json;
  client_body_temp_path $TMP/up/cb; proxy_temp_path $TMP/up/px; fastcgi_temp_path $TMP/up/fc;
  uwsgi_temp_path $TMP/up/uw; scgi_temp_path $TMP/up/sc;
  server { listen 127.0.0.1:8080 backlog=1024; root $TMP/www; }
}
NGX
perf_bg "$B" nginx -e "$TMP/up/error.log" -c "$TMP/upstream.conf"

GKEY=$("$WGB" genkey); GPUB=$(echo "$GKEY" | "$WGB" pubkey)
BKEY=$("$WGB" genkey); BPUB=$(echo "$BKEY" | "$WGB" pubkey)
( umask 077; echo "$GKEY" >"$TMP/g.key"; echo "$BKEY" >"$TMP/b.key" )

# set_loss PCT: (re)creates the nftables table in B that drops PCT % of the TCP and UDP packets on
# its veth, each direction; counters of all and of dropped packets.
set_loss() {
  local per10k
  per10k=$(awk -v l="$1" 'BEGIN { printf "%d", l * 100 + 0.5 }')
  ip netns exec "$B" nft delete table inet wgtloss 2>/dev/null || true
  ip netns exec "$B" nft -f - <<NFT
table inet wgtloss {
  chain in {
    type filter hook input priority -10; policy accept;
    iifname "$VETH_B" meta l4proto { tcp, udp } counter
    iifname "$VETH_B" meta l4proto { tcp, udp } numgen random mod 10000 < $per10k counter drop
  }
  chain out {
    type filter hook output priority -10; policy accept;
    oifname "$VETH_B" meta l4proto { tcp, udp } counter
    oifname "$VETH_B" meta l4proto { tcp, udp } numgen random mod 10000 < $per10k counter drop
  }
}
NFT
}
# loss_counters: "packets dropped" summed over both directions since set_loss.
loss_counters() {
  ip netns exec "$B" nft list table inet wgtloss | awk '/counter packets/ {
      for (i = 1; i <= NF; i++) if ($i == "packets") v = $(i + 1)
      if ($0 ~ /drop/) d += v; else a += v }
    END { printf "%d %d\n", a, d }'
}

# run TRANSPORT CASE PORT: one loadtest against a fresh broker; appends a result line.
RESULTS=$TMP/results.tsv; : >"$RESULTS"
run() {
  local t=$1 c=$2 port=$3 dur lt br rc i before after
  rm -f "$TMP/ca.pem"
  local args=(-s small --url http://127.0.0.1:8080/files/small.json --connections "$SMALL_CONNS")
  dur=$DUR
  if [ "$c" = bulk ]; then
    args=(-s download --url http://127.0.0.1:8080/files/big.bin --size "${SIZE_MIB}MiB" --connections "$BULK_CONNS" --timeout 60s)
    dur=$BULK_DUR
  fi
  read -r -a before <<<"$(loss_counters)"
  perf_bg "$G" "$WGB" loadtest --gateway --listen "10.214.0.1:$port" --tls-listen 10.214.0.1:443 \
    --tls-ca-out "$TMP/ca.pem" --broker-public-key "$BPUB" --private-key-file "$TMP/g.key" \
    "${args[@]}" --duration "${dur}s" --warmup 1s --handshake-timeout 30s --json >"$TMP/out.json" 2>"$TMP/lt.err"
  lt=$PERF_LAST_PID
  for i in $(seq 100); do [ -s "$TMP/ca.pem" ] && break; [ "$i" = 100 ] && die "no TLS certificate from the gateway"; sleep 0.1; done
  cat >"$TMP/broker.toml" <<TOML
[wireguard]
private_key = { file = "$TMP/b.key" }
address = "10.77.0.2"
transport = "$t"
ca_files = ["$TMP/ca.pem"]
[[wireguard.peers]]
public_key = "$GPUB"
endpoint = "10.214.0.1:$port"
tls_endpoint = "10.214.0.1:443"
allowed_ips = ["10.77.0.1/32"]
[[allow]]
url = "http://127.0.0.1:8080/files/:file"
methods = ["GET"]
[admin]
enabled = false
[log]
level = "error"
${EXTRA:-}
TOML
  perf_bg "$B" "$WGB" run -c "$TMP/broker.toml" >"$TMP/broker.log" 2>&1
  br=$PERF_LAST_PID
  rc=0; wait "$lt" || rc=$?
  kill -TERM "$br" 2>/dev/null || true
  wait "$br" 2>/dev/null || true
  [ "$rc" = 0 ] || die "loadtest ($t $c) failed: $(tail -3 "$TMP/lt.err"); broker: $(tail -3 "$TMP/broker.log")"
  read -r -a after <<<"$(loss_counters)"
  python3 - "$t" "$c" "$TMP/out.json" "$((after[0] - before[0]))" "$((after[1] - before[1]))" "$SIZE_MIB" >>"$RESULTS" <<'PY'
import json, sys
t, c, f, seen, lost, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(f))
lat = r["latency_us"]
mbs = r["bytes"]["body_received"] / r["duration_s"] / 1e6
print("\t".join(str(x) for x in [t, c, r["ok"], r["errors_total"], round(r["req_per_s"], 1), lat["p50"], lat["p99"],
      round(mbs, 2), r["cancelled_at_end"], seen, lost]))
PY
}

PORT=51820
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  order=$TRANSPORTS
  [ $((ROUND % 2)) = 0 ] && order=$(echo "$TRANSPORTS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for loss in $LOSSES; do
    set_loss "$loss"
    for c in $CASES; do
      for t in $order; do
        PORT=$((PORT + 1))
        n0=$(wc -l <"$RESULTS")
        run "$t" "$c" "$PORT"
        line=$(sed -n "$((n0 + 1))p" "$RESULTS")
        printf '%s\t%s\t%s\n' "$ROUND" "$loss" "$line" >>"$TMP/all.tsv"
        echo "$line" | awk -F'\t' -v r="$ROUND" -v l="$loss" '{
          seen = ($10 > 0) ? $11 / $10 * 100 : 0
          if ($2 == "small") printf "  r%d loss %-4s %-5s %-3s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  (loss seen %.2f %%)\n", r, l, $2, $1, $5, $6 / 1e3, $7 / 1e3, $4, seen
          else printf "  r%d loss %-4s %-5s %-3s %8.2f MB/s   one download p50 %6.2f s  done %d, errors %d, unfinished at end %d  (loss seen %.2f %%)\n", r, l, $2, $1, $8, $6 / 1e6, $3, $4, $9, seen }'
      done
    done
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)

# Summary: medians over rounds; ratios to udp.
echo
echo "== summary (medians of $ROUNDS round(s)); ratio > 1 is better than udp; target (issue 17) >= 0.7 on a clean path"
python3 - "$TMP/all.tsv" "$CASES" "$LOSSES" "$TRANSPORTS" "$SIZE_MIB" >"$TMP/summary.txt" 3>"$TMP/summary.json" <<'PY'
import json, os, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cases, losses, transports = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
med = statistics.median
out = []
for c in cases:
    if c == "small":
        print("-- small GET: req/s, p50 / p99 ms; ratio of p99 = udp p99 / x p99")
    else:
        print(f"-- bulk {sys.argv[5]} MiB downloads: MB/s (finished in the window), median download s; ratio of MB/s = x / udp")
    for l in losses:
        cell, fig = {}, {}
        for t in transports:
            rs = [r for r in rows if r[1] == l and r[2] == t and r[3] == c]
            if not rs:
                continue
            seen = sum(int(r[11]) for r in rs); lost = sum(int(r[12]) for r in rs)
            f = {"rounds": len(rs), "req_per_s": med(float(r[6]) for r in rs), "p50_us": med(int(r[7]) for r in rs),
                 "p99_us": med(int(r[8]) for r in rs), "mb_per_s": med(float(r[9]) for r in rs),
                 "ok": sum(int(r[4]) for r in rs), "errors": sum(int(r[5]) for r in rs),
                 "loss_seen_pct": round(lost / seen * 100, 2) if seen else 0.0}
            fig[t] = f
            if c == "small":
                cell[t] = f"{f['req_per_s']:.0f} req/s {f['p50_us']/1e3:.2f} / {f['p99_us']/1e3:.2f} ms"
            else:
                cell[t] = f"{f['mb_per_s']:.2f} MB/s ({f['p50_us']/1e6:.2f} s)"
        ratios = {}
        for t in transports:
            if t == "udp" or t not in fig or "udp" not in fig:
                continue
            if c == "small":
                ratios[f"{t}/udp"] = round(fig["udp"]["p99_us"] / fig[t]["p99_us"], 2) if fig[t]["p99_us"] else None
            else:
                ratios[f"{t}/udp"] = round(fig[t]["mb_per_s"] / fig["udp"]["mb_per_s"], 2) if fig["udp"]["mb_per_s"] else None
        print(f"loss {l:>4} %: " + " | ".join(f"{t} {cell[t]}" for t in transports if t in cell)
              + " | " + " ".join(f"{k} {v}" for k, v in ratios.items())
              + " | loss seen " + "/".join(str(fig[t]["loss_seen_pct"]) for t in transports if t in fig) + " %")
        out.append({"case": c, "loss_pct": float(l), "figures": fig, "ratios": ratios})
with os.fdopen(3, "w") as j:
    json.dump(out, j)
PY
cat "$TMP/summary.txt"
echo "load average: $LOAD0 at start, $LOAD1 at end; wall time $((T_END - T_START))s"

if [ -n "${OUT:-}" ]; then
  EXTRA=${EXTRA:-} python3 - "$TMP/summary.json" "$TMP/all.tsv" >"$OUT" <<PY
import json, os, sys
runs = []
for l in open(sys.argv[2]):
    f = l.rstrip("\n").split("\t")
    if len(f) < 13:
        continue
    runs.append({"round": int(f[0]), "loss_pct": float(f[1]), "transport": f[2], "case": f[3], "ok": int(f[4]),
                 "errors": int(f[5]), "req_per_s": float(f[6]), "p50_us": int(f[7]), "p99_us": int(f[8]),
                 "mb_per_s": float(f[9]), "unfinished_at_end": int(f[10]), "packets": int(f[11]), "dropped": int(f[12])})
print(json.dumps({"when": "$(date -u -d "@$T_START" +%FT%TZ)", "binary": {"version": "$BIN_VERSION", "sha256_12": "$BIN_SHA",
    "git_rev": "$GIT_REV", "uncommitted_src_changes": $GIT_DIRTY},
    "host": {"cpus": $NCPU, "kernel": "$(uname -r)", "loadavg_start": "$LOAD0", "loadavg_end": "$LOAD1"},
    "params": {"transports": "$TRANSPORTS", "cases": "$CASES", "losses_pct": "$LOSSES", "rounds": $ROUNDS, "dur_s": $DUR,
        "bulk_dur_s": $BULK_DUR, "size_mib": $SIZE_MIB, "small_conns": $SMALL_CONNS, "bulk_conns": $BULK_CONNS,
        "extra_toml": os.environ.get("EXTRA", "")},
    "summary": json.load(open(sys.argv[1])), "runs": runs, "wall_s": $((T_END - T_START))}, indent=1))
PY
  echo "JSON written to $OUT"
fi
