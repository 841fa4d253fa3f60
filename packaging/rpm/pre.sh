# %pre for wgbroker ($1: 1 = first install, 2 = upgrade).
# Create the system user before the files are unpacked, so that /etc/wgbroker and
# /var/lib/wgbroker get their owner (root:wgbroker, wgbroker:wgbroker) from the package.
# The sysusers.d file is not installed yet at %pre time: feed the same line on stdin.
if command -v systemd-sysusers >/dev/null 2>&1; then
    echo 'u wgbroker - "wgbroker network broker" /var/lib/wgbroker /usr/sbin/nologin' \
        | systemd-sysusers --replace=/usr/lib/sysusers.d/wgbroker.conf - || :
fi
if ! getent group wgbroker >/dev/null; then
    groupadd --system wgbroker || :
fi
if ! getent passwd wgbroker >/dev/null; then
    useradd --system --gid wgbroker --home-dir /var/lib/wgbroker --no-create-home \
        --shell /usr/sbin/nologin --comment "wgbroker network broker" wgbroker || :
fi
exit 0
