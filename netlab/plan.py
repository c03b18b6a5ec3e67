"""The lab's desired fabric, computed purely from its spec.

Principle 1 (plan purely, apply once): node addresses, pod subnets, netns
and interface names are all decided here, unit-tested without root; the
fabric module only makes the kernel match. Pod subnets are handed out in
node order from SubnetMin, as kube-controller-manager's node IPAM assigns
`node.spec.podCIDR`, and the flannel lease of each node takes it (as
flannel's kube subnet manager does).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from netlab import names
from netlab.spec.lab import NODE_HOST_OFFSET, LabSpec


@dataclass(frozen=True)
class NodePlan:
    name: str
    netns: str
    ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    labels: dict[str, str]
    underlay_port: str  # the veth end on the underlay bridge, in the lab namespace

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
        base = self.lab.pod_network.backend.mtu or self.lab.underlay_mtu
        return base - 50 if self.lab.pod_network.backend.type == "vxlan" else base

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


def node_ip(lab: LabSpec, index: int) -> ipaddress.IPv4Address:
    return lab.underlay_cidr.network_address + NODE_HOST_OFFSET + 1 + index


def plan_lab(lab: LabSpec) -> LabPlan:
    subnets = lab.pod_network.subnets()
    nodes = tuple(
        NodePlan(
            name=n.name,
            netns=names.node_netns(lab.name, n.name),
            ip=node_ip(lab, i),
            pod_cidr=subnets[i],
            labels=dict(n.labels),
            underlay_port=names.underlay_port(n.name),
        )
        for i, n in enumerate(lab.nodes)
    )
    below_pool = lab.load_balancer_pool.network_address - 1
    clients = tuple(
        ClientPlan(c.name, names.client_netns(lab.name, c.name), below_pool - i) for i, c in enumerate(lab.clients)
    )
    return LabPlan(lab, names.lab_netns(lab.name), nodes, clients)
