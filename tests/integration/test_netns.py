"""Fork-free namespace handling against the real kernel."""

import os
import socket
import subprocess

import pytest

from netlab import netns
from tests.helpers import unique


def test_create_is_upsert_and_visible_to_iproute2():
    name = f"netlab-test.{unique('ns')}"
    try:
        assert netns.create(name) is True
        assert netns.create(name) is False
        out = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True)
        assert out.returncode == 0 and "lo:" in out.stdout
        assert netns.inode(name) != netns.inode("/proc/self/ns/net")
    finally:
        netns.remove(name)
    assert not netns.exists(name)
    assert netns.remove(name) is False


def test_iproute_and_sysctl_act_inside_only():
    name = f"netlab-test.{unique('ns')}"
    netns.create(name)
    try:
        host_fwd = open("/proc/sys/net/ipv4/ip_forward").read().strip()
        netns.write_sysctl(name, "net.ipv4.ip_forward", 1 if host_fwd == "0" else 0)
        assert netns.read_sysctl(name, "net.ipv4.ip_forward") != host_fwd
        assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == host_fwd
        with netns.iproute(name) as ipr:
            assert [l.get("ifname") for l in ipr.get_links()] == ["lo"]
        s = netns.socket_in(name, socket.AF_INET, socket.SOCK_DGRAM)
        s.close()
        p = netns.run_in(name, ["ip", "-o", "link"], capture_output=True, text=True)
        assert len(p.stdout.splitlines()) == 1 and ": lo:" in p.stdout
    finally:
        netns.remove(name)


def test_mount_points_are_links_to_one_inode_and_iproute2_handles_them():
    tag = unique("nlC-ns")
    names = [f"{tag}-{i}" for i in range(5)]
    try:
        for n in names:
            assert netns.create(n, lo_up=True) is True
        # Each name is its own namespace (the mount is on the name) ...
        assert len({netns.inode(n) for n in names}) == 5
        # ... over one shared file: no inode allocated (nor freed) per namespace.
        under = {e.inode() for e in os.scandir(netns.NETNS_DIR) if e.name.startswith(tag)}
        assert len(under) == 1
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert all(n in listed for n in names)
        out = subprocess.run(["ip", "netns", "exec", names[2], "ip", "-o", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        assert "UP" in out  # lo_up
        subprocess.run(["ip", "netns", "del", names[0]], check=True)  # iproute2 removes one name only
        assert not netns.exists(names[0]) and all(netns.exists(n) for n in names[1:])
        assert netns.create(names[0]) is True
    finally:
        for n in names:
            netns.remove(n)
    assert not any(e.name.startswith(tag) for e in os.scandir(netns.NETNS_DIR))
    # With every name gone the shared file is gone too; the next namespace starts a new one.
    again = f"{tag}-again"
    try:
        assert netns.create(again) is True and netns.exists(again)
    finally:
        netns.remove(again)


def test_current_name_and_root_check_inside_a_created_namespace():
    name = unique("nlpx-ns-")
    outside = netns.current_name()
    root_outside = netns.in_root_namespace()
    netns.create(name)
    try:
        with netns.entered(name):
            assert netns.current_name() == name
            assert netns.in_root_namespace() is False
        assert netns.current_name() == outside != name  # only the thread moved, and it is back
        assert netns.in_root_namespace() is root_outside
    finally:
        netns.remove(name)


def test_an_unnamed_namespace_counts_as_root_only_where_pid1s_cannot_be_read(monkeypatch):
    """Positive identification: the fallback never takes an unknown namespace for a node's.

    PID 1's namespace is unreadable in some sandboxes (this machine's among
    them), so "readable" is played by an fd on the namespace the test started in.
    """
    from cni.overlay.kernel import Iptables
    from proxy.backend import SyncError
    from proxy.cli import parser
    from proxy.iptables_apply import IptablesBackend
    from proxy.ipvs import own_netns

    name = unique("nlpx-ns-")
    args = parser().parse_args(["--spec", "/nonexistent", "--mode", "nftables"])
    start = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        monkeypatch.setattr(netns, "_PID1", f"/proc/self/fd/{start}")
        assert netns.in_root_namespace() is True
        netns.create(name)
        with netns.entered(name):
            assert own_netns(args) == name and netns.current_name() == name
            netns.remove(name)  # the name goes, the namespace lives on while this thread is in it
            assert netns.current_name() is None
            assert netns.in_root_namespace() is False  # not PID 1's
            IptablesBackend(None)  # not the root: the iptables backend may program it (nothing runs yet)
            with pytest.raises(SyncError, match="did not create"):
                own_netns(args)  # ipvs, nftables and userspace modes want a named one
            with pytest.raises(RuntimeError, match="root namespace"):
                Iptables(None)  # flanneld's role too
            monkeypatch.setattr(netns, "_PID1", "/nonexistent/ns/net")  # PID 1's unreadable
            assert netns.in_root_namespace() is True
            with pytest.raises(SyncError, match="root namespace"):
                IptablesBackend(None)
    finally:
        os.close(start)
        netns.remove(name)
    assert not netns.exists(name)


def test_without_pid1s_namespace_a_named_one_is_still_not_the_root(monkeypatch):
    name = unique("nlpx-ns-")
    monkeypatch.setattr(netns, "_PID1", "/nonexistent/ns/net")
    netns.create(name)
    try:
        with netns.entered(name):
            assert netns.in_root_namespace() is False
    finally:
        netns.remove(name)


def test_importing_it_pulls_in_no_typing():
    """The CNI plugins import netlab.netns at start-up, once per pod: nothing heavy at module level."""
    import sys

    p = subprocess.run([sys.executable, "-c", "import sys, netlab.netns; sys.exit('typing' in sys.modules)"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr or "netlab.netns imported typing"
