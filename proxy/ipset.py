"""ipsets as kube-proxy's IPVS proxier keeps them: definitions, entries, restore text.

The IPVS proxier matches whole classes of traffic (every ClusterIP:port,
every NodePort) with one iptables rule each, through an ipset, instead of
one rule per service as the iptables proxier does. That keeps its iptables
ruleset constant in size. This module is the pure half: which sets exist
(kube-proxy's `ipsetInfo`, same names, types and comments), and the
`ipset restore` text that turns the current kernel entries into the desired
ones, touching only entries that differ (as kube-proxy's syncIPSetEntries).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Set types, as utilipset.Type.
HASH_IP_PORT = "hash:ip,port"
HASH_IP_PORT_IP = "hash:ip,port,ip"
HASH_IP_PORT_NET = "hash:ip,port,net"
BITMAP_PORT = "bitmap:port"
HASH_IP = "hash:ip"


@dataclass(frozen=True)
class SetInfo:
    """One ipset of kube-proxy's ipsetInfo table."""

    name: str
    type: str
    comment: str

    def create_line(self) -> str:
        """`ipset restore` create line; `-exist` makes it an upsert."""
        opts = "range 0-65535" if self.type == BITMAP_PORT else "family inet hashsize 1024 maxelem 65536"
        return f"create {self.name} {self.type} {opts} comment -exist"


# kube-proxy's pkg/proxy/ipvs/ipset.go names and comments, in its ipsetInfo order.
KUBE_LOOP_BACK = SetInfo(
    "KUBE-LOOP-BACK", HASH_IP_PORT_IP, "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
)
KUBE_CLUSTER_IP = SetInfo(
    "KUBE-CLUSTER-IP", HASH_IP_PORT, "Kubernetes service cluster ip + port for masquerade purpose"
)
KUBE_EXTERNAL_IP = SetInfo(
    "KUBE-EXTERNAL-IP", HASH_IP_PORT, "Kubernetes service external ip + port for masquerade and filter purpose"
)
KUBE_EXTERNAL_IP_LOCAL = SetInfo(
    "KUBE-EXTERNAL-IP-LOCAL",
    HASH_IP_PORT,
    "Kubernetes service external ip + port with externalTrafficPolicy=local",
)
KUBE_LOAD_BALANCER = SetInfo(
    "KUBE-LOAD-BALANCER", HASH_IP_PORT, "Kubernetes service lb portal"
)
KUBE_LOAD_BALANCER_FW = SetInfo(
    "KUBE-LOAD-BALANCER-FW", HASH_IP_PORT, "Kubernetes service load balancer ip + port for load balancer with sourceRange"
)
KUBE_LOAD_BALANCER_LOCAL = SetInfo(
    "KUBE-LOAD-BALANCER-LOCAL",
    HASH_IP_PORT,
    "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
)
KUBE_LOAD_BALANCER_SOURCE_IP = SetInfo(
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    HASH_IP_PORT_IP,
    "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
)
KUBE_LOAD_BALANCER_SOURCE_CIDR = SetInfo(
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    HASH_IP_PORT_NET,
    "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
)
KUBE_NODE_PORT_TCP = SetInfo(
    "KUBE-NODE-PORT-TCP", BITMAP_PORT, "Kubernetes nodeport TCP port for masquerade purpose"
)
KUBE_NODE_PORT_LOCAL_TCP = SetInfo(
    "KUBE-NODE-PORT-LOCAL-TCP", BITMAP_PORT, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
)
KUBE_NODE_PORT_UDP = SetInfo(
    "KUBE-NODE-PORT-UDP", BITMAP_PORT, "Kubernetes nodeport UDP port for masquerade purpose"
)
KUBE_NODE_PORT_LOCAL_UDP = SetInfo(
    "KUBE-NODE-PORT-LOCAL-UDP", BITMAP_PORT, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
)
KUBE_NODE_PORT_SCTP = SetInfo(
    "KUBE-NODE-PORT-SCTP-HASH", HASH_IP_PORT, "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
)
KUBE_NODE_PORT_LOCAL_SCTP = SetInfo(
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    HASH_IP_PORT,
    "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
)
KUBE_HEALTH_CHECK_NODE_PORT = SetInfo(
    "KUBE-HEALTH-CHECK-NODE-PORT", BITMAP_PORT, "Kubernetes health check node port"
)
KUBE_IPVS_IPS = SetInfo("KUBE-IPVS-IPS", HASH_IP, "Addresses on the ipvs interface")

ALL_SETS: tuple[SetInfo, ...] = (
    KUBE_LOOP_BACK,
    KUBE_CLUSTER_IP,
    KUBE_EXTERNAL_IP,
    KUBE_EXTERNAL_IP_LOCAL,
    KUBE_LOAD_BALANCER,
    KUBE_LOAD_BALANCER_FW,
    KUBE_LOAD_BALANCER_LOCAL,
    KUBE_LOAD_BALANCER_SOURCE_IP,
    KUBE_LOAD_BALANCER_SOURCE_CIDR,
    KUBE_NODE_PORT_TCP,
    KUBE_NODE_PORT_LOCAL_TCP,
    KUBE_NODE_PORT_UDP,
    KUBE_NODE_PORT_LOCAL_UDP,
    KUBE_NODE_PORT_SCTP,
    KUBE_NODE_PORT_LOCAL_SCTP,
    KUBE_HEALTH_CHECK_NODE_PORT,
    KUBE_IPVS_IPS,
)
BY_NAME: dict[str, SetInfo] = {s.name: s for s in ALL_SETS}


# -- entries, spelled as `ipset save` prints them (so kernel and plan compare as strings) ----


def ip_port(ip: str, protocol: str, port: int) -> str:
    """hash:ip,port entry: "10.96.0.10,tcp:53"."""
    return f"{ip},{protocol.lower()}:{port}"


def ip_port_ip(ip: str, protocol: str, port: int, ip2: str) -> str:
    """hash:ip,port,ip entry: "10.244.1.5,tcp:8080,10.244.1.5"."""
    return f"{ip},{protocol.lower()}:{port},{ip2}"


def ip_port_net(ip: str, protocol: str, port: int, net: str) -> str:
    return f"{ip},{protocol.lower()}:{port},{net}"


# -- restore text ----------------------------------------------------------------------


def restore_text(
    desired: Mapping[str, Iterable[str]], current: Mapping[str, Iterable[str]] | None
) -> tuple[str, int]:
    """The `ipset restore` script that turns `current` entries into `desired`.

    Every kube-proxy set is created (upsert, `-exist`), then only the entries
    that differ are added or deleted. `current=None` means unknown: every
    set is flushed and refilled. Returns (text, number of entry changes).
    """
    lines: list[str] = []
    changes = 0
    for info in ALL_SETS:
        lines.append(info.create_line())
        want = set(desired.get(info.name, ()))
        if current is None:
            lines.append(f"flush {info.name}")
            have: set[str] = set()
        else:
            have = set(current.get(info.name, ()))
        for e in sorted(have - want):
            lines.append(f"del {info.name} {e} -exist")
            changes += 1
        for e in sorted(want - have):
            lines.append(f"add {info.name} {e} -exist")
            changes += 1
    return "\n".join(lines) + "\n", changes


def parse_save(text: str) -> dict[str, set[str]]:
    """Entries per set from `ipset save` output (only kube-proxy's sets)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "create" and parts[1] in BY_NAME:
            out.setdefault(parts[1], set())
        elif len(parts) >= 3 and parts[0] == "add" and parts[1] in BY_NAME:
            out.setdefault(parts[1], set()).add(parts[2])
    return out


def destroy_text() -> str:
    """`ipset restore` script removing every kube-proxy set (after iptables stops using them)."""
    return "".join(f"destroy {s.name}\n" for s in ALL_SETS)
