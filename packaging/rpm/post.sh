# %post for wgbroker ($1: 1 = first install, 2 = upgrade).
# The service is not enabled or started on first install: it needs a private key and a
# configuration first (see wgbroker(1)). Only talk to systemd when it is the running init.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
exit 0
