#!/usr/bin/env bash
# packaging/boot-test.sh: run the .deb's wgbroker.service under a real systemd.
#
# CI containers and VMs often have no systemd as PID 1, so packaging/check.sh can only check the
# unit statically (systemd-analyze verify/security). This script boots this machine's own root
# file system as a throw-away systemd-nspawn container (an overlay on tmpfs: nothing it does
# persists; private network: only loopback) and, inside it, as an operator would:
#   installs the .deb, writes a key and tokens, `systemctl enable --now wgbroker` (Type=notify:
#   succeeds only once the broker sends READY=1 from inside the sandbox, with its credentials),
#   waits past WatchdogSec= (the watchdog must be fed), reloads, rates the running unit with
#   `systemd-analyze security`, upgrades (a running broker is restarted), removes (stopped and
#   disabled) and purges (nothing left).
# The broker cannot reach the example gateway from there; it runs, retries and stays ready.
#
# Run as root after packaging/check.sh (or give the .deb):   bash packaging/boot-test.sh [DEB]
# Needs overlayfs and systemd-nspawn (installs systemd-container if missing). Opt-in: not part of
# check.sh, because it boots a second systemd on the machine for about a minute.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DEB=${1:-$(find "$TARGET/packages" -maxdepth 1 -name 'wgbroker_*.deb' 2>/dev/null | head -1)}
EXPOSURE_MAX=${WGBROKER_EXPOSURE_MAX:-2.0}

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root"
if [ -z "$DEB" ] || [ ! -f "$DEB" ]; then fail "no .deb (run packaging/check.sh first, or pass its path)"; fi
if ! command -v systemd-nspawn >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
fi

WORK=$(mktemp -d /tmp/wgbroker-boot.XXXXXX)
MACHINE=wgbroker-boot-$$
NSPAWN_PID=
HAD_NSPAWN_RUN_DIR=
if [ -d /run/systemd/nspawn ]; then HAD_NSPAWN_RUN_DIR=1; fi
cleanup() {
    local rc=$?
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
    umount "$WORK/merged" 2>/dev/null || true
    umount "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
    if [ -z "$HAD_NSPAWN_RUN_DIR" ]; then
        rmdir /run/systemd/nspawn/locks /run/systemd/nspawn/propagate /run/systemd/nspawn 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT

step "Boot this root file system in a throw-away container"
mount -t tmpfs tmpfs "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/merged" "$WORK/pkgs"
cp "$DEB" "$WORK/pkgs/wgbroker.deb"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
# basic.target: none of the host's own services; wgbroker pulls in what it needs.
systemd-nspawn -q -D "$WORK/merged" -M "$MACHINE" --register=no --keep-unit --link-journal=no \
    --private-network --bind-ro="$WORK/pkgs":/pkgs -b -- systemd.unit=basic.target \
    >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
LEADER=
for _ in $(seq 1 60); do
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$LEADER" ] && break
    sleep 0.5
done
[ -n "$LEADER" ] || fail "the container did not start: $(tail -5 "$WORK/console.log")"
inside() { nsenter -t "$LEADER" -a env SYSTEMD_COLORS=0 SYSTEMD_PAGER= "$@"; }
state=$(inside timeout 60 systemctl is-system-running --wait || true)
case $state in running | degraded) ok "systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) up ($state)" ;;
*) fail "container systemd is '$state'" ;; esac

step "Install and configure as an operator would"
# Images built for Docker forbid service starts in maintainer scripts; this container may.
inside rm -f /usr/sbin/policy-rc.d
inside dpkg -i /pkgs/wgbroker.deb >/dev/null
inside sh -c 'umask 077 && wgbroker genkey >/etc/wgbroker/private.key && echo dummy-github >/etc/wgbroker/github.token &&
    echo JIRA_AUTH=dummy >/etc/wgbroker/environment &&
    install -m 0640 -o root -g wgbroker /dev/null /etc/wgbroker/gitlab.token && echo dummy-gitlab >/etc/wgbroker/gitlab.token'
ok "package installed; key, tokens and environment in /etc/wgbroker"

step "systemctl enable --now (Type=notify: waits for READY=1)"
inside timeout 60 systemctl enable --now wgbroker.service || {
    inside journalctl -u wgbroker --no-pager -o cat | tail -20
    fail "wgbroker.service did not start"
}
inside systemctl status wgbroker --no-pager | sed -n '1,12p'
ok "started and ready"
# ExecStartPre's `wgbroker check` probes io_uring and memlock inside the same sandbox.
host=$(inside journalctl -u wgbroker --no-pager -o cat | grep -E '^host OK|warning: \[runtime\] udp_' || true)
echo "$host" | grep -q '^host OK' || fail "ExecStartPre's check did not pass its host probe"
while IFS= read -r line; do echo "    $line"; done <<<"$host"
ok "wgbroker check probed io_uring and the memlock limit in the unit's sandbox"

step "Stays up past WatchdogSec= (35 s)"
sleep 35
show() { inside systemctl show wgbroker -p "$1" --value; }
[ "$(show ActiveState)/$(show SubState)" = active/running ] || fail "not running: $(show ActiveState)/$(show SubState)"
[ "$(show NRestarts)" = 0 ] || fail "restarted $(show NRestarts) times (watchdog?)"
ok "active/running, no restart; status: $(show StatusText)"

step "Reload, security rating of the running unit"
pid=$(show MainPID)
inside timeout 30 systemctl reload wgbroker.service || fail "reload failed"
[ "$(show MainPID)" = "$pid" ] || fail "reload replaced the main process"
ok "reloaded in place"
inside systemd-analyze security wgbroker.service --no-pager | tail -1 | tee "$WORK/security"
exposure=$(sed -n 's/.*Overall exposure level for wgbroker\.service: \([0-9.]*\).*/\1/p' "$WORK/security")
awk -v e="$exposure" -v max="$EXPOSURE_MAX" 'BEGIN { exit !(e != "" && e <= max) }' || fail "exposure $exposure > $EXPOSURE_MAX"
ok "exposure $exposure <= $EXPOSURE_MAX"

step "Upgrade restarts a running broker"
inside dpkg -i /pkgs/wgbroker.deb >/dev/null
sleep 1
[ "$(show ActiveState)" = active ] || fail "not active after upgrade"
[ "$(show MainPID)" != "$pid" ] || fail "upgrade did not restart the broker"
ok "restarted (pid $pid -> $(show MainPID))"

step "An environment the broker cannot use fails the start once, without a restart loop"
# `check` (ExecStartPre=) refuses what `run` would, with exit 78; Restart=on-abnormal does not
# retry an exit status, so the error is in the journal once, not every RestartSec= (2 s).
inside sh -c 'cp /etc/wgbroker/environment /etc/wgbroker/environment.good &&
    echo HTTPS_PROXY=socks5://proxy.example:1080 >>/etc/wgbroker/environment'
since=$(inside date +%s)
! inside timeout 60 systemctl restart wgbroker.service || fail "started with HTTPS_PROXY=socks5://..."
sleep 7
[ "$(show ActiveState)" = failed ] || fail "not failed but $(show ActiveState)/$(show SubState)"
refusals=$(inside journalctl -u wgbroker --since "@$since" --no-pager -o cat | grep -c 'HTTPS_PROXY: unsupported proxy scheme' || true)
[ "$refusals" = 1 ] || fail "the unsupported proxy was reported $refusals times (a restart loop?)"
inside sh -c 'mv /etc/wgbroker/environment.good /etc/wgbroker/environment'
inside systemctl reset-failed wgbroker.service
inside timeout 60 systemctl start wgbroker.service || fail "did not start again with the environment restored"
ok "failed once with exit 78 and the reason in the journal; started again once fixed"

step "Remove stops and disables; purge leaves nothing"
inside dpkg -r wgbroker >/dev/null
[ "$(show ActiveState)" = inactive ] || fail "still $(show ActiveState) after remove"
! inside test -L /etc/systemd/system/multi-user.target.wants/wgbroker.service || fail "still enabled after remove"
inside test -f /etc/wgbroker/private.key || fail "remove deleted the operator's key"
inside dpkg --purge wgbroker >/dev/null
for p in /etc/wgbroker /var/lib/wgbroker /usr/bin/wgbroker /usr/lib/systemd/system/wgbroker.service; do
    ! inside test -e "$p" || fail "$p left after purge"
done
! inside getent passwd wgbroker >/dev/null || fail "user wgbroker left after purge"
ok "stopped, disabled, key kept on remove; nothing left after purge"

echo
echo "boot test passed"
