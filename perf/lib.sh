# shellcheck shell=bash
# Shared helpers for perf/*.sh (sourced, not run): network namespaces, veths and wireguard-go
# interfaces that are removed on every exit path, processes that are tracked by PID and killed only
# if they still live in one of *our* namespaces, and /proc accounting (CPU ticks, peak RSS).
#
# The caller sets TMP (a private temp dir, removed by perf_cleanup) and calls
#   trap perf_cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
# before creating anything.

PERF_PIDS=()      # processes we started (killed on exit if still in one of our namespaces)
PERF_NETNS=()     # namespaces we created
PERF_LINKS=()     # links created in the root namespace (deleted if they are still there)
PERF_WGSOCKS=()   # wireguard-go UAPI sockets (/var/run/wireguard is not per namespace)
# shellcheck disable=SC2034  # used by the callers
CLK_TCK=$(getconf CLK_TCK)

# perf_ns NAME: creates a namespace with lo up, removed by perf_cleanup.
perf_ns() {
  ip netns add "$1"
  PERF_NETNS+=("$1")
  ip -n "$1" link set lo up
}

# perf_veth NS1 IF1 ADDR1/LEN NS2 IF2 ADDR2/LEN: a veth pair between two namespaces.
perf_veth() {
  PERF_LINKS+=("$2")
  ip link add "$2" type veth peer name "$5"
  ip link set "$2" netns "$1"
  ip link set "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}

# perf_bg NS CMD...: starts CMD in namespace NS in the background, records its PID in PERF_PIDS
# and in PERF_LAST_PID. `ip netns exec` execs, so the PID is CMD's own.
perf_bg() {
  local ns=$1; shift
  ip netns exec "$ns" "$@" &
  PERF_LAST_PID=$!
  PERF_PIDS+=("$PERF_LAST_PID")
}

# perf_wg_up NS IFNAME: starts wireguard-go (foreground, tracked) and waits for its UAPI socket.
# IFNAME must be unique on the machine: the UAPI socket lives in /var/run/wireguard/IFNAME.sock,
# shared by every namespace (two concurrent runs using "wg0" would talk to each other's daemon).
perf_wg_up() {
  PERF_WGSOCKS+=("/var/run/wireguard/$2.sock")
  WG_PROCESS_FOREGROUND=1 perf_bg "$1" wireguard-go -f "$2" >"$TMP/wireguard-go.$2.log" 2>&1
  local _
  for _ in $(seq 100); do
    ip netns exec "$1" wg show "$2" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "wireguard-go did not come up on $2 in $1 (see $TMP/wireguard-go.$2.log)" >&2
  return 1
}

# perf_pid_in_ours PID: true when PID still lives in one of our namespaces.
perf_pid_in_ours() {
  local ns ours
  ns=$(ip netns identify "$1" 2>/dev/null) || return 1
  [ -n "$ns" ] || return 1
  for ours in "${PERF_NETNS[@]:-}"; do [ "$ns" = "$ours" ] && return 0; done
  return 1
}

# perf_sysctl KEY VALUE: sets a host-wide sysctl; perf_cleanup puts the old value back.
PERF_SYSCTLS=()
perf_sysctl() {
  local old
  old=$(sysctl -n "$1") || return 1
  PERF_SYSCTLS+=("$1=$old")
  sysctl -q -w "$1=$2"
}

perf_cleanup() {
  local p ns l s _ alive
  set +e
  for s in "${PERF_SYSCTLS[@]:-}"; do [ -n "$s" ] && sysctl -q -w "$s"; done
  for p in "${PERF_PIDS[@]:-}"; do
    [ -n "$p" ] && perf_pid_in_ours "$p" && kill -TERM "$p" 2>/dev/null
  done
  for _ in $(seq 30); do
    alive=0
    for p in "${PERF_PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  # Anything left in our namespaces was started by us (nginx workers, stragglers): KILL by PID.
  for ns in "${PERF_NETNS[@]:-}"; do
    [ -n "$ns" ] || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for _ in $(seq 20); do
    alive=0
    for ns in "${PERF_NETNS[@]:-}"; do
      [ -n "$ns" ] && [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for ns in "${PERF_NETNS[@]:-}"; do [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null; done
  for l in "${PERF_LINKS[@]:-}"; do [ -n "$l" ] && ip link del "$l" 2>/dev/null; done
  for s in "${PERF_WGSOCKS[@]:-}"; do [ -n "$s" ] && rm -f "$s"; done
  [ -n "${TMP:-}" ] && [ -d "$TMP" ] && rm -rf "$TMP"
  return 0
}

# perf_cpu_ticks PID...: utime+stime in clock ticks summed over PIDs (each PID's figure covers all
# of its threads, including exited ones). Missing PIDs count 0.
perf_cpu_ticks() {
  local p s t=0 f
  for p in "$@"; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }          # drop "pid (comm) "; comm may contain spaces
    read -r -a f <<<"$s"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}

# perf_host_ticks: "busy steal" clock ticks over all CPUs since boot (busy = user nice system irq
# softirq; steal = taken by the hypervisor).
perf_host_ticks() {
  local _c u n s _i _w irq sirq st _r
  read -r _c u n s _i _w irq sirq st _r </proc/stat
  echo "$((u + n + s + irq + sirq)) $st"
}

# perf_status_kib FIELD PID...: a /proc/PID/status figure in KiB (VmHWM, VmRSS, ...) summed over
# PIDs; missing PIDs count 0.
perf_status_kib() {
  local field=$1 p t=0 v
  shift
  for p in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# perf_hwm_kib PID...: VmHWM (peak RSS) summed over PIDs, KiB.
perf_hwm_kib() { perf_status_kib VmHWM "$@"; }

# perf_rss_kib PID...: VmRSS summed over PIDs, KiB.
perf_rss_kib() { perf_status_kib VmRSS "$@"; }

# perf_children PID: direct children of PID (e.g. nginx workers of a master).
perf_children() {
  ps -o pid= --ppid "$1" 2>/dev/null | tr -s ' \n' ' '
}

# perf_reaped_ticks: CPU ticks of this shell's waited-for children (cutime+cstime of $$), e.g.
# a wrk that has exited and been reaped.
perf_reaped_ticks() {
  local s f
  s=$(cat "/proc/$$/stat")
  s=${s##*) }
  read -r -a f <<<"$s"
  echo "$((f[13] + f[14]))"
}

# perf_require TOOL...: root, every TOOL on the PATH and an executable $BIN, or an exit saying
# which is missing.
perf_require() {
  local t
  [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "missing $t (.ci/setup installs the tools)" >&2; exit 1; }
  done
  [ -x "$BIN" ] || { echo "no broker binary at $BIN: cargo build --release (or BIN=...)" >&2; exit 1; }
}

# perf_traps: perf_cleanup on every exit path; INT, TERM and HUP exit with their usual codes.
perf_traps() {
  trap perf_cleanup EXIT
  trap 'echo "interrupted" >&2; exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# perf_facts: what a report names so that two runs can be compared: BIN_VERSION and BIN_SHA of
# $WGB, GIT_REV and GIT_DIRTY of the tree, NCPU, CPU_MODEL, LOAD0 and WG_VERSION.
# shellcheck disable=SC2034  # set for the callers
perf_facts() {
  BIN_VERSION=$("$WGB" --version 2>/dev/null || echo unknown)
  BIN_SHA=$(sha256sum "$WGB" | cut -c1-12)
  GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  GIT_DIRTY=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
  NCPU=$(nproc)
  CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
  WG_VERSION=$(wireguard-go --version 2>/dev/null | awk 'NR == 1 {sub(/^v/, "", $2); print $2}')
  WG_VERSION=${WG_VERSION:-unknown}
  # Debian's 0.0.20231211 calls itself v0.0.20230223: name the package too.
  local pkg
  if [ "$(command -v wireguard-go)" = /usr/bin/wireguard-go ] &&
    pkg=$(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null); then
    WG_VERSION="$WG_VERSION (Debian package $pkg)"
  fi
}

# perf_load_warning: a line when the load average before the start says the figures will be noisy.
perf_load_warning() {
  awk -v l="${LOAD0%% *}" -v n="$NCPU" 'BEGIN { exit !(l > 0.3 * n) }' &&
    echo "WARNING: load average ${LOAD0%% *} on $NCPU CPUs before start: the machine is busy; figures will be noisy"
  return 0
}

# perf_vendor_tunnel LETTER NET: a private TMP (perf_traps set first, so that every exit path
# cleans up), then namespaces V=wg<LETTER>v<pid> (the vendor) and B=wg<LETTER>b<pid> (the broker)
# joined by a veth (NET.1/30 in V, NET.2/30 in B), and wireguard-go interface WG (named as V: not
# wg0, its UAPI socket is machine-wide) in V at 10.77.0.1/24, listening on 51820 for the broker's
# key; the broker's [wireguard] section for it starts $TMP/broker.toml (append the rest). Sets
# V B WG TMP, VKEY VPUB (the vendor's keys) and BKEY BPUB (the broker's), made with $BIN.
# shellcheck disable=SC2034  # set for the callers
perf_vendor_tunnel() {
  local net=$2
  V=wg$1v$$; B=wg$1b$$; WG=$V
  perf_traps
  TMP=$(mktemp -d)
  chmod 755 "$TMP"   # nginx workers run unprivileged and must read the files
  perf_ns "$V"; perf_ns "$B"
  perf_veth "$V" "v$WG" "$net.1/30" "$B" "b$WG" "$net.2/30"
  VKEY=$("$BIN" genkey); VPUB=$(echo "$VKEY" | "$BIN" pubkey)
  BKEY=$("$BIN" genkey); BPUB=$(echo "$BKEY" | "$BIN" pubkey)
  perf_wg_up "$V" "$WG"
  echo "$VKEY" > "$TMP/v.key"
  ip netns exec "$V" wg set "$WG" private-key "$TMP/v.key" listen-port 51820 peer "$BPUB" allowed-ips 10.77.0.2/32
  ip -n "$V" addr add 10.77.0.1/24 dev "$WG"; ip -n "$V" link set "$WG" up
  cat > "$TMP/broker.toml" <<CFG
[wireguard]
private_key = "$BKEY"
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "$VPUB"
endpoint = "$net.1:51820"
allowed_ips = ["10.77.0.1/32"]
CFG
}

# perf_wait_handshake: waits (at most 5 s) for the vendor's wireguard-go ($WG in $V) to complete
# a handshake with the broker; exits when none comes.
perf_wait_handshake() {
  local hs _
  for _ in $(seq 1000); do
    hs=$(ip netns exec "$V" wg show "$WG" latest-handshakes | awk '{print $2}')
    [ "${hs:-0}" != 0 ] && return 0
    sleep 0.005
  done
  echo "no handshake" >&2
  exit 1
}

# perf_upstream NS [DIRECTIVES]: nginx (one worker) on NS's loopback at 127.0.0.1:8080 serving
# the files of $TMP/www (made here; fill it before the first request), DIRECTIVES (e.g.
# `location = /upload { return 204; }`) added to its server block.
perf_upstream() {
  mkdir -p "$TMP/www"
  cat > "$TMP/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:8080; root $TMP/www; ${2:-} } }
NGX
  perf_bg "$1" nginx -c "$TMP/nginx.conf"
}
