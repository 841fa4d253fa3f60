#!/usr/bin/env bash
# packaging/check.sh: build the .deb and .rpm and check them end to end.
#
# Run as root on a (fresh) Debian machine, from anywhere:   bash packaging/check.sh
# It installs what it needs (idempotently), builds the release binary (honouring
# CARGO_TARGET_DIR; a second run reuses the build), builds both packages, inspects their contents
# and scripts, lints them (lintian, rpmlint; accepted findings live in packaging/lintian-overrides
# and packaging/rpmlintrc, each with its reason; packaging/rpmlint.toml sets what an rpm
# distribution would: gzip man pages, SPDX licence), checks the systemd unit (systemd-analyze verify
# must print nothing; systemd-analyze security must rate it <= 2.0), then installs the .deb on this
# machine, runs the installed binary against the shipped configuration as the wgbroker user,
# upgrades, removes and purges it, and checks that nothing is left behind. The .rpm is installed
# and erased too, with a private rpm database. Exits non-zero on the first failure.
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target), WGBROKER_EXPOSURE_MAX (default 2.0).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR ;; esac
EXPOSURE_MAX=${WGBROKER_EXPOSURE_MAX:-2.0}
OUT=$CARGO_TARGET_DIR/packages
STAGE=$CARGO_TARGET_DIR/release/rpm
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# Everything this script puts on the machine outside the repository and the target dir is
# removed again on exit, whatever happens.
WORK=$(mktemp -d /tmp/wgbroker-check.XXXXXX)
GITLAB_TOKEN_FILE=/etc/wgbroker/gitlab.token
cleanup() {
    local rc=$?
    if [ -n "${CREATED_GITLAB_TOKEN:-}" ]; then rm -f "$GITLAB_TOKEN_FILE"; fi
    if [ -n "${DEB_INSTALLED:-}" ] && dpkg-query -W wgbroker >/dev/null 2>&1; then
        echo "cleanup: purging the wgbroker package" >&2
        dpkg --purge wgbroker >/dev/null 2>&1 || true
    fi
    if [ -n "${RPM_INSTALLED:-}" ]; then
        echo "cleanup: erasing the wgbroker rpm and what it keeps" >&2
        rpm --dbpath "$WORK/rpmdb" -e wgbroker >/dev/null 2>&1 || true
        rm -rf /etc/wgbroker /var/lib/wgbroker
        userdel wgbroker >/dev/null 2>&1 || true
        groupdel wgbroker >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs tools and the package"
command -v cargo >/dev/null || fail "cargo not found (install a Rust toolchain first)"

# ---------------------------------------------------------------------------------------------
step "Tools"
apt_need=()
command -v lintian >/dev/null || apt_need+=(lintian)
command -v rpm >/dev/null || apt_need+=(rpm)
command -v rpmlint >/dev/null || apt_need+=(rpmlint)
command -v systemd-analyze >/dev/null || apt_need+=(systemd)
# systemd-analyze verify checks Documentation=man:wgbroker(1) with man(1).
command -v man >/dev/null || apt_need+=(man-db)
command -v shellcheck >/dev/null || apt_need+=(shellcheck)
command -v strip >/dev/null || apt_need+=(binutils)
command -v groff >/dev/null || apt_need+=(groff-base)
if [ ${#apt_need[@]} -gt 0 ]; then
    echo "installing: ${apt_need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    cargo install --locked --force cargo-deb --version "$CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version 2>/dev/null | grep -qx "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"; then
    cargo install --locked --force cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION"
fi
for t in lintian rpm rpmlint systemd-analyze man shellcheck strip groff; do
    command -v "$t" >/dev/null || fail "$t is still missing"
done
echo "$(lintian --version); rpm $(rpm --version | awk '{print $3}'); rpmlint $(rpmlint --version)"
echo "$(systemd-analyze --version | head -1); $(cargo deb --version); $(cargo generate-rpm --version)"

# ---------------------------------------------------------------------------------------------
step "Scripts (shellcheck, sh -n)"
for s in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm; do
    sh -n "$s"
    shellcheck -s sh "$s"
done
for s in packaging/rpm/*.sh; do
    sh -n "$s"
    shellcheck -s sh "$s"
done
shellcheck -s bash packaging/check.sh packaging/boot-test.sh
ok "maintainer scripts and scriptlets parse and pass shellcheck"

step "Man page (groff warnings)"
man_warnings=$(groff -man -ww -z packaging/wgbroker.1 2>&1 || true)
[ -z "$man_warnings" ] || fail "groff warnings in packaging/wgbroker.1:"$'\n'"$man_warnings"
ok "packaging/wgbroker.1 renders without warnings"

# ---------------------------------------------------------------------------------------------
step "Build (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --bin wgbroker
BIN=$CARGO_TARGET_DIR/release/wgbroker
[ -x "$BIN" ] || fail "no binary at $BIN"
"$BIN" --version

step "Debian package (cargo deb)"
mkdir -p "$OUT"
rm -f "$OUT"/wgbroker_*.deb "$OUT"/wgbroker-dbgsym_*.ddeb "$OUT"/wgbroker-*.rpm
cargo deb --no-build --output "$OUT"
DEB=$(ls "$OUT"/wgbroker_*.deb)
echo "$DEB"

step "RPM package (cargo generate-rpm)"
# cargo-generate-rpm packs files as they are: stage a stripped binary and the gzipped man page.
mkdir -p "$STAGE"
strip --strip-unneeded -o "$STAGE/wgbroker" "$BIN"
gzip -9n <packaging/wgbroker.1 >"$STAGE/wgbroker.1.gz"
cargo generate-rpm --output "$OUT"
RPM=$(ls "$OUT"/wgbroker-*.rpm)
echo "$RPM"
ls -l "$DEB" "$RPM"

# ---------------------------------------------------------------------------------------------
# The files both packages must ship (relative to /).
expected_files=(
    usr/bin/wgbroker
    usr/lib/systemd/system/wgbroker.service
    usr/lib/sysusers.d/wgbroker.conf
    usr/lib/systemd/system/wgbroker-gateway.service
    usr/share/wgbroker/examples/gateway.toml
    etc/wgbroker/broker.toml
    usr/share/man/man1/wgbroker.1.gz
    usr/share/doc/wgbroker/README.md
)
for p in perf/profiles/*.toml; do
    expected_files+=("usr/share/wgbroker/profiles/$(basename "$p")")
done

step "Inspect the .deb (dpkg-deb -c / -I)"
dpkg-deb -c "$DEB" | tee "$WORK/deb.list"
for f in "${expected_files[@]}" usr/share/doc/wgbroker/copyright usr/share/doc/wgbroker/changelog.Debian.gz \
    usr/share/lintian/overrides/wgbroker; do
    grep -q " \./$f\$" "$WORK/deb.list" || fail ".deb lacks /$f"
done
grep -qE '^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/wgbroker$' "$WORK/deb.list" || fail "/usr/bin/wgbroker is not root 0755"
ok "all ${#expected_files[@]} expected paths (+ copyright, changelog, overrides) are in the .deb"
dpkg-deb -I "$DEB" | tee "$WORK/deb.info"
for s in postinst prerm postrm conffiles; do
    grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$s( |\$)" "$WORK/deb.info" || fail ".deb has no $s"
done
dpkg-deb -f "$DEB" Package Version Architecture Depends Section
[ "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = /etc/wgbroker/broker.toml ] ||
    fail "conffiles is not exactly /etc/wgbroker/broker.toml"
ok "postinst, prerm, postrm present; /etc/wgbroker/broker.toml is the only conffile"
mkdir -p "$WORK/deb"
dpkg-deb -x "$DEB" "$WORK/deb"
cmp "$WORK/deb/usr/lib/systemd/system/wgbroker.service" systemd/wgbroker.service
cmp "$WORK/deb/etc/wgbroker/broker.toml" packaging/broker.toml
cmp "$WORK/deb/usr/lib/systemd/system/wgbroker-gateway.service" systemd/wgbroker-gateway.service
cmp "$WORK/deb/usr/share/wgbroker/examples/gateway.toml" packaging/gateway.toml
zcat "$WORK/deb/usr/share/man/man1/wgbroker.1.gz" | cmp - packaging/wgbroker.1
ok "unit, configuration and man page are the repository's files"

step "Inspect the .rpm (rpm -qlp / --scripts)"
rpm -qip "$RPM"
rpm -qlvp "$RPM" | tee "$WORK/rpm.list"
for f in "${expected_files[@]}"; do
    grep -q " /$f\$" "$WORK/rpm.list" || fail ".rpm lacks /$f"
done
grep -qE '^-rw-r----- +1 root +wgbroker .* /etc/wgbroker/broker.toml$' "$WORK/rpm.list" ||
    fail "broker.toml is not root:wgbroker 0640 in the .rpm"
ok "all ${#expected_files[@]} expected paths are in the .rpm, with their owners"
[ "$(rpm -qp --configfiles "$RPM")" = /etc/wgbroker/broker.toml ] || fail "config files are not exactly broker.toml"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" | grep -qx 'cn /etc/wgbroker/broker.toml' ||
    fail "broker.toml is not %config(noreplace)"
ok "/etc/wgbroker/broker.toml is %config(noreplace)"
rpm -qp --scripts "$RPM" | tee "$WORK/rpm.scripts"
for s in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$s scriptlet" "$WORK/rpm.scripts" || fail ".rpm has no $s scriptlet"
done
ok "pre/post install and uninstall scriptlets present"

# ---------------------------------------------------------------------------------------------
step "lintian"
# Overrides ship inside the package (/usr/share/lintian/overrides/wgbroker). --fail-on warning:
# every warning is either fixed or overridden there with its reason.
lintian --allow-root --display-info --fail-on error,warning "$DEB" | tee "$WORK/lintian.out" ||
    fail "lintian found errors or warnings (see above)"
echo "accepted in packaging/lintian-overrides:"
# (Shown separately: lintian 2.116 exits 2 when --show-overrides and --fail-on are combined.)
lintian --allow-root --display-info --show-overrides "$DEB" | grep '^O: ' || true
ok "lintian: no errors or warnings ($(grep -c '^I: ' "$WORK/lintian.out" || true) info tags, see above)"

step "rpmlint"
# rpmlint exits non-zero on errors only; warnings must be fixed or filtered in packaging/rpmlintrc.
rpmlint_rc=0
rpmlint -c packaging/rpmlint.toml -r packaging/rpmlintrc "$RPM" | tee "$WORK/rpmlint.out" || rpmlint_rc=$?
summary=$(grep -E '[0-9]+ packages? and [0-9]+ specfiles? checked' "$WORK/rpmlint.out" || true)
[ -n "$summary" ] || fail "no rpmlint summary line (rpmlint exit $rpmlint_rc)"
echo "$summary" | grep -qE '; 0 errors, 0 warnings' || fail "rpmlint: $summary"
[ "$rpmlint_rc" -eq 0 ] || fail "rpmlint exited $rpmlint_rc"
ok "rpmlint: $summary"

# ---------------------------------------------------------------------------------------------
step "systemd-analyze security --offline=yes (threshold $EXPOSURE_MAX)"
systemd-analyze security --offline=yes --no-pager systemd/wgbroker.service | tee "$WORK/security.out"
exposure=$(sed -n 's/.*Overall exposure level for wgbroker\.service: \([0-9.]*\).*/\1/p' "$WORK/security.out")
[ -n "$exposure" ] || fail "no 'Overall exposure level' line"
awk -v e="$exposure" -v max="$EXPOSURE_MAX" 'BEGIN { exit !(e <= max) }' ||
    fail "exposure $exposure > $EXPOSURE_MAX"
ok "exposure $exposure <= $EXPOSURE_MAX"

# ---------------------------------------------------------------------------------------------
step "Install the .deb (dpkg -i)"
if dpkg-query -W wgbroker >/dev/null 2>&1; then
    fail "wgbroker is already installed on this machine; purge it first (dpkg --purge wgbroker)"
fi
for p in /usr/bin/wgbroker /etc/wgbroker /var/lib/wgbroker; do
    [ ! -e "$p" ] || fail "$p exists before installing; refusing to mix with a manual installation"
done
! getent passwd wgbroker >/dev/null || fail "user wgbroker exists before installing"
DEB_INSTALLED=1
dpkg -i "$DEB"
getent passwd wgbroker || fail "postinst did not create the wgbroker user"
[ "$(stat -c '%U:%G %a' /etc/wgbroker)" = "root:wgbroker 750" ] || fail "/etc/wgbroker: $(stat -c '%U:%G %a' /etc/wgbroker)"
[ "$(stat -c '%U:%G %a' /etc/wgbroker/broker.toml)" = "root:wgbroker 640" ] ||
    fail "broker.toml: $(stat -c '%U:%G %a' /etc/wgbroker/broker.toml)"
[ "$(stat -c '%U:%G %a' /var/lib/wgbroker)" = "wgbroker:wgbroker 700" ] || fail "/var/lib/wgbroker ownership"
ok "user created; /etc/wgbroker root:wgbroker 0750, broker.toml 0640, /var/lib/wgbroker 0700"

step "systemd-analyze verify (installed unit; must print nothing)"
verify_out=$(systemd-analyze verify /usr/lib/systemd/system/wgbroker.service 2>&1) || fail "verify failed: $verify_out"
[ -z "$verify_out" ] || fail "systemd-analyze verify printed:"$'\n'"$verify_out"
ok "systemd-analyze verify: no output"

step "Run the installed binary against the shipped configuration, as the wgbroker user"
as_wgbroker() { setpriv --reuid=wgbroker --regid=wgbroker --init-groups -- "$@"; }
# Credentials the unit would load with LoadCredential= (in a private temp dir, readable by the
# service user only, as systemd would hand them over).
CREDS=$WORK/credentials
install -d -m 0700 -o wgbroker -g wgbroker "$CREDS"
/usr/bin/wgbroker genkey >"$CREDS/wgbroker.key"
echo "dummy-github-token" >"$CREDS/github.token"
chown wgbroker:wgbroker "$CREDS"/*
chmod 0400 "$CREDS"/*
chmod 0711 "$WORK"
/usr/bin/wgbroker pubkey <"$CREDS/wgbroker.key"
# The shipped config reads the GitLab token from a file (root:wgbroker 0640, removed on exit) and
# the Jira header from the environment (given to this one command only).
[ ! -e "$GITLAB_TOKEN_FILE" ] || fail "$GITLAB_TOKEN_FILE exists already"
CREATED_GITLAB_TOKEN=1
install -m 0640 -o root -g wgbroker /dev/null "$GITLAB_TOKEN_FILE"
echo "dummy-gitlab-token" >"$GITLAB_TOKEN_FILE"
check_installed() {
    as_wgbroker env CREDENTIALS_DIRECTORY="$CREDS" JIRA_AUTH="Basic ZHVtbXk6ZHVtbXk=" \
        /usr/bin/wgbroker check "$@"
}
check_installed -c /etc/wgbroker/broker.toml || fail "wgbroker check failed on the installed configuration"
ok "wgbroker check -c /etc/wgbroker/broker.toml passes with the credentials supplied"
for p in /usr/share/wgbroker/profiles/*.toml; do
    check_installed -c /etc/wgbroker/broker.toml -c "$p" >/dev/null || fail "check with profile $p failed"
    ok "check with profile $p"
done
set +e
as_wgbroker env -u CREDENTIALS_DIRECTORY JIRA_AUTH=x /usr/bin/wgbroker check -c /etc/wgbroker/broker.toml 2>"$WORK/nocreds.err"
rc=$?
set -e
cat "$WORK/nocreds.err"
[ "$rc" -eq 78 ] || fail "check without credentials exited $rc, expected 78"
ok "without the credentials, check exits 78 and names what is missing"
as_wgbroker /usr/bin/wgbroker explain -c /etc/wgbroker/broker.toml GET https://ghe.example.com/api/v3/repos/acme/app ||
    fail "explain of the README example did not allow it"
rm -f "$GITLAB_TOKEN_FILE"
CREATED_GITLAB_TOKEN=
man -w wgbroker >/dev/null || fail "man cannot find wgbroker(1)"
ok "man wgbroker resolves to $(man -w wgbroker)"

step "Upgrade in place keeps a changed configuration (dpkg -i again)"
echo "# local change kept across upgrades" >>/etc/wgbroker/broker.toml
dpkg -i --force-confold "$DEB"
grep -q '^# local change kept across upgrades$' /etc/wgbroker/broker.toml || fail "local change to broker.toml lost"
[ "$(stat -c '%U:%G %a' /etc/wgbroker/broker.toml)" = "root:wgbroker 640" ] || fail "broker.toml ownership after upgrade"
ok "local change kept, ownership kept"

step "Remove (dpkg -r): disabled, binary and unit gone, configuration and user kept"
WANTS=/etc/systemd/system/multi-user.target.wants/wgbroker.service
# As the operator would (`systemctl enable` works without a running systemd: it only links).
systemctl --no-reload enable wgbroker.service
[ -L "$WANTS" ] || fail "systemctl enable did not create $WANTS"
dpkg -r wgbroker
[ ! -L "$WANTS" ] || fail "prerm did not disable the unit ($WANTS left)"
for p in /usr/bin/wgbroker /usr/lib/systemd/system/wgbroker.service /usr/lib/sysusers.d/wgbroker.conf; do
    [ ! -e "$p" ] || fail "$p left after remove"
done
[ -f /etc/wgbroker/broker.toml ] || fail "broker.toml removed by dpkg -r"
getent passwd wgbroker >/dev/null || fail "user removed by dpkg -r"
ok "removed and disabled; /etc/wgbroker/broker.toml and user wgbroker kept"

step "Purge (dpkg --purge): nothing left"
dpkg --purge wgbroker
DEB_INSTALLED=
left=()
for p in /usr/bin/wgbroker /usr/lib/systemd/system/wgbroker.service /usr/lib/sysusers.d/wgbroker.conf \
    /etc/wgbroker /var/lib/wgbroker /usr/share/wgbroker /usr/share/doc/wgbroker /usr/share/man/man1/wgbroker.1.gz \
    /usr/share/lintian/overrides/wgbroker /etc/systemd/system/multi-user.target.wants/wgbroker.service; do
    if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done
getent passwd wgbroker >/dev/null && left+=("user wgbroker")
getent group wgbroker >/dev/null && left+=("group wgbroker")
dpkg-query -W wgbroker >/dev/null 2>&1 && left+=("dpkg database entry")
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
ok "no file, directory, user, group or dpkg entry left"

# ---------------------------------------------------------------------------------------------
step "Install and erase the .rpm (private rpm database, --nodeps: this is not an rpm system)"
RPMDB=$WORK/rpmdb
mkdir -p "$RPMDB"
rpm --dbpath "$RPMDB" --initdb
RPM_INSTALLED=1
rpm --dbpath "$RPMDB" -i --nodeps "$RPM"
getent passwd wgbroker >/dev/null || fail "%pre did not create the wgbroker user"
[ "$(stat -c '%U:%G %a' /etc/wgbroker/broker.toml)" = "root:wgbroker 640" ] || fail "rpm: broker.toml ownership"
[ "$(stat -c '%U:%G %a' /var/lib/wgbroker)" = "wgbroker:wgbroker 700" ] || fail "rpm: /var/lib/wgbroker ownership"
/usr/bin/wgbroker --version
echo "# local change" >>/etc/wgbroker/broker.toml
rpm --dbpath "$RPMDB" -e wgbroker
[ ! -e /usr/bin/wgbroker ] || fail "rpm -e left /usr/bin/wgbroker"
[ -f /etc/wgbroker/broker.toml.rpmsave ] || fail "rpm -e did not keep the changed configuration as .rpmsave"
ok "rpm: user created by %pre, ownership right, changed config kept as broker.toml.rpmsave on erase"
# rpm has no purge: clean up by hand what an rpm system keeps on purpose.
rm -rf /etc/wgbroker /var/lib/wgbroker
userdel wgbroker 2>/dev/null || true
getent group wgbroker >/dev/null && groupdel wgbroker
! getent passwd wgbroker >/dev/null || fail "could not remove the wgbroker user after the rpm test"
RPM_INSTALLED=

step "Summary"
ls -l "$DEB" "$RPM"
echo "exposure: $exposure; lintian: clean (see overrides); rpmlint: $summary"
echo "packaging check passed (to run the unit under a real systemd too: bash packaging/boot-test.sh)"
