"""The lab's desired fabric, computed purely from its spec.

Principle 1 (plan purely, apply once): node addresses, pod subnets, netns
and interface names are all decided here, unit-tested without root; the
fabric module only makes the kernel match. Pod subnets are handed out in
node order from SubnetMin, as kube-controller-manager's node IPAM assigns
`node.spec.podCIDR`, and the flannel lease of each node takes it (as
flannel's kube subnet manager does).

A node's address and subnet come from its *slot*: slot i is underlay host
.11+i and the i-th leasable subnet. The file's nodes take slots 0..n-1; a
node added to a running lab takes the lowest free slot and keeps it, so
removing a node never renumbers the others (a removed node's slot is free
again, as node IPAM releases a deleted node's podCIDR).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netlab import names
from netlab.errors import NetlabError
from netlab.spec.lab import ETCD_CLIENT_PORT, NODE_HOST_OFFSET, LabSpec


@dataclass(frozen=True)
class NodePlan:
    name: str
    netns: str
    ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    labels: dict[str, str]
    underlay_port: str  # the veth end on the underlay bridge, in the lab namespace
    slot: int = 0  # which node address and pod subnet it holds (see the module's docstring)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """cni0's address: the subnet's first host, as flannel's bridge delegate (isGateway) sets it."""
        return self.pod_cidr.network_address + 1


@dataclass(frozen=True)
class ClientPlan:
    name: str
    netns: str
    ip: ipaddress.IPv4Address


@dataclass(frozen=True)
class LabPlan:
    lab: LabSpec
    netns: str
    nodes: tuple[NodePlan, ...]
    clients: tuple[ClientPlan, ...]

    @property
    def prefixlen(self) -> int:
        return self.lab.underlay_cidr.prefixlen

    @property
    def pod_mtu(self) -> int:
        """The MTU pods get: flannel's vxlan backend leaves 50 bytes for the VXLAN header."""
        return self.lab.pod_network.mtu(self.lab.underlay_mtu)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The underlay's gateway: the lab namespace's address on the underlay bridge (the nodes' default route)."""
        return underlay_gateway(self.lab)

    @property
    def slots(self) -> dict[str, int]:
        return {n.name: n.slot for n in self.nodes}

    @property
    def store_url(self) -> str:
        """The store as netlab's own commands reach it, from the namespace they run in."""
        return store_urls(self)[0]

    @property
    def daemon_store_url(self) -> str:
        """The store as the lab's daemons reach it from the lab's and the nodes' namespaces."""
        return store_urls(self)[1]

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_object(self, node: NodePlan) -> dict[str, Any]:
        """The Node as the API server stores it under /registry/minions/."""
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", **node.labels},
                "annotations": {"netlab.io/netns": node.netns},
            },
            "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": str(node.ip)},
                    {"type": "Hostname", "address": node.name},
                ]
            },
        }


# The host's network namespace (PID 1's): where a user-run etcd's endpoints are reached from by default.
HOST_NETNS = "/proc/1/ns/net"


def store_urls(plan: LabPlan) -> tuple[str, str]:
    """(for netlab's commands, for the lab's daemons): the lab's store URLs (see netlab.store.open_store).

    - embedded: the SQLite file in the state dir, for everyone;
    - netlab's own etcd: it listens on the lab namespace's loopback and on
      the underlay's gateway (.1), as a control-plane etcd on the node
      network; the daemons reach it over the underlay as flanneld's
      --etcd-endpoints would, netlab's commands through the lab namespace;
    - a user's etcd: its endpoints, reached from `store.netns` or the host's namespace.
    """
    store = plan.lab.store
    if store.type == "embedded":
        url = f"sqlite://{names.store_path(plan.lab.name)}"
        return url, url
    if store.owned:
        daemons = f"etcd://{plan.gateway}:{ETCD_CLIENT_PORT}"
        return f"{daemons}?netns={plan.netns}", daemons
    url = f"etcd://{','.join(store.endpoints)}?netns={store.netns or HOST_NETNS}"
    return url, url


def node_ip(lab: LabSpec, slot: int) -> ipaddress.IPv4Address:
    return lab.underlay_cidr.network_address + NODE_HOST_OFFSET + 1 + slot


def underlay_gateway(lab: LabSpec) -> ipaddress.IPv4Address:
    """The underlay's first host (.1, as a VirtualBox host-only network's host side)."""
    return lab.underlay_cidr.network_address + 1


def node_slots(lab: LabSpec) -> int:
    """How many nodes the lab can hold: pod subnets, and underlay hosts from .11 up to the clients'."""
    lowest_client = int(lab.load_balancer_pool.network_address) - len(lab.clients)
    hosts = lowest_client - int(lab.underlay_cidr.network_address) - NODE_HOST_OFFSET - 1
    return max(0, min(len(lab.pod_network.candidate_subnets()), hosts))


class LabFull(NetlabError):
    """No free slot for another node."""


def assign_slots(lab: LabSpec, fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every node of `lab` to a slot: those in `fixed` keep theirs, the others take the lowest free ones."""
    fixed = {n.name: fixed[n.name] for n in lab.nodes if fixed and n.name in fixed}
    capacity = node_slots(lab)
    taken = set(fixed.values())
    out = dict(fixed)
    free = (i for i in range(capacity) if i not in taken)
    for n in lab.nodes:
        if n.name not in out:
            slot = next(free, None)
            if slot is None:
                raise LabFull(
                    f"lab {lab.name} has no room for node {n.name}: all {capacity} node slots are taken"
                    f" ({len(lab.pod_network.candidate_subnets())} pod subnets, underlay {lab.underlay_cidr})"
                )
            out[n.name] = slot
    return out


def plan_lab(lab: LabSpec, slots: Mapping[str, int] | None = None) -> LabPlan:
    """The lab's plan; `slots` pins nodes of a running lab to the address and subnet they hold."""
    subnets = lab.pod_network.candidate_subnets()
    assigned = assign_slots(lab, slots)
    nodes = tuple(
        NodePlan(
            name=n.name,
            netns=names.node_netns(lab.name, n.name),
            ip=node_ip(lab, assigned[n.name]),
            pod_cidr=subnets[assigned[n.name]],
            labels=dict(n.labels),
            underlay_port=names.underlay_port(n.name),
            slot=assigned[n.name],
        )
        for n in sorted(lab.nodes, key=lambda n: assigned[n.name])  # in address order
    )
    below_pool = lab.load_balancer_pool.network_address - 1
    clients = tuple(
        ClientPlan(c.name, names.client_netns(lab.name, c.name), below_pool - i) for i, c in enumerate(lab.clients)
    )
    return LabPlan(lab, names.lab_netns(lab.name), nodes, clients)
