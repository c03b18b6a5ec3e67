"""IPVS mode, the pure half: ProxyState -> the kernel state kube-proxy's IPVS proxier makes.

kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go) load-balances in the
kernel's IP Virtual Server instead of iptables chains:

- every service address (ClusterIP, external IP, load-balancer IP) is bound
  to the dummy device `kube-ipvs0`, so the node routes it as local and IPVS
  (which hooks LOCAL_IN) sees the packets;
- one IPVS virtual server per address:port/protocol, NAT forwarding ("masq"),
  with the endpoints as real servers, weight 1, a scheduler (rr by default);
- a handful of ipsets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP...)
  and a constant-size iptables ruleset around them that only marks for
  masquerade, masquerades, and filters.

`plan()` computes all of that from a snapshot without touching the kernel;
`proxy/ipvs_kernel.py` applies it, changing only what differs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from proxy import ipset
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName

DUMMY_DEVICE = "kube-ipvs0"  # as kube-proxy's defaultDummyDevice
DEFAULT_SCHEDULER = "rr"  # as kube-proxy's defaultScheduler
# The schedulers (proxy.model.IPVS_SCHEDULERS) come per lab from --ipvs-scheduler, as
# kube-proxy's, or per Service from kube-router's annotation (ServicePort.ipvs_scheduler).

# ip_vs flags (include/uapi/linux/ip_vs.h), as utilipvs.FlagPersistent / FlagHashed.
FLAG_PERSISTENT = 0x0001
FLAG_HASHED = 0x0002

# IPVS sysctls kube-proxy sets (NewProxier): conntrack so iptables NAT (MASQUERADE)
# sees IPVS connections; expire_nodest_conn / expire_quiescent_template so that
# connections to a removed real server are dropped at once, not black-holed.
SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
)
# conn_reuse_mode=0 works around a 1 s stall on port reuse. kube-proxy sets it only on
# kernels 4.1 <= v < 5.9; 5.9 fixed the bug and it leaves the sysctl as it is there.
CONN_REUSE_SYSCTL = ("net.ipv4.vs.conn_reuse_mode", "0")
CONN_REUSE_MIN_KERNEL = (4, 1)
CONN_REUSE_FIXED_KERNEL = (5, 9)

MASQ_COMMENT = '"kubernetes service traffic requiring SNAT"'


def sysctls_for_kernel(release: str) -> list[tuple[str, str]]:
    """The sysctls kube-proxy's IPVS proxier sets on a kernel of this release ("6.1.0-26-amd64")."""
    out = list(SYSCTLS)
    try:
        parts = release.split("-")[0].split(".")
        version = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return out
    if CONN_REUSE_MIN_KERNEL <= version < CONN_REUSE_FIXED_KERNEL:
        out.append(CONN_REUSE_SYSCTL)
    return out


def categorize_endpoints(
    svc: ServicePort, endpoints: Iterable[Endpoint]
) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]:
    """(cluster endpoints, local endpoints) as kube-proxy's CategorizeEndpoints (no topology hints).

    Ready endpoints serve; when none is ready, serving-and-terminating ones do
    (ProxyTerminatingEndpoints). Local endpoints are computed only when a
    traffic policy is Local.
    """
    eps = tuple(endpoints)

    def usable(cands: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        ready = tuple(e for e in cands if e.ready)
        return ready or tuple(e for e in cands if e.serving and e.terminating)

    cluster = usable(eps)
    local = usable(tuple(e for e in eps if e.is_local)) if svc.uses_local_endpoints else ()
    return cluster, local


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class VirtualServer:
    """One IPVS virtual service, as utilipvs.VirtualServer (addr:port/proto, scheduler, persistence)."""

    address: str
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    persistent_timeout: int = 0  # ClientIP affinity: FlagPersistent with this timeout (s)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.address, self.protocol, self.port)

    def __str__(self) -> str:  # ipvsadm's spelling: "TCP  10.96.0.10:53 rr"
        return f"{self.protocol} {self.address}:{self.port} {self.scheduler}"


@dataclass(frozen=True, order=True)
class RealServer:
    """One IPVS destination, NAT forwarding ("Masq"), as utilipvs.RealServer.

    The connection counts are what the kernel reports (ipvsadm's ActiveConn
    and InActConn); they are not part of a real server's identity.
    """

    address: str
    port: int
    weight: int = 1
    active_conns: int = field(default=0, compare=False)
    inactive_conns: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class IpvsPlan:
    """Everything IPVS mode wants in the node's kernel for one ProxyState."""

    virtual_servers: dict[tuple[str, str, int], VirtualServer] = field(default_factory=dict)
    real_servers: dict[tuple[str, str, int], frozenset[RealServer]] = field(default_factory=dict)
    owners: dict[tuple[str, str, int], ServicePortName] = field(default_factory=dict)
    bound_addresses: set[str] = field(default_factory=set)  # on kube-ipvs0
    ipsets: dict[str, set[str]] = field(default_factory=dict)
    iptables: str = ""  # iptables-restore --noflush text (nat + filter)

    def add(self, vs: VirtualServer, rs: Iterable[RealServer], owner: ServicePortName, bind: bool) -> None:
        self.virtual_servers[vs.key] = vs
        self.real_servers[vs.key] = frozenset(rs)
        self.owners[vs.key] = owner
        if bind:
            self.bound_addresses.add(vs.address)

    def nonempty_sets(self) -> dict[str, bool]:
        return {k: bool(v) for k, v in self.ipsets.items()}

    def entry(self, info: ipset.SetInfo, value: str) -> None:
        self.ipsets.setdefault(info.name, set()).add(value)


def plan(state: ProxyState, scheduler: str = DEFAULT_SCHEDULER) -> IpvsPlan:
    """The IPVS, address, ipset and iptables state for `state`, as syncProxyRules builds it.

    `scheduler` is the node's (--ipvs-scheduler); a Service's annotation overrides it.
    """
    node = state.node
    p = IpvsPlan()
    nodeport_ips = nodeport_addresses(node)
    for name in sorted(state.services):
        svc = state.services[name]
        if not svc.cluster_ip:
            continue
        proto = svc.protocol
        sched = svc.ipvs_scheduler or scheduler
        timeout = svc.sticky_max_age_seconds if svc.session_affinity_client_ip else 0
        cluster_eps, local_eps = categorize_endpoints(svc, state.endpoints_of(name))

        def servers(only_local: bool) -> list[RealServer]:
            # kube-proxy's syncEndpoint: with a Local policy and no local endpoint it
            # falls back to the cluster endpoints (kubernetes#97081).
            eps = local_eps if only_local and local_eps else cluster_eps
            return [RealServer(e.ip, e.port) for e in eps]

        # Hairpin: an endpoint on this node reaching its own service is masqueraded.
        for e in state.endpoints_of(name):
            if e.is_local:
                p.entry(ipset.KUBE_LOOP_BACK, ipset.ip_port_ip(e.ip, proto, e.port, e.ip))

        # ClusterIP.
        p.entry(ipset.KUBE_CLUSTER_IP, ipset.ip_port(svc.cluster_ip, proto, svc.port))
        p.add(VirtualServer(svc.cluster_ip, proto, svc.port, sched, timeout),
              servers(svc.internal_policy_local), name, bind=True)

        # External IPs.
        for ip in svc.external_ips:
            info = ipset.KUBE_EXTERNAL_IP_LOCAL if svc.external_policy_local else ipset.KUBE_EXTERNAL_IP
            p.entry(info, ipset.ip_port(ip, proto, svc.port))
            p.add(VirtualServer(ip, proto, svc.port, sched, timeout),
                  servers(svc.external_policy_local), name, bind=True)

        # Load-balancer ingress IPs.
        for ip in svc.load_balancer_ips:
            p.entry(ipset.KUBE_LOAD_BALANCER, ipset.ip_port(ip, proto, svc.port))
            if svc.external_policy_local:
                p.entry(ipset.KUBE_LOAD_BALANCER_LOCAL, ipset.ip_port(ip, proto, svc.port))
            if svc.load_balancer_source_ranges:
                p.entry(ipset.KUBE_LOAD_BALANCER_FW, ipset.ip_port(ip, proto, svc.port))
                for cidr in svc.load_balancer_source_ranges:
                    p.entry(ipset.KUBE_LOAD_BALANCER_SOURCE_CIDR, ipset.ip_port_net(ip, proto, svc.port, cidr))
            p.add(VirtualServer(ip, proto, svc.port, sched, timeout),
                  servers(svc.external_policy_local), name, bind=True)

        # NodePorts: one virtual server per node address (not bound: already local).
        if svc.node_port:
            if proto == "SCTP":
                np_set, np_local = ipset.KUBE_NODE_PORT_SCTP, ipset.KUBE_NODE_PORT_LOCAL_SCTP
                values = [ipset.ip_port(ip, proto, svc.node_port) for ip in nodeport_ips]
            else:
                np_set = ipset.KUBE_NODE_PORT_TCP if proto == "TCP" else ipset.KUBE_NODE_PORT_UDP
                np_local = ipset.KUBE_NODE_PORT_LOCAL_TCP if proto == "TCP" else ipset.KUBE_NODE_PORT_LOCAL_UDP
                values = [str(svc.node_port)]
            for v in values:
                p.entry(np_set, v)
                if svc.external_policy_local:
                    p.entry(np_local, v)
            for ip in nodeport_ips:
                p.add(VirtualServer(ip, proto, svc.node_port, sched, timeout),
                      servers(svc.external_policy_local), name, bind=False)
        if svc.health_check_node_port:
            p.entry(ipset.KUBE_HEALTH_CHECK_NODE_PORT, str(svc.health_check_node_port))
    for ip in p.bound_addresses:
        p.entry(ipset.KUBE_IPVS_IPS, ip)
    p.iptables = iptables_text(node, p.nonempty_sets())
    return p


# -- graceful termination (kube-proxy's pkg/proxy/ipvs/graceful_termination.go) -------------------

# netlab's bound on draining: kube-proxy waits for the last connection however long it
# lives; netlab deletes a draining real server after this long even if one remains. 900 s
# is IPVS's own TCP established timeout (`ipvsadm --set`'s first value).
GRACEFUL_TIMEOUT = 900.0


def graceful_termination_needed(protocol: str) -> bool:
    """utilipvs.IsRsGracefulTerminationNeeded: TCP drains; UDP and SCTP real servers are
    deleted at once (their connections expire on their next packet: expire_nodest_conn=1)."""
    return protocol.upper() not in ("UDP", "SCTP")


@dataclass
class RealServerChanges:
    """What one virtual server's real servers need, and who is still draining afterwards."""

    add: list[RealServer] = field(default_factory=list)
    update: list[RealServer] = field(default_factory=list)  # to the wanted weight
    quiesce: list[RealServer] = field(default_factory=list)  # weight 0: no new connections, old ones drain
    delete: list[RealServer] = field(default_factory=list)
    terminating: dict[tuple[str, int], float] = field(default_factory=dict)  # (address, port) -> since


def diff_real_servers(
    vs: VirtualServer,
    want: Iterable[RealServer],
    have: Iterable[RealServer],
    terminating: Mapping[tuple[str, int], float],
    now: float,
    timeout: float = GRACEFUL_TIMEOUT,
) -> RealServerChanges:
    """syncEndpoint plus the graceful termination manager, for one virtual server.

    `have` is the kernel's view (with connection counts); `terminating` the
    real servers of `vs` draining since the given time (the manager's rsList).
    A real server that goes away is deleted at once if it has no connections
    (GracefulDeleteRS tries that first) or is UDP/SCTP; otherwise its weight
    goes to 0 and it is deleted by a later sync, once its active and inactive
    connections are gone (deleteRsFunc) or `timeout` seconds have passed.
    One that comes back while draining gets its weight back in place
    (kube-proxy deletes and re-adds it, which cuts the draining connections).
    """
    out = RealServerChanges()
    want_by = {r.key: r for r in want}
    have_by = {r.key: r for r in have}
    graceful = graceful_termination_needed(vs.protocol)
    for key, rs in sorted(want_by.items()):
        cur = have_by.get(key)
        if cur is None:
            out.add.append(rs)
        elif cur.weight != rs.weight:
            out.update.append(rs)
    for key, cur in sorted(have_by.items()):
        if key in want_by:
            continue
        conns = cur.active_conns + cur.inactive_conns
        since = terminating.get(key)
        if not graceful or conns == 0 or (since is not None and now - since >= timeout):
            out.delete.append(cur)
            continue
        if cur.weight != 0:
            out.quiesce.append(RealServer(cur.address, cur.port, 0))
        out.terminating[key] = now if since is None else since
    return out


def nodeport_addresses(node: NodeContext) -> list[str]:
    """Node addresses that serve NodePorts (--nodeport-addresses filters node_ips)."""
    if not node.node_port_addresses:
        return sorted(node.node_ips)
    nets = [ipaddress.ip_network(c, strict=False) for c in node.node_port_addresses]
    return sorted(ip for ip in node.node_ips if any(ipaddress.ip_address(ip) in n for n in nets))


# -- iptables around the ipsets ------------------------------------------------------------------

# (table, builtin chain, kube chain, comment): kube-proxy's iptablesJumpChain for IPVS mode.
JUMP_CHAINS: tuple[tuple[str, str, str, str], ...] = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
FILTER_CHAINS = (
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
)

# kube-proxy's ipsetWithIptablesChain: (set, table, from chain, to, match type, protocol).
# The -LOCAL sets come before their general set: their RETURN skips the masquerade mark.
IPSET_RULES: tuple[tuple[ipset.SetInfo, str, str, str, str, str], ...] = (
    (ipset.KUBE_LOOP_BACK, "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    (ipset.KUBE_LOAD_BALANCER, "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    (ipset.KUBE_LOAD_BALANCER_LOCAL, "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    (ipset.KUBE_NODE_PORT_LOCAL_TCP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    (ipset.KUBE_NODE_PORT_TCP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    (ipset.KUBE_NODE_PORT_LOCAL_UDP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    (ipset.KUBE_NODE_PORT_UDP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    (ipset.KUBE_NODE_PORT_LOCAL_SCTP, "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    (ipset.KUBE_NODE_PORT_SCTP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    (ipset.KUBE_LOAD_BALANCER_FW, "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    (ipset.KUBE_LOAD_BALANCER_SOURCE_CIDR, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    (ipset.KUBE_LOAD_BALANCER_SOURCE_IP, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)


def masquerade_mark(node: NodeContext) -> str:
    """kube-proxy's masqueradeMark: fmt.Sprintf("%#08x", 1<<bit) -> "0x004000"."""
    return f"{1 << node.masquerade_bit:#08x}"


def _set_match(info: ipset.SetInfo, match: str) -> str:
    return f'-m comment --comment "{info.comment}" -m set --match-set {info.name} {match}'


def iptables_text(
    node: NodeContext, nonempty: Mapping[str, bool], jumps: Mapping[str, list[str]] | None = None
) -> str:
    """The iptables-restore --noflush text of IPVS mode, as writeIptablesRules.

    Its size depends only on which sets are non-empty, never on the number of
    services: that is the point of IPVS mode. `jumps` (from `missing_jumps`)
    are inserted right after the chains they target are declared, so the
    whole sync stays one transaction.
    """
    mark = masquerade_mark(node)
    jumps = jumps or {}
    nat: list[str] = ["*nat"] + [f":{c} - [0:0]" for c in NAT_CHAINS] + list(jumps.get("nat", ()))
    flt: list[str] = ["*filter"] + [f":{c} - [0:0]" for c in FILTER_CHAINS] + list(jumps.get("filter", ()))
    nat.append("-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN")  # connects to localhost leave early
    for info, table, chain, target, match, proto in IPSET_RULES:
        if not nonempty.get(info.name):
            continue
        p = f"-p {proto} " if proto else ""
        (flt if table == "filter" else nat).append(f"-A {chain} {p}{_set_match(info, match)} -j {target}")
    if nonempty.get(ipset.KUBE_CLUSTER_IP.name):
        head = f"-A KUBE-SERVICES {_set_match(ipset.KUBE_CLUSTER_IP, '')}"
        if node.masquerade_all:
            nat.append(f"{head}dst,dst -j KUBE-MARK-MASQ")
        elif node.cluster_cidr:
            # Off-cluster traffic to a VIP is masqueraded (kube-proxy's localDetector.IfNotLocal).
            nat.append(f"{head}dst,dst ! -s {node.cluster_cidr} -j KUBE-MARK-MASQ")
        else:
            # Without a cluster CIDR: masquerade node-originated traffic whose source is a VIP.
            nat.append(f"{head}src,dst -j KUBE-MARK-MASQ")
    for info in (ipset.KUBE_EXTERNAL_IP, ipset.KUBE_EXTERNAL_IP_LOCAL):
        if not nonempty.get(info.name):
            continue
        head = f"-A KUBE-SERVICES {_set_match(info, 'dst,dst')}"
        if info is ipset.KUBE_EXTERNAL_IP:
            nat.append(f"{head} -j KUBE-MARK-MASQ")
        nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
        nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
    flt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    # acceptIPVSTraffic: must stay last in KUBE-SERVICES.
    for info in (ipset.KUBE_CLUSTER_IP, ipset.KUBE_LOAD_BALANCER):
        if nonempty.get(info.name):
            nat.append(f"-A KUBE-SERVICES -m set --match-set {info.name} dst,dst -j ACCEPT")
    flt.append(
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    flt.append(
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    flt.append(f"-A KUBE-NODE-PORT {_set_match(ipset.KUBE_HEALTH_CHECK_NODE_PORT, 'dst')} -j ACCEPT")
    # KUBE-IPVS-FILTER: a VIP answers only on its service ports (kubernetes#72236).
    for info, match in (
        (ipset.KUBE_LOAD_BALANCER, "dst,dst"),
        (ipset.KUBE_CLUSTER_IP, "dst,dst"),
        (ipset.KUBE_EXTERNAL_IP, "dst,dst"),
        (ipset.KUBE_EXTERNAL_IP_LOCAL, "dst,dst"),
        (ipset.KUBE_HEALTH_CHECK_NODE_PORT, "dst"),
    ):
        flt.append(f"-A KUBE-IPVS-FILTER -m set --match-set {info.name} {match} -j RETURN")
    flt.append(
        f"-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {ipset.KUBE_IPVS_IPS.name} dst -j REJECT"
    )
    nat.append(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
    nat.append(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
    nat.append(f"-A KUBE-POSTROUTING -m comment --comment {MASQ_COMMENT} -j MASQUERADE --random-fully")
    nat.append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")
    return "\n".join(flt + ["COMMIT"] + nat + ["COMMIT"]) + "\n"


def missing_jumps(existing_save: str) -> dict[str, list[str]]:
    """Per table, iptables-restore lines inserting the missing jumps from builtin chains.

    kube-proxy's createAndLinkKubeChain uses EnsureRule(Prepend): check, then
    insert at the top. `existing_save` is `iptables-save` output of the node.
    """
    by_table: dict[str, list[str]] = {}
    for table, builtin, chain, comment in JUMP_CHAINS:
        rule = f'-m comment --comment "{comment}" -j {chain}'
        present = any(
            line.startswith(f"-A {builtin} ") and line.endswith(f"-j {chain}") and comment in line
            for line in _table_lines(existing_save, table)
        )
        if not present:
            by_table.setdefault(table, []).append(f"-I {builtin} 1 {rule}")
    return by_table


def _table_lines(save: str, table: str) -> list[str]:
    lines, cur = [], None
    for line in save.splitlines():
        if line.startswith("*"):
            cur = line[1:].strip()
        elif cur == table:
            lines.append(line)
    return lines


def own_netns(args) -> str:
    """The namespace to program: --netns, or the one we run in if it is a named one (/run/netns).

    Positive identification rather than "not PID 1's": where /proc/1/ns is
    unreadable (containers, sandboxes) the host's namespace cannot be told
    apart that way, and it must never be programmed.
    """
    from netlab import netns as _netns
    from proxy.backend import SyncError

    name = args.netns or _netns.current_name()
    if name is None:
        raise SyncError("refusing to program a namespace netlab did not create (the host's?): "
                        "run inside a node namespace or pass --netns")
    return name


def make_backend(args):
    """netlab-proxy --mode ipvs (proxy/cli.py's per-mode hook), with --ipvs-scheduler."""
    from proxy.ipvs_kernel import IpvsBackend

    return IpvsBackend(own_netns(args), getattr(args, "ipvs_scheduler", "") or DEFAULT_SCHEDULER)
