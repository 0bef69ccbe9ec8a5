#!/bin/sh
# Runs once inside the image as root, on both build paths: the unprivileged user agents
# work as, their workspace, and a clean apt state.
set -eu
groupadd --gid 1000 agent
useradd --uid 1000 --gid 1000 --create-home --home-dir /home/agent --shell /bin/bash agent
mkdir -p /workspace
chown agent:agent /workspace
git config --system init.defaultBranch main
git config --system safe.directory '*'
git config --system user.name "supervisor agent"
git config --system user.email "agent@supervisor.invalid"
# The container idles on this name, so an agent running `pkill sleep` keeps its sandbox.
ln -s /bin/sleep /usr/local/bin/sandbox-idle
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
