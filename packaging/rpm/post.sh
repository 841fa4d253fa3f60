# %post for wgbroker ($1: 1 = first install, 2 = upgrade).
# The broker (group wgbroker) reads its configuration and token files such as
# /etc/wgbroker/gitlab.token; nobody else does. Key files loaded through LoadCredential= stay
# root:root 0600 (systemd reads them as root).
chown root:wgbroker /etc/wgbroker || :
chmod 0750 /etc/wgbroker || :
# State directory; systemd's StateDirectory= would create it too.
install -d -o wgbroker -g wgbroker -m 0700 /var/lib/wgbroker || :
# The service is not enabled or started on first install: it needs a private key and a
# configuration first (see wgbroker(1)). Only talk to systemd when it is the running init.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
exit 0
