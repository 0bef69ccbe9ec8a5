#!/bin/sh
# Runs once inside the image as root: the login user (whose sudo needs its password), the
# workspace the sandbox shell starts in, and no units that need real hardware.
set -eu
groupadd --gid 1000 agent
useradd --uid 1000 --gid 1000 --create-home --home-dir /home/agent --shell /bin/bash \
    --groups sudo agent
echo 'agent:deploy-test-password' | chpasswd
# Named, not through the sudo group: `docker exec -u 1000:1000` drops supplementary groups.
echo 'agent ALL=(ALL:ALL) ALL' > /etc/sudoers.d/agent
chmod 440 /etc/sudoers.d/agent
mkdir -p /workspace
chown agent:agent /workspace
# A persistent journal, split per user, so `journalctl --user` reads user units' logs.
mkdir -p /var/log/journal
systemctl mask getty.target console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-modules-load.service sys-kernel-debug.mount \
    sys-kernel-tracing.mount systemd-remount-fs.service systemd-firstboot.service 2>/dev/null || true
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
