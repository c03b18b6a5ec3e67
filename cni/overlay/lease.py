"""Subnet leases: flannel's etcd schema, and acquiring, renewing and releasing one.

A lease is the key ``/coreos.com/network/subnets/10.244.1.0-24`` with the
value flanneld writes (pkg/subnet LeaseAttrs)::

    {"PublicIP": "192.168.56.11", "PublicIPv6": null, "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "0a:58:..."}}

and a TTL (flannel: 24 h, renewed an hour before it runs out). host-gw
leases carry no BackendData, as flannel's LeaseAttrs omits it when empty.

Acquisition follows flanneld: the node's podCIDR from its Node object when
there is one (the kube subnet manager); else the lease this PublicIP
already holds (a restarted flanneld keeps its subnet); else the subnet
recorded in subnet.env when it is still free; else the lowest free subnet
in SubnetMin..SubnetMax, claimed with a create-if-absent transaction so two
nodes can never hold the same one (etcd subnet manager's tryAcquireLease).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from netlab.store import FLANNEL_SUBNETS, NODES, Store

from .netconf import NetConf

log = logging.getLogger(__name__)

LEASE_TTL = 24 * 3600.0  # as flannel's subnetTTL
RENEW_MARGIN = 3600.0  # as flannel's subnetLeaseRenewMargin


class LeaseError(Exception):
    """No lease can be had (range exhausted, podCIDR outside the network...)."""


def subnet_key(subnet: IPv4Network) -> str:
    """flannel's key for a subnet: 10.244.1.0/24 → .../subnets/10.244.1.0-24."""
    return f"{FLANNEL_SUBNETS}{subnet.network_address}-{subnet.prefixlen}"


def subnet_of_key(key: str) -> IPv4Network | None:
    """The subnet a lease key names, or None for a key that is not a lease."""
    if not key.startswith(FLANNEL_SUBNETS):
        return None
    ip, _, plen = key[len(FLANNEL_SUBNETS):].rpartition("-")
    try:
        return IPv4Network(f"{ip}/{plen}")
    except ValueError:
        return None


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    public_ip: IPv4Address
    backend_type: str
    vni: int | None = None
    vtep_mac: str | None = None

    @property
    def key(self) -> str:
        return subnet_key(self.subnet)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"PublicIP": str(self.public_ip), "PublicIPv6": None, "BackendType": self.backend_type}
        if self.vtep_mac is not None:
            value["BackendData"] = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        return value

    @classmethod
    def from_store(cls, key: str, value: Any) -> "Lease | None":
        """Parse a stored lease; None (and a warning) for one that is malformed."""
        subnet = subnet_of_key(key)
        try:
            if subnet is None:
                raise ValueError("key is not a subnet")
            data = value.get("BackendData") or {}
            return cls(
                subnet=subnet,
                public_ip=IPv4Address(value["PublicIP"]),
                backend_type=str(value.get("BackendType", "")),
                vni=int(data["VNI"]) if "VNI" in data else None,
                vtep_mac=str(data["VtepMAC"]).lower() if "VtepMAC" in data else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring malformed lease %s: %s", key, e)
            return None


def parse_leases(items: list[tuple[str, Any]]) -> dict[IPv4Network, Lease]:
    out: dict[IPv4Network, Lease] = {}
    for key, value in items:
        lease = Lease.from_store(key, value)
        if lease is not None:
            out[lease.subnet] = lease
    return out


def node_pod_cidr(node_obj: Any) -> IPv4Network | None:
    """spec.podCIDR of a Node object, as kube-controller-manager's node IPAM assigns it."""
    try:
        cidr = node_obj["spec"]["podCIDR"]
    except (KeyError, TypeError):
        return None
    try:
        return IPv4Network(cidr)
    except ValueError:
        return None


def choose_subnet(
    conf: NetConf,
    taken: dict[IPv4Network, Lease],
    public_ip: IPv4Address,
    pod_cidr: IPv4Network | None = None,
    previous: IPv4Network | None = None,
) -> IPv4Network:
    """Which subnet this node should hold (pure: the store claim comes after).

    Order as flanneld's: podCIDR (kube mode) > our existing lease > the
    subnet.env one if free > the lowest free candidate.
    """
    if pod_cidr is not None:
        if not (pod_cidr.subnet_of(conf.network) and pod_cidr.prefixlen == conf.subnet_len):
            raise LeaseError(
                f"node podCIDR {pod_cidr} is not a /{conf.subnet_len} inside Network {conf.network}"
            )
        return pod_cidr
    for subnet, lease in sorted(taken.items()):
        if lease.public_ip == public_ip and conf.in_range(subnet):
            return subnet
    if previous is not None and conf.in_range(previous) and previous not in taken:
        return previous
    for subnet in conf.candidate_subnets():
        if subnet not in taken:
            return subnet
    raise LeaseError(
        f"no free /{conf.subnet_len} left between SubnetMin {conf.subnet_min} and SubnetMax {conf.subnet_max}"
    )


def acquire(
    store: Store,
    conf: NetConf,
    attrs: Lease,
    node: str | None,
    previous: IPv4Network | None = None,
    ttl: float = LEASE_TTL,
    attempts: int = 16,
) -> Lease:
    """Claim (or re-claim) this node's lease and write it with a fresh TTL.

    `attrs` carries everything but the subnet. A create that loses a race
    to another node retries with a fresh list, as flannel's AcquireLease
    loop does.
    """
    pod_cidr = None
    if node:
        kv = store.get(f"{NODES}{node}")
        pod_cidr = node_pod_cidr(kv.value) if kv else None
    for _ in range(attempts):
        items, _rev = store.list(FLANNEL_SUBNETS)
        taken = parse_leases([(kv.key, kv.value) for kv in items])
        subnet = choose_subnet(conf, taken, attrs.public_ip, pod_cidr, previous)
        lease = Lease(subnet, attrs.public_ip, attrs.backend_type, attrs.vni, attrs.vtep_mac)
        current = next((kv for kv in items if kv.key == lease.key), None)
        if current is None:
            if store.create(lease.key, lease.to_json(), ttl=ttl) is not None:
                return lease
            continue  # another node claimed it between list and create
        held = taken.get(subnet)
        if held is not None and held.public_ip != attrs.public_ip:
            if pod_cidr is not None:
                raise LeaseError(f"podCIDR {subnet} is leased to {held.public_ip}, not to this node")
            continue
        # Ours already (a restart): refresh the value and the TTL, compare-and-swap.
        if store.update(lease.key, lease.to_json(), expect_revision=current.mod_revision, ttl=ttl) is not None:
            return lease
    raise LeaseError(f"could not claim a subnet after {attempts} attempts (the store is busy)")


def renew(store: Store, lease: Lease, ttl: float = LEASE_TTL) -> bool:
    """Rewrite our lease with a fresh TTL; False if it is no longer ours (lost or taken)."""
    kv = store.get(lease.key)
    if kv is not None:
        held = Lease.from_store(kv.key, kv.value)
        if held is None or held.public_ip != lease.public_ip:
            return False
        return store.update(lease.key, lease.to_json(), expect_revision=kv.mod_revision, ttl=ttl) is not None
    # Expired or deleted under us: take it back if nobody else has.
    return store.create(lease.key, lease.to_json(), ttl=ttl) is not None


def release_node(store: Store, public_ip: str) -> list[str]:
    """Delete every lease held by `public_ip` (a node leaving the lab); returns the keys.

    flanneld never releases its own lease on exit (a restart must keep its
    subnet); the lab does this when a node is removed, as deleting a Node
    object does in kube mode.
    """
    items, _ = store.list(FLANNEL_SUBNETS)
    gone = []
    for kv in items:
        lease = Lease.from_store(kv.key, kv.value)
        if lease is not None and str(lease.public_ip) == public_ip:
            store.delete(kv.key)
            gone.append(kv.key)
    return gone
