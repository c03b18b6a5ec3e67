"""The overlay's one kernel adapter: observe a node's overlay state, apply a diff.

Netlink through pyroute2 on a socket opened inside the node's namespace
(no fork per call). Every write is an upsert
(replace), every delete of something already gone is success, as flannel's
netlink.RouteReplace / NeighSet and ip.EnsureV4AddressOnLink.

Observing asks the kernel only for the overlay's objects, as flannel's
netlink calls do (LinkByName, NeighList(flannel.1's index, ...)): the node's
namespace holds a veth per pod, and a dump of every link and of the whole
bridge FDB (each veth's own and multicast entries) made each converge and
each 5 s resync cost ~40-50 ms of CPU and ~10 MiB of heap at 100 pods.
The socket sets NETLINK_GET_STRICT_CHK (as iproute2 does), which makes the
kernel filter dumps by the header's and attributes' ifindex and table:
FDB and neighbours of flannel.1 only (`bridge fdb show dev flannel.1`,
`ip neigh show dev flannel.1`), its addresses, the main table's unicast
routes; links are asked for one by one, by name or index. Every reply is
still checked against the filter here, so a kernel that ignores a filter
gives the same State. The socket joins no multicast group: nothing reads
link or neighbour events from it, and each pod's veth would queue its events
on it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from ipaddress import IPv4Network

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETNEIGH, RTM_GETROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.ndmsg import states as nud
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netlab import netns

from .netconf import NetConf
from .plan import Address, Changes, FdbEntry, Neighbour, Route, State, VxlanDevice, owns_route

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTPROT_BOOT = 3  # what netlink.RouteReplace leaves: `ip route` shows no "proto", as on a flannel node
RTNH_F_ONLINK = 4
RTN_UNICAST = 1
NTF_SELF = 0x02
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


def _iproute(namespace: str | None):  # -> pyroute2.IPRoute
    """A strict-checking netlink socket in `namespace`, bound to no multicast group."""
    from pyroute2 import IPRoute

    with netns.entered(namespace) if namespace else contextlib.nullcontext():
        ipr = IPRoute(strict_check=True, groups=0)
    # IPRoute.nlm_request (pyroute2 0.9) reads this status key without setting it (pyroute2's IPSet sets it too).
    ipr.asyncore.status["nlm_generator"] = False
    return ipr


class Kernel:
    """Observe/apply for one node namespace (None: the namespace this process is in)."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.ipr = _iproute(namespace)

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ----------------------------------------------------------------

    def index(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def name(self, index: int) -> str | None:
        try:
            return self.ipr.get_links(index)[0].get("ifname")
        except NetlinkError:
            return None

    def _link(self, ifname: str):  # -> ifinfmsg | None
        """The link called `ifname` (one RTM_GETLINK by name, as netlink.LinkByName), or None."""
        try:
            return self.ipr.link("get", ifname=ifname)[0]
        except NetlinkError as e:
            if e.code in _GONE:
                return None
            raise

    def _dump(self, msg, msg_type: int) -> tuple:
        """One dump request as written: its header fields and attributes are the kernel's filter."""
        return self.ipr.nlm_request(msg, msg_type)

    def _addresses(self, index: int) -> list:
        """IPv4 addresses of one link (`ip -4 addr show dev`): ifa_index filters the dump."""
        m = ifaddrmsg()
        m["family"] = socket.AF_INET
        m["index"] = index
        return [a for a in self._dump(m, RTM_GETADDR) if a["index"] == index]

    def uplink(self, ifname: str) -> tuple[str, int] | None:
        """The uplink's first IPv4 address as "ip/prefix", and its MTU."""
        link = self._link(ifname)
        if link is None:
            return None
        for a in self._addresses(link["index"]):
            return f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", link.get("mtu")
        return None

    # -- observe ----------------------------------------------------------------

    def observe(self, conf: NetConf, own_subnet: IPv4Network) -> State:
        names = _Names(self)
        device = None
        # flannel.<VNI>: vxlan's device; with host-gw, one left from an earlier vxlan run of this
        # node, ours to remove.
        link = self._link(conf.backend.device)
        addresses: set[Address] = set()
        neighbours: set[Neighbour] = set()
        fdb: set[FdbEntry] = set()
        if link is not None:
            dev_idx = link["index"]
            names.known[dev_idx] = link.get("ifname")
            device = self._device(link, names)
            for a in self._addresses(dev_idx):
                addresses.add(Address(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", device.name))
            for n in self._neighbours(socket.AF_INET, dev_idx):
                if n["state"] & nud["permanent"] and n.get("NDA_LLADDR"):
                    neighbours.add(Neighbour(n.get("NDA_DST"), n.get("NDA_LLADDR").lower(), device.name))
            for n in self._neighbours(socket.AF_BRIDGE, dev_idx):
                if n.get("NDA_DST") and n.get("NDA_LLADDR"):
                    fdb.add(FdbEntry(n.get("NDA_LLADDR").lower(), n.get("NDA_DST"), device.name))
        routes: set[Route] = set()
        for r in self._main_routes():
            dst = r.get("RTA_DST")
            if dst is None:
                continue
            net = IPv4Network(f"{dst}/{r['dst_len']}")
            if not owns_route(conf, own_subnet, net):
                continue
            routes.add(Route(
                str(net), r.get("RTA_GATEWAY") or "", names.get(r.get("RTA_OIF")),
                onlink=bool(r["flags"] & RTNH_F_ONLINK),
            ))
        return State(device, frozenset(addresses), frozenset(routes), frozenset(neighbours), frozenset(fdb))

    def _neighbours(self, family: int, index: int) -> list:
        """ARP entries (AF_INET) or FDB entries (AF_BRIDGE) of one device: NDA_IFINDEX filters the dump."""
        m = ndmsg()
        m["family"] = family
        m["attrs"] = [("NDA_IFINDEX", index)]
        return [n for n in self._dump(m, RTM_GETNEIGH) if n["ifindex"] == index]

    def _main_routes(self) -> list:
        """IPv4 unicast routes of the main table (`ip route show table main type unicast`)."""
        m = rtmsg()
        m["family"] = socket.AF_INET
        m["table"] = MAIN_TABLE
        m["type"] = RTN_UNICAST
        return [r for r in self._dump(m, RTM_GETROUTE)
                if r.get_attr("RTA_TABLE", r["table"]) == MAIN_TABLE and r["type"] == RTN_UNICAST]

    def _device(self, link, names: "_Names") -> VxlanDevice | None:
        info = link.get("IFLA_LINKINFO")
        if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
            # Something else holds the name: treat it as an incompatible device to replace.
            return VxlanDevice(link.get("ifname"), -1, "", 0, link.get("mtu"), "", "")
        data = info.get("IFLA_INFO_DATA")
        return VxlanDevice(
            name=link.get("ifname"),
            vni=data.get("IFLA_VXLAN_ID"),
            local=data.get("IFLA_VXLAN_LOCAL") or "",
            port=data.get("IFLA_VXLAN_PORT"),
            mtu=link.get("mtu"),
            mac=(link.get("IFLA_ADDRESS") or "").lower(),
            underlay=names.get(data.get("IFLA_VXLAN_LINK")),
            learning=bool(data.get("IFLA_VXLAN_LEARNING")),
            gbp=data.get("IFLA_VXLAN_GBP") is not None,  # a flag attribute: present or not
            up=bool(link["flags"] & 1),
        )

    # -- apply ------------------------------------------------------------------

    def apply(self, ch: Changes) -> None:
        """Apply a diff: removals first (so a changed MAC or gateway is replaced), then additions.

        Routes go last: the kernel must already have the neighbour for an
        onlink gateway, as flannel's handleSubnetEvents orders it.
        """
        if ch.delete_device:
            self._ignore_gone(lambda: self.ipr.link("del", index=self._idx(ch.delete_device)))
        for r in ch.del_routes:
            self._ignore_gone(lambda r=r: self.ipr.route("del", **self._route_args(r)))
        for n in ch.del_neighbours:
            self._ignore_gone(lambda n=n: self.ipr.neigh("del", dst=n.ip, ifindex=self._idx(n.dev)))
        for f in ch.del_fdb:
            self._ignore_gone(lambda f=f: self.ipr.fdb(
                "del", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst, state=nud["permanent"], flags=NTF_SELF))
        for a in ch.del_addresses:
            ip, plen = a.cidr.split("/")
            self._ignore_gone(lambda a=a, ip=ip, plen=plen: self.ipr.addr(
                "del", index=self._idx(a.dev), address=ip, prefixlen=int(plen)))
        if ch.create_device:
            self._create(ch.create_device)
        if ch.set_device:
            d = ch.set_device
            idx = self._idx(d.name)
            self.ipr.link("set", index=idx, mtu=d.mtu, address=d.mac)
            self.ipr.link("set", index=idx, state="up")
        for a in ch.add_addresses:
            ip, plen = a.cidr.split("/")
            self.ipr.addr("replace", index=self._idx(a.dev), address=ip, prefixlen=int(plen))
        for n in ch.add_neighbours:
            self.ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=self._idx(n.dev), state=nud["permanent"])
        for f in ch.add_fdb:
            self.ipr.fdb("replace", ifindex=self._idx(f.dev), lladdr=f.mac, dst=f.dst,
                         state=nud["permanent"], flags=NTF_SELF)
        for r in ch.add_routes:
            self.ipr.route("replace", **self._route_args(r))

    def _create(self, d: VxlanDevice) -> None:
        link = self._idx(d.underlay)
        # As flannel's newVXLANDevice: only these attributes; the kernel defaults the rest.
        gbp = {"vxlan_gbp": True} if d.gbp else {}
        try:
            self.ipr.link(
                "add", ifname=d.name, kind="vxlan", vxlan_id=d.vni, vxlan_local=d.local, vxlan_port=d.port,
                vxlan_learning=int(d.learning), vxlan_link=link, mtu=d.mtu, address=d.mac, **gbp,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            # Made meanwhile (a diff applied twice): the diff found it compatible, so fix it in place.
            self.ipr.link("set", index=self._idx(d.name), mtu=d.mtu, address=d.mac)
        # flannel's device.go: no router advertisements on the VTEP.
        try:
            with netns.entered(self.namespace) if self.namespace else contextlib.nullcontext():
                with open(f"/proc/sys/net/ipv6/conf/{d.name}/accept_ra", "w") as f:
                    f.write("0")
        except OSError:
            pass
        self.ipr.link("set", index=self._idx(d.name), state="up")

    def _route_args(self, r: Route) -> dict:
        args = dict(dst=r.dst, gateway=r.gateway, oif=self._idx(r.dev), table=MAIN_TABLE, proto=RTPROT_BOOT)
        if r.onlink:
            args["flags"] = RTNH_F_ONLINK
        return args

    def _idx(self, ifname: str) -> int:
        idx = self.index(ifname)
        if idx is None:
            raise NetlinkError(errno.ENODEV, f"no device {ifname}")
        return idx

    @staticmethod
    def _ignore_gone(fn) -> None:
        try:
            fn()
        except NetlinkError as e:
            if e.code not in _GONE:
                raise


class _Names:
    """ifindex -> name for one observe, each asked for once (RTM_GETLINK by index) instead of a dump of every link."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.known: dict[int, str] = {}

    def get(self, index: int | None) -> str:
        """The link's name, "" when there is no index or no such link (as a lookup in a dump of every link)."""
        if not index:
            return ""
        if index not in self.known:
            self.known[index] = self.kernel.name(index) or ""
        return self.known[index]


# iptables binaries per backend: "auto" is whatever `iptables` is on this system
# (Debian 12: iptables-nft), as flannel's image picks through iptables-wrapper.
IPTABLES_BINARIES = {
    "auto": ("iptables-restore", "iptables-save"),
    "nft": ("iptables-nft-restore", "iptables-nft-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
}


class Iptables:
    """flanneld's iptables rules in one node namespace: `iptables-save` to observe, one restore to apply.

    Refuses to touch the host's root namespace: with no namespace named, the
    process must already be inside a named one (/run/netns/*, as netlab and
    its test beds make them). Positive identification, as the proxy does:
    where PID 1's namespace cannot be read, "not the host's" cannot be told.
    """

    def __init__(self, namespace: str | None = None, backend: str = "auto") -> None:
        if backend not in IPTABLES_BINARIES:
            raise ValueError(f"unknown iptables backend {backend!r}: use {', '.join(IPTABLES_BINARIES)}")
        if namespace is None and netns.current_name() is None:
            raise RuntimeError("refusing to program iptables in the host's root namespace: run inside a node namespace")
        self.namespace = namespace
        self.backend = backend
        self.restore_bin, self.save_bin = IPTABLES_BINARIES[backend]

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        import subprocess

        kwargs = dict(input=stdin, capture_output=True, text=True, timeout=30)
        p = netns.run_in(self.namespace, argv, **kwargs) if self.namespace else subprocess.run(argv, **kwargs)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def save(self) -> str:
        return self._run([self.save_bin])

    def restore(self, text: str) -> None:
        self._run([self.restore_bin, "-w", "--noflush"], stdin=text)

