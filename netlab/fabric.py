"""The kernel adapter for the lab fabric: underlay, nodes, external clients.

It makes the kernel match a `LabPlan` with upsert semantics (principle 2):
what exists and is right is kept, what is missing is made, what is wrong is
replaced; removing what is already gone is success. Everything lives in
namespaces named after the lab (principle 4): the underlay bridge sits in
the lab's own namespace, never in the host's root namespace, so removing
the lab's namespaces removes every link it made.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import Iterator

from cni.netlink import NLM_F_CREATE, NLM_F_REPLACE, RT_TABLE_MAIN, RTPROT_STATIC, RtNetlink
from netlab import names, netns
from netlab.plan import ClientPlan, LabPlan, NodePlan

# The sysctls of a Kubernetes node (kubeadm's preflight checks and flannel's docs ask for the
# first three). icmp_ratelimit 0: kube-proxy's REJECT for a service without endpoints answers
# every connection with ICMP port-unreachable, which the kernel would otherwise rate-limit per
# destination (a burst of 6), turning refused connections into timeouts.
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.icmp_ratelimit": "0",
}


@dataclass
class Changes:
    """What an apply did, so a second `up` can say "nothing changed"."""

    made: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.made.append(what)

    def __bool__(self) -> bool:
        return bool(self.made)


@contextlib.contextmanager
def netlink_in(ns: str) -> Iterator[RtNetlink]:
    """An rtnetlink socket opened inside namespace `ns`, closed on leaving.

    The fabric speaks netlink through cni.netlink's small codec, as the CNI
    plugins do, not pyroute2: `up` spent ~0.5 s of CPU in pyroute2 before the
    first pod could start (its import, and 0.5-1 ms per request through its
    asyncio core, some 160 requests for ten nodes), on the path every pod waits on.
    """
    with netns.entered(ns):
        nl = RtNetlink.open()
    try:
        yield nl
    finally:
        nl.close()


def _set_up(nl: RtNetlink, ifname: str, changes: Changes, what: str) -> int:
    link = nl.get_link(ifname)
    if not link.up:
        nl.set_link(link.index, up=True)
        changes.add(f"{what}: {ifname} up")
    return link.index


def ensure_lab_namespace(plan: LabPlan, changes: Changes) -> None:
    """The lab namespace with the underlay bridge: the nodes' shared L2 segment."""
    if netns.create(plan.netns):
        changes.add(f"netns {plan.netns}")
    with netlink_in(plan.netns) as nl:
        _set_up(nl, "lo", changes, plan.netns)
        br = nl.get_link(names.UNDERLAY_BRIDGE)
        if br is None:
            # A MAC of its own (set, not inherited): a Linux bridge otherwise takes its ports' lowest
            # MAC and changes it when that port leaves or a lower one joins, and the nodes' ARP entry
            # for the gateway (.1: the default route, netlab's etcd) points nowhere until it goes stale.
            nl.add_bridge(names.UNDERLAY_BRIDGE, mtu=plan.lab.underlay_mtu,
                          mac=bytes.fromhex(bridge_mac(plan.lab.name).replace(":", "")), up=False)
            changes.add(f"bridge {names.UNDERLAY_BRIDGE}")
        elif br.mtu != plan.lab.underlay_mtu:
            nl.set_link(br.index, mtu=plan.lab.underlay_mtu)
            changes.add(f"bridge {names.UNDERLAY_BRIDGE} mtu")
        bridge = _set_up(nl, names.UNDERLAY_BRIDGE, changes, plan.netns)
        # The underlay's gateway, the nodes' default route (as the host side of a Vagrant
        # host-only network). The lab namespace does not forward: it is the end of the road.
        _ensure_address(nl, bridge, str(plan.gateway), plan.prefixlen, changes, f"{plan.netns}: {names.UNDERLAY_BRIDGE}")
    # The lab namespace only switches frames; keep its netfilter out of the path.
    netns.write_sysctl(plan.netns, "net.bridge.bridge-nf-call-iptables", 0)


def bridge_mac(lab: str) -> str:
    """The underlay bridge's MAC: locally administered, unicast, the same for the same lab name."""
    import hashlib

    digest = hashlib.sha256(f"netlab underlay {lab}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _attach(plan: LabPlan, port: str, target_netns: str, ip, changes: Changes, what: str) -> None:
    """A veth from the underlay bridge (end `port`) to `eth0` in `target_netns`, addressed `ip`."""
    if netns.create(target_netns):
        changes.add(f"netns {target_netns}")
    with netlink_in(plan.netns) as lab_nl, netlink_in(target_netns) as nl:
        if lab_nl.get_link(port) is None:
            stale = nl.get_link(names.NODE_UPLINK)
            if stale is not None:  # an eth0 whose peer is gone: replace it
                nl.del_link(stale.index)
            fd = os.open(netns.path(target_netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                lab_nl.add_veth(port, names.NODE_UPLINK, peer_netns_fd=fd, mtu=plan.lab.underlay_mtu, up=False)
            finally:
                os.close(fd)
            changes.add(f"{what}: veth {port} <-> eth0")
        port_link = lab_nl.get_link(port)
        bridge_idx = lab_nl.get_link(names.UNDERLAY_BRIDGE).index
        if port_link.master != bridge_idx:
            lab_nl.set_link(port_link.index, master=bridge_idx)
            changes.add(f"{what}: {port} on {names.UNDERLAY_BRIDGE}")
        _set_up(lab_nl, port, changes, what)

        _set_up(nl, "lo", changes, what)
        eth0 = _set_up(nl, names.NODE_UPLINK, changes, what)
        _ensure_address(nl, eth0, str(ip), plan.prefixlen, changes, f"{what}: eth0")


def _ensure_address(nl: RtNetlink, index: int, ip: str, prefixlen: int, changes: Changes, what: str) -> None:
    """`ip`/`prefixlen` as the only IPv4 address of the link (others are replaced)."""
    have = {(a.address, a.prefixlen) for a in nl.addrs(index=index, family=socket.AF_INET)}
    if (ip, prefixlen) not in have:
        for addr, plen in have:
            nl.del_addr(index, addr, plen)
        nl.add_addr(index, ip, prefixlen)
        changes.add(f"{what}: {ip}/{prefixlen}")


def _ensure_default_route(ns: str, gateway: str, changes: Changes, what: str) -> None:
    """A default route via the underlay gateway on eth0, as a real node has one via its LAN's router."""
    with netlink_in(ns) as nl:
        current = [r.gw for r in nl.routes(socket.AF_INET) if r.table == RT_TABLE_MAIN and r.dst == "0.0.0.0/0"]
        if current != [gateway]:
            eth0 = nl.get_link(names.NODE_UPLINK).index
            # proto static: a node's configured default route (and what `ip route` showed before).
            kind, body, _flags = RtNetlink.add_route_msg("0.0.0.0/0", gw=gateway, oif=eth0, protocol=RTPROT_STATIC)
            nl.request(kind, body, NLM_F_CREATE | NLM_F_REPLACE)  # as `ip route replace`
            changes.add(f"{what}: default via {gateway}")


def ensure_node(plan: LabPlan, node: NodePlan, changes: Changes) -> None:
    _attach(plan, node.underlay_port, node.netns, node.ip, changes, node.name)
    _ensure_default_route(node.netns, str(plan.gateway), changes, node.name)
    for key, value in NODE_SYSCTLS.items():
        if netns.read_sysctl(node.netns, key) != value:
            netns.write_sysctl(node.netns, key, value)
            changes.add(f"{node.name}: {key}={value}")


def client_port(client: ClientPlan) -> str:
    return f"ext-{client.name}"[: names.IFNAMSIZ]


def ensure_client(plan: LabPlan, client: ClientPlan, changes: Changes) -> None:
    _attach(plan, client_port(client), client.netns, client.ip, changes, f"client {client.name}")


def remove_node(plan: LabPlan, node: NodePlan) -> None:
    """Remove a node's namespace and its underlay port (missing is success)."""
    if netns.exists(plan.netns):
        with netlink_in(plan.netns) as nl:
            link = nl.get_link(node.underlay_port)
            if link is not None:
                with contextlib.suppress(Exception):
                    nl.del_link(link.index)
    netns.remove(node.netns)


def lab_namespaces(lab: str) -> list[str]:
    """Every namespace of `lab`, found by name: pods first, the lab namespace last."""
    own = names.lab_netns(lab)
    found = [n for n in netns.list_names() if n == own or n.startswith(own + ".")]
    return sorted(found, key=lambda n: (-n.count("."), n))
