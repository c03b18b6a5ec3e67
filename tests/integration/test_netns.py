"""Fork-free namespace handling against the real kernel."""

import os
import socket
import subprocess

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
