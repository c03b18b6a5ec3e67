"""Fork-free namespace handling against the real kernel."""

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
