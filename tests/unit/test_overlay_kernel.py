"""Kernel.observe without root: what it asks netlink for, and what it makes of the answers.

A fake pyroute2 socket answers with canned messages and records every
request. observe must ask for the overlay's objects only (flannel.1 by
name, its addresses, ARP and FDB entries by ifindex, the main table's
unicast routes, links by index for route devices) and never dump every
link: the node's namespace holds a veth per pod. The fake kernel also
answers as if it ignored the filters (entries of other devices, other
tables), as a kernel without strict checking would: the State stays the same.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Network

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETNEIGH, RTM_GETROUTE

from cni.overlay import netconf
from cni.overlay.kernel import Kernel
from cni.overlay.plan import Address, FdbEntry, Neighbour, Route, VxlanDevice

PERMANENT, REACHABLE, ONLINK = 0x80, 0x02, 4


class Msg(dict):
    """Enough of a pyroute2 message: header fields and NLAs by name."""

    def get_attr(self, name, default=None):
        return self.get(name, default)


LINKS = {
    2: Msg(index=2, ifname="eth0", mtu=1500, flags=1),
    3: Msg(index=3, ifname="cni0", mtu=1450, flags=1),
    5: Msg(index=5, ifname="flannel.1", mtu=1450, flags=1, IFLA_ADDRESS="8A:67:38:77:C9:36",
           IFLA_LINKINFO={"IFLA_INFO_KIND": "vxlan", "IFLA_INFO_DATA": {
               "IFLA_VXLAN_ID": 1, "IFLA_VXLAN_LOCAL": "192.168.56.11", "IFLA_VXLAN_PORT": 8472,
               "IFLA_VXLAN_LINK": 2, "IFLA_VXLAN_LEARNING": 0}}),
}
ADDRS = [Msg(index=5, prefixlen=32, IFA_ADDRESS="10.244.1.0"), Msg(index=2, prefixlen=24, IFA_ADDRESS="192.168.56.11"),
         Msg(index=3, prefixlen=24, IFA_ADDRESS="10.244.1.1")]
ARP = [Msg(ifindex=5, state=PERMANENT, NDA_DST="10.244.2.0", NDA_LLADDR="AA:BB:CC:00:00:02"),
       Msg(ifindex=5, state=REACHABLE, NDA_DST="10.244.9.0", NDA_LLADDR="aa:bb:cc:00:00:09"),  # not flannel's
       Msg(ifindex=3, state=PERMANENT, NDA_DST="10.244.1.7", NDA_LLADDR="aa:bb:cc:00:01:07")]  # a pod's, on cni0
FDB = [Msg(ifindex=5, state=PERMANENT, NDA_DST="192.168.56.12", NDA_LLADDR="aa:bb:cc:00:00:02"),
       Msg(ifindex=5, state=PERMANENT, NDA_LLADDR="00:00:00:00:00:00"),  # no dst: not a peer's entry
       Msg(ifindex=7, state=PERMANENT, NDA_LLADDR="33:33:00:00:00:01"),  # a pod veth's multicast entry
       Msg(ifindex=7, state=PERMANENT, NDA_LLADDR="aa:bb:cc:00:01:07", NDA_DST="10.9.9.9")]
ROUTES = [
    Msg(table=254, type=1, dst_len=24, flags=ONLINK, RTA_TABLE=254, RTA_DST="10.244.2.0", RTA_GATEWAY="10.244.2.0", RTA_OIF=5),
    Msg(table=254, type=1, dst_len=24, flags=0, RTA_TABLE=254, RTA_DST="10.244.3.0", RTA_GATEWAY="192.168.56.13", RTA_OIF=2),
    Msg(table=254, type=1, dst_len=24, flags=0, RTA_TABLE=254, RTA_DST="10.244.1.0", RTA_OIF=3),  # own subnet
    Msg(table=254, type=1, dst_len=24, flags=0, RTA_TABLE=254, RTA_DST="192.168.56.0", RTA_OIF=2),  # underlay
    Msg(table=254, type=1, dst_len=0, flags=0, RTA_TABLE=254, RTA_GATEWAY="192.168.56.1", RTA_OIF=2),  # default
    Msg(table=254, type=1, dst_len=24, flags=0, RTA_TABLE=254, RTA_DST="10.244.4.0", RTA_OIF=99),  # a gone device
    Msg(table=254, type=6, dst_len=24, flags=0, RTA_TABLE=254, RTA_DST="10.244.5.0"),  # blackhole
    Msg(table=100, type=1, dst_len=24, flags=0, RTA_TABLE=100, RTA_DST="10.244.6.0", RTA_OIF=2),  # another table
]


class FakeIPRoute:
    def __init__(self, links: dict[int, Msg]) -> None:
        self.links = links
        self.requests: list[tuple] = []

    def link(self, command, ifname=None, index=None):
        assert command == "get"
        self.requests.append(("link", ifname or index))
        for link in self.links.values():
            if link["ifname"] == ifname or link["index"] == index:
                return [link]
        raise NetlinkError(errno.ENODEV, "No such device")

    def get_links(self, *indices):
        assert indices, "a dump of every link"
        return [self.link("get", index=i)[0] for i in indices]

    def nlm_request(self, msg, msg_type):
        family = msg["family"]
        if msg_type == RTM_GETADDR:
            self.requests.append(("addr", family, msg["index"]))
            return tuple(ADDRS)
        if msg_type == RTM_GETNEIGH:
            self.requests.append(("neigh", family, dict(msg["attrs"])["NDA_IFINDEX"]))
            return tuple(ARP if family == socket.AF_INET else FDB)
        assert msg_type == RTM_GETROUTE
        self.requests.append(("route", family, msg["table"], msg["type"]))
        return tuple(ROUTES)


def observe(conf: dict, links: dict[int, Msg] = LINKS):
    k = Kernel.__new__(Kernel)
    k.namespace, k.ipr = None, FakeIPRoute(links)
    return k.observe(netconf.parse(conf), IPv4Network("10.244.1.0/24")), k.ipr.requests


def test_vxlan_observe_asks_for_flannel_1_only():
    state, requests = observe({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
    assert state.device == VxlanDevice("flannel.1", 1, "192.168.56.11", 8472, 1450, "8a:67:38:77:c9:36", "eth0",
                                       learning=False, gbp=False, up=True)
    assert state.addresses == {Address("10.244.1.0/32", "flannel.1")}
    assert state.neighbours == {Neighbour("10.244.2.0", "aa:bb:cc:00:00:02", "flannel.1")}
    assert state.fdb == {FdbEntry("aa:bb:cc:00:00:02", "192.168.56.12", "flannel.1")}
    assert state.routes == {Route("10.244.2.0/24", "10.244.2.0", "flannel.1", onlink=True),
                            Route("10.244.3.0/24", "192.168.56.13", "eth0"), Route("10.244.4.0/24", "", "")}
    assert requests == [
        ("link", "flannel.1"), ("link", 2),  # the device by name, its underlay by index
        ("addr", socket.AF_INET, 5),
        ("neigh", socket.AF_INET, 5), ("neigh", socket.AF_BRIDGE, 5),
        ("route", socket.AF_INET, 254, 1),
        ("link", 99),  # the route's gone device, once; flannel.1 and eth0 are known by then
    ]


def test_host_gw_without_a_vxlan_device_asks_for_routes_only():
    links = {i: l for i, l in LINKS.items() if l["ifname"] != "flannel.1"}
    state, requests = observe({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}, links)
    assert state.device is None and not state.addresses and not state.neighbours and not state.fdb
    assert state.routes == {Route("10.244.2.0/24", "10.244.2.0", "", onlink=True),
                            Route("10.244.3.0/24", "192.168.56.13", "eth0"), Route("10.244.4.0/24", "", "")}
    assert requests == [("link", "flannel.1"), ("route", socket.AF_INET, 254, 1), ("link", 5), ("link", 2), ("link", 99)]


def test_another_device_holding_the_name_is_incompatible():
    links = dict(LINKS)
    links[5] = Msg(index=5, ifname="flannel.1", mtu=1500, flags=1, IFLA_LINKINFO={"IFLA_INFO_KIND": "bridge"})
    state, _ = observe({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}, links)
    assert state.device == VxlanDevice("flannel.1", -1, "", 0, 1500, "", "")
