#!/bin/sh
# Check the README's set-up on a fresh Debian 12 made by
# `debootstrap --variant=minbase` (no make, no Python, no compiler): the repo's
# committed tree is copied into a chroot and `./bootstrap.sh deps` runs there
# (every apt package of the demo and the tests, the venv, netlab with its test
# extra); then netlab validates the demo lab, the test tools import, and the
# CNI executables build (cc) and answer VERSION.
#
#   sudo tests/fresh/debian_minbase.sh [DIR]     # DIR: the chroot (default /var/tmp/netlab-fresh)
#
# Not part of the suite: it downloads a base system and ~400 MB of packages
# (minutes). Namespaces are not made in the chroot; the suite covers those.
# Services that packages would start (etcd-server's, in the host's namespace)
# are held off with policy-rc.d. Extra CAs of the host
# (/usr/local/share/ca-certificates: a machine behind a TLS proxy) are copied in
# before ca-certificates installs, whose postinst adds them to the bundle.
set -eu
ROOT=${1:-/var/tmp/netlab-fresh}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "$0: run as root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
[ -e "$ROOT" ] && { echo "$0: $ROOT exists; give another DIR or remove it" >&2; exit 2; }

cleanup() {
    umount "$ROOT/proc" 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
for tool in make python3 gcc; do
    if chroot "$ROOT" sh -c "command -v $tool" >/dev/null; then
        echo "$0: the minbase system already has $tool: not the fresh machine the README means" >&2
        exit 1
    fi
done
mkdir -p "$ROOT/root/netlab"
git -C "$REPO" archive HEAD | tar -x -C "$ROOT/root/netlab"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" /bin/sh -c '
    set -e
    cd /root/netlab
    ./bootstrap.sh deps
    .venv/bin/netlab validate -f topologies/demo.yaml
    .venv/bin/python -c "import pyroute2, scapy, yaml, click, rich, pytest, hypothesis"
    .venv/bin/netlab cni install --dir /tmp/cnibin >/dev/null   # builds the executables from cni/shim.c
    echo "{\"cniVersion\":\"1.1.0\"}" | CNI_COMMAND=VERSION /tmp/cnibin/netlab-bridge | grep -q supportedVersions
    for b in ip iptables-restore iptables-legacy-restore nft conntrack ipset tcpdump etcd iperf3 vagrant qemu-system-x86_64 /usr/lib/cni/bridge strace cc; do
        command -v "$b" >/dev/null || { echo "missing after set-up: $b" >&2; exit 1; }
    done
'
echo "fresh Debian 12 minbase: ./bootstrap.sh deps installed everything"
