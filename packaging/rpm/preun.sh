# %preun for wgbroker ($1: 0 = erase, 1 = upgrade).
# On erase, stop and disable the service. On upgrade it keeps running until %postun restarts it.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    # Stopping needs a running systemd (not a container or chroot without one).
    if [ -d /run/systemd/system ]; then
        systemctl --system stop wgbroker.service >/dev/null 2>&1 || :
    fi
    # Disabling only removes the [Install] symlinks; it works without a running systemd.
    systemctl --system --no-reload disable wgbroker.service >/dev/null 2>&1 || :
fi
exit 0
