"""The overlay's desired kernel state, and the diff against what is observed: pure.

flanneld programs the kernel event by event (vxlan_network.go
handleSubnetEvents; hostgw's route_network.go). netlab computes the whole
desired state from the full lease set instead, then applies the difference
(principle 1): the same result for a fresh start, a restart, a resync after
someone deleted a route, or a lease event, and testable without root.

What a node owns, and so what a resync may remove, is exactly what flannel
manages on a node:

- the device ``flannel.<VNI>`` (vxlan only) and every address, neighbour
  and FDB entry on it;
- routes in the main table whose destination is a /SubnetLen inside
  Network other than the node's own subnet (which is cni0's).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from .lease import Lease
from .netconf import NetConf


@dataclass(frozen=True)
class VxlanDevice:
    """flannel.<VNI>: local = node IP, nolearning, dstport, MTU = underlay − 50 (vxlan.go / device.go).

    Only what flannel's newVXLANDevice sets is set (id, dev, local, dstport,
    learning, gbp, MTU, MAC); the rest keeps the kernel's defaults as on a
    flannel node: srcport 0 0, ttl auto, ageing 300, udpcsum on,
    addrgenmode eui64 (vishvananda/netlink sends UDP_CSUM only when true).
    """

    name: str
    vni: int
    local: str
    port: int
    mtu: int
    mac: str
    underlay: str  # the uplink's name (IFLA_VXLAN_LINK, as flannel's vtepIndex)
    learning: bool = False
    gbp: bool = False
    up: bool = True

    def incompatible(self, other: "VxlanDevice") -> str:
        """Why `other` cannot be reused as this device ("" if it can: MTU and MAC are set in place).

        Mirrors flannel's device.go vxlanLinksIncompat (VNI, dev, local, port,
        gbp), plus learning: flanneld keeps a device whose learning differs
        from Backend.Learning, so a node would run with settings the net-conf
        does not ask for until someone deletes flannel.1; here it is
        recreated, as for any other setting that cannot change in place.
        """
        for attr in ("vni", "local", "port", "underlay", "learning", "gbp"):
            if getattr(self, attr) != getattr(other, attr):
                return f"{attr}: {getattr(other, attr)} vs {getattr(self, attr)}"
        return ""


@dataclass(frozen=True, order=True)
class Address:
    cidr: str  # "10.244.1.0/32"
    dev: str


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # "10.244.2.0/24"
    gateway: str
    dev: str
    onlink: bool = False


@dataclass(frozen=True, order=True)
class Neighbour:
    ip: str
    mac: str
    dev: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    mac: str
    dst: str
    dev: str


@dataclass(frozen=True)
class State:
    """The overlay part of one node's kernel state (desired or observed)."""

    device: VxlanDevice | None = None
    addresses: frozenset[Address] = frozenset()  # on the device
    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()


@dataclass(frozen=True)
class Changes:
    """What to do to turn observed into desired. Deletions of anything missing are no-ops."""

    create_device: VxlanDevice | None = None
    delete_device: str | None = None  # delete first (incompatible or backend changed)
    set_device: VxlanDevice | None = None  # MTU/MAC/up fixed in place
    add_addresses: tuple[Address, ...] = ()
    del_addresses: tuple[Address, ...] = ()
    add_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    add_neighbours: tuple[Neighbour, ...] = ()
    del_neighbours: tuple[Neighbour, ...] = ()
    add_fdb: tuple[FdbEntry, ...] = ()
    del_fdb: tuple[FdbEntry, ...] = ()

    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)

    def summary(self) -> str:
        parts = []
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            if v:
                parts.append(f"{f}={len(v) if isinstance(v, tuple) else 1}")
        return " ".join(parts) or "nothing"


@dataclass(frozen=True)
class Node:
    """What a node knows about itself: its uplink, and the MTU it has."""

    ip: IPv4Interface  # node IP with the underlay prefix, "192.168.56.11/24"
    uplink: str = "eth0"
    uplink_mtu: int = 1500


def vtep_mac(node_ip: IPv4Address | str, vni: int) -> str:
    """A stable, locally administered unicast MAC for this node's VTEP.

    flanneld draws a random MAC when it creates flannel.1 and keeps it only
    as long as the device lives; a deleted and recreated device then needs
    a new lease and every peer must reprogram. Deriving the MAC from the
    node IP and VNI keeps it across agent restarts and device re-creation,
    so restoring a deleted flannel.1 changes nothing on the peers.
    """
    h = hashlib.sha256(f"netlab-vtep:{node_ip}:{vni}".encode()).digest()
    first = (h[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *h[1:6]))


def own_lease_attrs(conf: NetConf, node: Node) -> Lease:
    """This node's lease value minus the subnet (the subnet comes from acquisition)."""
    b = conf.backend
    if b.type == "vxlan":
        return Lease(IPv4Network("0.0.0.0/32"), node.ip.ip, "vxlan", b.vni, vtep_mac(node.ip.ip, b.vni))
    return Lease(IPv4Network("0.0.0.0/32"), node.ip.ip, b.type)


def owns_route(conf: NetConf, own_subnet: IPv4Network, dst: IPv4Network) -> bool:
    """Whether a main-table route to `dst` is the overlay's to manage."""
    return dst.prefixlen == conf.subnet_len and dst.subnet_of(conf.network) and dst != own_subnet


def desired(conf: NetConf, node: Node, own: Lease, leases: dict[IPv4Network, Lease]) -> State:
    """The kernel state flanneld would leave on this node for this lease set.

    Peers are skipped, with the same leniency as flannel, when they are this
    node, use another backend type, or lie outside Network.
    """
    peers = [
        l for s, l in sorted(leases.items())
        if s != own.subnet and l.public_ip != own.public_ip
        and l.backend_type == conf.backend.type and s.subnet_of(conf.network)
    ]
    if conf.backend.type == "host-gw":
        # host-gw's route_network.go: dst = remote subnet, gw = remote PublicIP, via the uplink.
        routes = frozenset(Route(str(l.subnet), str(l.public_ip), node.uplink) for l in peers)
        return State(routes=routes)

    b = conf.backend
    dev = VxlanDevice(
        name=b.device, vni=b.vni, local=str(node.ip.ip), port=b.port,
        mtu=conf.mtu(node.uplink_mtu), mac=own.vtep_mac or vtep_mac(node.ip.ip, b.vni), underlay=node.uplink,
        learning=b.learning, gbp=b.gbp,
    )
    routes, neighbours, fdb = set(), set(), set()
    for l in peers:
        if l.vtep_mac is None:
            continue  # a vxlan lease without BackendData cannot be reached (flannel: decode error)
        if b.direct_routing and l.public_ip in node.ip.network:
            # DirectRouting: the peer is on our L2 segment, route to it in the clear.
            # flannel asks the kernel instead (ip.DirectRouting: RouteGet(PublicIP) gives one
            # route with no gateway); for a node with one uplink address, as netlab's nodes
            # are, that is exactly "in the uplink's prefix", and this stays pure. flannel's
            # route names no device (the kernel resolves the gateway to the uplink); naming
            # the uplink gives the same `<subnet> via <PublicIP> dev eth0`.
            routes.add(Route(str(l.subnet), str(l.public_ip), node.uplink))
            continue
        gw = str(l.subnet.network_address)
        neighbours.add(Neighbour(gw, l.vtep_mac, dev.name))
        fdb.add(FdbEntry(l.vtep_mac, str(l.public_ip), dev.name))
        routes.add(Route(str(l.subnet), gw, dev.name, onlink=True))
    # A /32 so the kernel adds no subnet or broadcast route (vxlan.go Configure).
    address = Address(f"{own.subnet.network_address}/32", dev.name)
    return State(dev, frozenset({address}), frozenset(routes), frozenset(neighbours), frozenset(fdb))


def diff(want: State, have: State) -> Changes:
    """The changes that turn `have` into `want` (upsert: what matches is kept)."""
    create = delete = set_ = None
    if want.device is None:
        if have.device is not None:
            delete = have.device.name
    elif have.device is None:
        create = want.device
    elif want.device.incompatible(have.device):
        delete, create = have.device.name, want.device
    elif (want.device.mtu, want.device.mac, want.device.up) != (have.device.mtu, have.device.mac, have.device.up):
        set_ = want.device
    fresh = create is not None
    have_addrs = frozenset() if fresh else have.addresses
    have_neigh = frozenset() if fresh else have.neighbours
    have_fdb = frozenset() if fresh else have.fdb
    # Routes through a deleted device vanish with it; the rest stay to be compared.
    have_routes = frozenset(r for r in have.routes if not (delete and r.dev == delete))

    # A route to the same dst with another gateway or device is replaced, not added beside.
    want_dsts = {r.dst for r in want.routes}
    return Changes(
        create_device=create,
        delete_device=delete,
        set_device=set_,
        add_addresses=tuple(sorted(want.addresses - have_addrs)),
        del_addresses=tuple(sorted(have_addrs - want.addresses)) if want.device else (),
        add_routes=tuple(sorted(want.routes - have_routes)),
        del_routes=tuple(sorted(r for r in have_routes - want.routes if r.dst not in want_dsts)),
        add_neighbours=tuple(sorted(want.neighbours - have_neigh)),
        del_neighbours=tuple(sorted(have_neigh - want.neighbours)) if want.device else (),
        add_fdb=tuple(sorted(want.fdb - have_fdb)),
        del_fdb=tuple(sorted(have_fdb - want.fdb)) if want.device else (),
    )
