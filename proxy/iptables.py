"""iptables-restore text for a ProxyState, laid out exactly as kube-proxy's iptables mode.

This is the pure half of proxier.go's syncProxyRules: it builds the filter
and nat tables' text in memory and runs nothing (proxy/iptables_apply.py
feeds it to one `iptables-restore --noflush`). Chain names, rule order,
match order and comments are kube-proxy's byte for byte, so that a user
reading `iptables-save` in a node here reads what a real node shows, and so
that kube-proxy's own TestOverallIPTablesRules expectations hold for us
(tests/unit/test_proxy_iptables.py).

Partial syncs, as kube-proxy's: the top-level chains (KUBE-SERVICES,
KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, KUBE-POSTROUTING, KUBE-MARK-MASQ and
the filter chains) are always rewritten; per-service chains
(KUBE-SVC/SVL/EXT/FW/SEP) are written only for services that changed. The
others are left untouched in the kernel, which `--noflush` allows because a
chain is only flushed when the restore input names it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort

# Top-level chains, as kube-proxy's constants in proxier.go.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBELET_FIREWALL = "KUBE-FIREWALL"

SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
LOCALHOST_NODEPORT_COUNTER = "localhost_nps_accepted_pkts"
INVALID_DROPPED_COUNTER = "ct_state_invalid_dropped_pkts"


@dataclass(frozen=True)
class JumpRule:
    """A jump from a built-in chain into ours, as kube-proxy's iptablesJumpChains.

    kube-proxy installs these with `iptables -C`/`-I` outside the restore;
    here they are inserted in the same transaction when absent.
    """

    table: str
    source: str  # built-in chain
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    def args(self) -> str:
        comment = f' -m comment --comment "{self.comment}"' if self.comment else ""
        extra = (" " + " ".join(self.extra)) if self.extra else ""
        return f"{comment}{extra} -j {self.target}".lstrip()


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "INPUT", KUBELET_FIREWALL, ""),
    JumpRule("filter", "OUTPUT", KUBELET_FIREWALL, ""),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


# -- chain names: kube-proxy's hashes ---------------------------------------------


@lru_cache(maxsize=None)
def _hash(text: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_port_chain_name(prefix: str, service_port_name: str, protocol: str) -> str:
    """KUBE-SVC-/SVL-/EXT-/FW- + hash of "ns/svc:port" + lowercase protocol."""
    return prefix + _hash(service_port_name + protocol.lower())


def service_port_endpoint_chain_name(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP- + hash of "ns/svc:port" + protocol + "ip:port" (servicePortEndpointChainName)."""
    return "KUBE-SEP-" + _hash(service_port_name + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    """Chains kube-proxy may delete when stale (isServiceChainName)."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


@lru_cache(maxsize=None)
def probability(n: int) -> str:
    """The statistic match's probability for the i-th of n endpoints: 1/(n-i), as "%0.10f"."""
    return f"{1.0 / n:0.10f}"


# -- options and output ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """Proxier knobs that change the text (kube-proxy flags and detected features)."""

    localhost_nodeports: bool = True  # --iptables-localhost-nodeports
    nfacct: bool = False  # the kernel has xt_nfacct (kube-proxy adds counters when it does)
    random_fully: bool = False  # iptables supports MASQUERADE --random-fully
    conntrack_tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal is set: no INVALID drop
    large_cluster_endpoints: int = 1000  # kube-proxy's largeClusterEndpointsThreshold


@dataclass
class Ruleset:
    """One restore transaction, and what it accounts for."""

    text: str
    full: bool
    nat_chains: set[str] = field(default_factory=set)  # every chain the rules use (active)
    filter_rules: int = 0
    nat_rules: int = 0  # in the whole active ruleset, written or skipped
    written_nat_rules: int = 0
    stale_chains: list[str] = field(default_factory=list)


class _Lines:
    """kube-proxy's LineBuffer: rule lines plus a count."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


@dataclass
class _ServiceRules:
    """One service port's lines, split by where they go."""

    filter: _Lines = field(default_factory=_Lines)
    top: _Lines = field(default_factory=_Lines)  # KUBE-SERVICES / KUBE-NODEPORTS: always written
    chains: list[str] = field(default_factory=list)  # its own chains' declarations
    rules: _Lines = field(default_factory=_Lines)  # its own chains' rules
    active: set[str] = field(default_factory=set)


@dataclass
class _Ctx:
    """Per-sync values derived once (kube-proxy's Proxier fields)."""

    node: NodeContext
    opts: Options
    mark: str
    large: bool
    if_local: str  # localDetector.IfLocal()
    if_not_local: str  # localDetector.IfNotLocal()
    node_port_ips: tuple[str, ...] | None  # None: match all local addresses


def _context(state: ProxyState, opts: Options) -> _Ctx:
    node = state.node
    n_eps = sum(len(v) for v in state.endpoints.values())
    cidr = node.cluster_cidr
    npa = _node_port_ips(node)
    return _Ctx(
        node=node,
        opts=opts,
        mark=f"{1 << node.masquerade_bit:#x}",
        large=n_eps > opts.large_cluster_endpoints,
        if_local=f"-s {cidr}" if cidr else "",
        if_not_local=f"! -s {cidr}" if cidr else "",
        node_port_ips=npa,
    )


def _node_port_ips(node: NodeContext) -> tuple[str, ...] | None:
    """--nodeport-addresses: the node IPs inside the given CIDRs, or None for "all"."""
    if not node.node_port_addresses:
        return None
    nets = [ipaddress.ip_network(c, strict=False) for c in node.node_port_addresses if c != "primary"]
    ips = [ip for ip in node.node_ips if any(ipaddress.ip_address(ip) in n for n in nets)]
    if "primary" in node.node_port_addresses and node.node_ips and node.node_ips[0] not in ips:
        ips.insert(0, node.node_ips[0])
    return tuple(ips)


# -- endpoint categorisation: kube-proxy's CategorizeEndpoints (topology.go) ------------


def _uses_cluster_endpoints(sp: ServicePort) -> bool:
    return not sp.internal_policy_local or (sp.external_traffic and not sp.external_policy_local)


def _uses_local_endpoints(sp: ServicePort) -> bool:
    return sp.internal_policy_local or (sp.external_policy_local and sp.external_traffic)


def categorize_endpoints(
    eps: Iterable[Endpoint], sp: ServicePort
) -> tuple[list[Endpoint], list[Endpoint], list[Endpoint], bool]:
    """(cluster endpoints, local endpoints, all locally reachable endpoints, has any endpoints).

    Ready endpoints first; if none, serving-and-terminating ones (KEP-1669),
    as kube-proxy does. Topology hints are not modelled.
    """
    eps = list(eps)
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if _uses_cluster_endpoints(sp):
        cluster = [e for e in eps if e.ready]
        if not cluster:
            cluster = [e for e in eps if e.serving and e.terminating]
        has_any = bool(cluster)
    if not _uses_local_endpoints(sp):
        return cluster, local, cluster, has_any
    local_ready = local_term = False
    for e in eps:
        if e.ready:
            has_any = True
            local_ready = local_ready or e.is_local
        elif e.serving and e.terminating:
            has_any = True
            local_term = local_term or e.is_local
    if local_ready:
        local = [e for e in eps if e.is_local and e.ready]
    elif local_term:
        local = [e for e in eps if e.is_local and e.serving and e.terminating]
    if not _uses_cluster_endpoints(sp):
        return cluster, local, local, has_any
    reachable = {str(e): e for e in cluster}
    for e in local:
        reachable.setdefault(str(e), e)
    return cluster, local, list(reachable.values()), has_any


# -- the sync ---------------------------------------------------------------------------


def build(
    state: ProxyState,
    changed_services: set[tuple[str, str]] | None = None,
    opts: Options = Options(),
    existing_nat_chains: Iterable[str] | None = None,
    cache: dict | None = None,
) -> Ruleset:
    """The restore text for `state`, as syncProxyRules writes proxier.iptablesData.

    `changed_services` None means a full sync; otherwise the (namespace, name)
    of services whose chains must be rewritten (kube-proxy's UpdatedServices).
    `existing_nat_chains` (from iptables-save) lets stale service chains be
    flushed and deleted in the same transaction. `cache` (a dict kept by the
    caller across syncs) memoizes each service port's lines while its
    service, endpoints and the node context are unchanged, so a partial sync
    of 10k services costs a join, not 10k rebuilds.
    """
    c = _context(state, opts)
    mark = c.mark
    filter_chains = [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL]
    nat_chain_lines = [f":{ch} - [0:0]" for ch in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)]
    fr = _Lines()
    nr = _Lines()
    skipped = _Lines()
    active: set[str] = {KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ}

    # KUBE-POSTROUTING and KUBE-MARK-MASQ, as syncProxyRules writes them first.
    nr.write(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
    nr.write(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
    nr.write(
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        + (" --random-fully" if opts.random_fully else "")
    )
    nr.write(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")
    if opts.localhost_nodeports:
        filter_chains.append(KUBELET_FIREWALL)
        fr.write(
            f'-A {KUBELET_FIREWALL} -m comment --comment "block incoming localnet connections"'
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        )

    ctx_key = (c.node, c.opts, c.large)
    for name in sorted(state.services):
        sp = state.services[name]
        eps = state.endpoints_of(name)
        key = (sp, eps, ctx_key)
        hit = cache.get(name) if cache is not None else None
        if hit is not None and hit[0] == key:
            out = hit[1]
        else:
            out = _ServiceRules()
            _service(c, sp, eps, out.filter, out.top, out.chains, out.rules, out.active)
            if cache is not None:
                cache[name] = (key, out)
        fr.lines.extend(out.filter.lines)
        nr.lines.extend(out.top.lines)
        active |= out.active
        if changed_services is None or name.service in changed_services:
            nat_chain_lines.extend(out.chains)
            nr.lines.extend(out.rules.lines)
        else:
            skipped.lines.extend(out.rules.lines)
    if cache is not None:
        for gone in set(cache) - set(state.services):
            del cache[gone]

    # The tail-call to KUBE-NODEPORTS: after every other service rule.
    nodeports_comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if c.node_port_ips is None:
        dest = "-m addrtype --dst-type LOCAL" + ("" if opts.localhost_nodeports else " ! -d 127.0.0.0/8")
        nr.write(f"-A {KUBE_SERVICES} {nodeports_comment} {dest} -j {KUBE_NODEPORTS}")
    else:
        for ip in c.node_port_ips:
            if ipaddress.ip_address(ip).is_loopback and not opts.localhost_nodeports:
                continue
            nr.write(f"-A {KUBE_SERVICES} {nodeports_comment} -d {ip} -j {KUBE_NODEPORTS}")

    if not opts.conntrack_tcp_liberal:
        acct = f" -m nfacct --nfacct-name {INVALID_DROPPED_COUNTER}" if opts.nfacct else ""
        fr.write(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{acct} -j DROP")
    fr.write(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    fr.write(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )

    # Stale service chains: name them (which flushes them), then delete them.
    stale: list[str] = []
    if existing_nat_chains is not None:
        stale = sorted(ch for ch in set(existing_nat_chains) - active if is_service_chain(ch))
        for ch in stale:
            nat_chain_lines.append(f":{ch} - [0:0]")
            nr.write(f"-X {ch}")

    parts = ["*filter"]
    parts += [f":{ch} - [0:0]" for ch in filter_chains]
    parts += fr.lines
    parts.append("COMMIT")
    parts.append("*nat")
    parts += nat_chain_lines
    parts += nr.lines
    parts.append("COMMIT")
    written_nat = sum(1 for l in nr.lines if l.startswith("-A"))
    return Ruleset(
        text="\n".join(parts) + "\n",
        full=changed_services is None,
        nat_chains=active,
        filter_rules=len(fr.lines),
        nat_rules=written_nat + len(skipped.lines),
        written_nat_rules=written_nat,
        stale_chains=stale,
    )


def _service(
    c: _Ctx,
    sp: ServicePort,
    all_eps: tuple[Endpoint, ...],
    fr: _Lines,
    top: _Lines,
    chain_lines: list[str],
    nr: _Lines,
    active: set[str],
) -> None:
    """One service port's rules, in syncProxyRules' order.

    Rules in top-level chains go to `top` (always written); the service's own
    chains go to `chain_lines`/`nr`, which the caller points at a throwaway
    buffer for an unchanged service in a partial sync.
    """
    spn = str(sp.name)
    proto = sp.protocol.lower()
    svc_chain = service_port_chain_name("KUBE-SVC-", spn, proto)
    svl_chain = service_port_chain_name("KUBE-SVL-", spn, proto)
    ext_chain = service_port_chain_name("KUBE-EXT-", spn, proto)
    fw_chain = service_port_chain_name("KUBE-FW-", spn, proto)

    cluster_eps, local_eps, reachable, has_eps = categorize_endpoints(all_eps, sp)
    uses_cluster_chain = bool(cluster_eps) and _uses_cluster_endpoints(sp)
    uses_local_chain = bool(local_eps) and _uses_local_endpoints(sp)

    internal_chain, has_internal = svc_chain, has_eps
    if sp.internal_policy_local:
        internal_chain = svl_chain
        has_internal = has_internal and bool(local_eps)
    external_policy_chain, has_external = svc_chain, has_eps
    if sp.external_policy_local:
        external_policy_chain = svl_chain
        has_external = has_external and bool(local_eps)
    uses_ext_chain = has_eps and sp.external_traffic
    lb_chain = ext_chain
    uses_fw = has_eps and bool(sp.load_balancer_ips) and bool(sp.load_balancer_source_ranges)
    if uses_fw:
        lb_chain = fw_chain

    if not has_eps:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{spn} has no endpoints"'
    else:
        int_target = ext_target = ""
        int_comment = ext_comment = ""
        if not has_internal:
            int_target, int_comment = "DROP", f'"{spn} has no local endpoints"'
        if not has_external:
            ext_target, ext_comment = "DROP", f'"{spn} has no local endpoints"'

    pp = f"-m {proto} -p {proto}"
    port = sp.port
    # Capture the clusterIP.
    if has_internal:
        top.write(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} cluster IP" {pp} -d {sp.cluster_ip} --dport {port}'
            f" -j {internal_chain}"
        )
    else:
        fr.write(
            f"-A {KUBE_SERVICES} -m comment --comment {int_comment} {pp} -d {sp.cluster_ip} --dport {port}"
            f" -j {int_target}"
        )
    # Capture externalIPs.
    for ip in sp.external_ips:
        if has_eps:
            top.write(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} external IP" {pp} -d {ip} --dport {port} -j {ext_chain}'
            )
        if not has_external:
            fr.write(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pp} -d {ip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture load-balancer ingress.
    for ip in sp.load_balancer_ips:
        if has_eps:
            top.write(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} loadbalancer IP" {pp} -d {ip} --dport {port}'
                f" -j {lb_chain}"
            )
        if uses_fw:
            fr.write(
                f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{spn} traffic not accepted by {fw_chain}"'
                f" {pp} -d {ip} --dport {port} -j DROP"
            )
    if not has_external:
        for ip in sp.load_balancer_ips:
            fr.write(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pp} -d {ip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture nodeports.
    if sp.node_port:
        if has_eps:
            if c.opts.localhost_nodeports and c.node_port_ips is None:
                acct = f" -m nfacct --nfacct-name {LOCALHOST_NODEPORT_COUNTER}" if c.opts.nfacct else ""
                top.write(
                    f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} -d 127.0.0.0/8 --dport {sp.node_port}"
                    f"{acct} -j {ext_chain}"
                )
            top.write(f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} --dport {sp.node_port} -j {ext_chain}")
        if not has_external:
            fr.write(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} -m addrtype --dst-type LOCAL"
                f" {pp} --dport {sp.node_port} -j {ext_target}"
            )
    # Capture healthCheckNodePorts.
    if sp.health_check_node_port:
        fr.write(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{spn} health check node port" -m tcp -p tcp'
            f" --dport {sp.health_check_node_port} -j ACCEPT"
        )

    # Internal traffic: masquerade what comes from outside the pod network (localDetector.IfNotLocal).
    if has_internal:
        args = f'-m comment --comment "{spn} cluster IP" {pp} -d {sp.cluster_ip} --dport {port}'
        if c.node.masquerade_all:
            nr.write(f"-A {internal_chain} {args} -j {KUBE_MARK_MASQ}")
        elif c.if_not_local:
            nr.write(f"-A {internal_chain} {args} {c.if_not_local} -j {KUBE_MARK_MASQ}")

    # External traffic: the KUBE-EXT chain.
    if uses_ext_chain:
        chain_lines.append(f":{ext_chain} - [0:0]")
        active.add(ext_chain)
        if not sp.external_policy_local:
            nr.write(
                f'-A {ext_chain} -m comment --comment "masquerade traffic for {spn} external destinations"'
                f" -j {KUBE_MARK_MASQ}"
            )
        else:
            if c.if_local:
                nr.write(
                    f'-A {ext_chain} -m comment --comment "pod traffic for {spn} external destinations"'
                    f" {c.if_local} -j {svc_chain}"
                )
            nr.write(
                f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {spn} external destinations"'
                f" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            nr.write(
                f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {spn} external destinations"'
                f" -m addrtype --src-type LOCAL -j {svc_chain}"
            )
        if has_external:
            nr.write(f"-A {ext_chain} -j {external_policy_chain}")

    # The firewall chain (loadBalancerSourceRanges).
    if uses_fw:
        chain_lines.append(f":{fw_chain} - [0:0]")
        active.add(fw_chain)
        head = f'-A {fw_chain} -m comment --comment "{spn} loadbalancer IP"'
        allow_from_node = False
        nets = []
        for cidr in sp.load_balancer_source_ranges:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
            nets.append(net)
            nr.write(f"{head} -s {net} -j {ext_chain}")
            if c.node.node_ips and ipaddress.ip_address(c.node.node_ips[0]) in net:
                allow_from_node = True
        if allow_from_node:
            for ip in sp.load_balancer_ips:
                nr.write(f"{head} -s {ip} -j {ext_chain}")
        nr.write(f'-A {fw_chain} -m comment --comment "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"')

    if uses_cluster_chain:
        chain_lines.append(f":{svc_chain} - [0:0]")
        active.add(svc_chain)
        _service_to_endpoints(c, nr, spn, sp, svc_chain, cluster_eps)
    if uses_local_chain:
        chain_lines.append(f":{svl_chain} - [0:0]")
        active.add(svl_chain)
        _service_to_endpoints(c, nr, spn, sp, svl_chain, local_eps)

    # Per-endpoint chains (KUBE-SEP): hairpin masquerade, affinity, DNAT.
    for ep in reachable:
        sep = service_port_endpoint_chain_name(spn, proto, str(ep))
        chain_lines.append(f":{sep} - [0:0]")
        active.add(sep)
        head = f"-A {sep}" if c.large else f"-A {sep} -m comment --comment {spn}"
        nr.write(f"{head} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        recent = f" -m recent --name {sep} --set" if sp.session_affinity_client_ip else ""
        nr.write(f"{head}{recent} {pp} -j DNAT --to-destination {ep}")


def _service_to_endpoints(
    c: _Ctx, nr: _Lines, spn: str, sp: ServicePort, chain: str, eps: list[Endpoint]
) -> None:
    """KUBE-SVC/SVL -> KUBE-SEP rules, as writeServiceToEndpointRules."""
    proto = sp.protocol.lower()
    seps = [(ep, service_port_endpoint_chain_name(spn, proto, str(ep))) for ep in eps]
    if sp.session_affinity_client_ip:
        for ep, sep in seps:
            comment = "" if c.large else f' -m comment --comment "{spn} -> {ep}"'
            nr.write(
                f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {sp.sticky_max_age_seconds}"
                f" --reap -j {sep}"
            )
    n = len(seps)
    for i, (ep, sep) in enumerate(seps):
        comment = "" if c.large else f' -m comment --comment "{spn} -> {ep}"'
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nr.write(f"-A {chain}{comment}{stat} -j {sep}")


def jump_rules_missing(saved_rules: dict[str, dict[str, list[str]]]) -> list[JumpRule]:
    """The JUMP_RULES with no jump from their built-in chain to their target yet.

    `saved_rules` is table -> chain -> rule texts, as proxy.walker.parse
    reads an iptables-save. kube-proxy checks each with `iptables -C`; a
    jump to the right chain is what matters, so only the target is compared
    (iptables-save reorders matches).
    """
    missing = []
    for j in JUMP_RULES:
        rules = saved_rules.get(j.table, {}).get(j.source, [])
        if not any(r.split()[-2:] == ["-j", j.target] or f" -j {j.target} " in f" {r} " for r in rules):
            missing.append(j)
    return missing
