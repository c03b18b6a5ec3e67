"""nftables mode, the pure half: ProxyState -> kube-proxy's `ip kube-proxy` table, as nft text.

kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go) keeps one
table of its own instead of sharing iptables' chains. Dispatch is by verdict
map, not by a chain walked rule by rule: `services` looks the packet's
`daddr . l4proto . dport` up in the `service-ips` map (and `l4proto . dport`
in `service-nodeports` for node addresses), so first-packet cost stays flat
as services grow. Each service port has a `service-<hash>-ns/name/proto/port`
chain that picks an endpoint chain at random (`numgen random`, see below),
and each endpoint chain DNATs. Masquerading is a mark and one `masquerading`
chain.

This module renders:
- `full_text(state)`: the whole table in one `nft -f` transaction. With no
  knowledge of the kernel's table (first sync, after a failure) it replaces
  the table; with the previous sync's `Applied` it does what kube-proxy's
  full sync does: every chain is added and flushed and its rules rewritten,
  the maps and sets are flushed and refilled, stale chains are flushed (and
  deleted a second later), stale affinity sets go, and existing affinity
  sets (their dynamic client entries) stay;
- `partial_text(...)`: for changed service ports only, their own chains,
  sets and map elements (kube-proxy's partial sync), plus the global sets.
Both are pure; `proxy/nftables_kernel.py` feeds them to `nft -f -`. A
chain's rules go in as one `add chain NAME { rule ; ... }`, which nft
applies without first reading the table back (see `_rules_line`).

One deliberate difference from kube-proxy's text: the endpoint choice.
kube-proxy writes `numgen random mod N vmap { 0 : goto endpoint-A, ... }`,
an anonymous verdict map per service. The kernel names every anonymous set
by scanning all sets of the table (nf_tables_set_alloc_name: an sscanf of
each "__map%d" name), so a transaction creating one per service is
quadratic in services. On kernel 6.18, `nft -f` of a full sync spent 1.2 s
of system time at 3k services (0.2 s with the maps replaced by plain
gotos), and a full sync took 31 s at 10k and 308 s at 30k (2.4 s and 7.2 s
with plain gotos). netlab writes the same uniform choice without a set, as
kube-proxy's iptables mode does with `-m statistic --probability`: endpoint
i of N is taken by `numgen random mod (N-i) 0 goto endpoint-i` (probability
1/(N-i) of what reaches it, so 1/N overall) and the last by a plain `goto`;
a one-endpoint service is just `goto endpoint-...`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.ipvs import categorize_endpoints, nodeport_addresses
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName

TABLE = "kube-proxy"
FAMILY = "ip"
T = f"{FAMILY} {TABLE}"
CHAIN_NAME_MAX = 256  # NFT_CHAIN_MAXNAMELEN

# Base chains: (name, type, hook, priority), as kube-proxy's nftablesBaseChains.
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    ("filter-prerouting", "filter", "prerouting", -110),  # dstnat - 10
    ("filter-input", "filter", "input", -10),  # filter - 10
    ("filter-forward", "filter", "forward", -10),
    ("filter-output", "filter", "output", -110),  # dstnat - 10: before DNAT, as filter-prerouting
    ("filter-output-post-dnat", "filter", "output", -90),  # dstnat + 10
    ("nat-prerouting", "nat", "prerouting", -100),  # dstnat
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),  # srcnat
)
# Jumps from base chains, as kube-proxy's nftablesJumpChains.
BASE_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("filter-prerouting", "firewall-check", "ct state new"),
    ("filter-input", "nodeport-endpoints-check", "ct state new"),
    ("filter-input", "service-endpoints-check", "ct state new"),
    ("filter-forward", "service-endpoints-check", "ct state new"),
    ("filter-forward", "cluster-ips-check", "ct state new"),
    ("filter-output", "service-endpoints-check", "ct state new"),
    ("filter-output", "firewall-check", "ct state new"),
    ("filter-output-post-dnat", "cluster-ips-check", "ct state new"),
    ("nat-output", "services", ""),
    ("nat-postrouting", "masquerading", ""),
    ("nat-prerouting", "services", ""),
)

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT_CHAIN = "reject-chain"


def hash_and_truncate(name: str) -> str:
    """kube-proxy's hashAndTruncate: 8 base32 chars of sha256, "-", the readable name."""
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    out = f"{h}-{name}"
    return out if len(out) <= CHAIN_NAME_MAX else out[: CHAIN_NAME_MAX - 3] + "..."


def service_base(spn: ServicePortName) -> str:
    """servicePortChainNameBase: "HASH-ns/name/proto/portname"."""
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}")


def endpoint_base(spn: ServicePortName, ep: Endpoint) -> str:
    """servicePortEndpointChainNameBase: "HASH-ns/name/proto/portname__ip/port"."""
    ip = ep.ip.replace(":", ".")
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}__{ip}/{ep.port}")


# -- per service port ---------------------------------------------------------------------------------


def endpoint_choice(chains: list[str]) -> list[str]:
    """Rules picking one of `chains` uniformly at random, without an anonymous set (see the module doc).

    Rule i matches with probability 1/(N-i) among the packets that reach it,
    so each of the N endpoints gets 1/N, as iptables mode's statistic ladder.
    """
    n = len(chains)
    out = [f"numgen random mod {n - i} 0 goto {c}" for i, c in enumerate(chains[:-1])]
    if chains:
        out.append(f"goto {chains[-1]}")
    return out


@dataclass
class ServiceRules:
    """Everything one service port owns in the table (what a partial sync may rewrite)."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)  # affinity sets: name -> definition body
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # map -> key -> value ("" for sets)

    def element(self, m: str, key: str, value: str = "") -> None:
        self.elements.setdefault(m, {})[key] = value


def service_rules(svc: ServicePort, eps: Iterable[Endpoint], node: NodeContext) -> ServiceRules:
    """The chains, affinity sets and map elements of one service port (syncProxyRules' per-service loop)."""
    spn = svc.name
    out = ServiceRules()
    if not svc.cluster_ip:
        return out
    proto = svc.protocol.lower()
    base = service_base(spn)
    svc_chain = f"service-{base}"
    ext_chain = f"external-{base}"
    local_chain = f"local-{base}"
    all_eps = tuple(eps)
    cluster_eps, local_eps = categorize_endpoints(svc, all_eps)
    # syncProxyRules' traffic classes: internal (the ClusterIP) follows internalTrafficPolicy,
    # external (NodePort, externalIPs, LB IPs) externalTrafficPolicy; each goes to the cluster
    # policy chain (service-*) or the local one (local-*).
    has_eps = bool(cluster_eps)
    uses_cluster_chain = has_eps and (
        not svc.internal_policy_local or (svc.external_traffic and not svc.external_policy_local))
    uses_local_chain = bool(local_eps) and svc.uses_local_endpoints
    internal_chain = local_chain if svc.internal_policy_local else svc_chain
    has_internal = has_eps and (bool(local_eps) or not svc.internal_policy_local)
    external_chain = local_chain if svc.external_policy_local else svc_chain
    has_external = has_eps and (bool(local_eps) or not svc.external_policy_local)
    # kube-proxy: "The internalTrafficPolicy is "Local" but there are no local endpoints.
    # Traffic to the clusterIP will be dropped, but external traffic may still be accepted"
    # (and the same for externalTrafficPolicy); no endpoints at all rejects. One verdict for both
    # traffic classes.
    no_endpoint_verdict = "drop" if has_eps else f"goto {REJECT_CHAIN}"

    def ep_chain(ep: Endpoint) -> str:
        return f"endpoint-{endpoint_base(spn, ep)}"

    def aff_set(ep: Endpoint) -> str:
        return f"affinity-{endpoint_base(spn, ep)}"

    def dispatch(chain: str, targets: tuple[Endpoint, ...]) -> list[str]:
        rules = []
        if svc.session_affinity_client_ip:
            for ep in targets:
                rules.append(f"ip saddr @{aff_set(ep)} goto {ep_chain(ep)}")
        rules += endpoint_choice([ep_chain(ep) for ep in targets])
        return rules

    # Endpoint chains: every endpoint a policy chain dispatches to.
    used = {str(e): e for e in (*(cluster_eps if uses_cluster_chain else ()),
                                *(local_eps if uses_local_chain else ()))}
    for ep in sorted(used.values(), key=str):
        rules = [f"ip saddr {ep.ip} jump {MARK_MASQ}"]  # hairpin
        if svc.session_affinity_client_ip:
            out.sets[aff_set(ep)] = (
                f"type ipv4_addr ; flags dynamic,timeout ; timeout {svc.sticky_max_age_seconds}s ;"
            )
            rules.append(f"update @{aff_set(ep)} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
        out.chains[ep_chain(ep)] = rules

    if uses_cluster_chain:
        rules = []
        match = f"ip daddr {svc.cluster_ip} {proto} dport {svc.port}"
        if node.masquerade_all:
            rules.append(f"{match} jump {MARK_MASQ}")
        elif node.cluster_cidr:
            # Off-cluster traffic to the ClusterIP is masqueraded (kube-proxy's localDetector).
            rules.append(f"{match} ip saddr != {node.cluster_cidr} jump {MARK_MASQ}")
        out.chains[svc_chain] = rules + dispatch(svc_chain, cluster_eps)
    if uses_local_chain:
        out.chains[local_chain] = dispatch(local_chain, local_eps)

    key = f"{svc.cluster_ip} . {proto} . {svc.port}"
    if has_internal:
        out.element(SERVICE_IPS, key, f"goto {internal_chain}")
    else:
        out.element(NO_ENDPOINT_SERVICES, key, no_endpoint_verdict)

    if svc.external_traffic:
        if has_eps:
            if svc.external_policy_local:
                ext = []
                if uses_cluster_chain:
                    # Pod and host traffic to an external destination is subject to neither
                    # policy ("simulates going up-and-out to an external load-balancer").
                    if node.cluster_cidr:
                        ext.append(f'ip saddr {node.cluster_cidr} goto {svc_chain} comment "short-circuit pod traffic"')
                    ext.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
                    ext.append(f'fib saddr type local goto {svc_chain} comment "short-circuit local traffic"')
            else:
                # Non-local endpoints may be on another node: masquerade.
                ext = [f"jump {MARK_MASQ}"]
            if has_external:
                ext.append(f"goto {external_chain}")
            out.chains[ext_chain] = ext
            target = f"goto {ext_chain}"
            for ip in (*svc.external_ips, *svc.load_balancer_ips):
                out.element(SERVICE_IPS, f"{ip} . {proto} . {svc.port}", target)
            if svc.node_port:
                out.element(SERVICE_NODEPORTS, f"{proto} . {svc.node_port}", target)
        if not has_external:
            # No endpoint for external traffic: what the external chain did not short-circuit
            # meets the filter hooks' no-endpoint maps (drop; reject with no endpoint at all).
            for ip in (*svc.external_ips, *svc.load_balancer_ips):
                out.element(NO_ENDPOINT_SERVICES, f"{ip} . {proto} . {svc.port}", no_endpoint_verdict)
            if svc.node_port:
                out.element(NO_ENDPOINT_NODEPORTS, f"{proto} . {svc.node_port}", no_endpoint_verdict)
    return out


# -- global parts ------------------------------------------------------------------------------------


def _base_text(node: NodeContext, service_cidr: str | None) -> list[str]:
    """Table, base chains, helper chains, sets and maps: the same in every sync."""
    bit = 1 << node.masquerade_bit
    mark = f"{bit:#x}"
    lines = [f'add table {T} {{ comment "rules for kube-proxy" ; }}']
    for name, typ, hook, prio in BASE_CHAINS:
        lines.append(f"add chain {T} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
    for name in ("firewall-check", "nodeport-endpoints-check", "service-endpoints-check", "cluster-ips-check",
                 "services", MARK_MASQ, MASQUERADING):
        lines.append(f"add chain {T} {name}")
    lines.append(f'add chain {T} {REJECT_CHAIN} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
    lines += [
        f'add set {T} {CLUSTER_IPS} {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f'add set {T} {NODEPORT_IPS} {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}',
        f"add map {T} {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add map {T} {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add map {T} {NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {T} {NO_ENDPOINT_NODEPORTS} {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add map {T} {FIREWALL_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
    ]
    fixed: dict[str, list[str]] = {name: [] for name, *_ in BASE_CHAINS}
    for chain, target, cond in BASE_JUMPS:
        fixed[chain].append(f"{cond} jump {target}".strip())
    fixed["firewall-check"] = [f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"]
    fixed["nodeport-endpoints-check"] = [f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"]
    fixed["service-endpoints-check"] = [f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"]
    fixed["cluster-ips-check"] = [f'ip daddr @{CLUSTER_IPS} reject comment "Reject traffic to invalid ports of ClusterIPs"']
    if service_cidr:
        fixed["cluster-ips-check"].append(
            f'ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"')
    fixed["services"] = [
        f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
        f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
    ]
    fixed[MARK_MASQ] = [f"mark set mark or {mark}"]
    fixed[MASQUERADING] = [f"mark and {mark} == 0 return", f"mark set mark xor {mark}", "masquerade fully-random"]
    fixed[REJECT_CHAIN] = ["reject"]
    for chain, rules in fixed.items():
        lines.append(f"flush chain {T} {chain}")
        lines += _rules_line(chain, rules)
    return lines


def _elem(key: str, value: str) -> str:
    return f"{key} : {value}" if value else key


@dataclass
class Applied:
    """What the table holds after a successful sync: the basis of the next partial sync."""

    services: dict[ServicePortName, ServiceRules] = field(default_factory=dict)
    cluster_ips: set[str] = field(default_factory=set)
    nodeport_ips: set[str] = field(default_factory=set)
    stale: dict[str, float] = field(default_factory=dict)  # flushed chains awaiting deletion -> since


@dataclass
class Rendered:
    text: str
    applied: Applied
    rules: int
    chains: int
    touched_services: int


def _globals(state: ProxyState) -> tuple[set[str], set[str]]:
    cips = {s.cluster_ip for s in state.services.values() if s.cluster_ip}
    return cips, set(nodeport_addresses(state.node))


def _rules_line(name: str, rules: list[str]) -> list[str]:
    """A chain's rules as one `add chain NAME { rule ; rule ; }` (none: nothing).

    Not `add rule NAME ...`: for that nft first dumps every chain of the
    table from the kernel into its cache (0.7-1.3 s with 30k services, nft
    1.0.6), while `add chain` with a body needs no cache; the kernel still
    checks every jump and goto target.
    """
    return [f"add chain {T} {name} {{ {' ; '.join(rules)} ; }}"] if rules else []


def _chain_lines(name: str, rules: list[str]) -> list[str]:
    return [f"add chain {T} {name}", f"flush chain {T} {name}"] + _rules_line(name, rules)


# A chain that falls out of use is flushed at once and deleted by a later full sync, once
# it has been stale this long: kube-proxy's staleChains (a kernel before 6.2 notices only a
# little after a transaction that a deleted map element no longer references the chain).
# A partial sync so never deletes a chain, and needs no cache from the kernel for it.
STALE_CHAIN_AGE = 1.0


VERDICT_MAPS = (SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, FIREWALL_IPS)


def full_text(
    state: ProxyState, service_cidr: str | None = None, applied: Applied | None = None, now: float = 0.0
) -> Rendered:
    """The whole table as one transaction (kube-proxy's full sync).

    `applied` is what the previous successful sync left in the kernel. Without
    it the table is replaced: `add table` + `delete table` first (the delete
    cannot fail on a missing table; the kernel applies the script all or
    nothing). With it, as kube-proxy's full sync: every chain is added and
    flushed before its rules are written, the verdict maps and address sets
    are flushed and refilled, affinity sets are kept (a client's stickiness
    survives the sync; one whose timeout changed is recreated), chains
    `state` no longer needs are flushed, and chains flushed at least
    STALE_CHAIN_AGE seconds before `now` are deleted.
    """
    ensure = applied is not None
    lines = [] if ensure else [f"add table {T}", f"delete table {T}"]
    lines += _base_text(state.node, service_cidr)
    if ensure:
        lines += [f"flush map {T} {m}" for m in VERDICT_MAPS]
        lines += [f"flush set {T} {s}" for s in (CLUSTER_IPS, NODEPORT_IPS)]
    new = Applied()
    new.cluster_ips, new.nodeport_ips = _globals(state)
    rules = chains = 0
    elems: dict[str, list[str]] = {}
    add = lines.append
    for spn in sorted(state.services):
        sr = service_rules(state.services[spn], state.endpoints_of(spn), state.node)
        new.services[spn] = sr
        old_sets = applied.services[spn].sets if ensure and spn in applied.services else {}
        for name in sr.chains:
            add(f"add chain {T} {name}")
            if ensure:
                add(f"flush chain {T} {name}")
        for name, body in sr.sets.items():
            if name in old_sets and old_sets[name] != body:
                add(f"delete set {T} {name}")  # its referring rules were flushed just above
            add(f"add set {T} {name} {{ {body} }}")
        for name, body in sr.chains.items():
            lines += _rules_line(name, body)
            rules += len(body)
            chains += 1
        for m, kv in sr.elements.items():
            elems.setdefault(m, []).extend(_elem(k, v) for k, v in kv.items())
    for m, items in sorted(elems.items()):
        add(f"add element {T} {m} {{ {', '.join(items)} }}")
    for s_, ips in ((CLUSTER_IPS, new.cluster_ips), (NODEPORT_IPS, new.nodeport_ips)):
        if ips:
            add(f"add element {T} {s_} {{ {', '.join(sorted(ips, key=_ip_key))} }}")
    if ensure:
        want_chains = {c for sr in new.services.values() for c in sr.chains}
        want_sets = {n for sr in new.services.values() for n in sr.sets}
        stale = sorted({c for sr in applied.services.values() for c in sr.chains} - want_chains)
        stale_sets = sorted({n for sr in applied.services.values() for n in sr.sets} - want_sets)
        lines += [f"flush chain {T} {c}" for c in stale]
        new.stale = {c: now for c in stale}
        for c, since in sorted(applied.stale.items()):
            if c in want_chains or c in new.stale:
                continue  # in use again (rewritten above)
            if now - since >= STALE_CHAIN_AGE:
                add(f"delete chain {T} {c}")  # empty since an earlier transaction
            else:
                new.stale[c] = since
        lines += [f"delete set {T} {n}" for n in stale_sets]
    return Rendered("\n".join(lines) + "\n", new, rules, chains, len(state.services))


def partial_text(
    state: ProxyState, changed: Iterable[ServicePortName], applied: Applied, now: float = 0.0
) -> Rendered | None:
    """Only the changed service ports' chains, sets and elements (kube-proxy's partial sync).

    Transaction order keeps every reference valid: stale elements go first,
    then chains are (re)written, then new elements are added; stale chains
    are flushed last (a later full sync deletes them: STALE_CHAIN_AGE) and
    stale affinity sets deleted. None: this change needs a full sync (an
    affinity set's timeout changed).
    """
    new = Applied(services=dict(applied.services), stale=dict(applied.stale))
    new.cluster_ips, new.nodeport_ips = _globals(state)
    dels: list[str] = []
    writes: list[str] = []
    adds: list[str] = []
    stale: list[str] = []
    stale_sets: list[str] = []
    rules = chains = 0
    touched = 0
    for spn in sorted(set(changed)):
        old = applied.services.get(spn, ServiceRules())
        svc = state.services.get(spn)
        cur = service_rules(svc, state.endpoints_of(spn), state.node) if svc else ServiceRules()
        if svc:
            new.services[spn] = cur
        else:
            new.services.pop(spn, None)
        touched += 1
        for m in sorted(set(old.elements) | set(cur.elements)):
            o, c = old.elements.get(m, {}), cur.elements.get(m, {})
            gone = [k for k in o if k not in c or o[k] != c[k]]
            come = [k for k in c if k not in o or o[k] != c[k]]
            if gone:
                dels.append(f"delete element {T} {m} {{ {', '.join(gone)} }}")
            if come:
                adds.append(f"add element {T} {m} {{ {', '.join(_elem(k, c[k]) for k in come)} }}")
        for name, body in cur.sets.items():
            if name in old.sets and old.sets[name] != body:
                return None  # an affinity timeout changed: sets cannot be altered in place
            if name not in old.sets:
                writes.append(f"add set {T} {name} {{ {body} }}")
        for name, body in cur.chains.items():
            if old.chains.get(name) != body or name in new.stale:
                writes += _chain_lines(name, body)
                new.stale.pop(name, None)
                rules += len(body)
                chains += 1
        stale += [n for n in old.chains if n not in cur.chains]
        stale_sets += [n for n in old.sets if n not in cur.sets]
    for s, before, after in ((CLUSTER_IPS, applied.cluster_ips, new.cluster_ips),
                             (NODEPORT_IPS, applied.nodeport_ips, new.nodeport_ips)):
        if before - after:
            dels.append(f"delete element {T} {s} {{ {', '.join(sorted(before - after, key=_ip_key))} }}")
        if after - before:
            adds.append(f"add element {T} {s} {{ {', '.join(sorted(after - before, key=_ip_key))} }}")
    tail = [f"flush chain {T} {n}" for n in stale]
    new.stale.update((n, now) for n in stale)
    tail += [f"delete set {T} {n}" for n in stale_sets]
    lines = dels + writes + adds + tail
    return Rendered("\n".join(lines) + ("\n" if lines else ""), new, rules, chains, touched)


def _ip_key(ip: str):
    try:
        return (0, int(ipaddress.ip_address(ip)))
    except ValueError:
        return (1, ip)



def make_backend(args):
    """netlab-proxy --mode nftables (proxy/cli.py's per-mode hook)."""
    from proxy.ipvs import own_netns
    from proxy.nftables_kernel import NftablesBackend

    # The IPv4 proxier keeps the IPv4 Service CIDRs (kube-proxy's OnServiceCIDRsChanged filters by family).
    cidrs = [str(n) for n in args.service_cluster_ip_range if n.version == 4]
    return NftablesBackend(own_netns(args), ", ".join(cidrs) or None)
