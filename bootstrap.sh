#!/bin/sh
# netlab set-up on a fresh machine (Debian 12 minbase, Ubuntu 22.04+), as root.
#
#   ./bootstrap.sh demo    install everything, bring up topologies/demo.yaml, show it
#   ./bootstrap.sh test    install everything, run the whole test suite
#   ./bootstrap.sh deps    install everything, nothing else
#
# POSIX sh on purpose: a minimal Debian has neither make nor bash guaranteed.
set -eu
cd "$(dirname "$0")"
HERE=$(pwd)
VENV="$HERE/.venv"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap.sh: run as root (sudo ./bootstrap.sh $1): netlab creates network namespaces" >&2
        exit 1
    fi
}

apt_install() {
    # Install the packages of "$@" that are not installed yet (one apt-get update at most).
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "==> apt-get install$missing"
        export DEBIAN_FRONTEND=noninteractive
        if [ -z "${APT_UPDATED:-}" ]; then
            apt-get update -q
            APT_UPDATED=1
        fi
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
    fi
}

apt_deps() {
    # Runtime: the kernel's tools netlab drives. Test-only: the reference CNI
    # plugins, etcd, iperf3, Mininet (benchmark peer), vagrant (Vagrantfile check),
    # QEMU + a stock kernel for the IPVS subset (tests/vm), strace (which netlink
    # requests nft makes).
    # gcc + libc6-dev: `netlab cni install` builds the plugin executables from cni/shim.c.
    PKGS="python3 python3-venv python3-pip iproute2 iptables nftables conntrack ipset tcpdump procps kmod iputils-ping
          ca-certificates gcc libc6-dev"
    if [ "$1" = test ]; then
        PKGS="$PKGS containernetworking-plugins etcd-server etcd-client iperf3 mininet bridge-utils net-tools graphviz vagrant
              qemu-system-x86 busybox-static ipvsadm cpio gzip strace"
    fi
    # shellcheck disable=SC2086
    apt_install $PKGS
    # netlab needs Python 3.11+: Debian 12's python3 is 3.11, Ubuntu 22.04's is
    # 3.10, whose python3.11 package (universe) is then used; 24.04's is 3.12.
    if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        PY=/usr/bin/python3
    else
        apt_install python3.11 python3.11-venv
        PY=/usr/bin/python3.11
    fi
}

venv() {
    # The system's own Python (PY, from apt_deps; not whatever python is first
    # on PATH): that is what a fresh machine has. A venv of an older Python
    # (an earlier run on 3.10) is made anew.
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "==> $VENV holds Python < 3.11: making it anew with $PY"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    echo "==> pip install -e .[test]"
    "$VENV/bin/python" -m pip install -q -e "$HERE[test]"
}

case "${1:-}" in
deps)
    need_root deps; apt_deps test; venv ;;
demo)
    need_root demo; apt_deps demo; venv
    "$VENV/bin/netlab" up -f topologies/demo.yaml
    "$VENV/bin/netlab" status demo
    "$VENV/bin/netlab" check demo
    echo
    echo "The demo lab is up. Look around:"
    echo "  sudo $VENV/bin/netlab status demo -o wide"
    echo "  sudo $VENV/bin/netlab exec -l demo web-0 -- ip addr"
    echo "Tear it down with:"
    echo "  sudo $VENV/bin/netlab down demo"
    ;;
test)
    shift; need_root test; apt_deps test; venv
    # The whole suite owns the machine's labs: it includes `netlab cleanup`
    # without a lab, which removes every lab here (set 0 to leave that test out).
    NETLAB_TEST_CLEANUP_ALL=${NETLAB_TEST_CLEANUP_ALL:-1}
    export NETLAB_TEST_CLEANUP_ALL
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@" tests
    ;;
*)
    echo "usage: $0 demo | test | deps" >&2; exit 2 ;;
esac
