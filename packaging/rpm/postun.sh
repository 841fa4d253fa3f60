# %postun for wgbroker ($1: 0 = erase, 1 = upgrade).
# On upgrade, restart the broker only if it was running (try-restart). On erase, rpm keeps
# modified configuration as /etc/wgbroker/broker.toml.rpmsave; the keys and tokens the operator
# added, /var/lib/wgbroker and the wgbroker user are kept (rpm has no "purge"; remove them by
# hand if wanted: rm -rf /etc/wgbroker /var/lib/wgbroker; userdel wgbroker).
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl --system try-restart wgbroker.service >/dev/null 2>&1 || :
    fi
fi
exit 0
