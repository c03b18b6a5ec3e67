"""iptables-restore text for a ProxyState, laid out exactly as kube-proxy's iptables mode.

This is the pure half of proxier.go's syncProxyRules: it builds the filter
and nat tables' text in memory and runs nothing (proxy/iptables_apply.py
feeds it to one `iptables-restore --noflush`). Chain names, rule order,
match order and comments are kube-proxy's byte for byte, so that a user
reading `iptables-save` in a node here reads what a real node shows, and so
that kube-proxy's own TestOverallIPTablesRules expectations hold for us
(tests/unit/test_proxy_iptables.py).

Partial syncs, as kube-proxy's (MinimizeIPTablesRestore): per-service
chains (KUBE-SVC/SVL/EXT/FW/SEP) are written only for services that changed,
and the ones they no longer use are deleted. The others are left untouched
in the kernel, which `--noflush` allows because a chain is only flushed when
the restore input names it. `build` (stateless) always rewrites the
top-level chains (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING,
KUBE-MARK-MASQ and the filter chains), as kube-proxy does; `Proxier`, which
remembers what it wrote, rewrites one only when its rules changed.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName

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


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [_B32[i >> 5] + _B32[i & 31] for i in range(1024)]  # 10 bits -> 2 base32 digits


@lru_cache(maxsize=1 << 16)  # bounded: endpoints come and go for as long as the proxy runs
def _hash(text: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(text))[:16].

    16 base32 digits are the digest's first 80 bits, 5 at a time; they are
    read off an integer here (a third of base64.b32encode's time, which is
    most of a cold full sync's text building at 10k services).
    """
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (
        p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]
    )


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
    nat_chains_descending: bool = True  # only the order of lines (see "the sync" below), not the tables


@dataclass
class Ruleset:
    """One restore transaction, and what it accounts for."""

    text: str  # "" when there is nothing to write
    full: bool
    chains: int = 0  # nat chains in the whole active ruleset
    filter_rules: int = 0  # in the whole active ruleset
    nat_rules: int = 0  # in the whole active ruleset, written or not
    written_nat_rules: int = 0
    stale_chains: list[str] = field(default_factory=list)


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
#
# Text layout of every transaction: the filter section (small) as kube-proxy
# writes it; in the nat section every chain is declared, then filled (each
# chain's rules together), and stale chains are deleted last. Rules of
# different chains may come in any order (only the order within a chain
# counts, and it is kept), so the order of chains changes nothing in the
# kernel or in iptables-save; Options.nat_chains_descending picks it:
# - descending name order (the default; what iptables-legacy-restore's libiptc
#   inserts fastest: 0.59 s instead of 0.72 s at 10k services);
# - the order services come in, i.e. of their hash names: the one for
#   iptables-nft, whose save sorts chains with a first-element-pivot
#   quicksort (nft-cache.c), quadratic on a table created in name order
#   (iptables-nft-save: 10 s instead of 1 s at 10k services). The iptables-nft
#   adapter deals with the restore's own sorted chain list (see
#   proxy/iptables_apply.py, _fetch_all_first).

_FILTER_TOP = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
_NAT_TOP = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)


@dataclass(eq=False)
class _Port:
    """One service port's rules, split by where they go; reused while `key` holds."""

    key: tuple  # (ServicePort, endpoints, context): everything the lines are a function of
    filter: dict[str, list[str]]  # top-level filter chain -> this port's rules in it
    top: dict[str, list[str]]  # KUBE-SERVICES / KUBE-NODEPORTS (nat) -> this port's rules in it
    chains: dict[str, list[str]]  # the port's own nat chains (KUBE-SVC/SVL/EXT/FW/SEP) -> rules
    nat_rules: int  # in top + chains
    filter_rules: int


def _group(lines: list[str], into: dict[str, list[str]]) -> dict[str, list[str]]:
    """'-A CHAIN ...' lines by chain, in order within each chain."""
    for line in lines:
        into.setdefault(line[3 : line.index(" ", 3)], []).append(line)
    return into


def _port(c: _Ctx, sp: ServicePort, eps: tuple[Endpoint, ...], key: tuple) -> _Port:
    fr: list[str] = []
    top: list[str] = []
    declared: list[str] = []
    nr: list[str] = []
    _service(c, sp, eps, fr, top, declared, nr)
    chains = _group(nr, {ch: [] for ch in declared})
    return _Port(key, _group(fr, {}), _group(top, {}), chains, len(top) + len(nr), len(fr))


def _sort_key(name: ServicePortName) -> tuple[str, str, str, str]:
    """ServicePortName's order (its dataclass order), as a tuple that sorts in C."""
    return (name.namespace, name.name, name.port, name.protocol)


def _ctx_key(c: _Ctx) -> tuple:
    return (c.node, c.opts, c.large)


def _ports(c: _Ctx, state: ProxyState, cache: dict | None) -> dict[ServicePortName, _Port]:
    """Every service port's rules, from `cache` where its inputs are unchanged."""
    ck = _ctx_key(c)
    out: dict[ServicePortName, _Port] = {}
    for name, sp in state.services.items():
        eps = state.endpoints_of(name)
        key = (sp, eps, ck)
        hit = cache.get(name) if cache is not None else None
        out[name] = hit if hit is not None and hit.key == key else _port(c, sp, eps, key)
    if cache is not None:
        cache.clear()
        cache.update(out)
    return out


def _fixed_lines(c: _Ctx) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """Rules that are no service's: (filter chain -> rules, nat chain -> rules, KUBE-SERVICES tail)."""
    opts, mark = c.opts, c.mark
    nat = {
        KUBE_POSTROUTING: [
            f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
            + (" --random-fully" if opts.random_fully else ""),
        ],
        KUBE_MARK_MASQ: [f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}"],
    }
    filt: dict[str, list[str]] = {}
    if opts.localhost_nodeports:
        filt[KUBELET_FIREWALL] = [
            f'-A {KUBELET_FIREWALL} -m comment --comment "block incoming localnet connections"'
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ]
    fwd = []
    if not opts.conntrack_tcp_liberal:
        acct = f" -m nfacct --nfacct-name {INVALID_DROPPED_COUNTER}" if opts.nfacct else ""
        fwd.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{acct} -j DROP")
    fwd.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    fwd.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    filt[KUBE_FORWARD] = fwd
    # The tail-call to KUBE-NODEPORTS: after every other service rule.
    nodeports_comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    tail = []
    if c.node_port_ips is None:
        dest = "-m addrtype --dst-type LOCAL" + ("" if opts.localhost_nodeports else " ! -d 127.0.0.0/8")
        tail.append(f"-A {KUBE_SERVICES} {nodeports_comment} {dest} -j {KUBE_NODEPORTS}")
    else:
        for ip in c.node_port_ips:
            if ipaddress.ip_address(ip).is_loopback and not opts.localhost_nodeports:
                continue
            tail.append(f"-A {KUBE_SERVICES} {nodeports_comment} -d {ip} -j {KUBE_NODEPORTS}")
    return filt, nat, tail


def _top_level(c: _Ctx, ports: Iterable[_Port]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The top-level chains' whole contents, from the ports in order: (filter, nat) chain -> rules."""
    fixed_filter, fixed_nat, tail = _fixed_lines(c)
    filt: dict[str, list[str]] = {ch: [] for ch in _FILTER_TOP}
    nat: dict[str, list[str]] = {KUBE_SERVICES: [], KUBE_NODEPORTS: []}
    for p in ports:
        for ch, lines in p.filter.items():
            filt[ch].extend(lines)
        for ch, lines in p.top.items():
            nat[ch].extend(lines)
    nat[KUBE_SERVICES].extend(tail)
    filt[KUBE_FORWARD] = fixed_filter.pop(KUBE_FORWARD)
    filt.update(fixed_filter)
    nat.update(fixed_nat)
    return filt, nat


def _text(
    filt: dict[str, list[str]] | None, nat: dict[str, list[str]], stale: list[str], descending: bool = True
) -> str:
    """Restore input: these chains declared (which flushes them) and filled; `stale` deleted.

    `filt` None leaves the filter table out of the transaction; an empty
    result means there is nothing to write. nat chains come in descending
    name order, or else in `nat`'s order.
    """
    parts: list[str] = []
    if filt:
        parts.append("*filter")
        parts += [f":{ch} - [0:0]" for ch in filt]
        for lines in filt.values():
            parts += lines
        parts.append("COMMIT")
    if nat or stale:
        parts.append("*nat")
        order = sorted(nat, reverse=True) if descending else list(nat)
        declared = sorted([*order, *stale], reverse=True) if descending else [*order, *stale]
        parts += [f":{ch} - [0:0]" for ch in declared]
        for ch in order:
            parts += nat[ch]
        parts += [f"-X {ch}" for ch in stale]
        parts.append("COMMIT")
    return "\n".join(parts) + "\n" if parts else ""


def build(
    state: ProxyState,
    changed_services: set[tuple[str, str]] | None = None,
    opts: Options = Options(),
    existing_nat_chains: Iterable[str] | None = None,
    cache: dict | None = None,
) -> Ruleset:
    """The restore text for `state`, as syncProxyRules writes proxier.iptablesData.

    Stateless (but for `cache`): the top-level chains are always written
    whole, as kube-proxy does. `changed_services` None means a full sync;
    otherwise the (namespace, name) of services whose chains must be
    rewritten (kube-proxy's UpdatedServices). `existing_nat_chains` (from
    iptables-save) lets stale service chains be flushed and deleted in the
    same transaction. `cache` (a dict kept by the caller across syncs)
    memoizes each service port's lines while its service, endpoints and the
    node context are unchanged. `Proxier` is the stateful form the backend
    uses, which also leaves unchanged top-level chains alone.
    """
    c = _context(state, opts)
    ports = _ports(c, state, cache)
    order = sorted(ports, key=_sort_key)
    filt, nat_top = _top_level(c, (ports[n] for n in order))
    nat = dict(nat_top)
    active = set(_NAT_TOP)
    nat_rules = sum(len(v) for v in nat_top.values())
    for name in order:
        p = ports[name]
        active.update(p.chains)
        nat_rules += p.nat_rules - sum(len(v) for v in p.top.values())
        if changed_services is None or name.service in changed_services:
            nat.update(p.chains)
    stale: list[str] = []
    if existing_nat_chains is not None:
        stale = sorted(ch for ch in set(existing_nat_chains) - active if is_service_chain(ch))
    return Ruleset(
        text=_text(filt, nat, stale, opts.nat_chains_descending),
        full=changed_services is None,
        chains=len(active),
        filter_rules=sum(len(v) for v in filt.values()),
        nat_rules=nat_rules,
        written_nat_rules=sum(len(v) for v in nat.values()),
        stale_chains=stale,
    )


@dataclass
class _Kernel:
    """What the last successful transactions left in the kernel, as far as ours."""

    filter: dict[str, list[str]]  # top-level filter chains -> rules
    nat_top: dict[str, list[str]]  # top-level nat chains -> rules
    chains: set[str]  # every nat chain of ours (top-level and per service)


class Proxier:
    """syncProxyRules with memory: kube-proxy's partial syncs (MinimizeIPTablesRestore).

    Pure (no kernel): `plan` returns the transaction, and the caller reports
    its outcome with `commit` (it applied) or `abort` (it did not; the next
    plan is then a full one). Between syncs it keeps each service port's
    rule lines, and what the kernel holds: the top-level chains' rules as
    last written and the set of our nat chains.

    A partial sync writes the chains of the changed services only, deletes
    the chains they no longer use (known from their previous rules: no
    iptables-save is read), and writes a top-level chain (KUBE-SERVICES,
    KUBE-NODEPORTS, the filter chains) only when its rules differ from what
    the kernel holds. kube-proxy writes KUBE-SERVICES whole on every sync;
    here it is left alone when no changed service's line in it changed (an
    endpoint change never does): at 10k services it is 10k rules, 1.4 MB of
    text, and iptables-nft-restore needs over a second for it, 50 times the
    rest of the sync (BENCHMARKS.md). When it does change, it is written
    whole, as kube-proxy does. A full sync writes everything.
    """

    def __init__(self, opts: Options = Options()) -> None:
        self.opts = opts
        self.ports: dict[ServicePortName, _Port] = {}
        self._order: list[ServicePortName] = []  # self.ports' names, sorted
        self._by_service_cache: dict[tuple[str, str], set[ServicePortName]] | None = {}
        self._ctx_key: tuple | None = None
        self._nat_rules = 0  # sum of the ports' nat_rules
        self._filter_rules = 0
        self._chains = 0  # sum of the ports' chain counts
        self.kernel: _Kernel | None = None  # None: unknown (before the first sync, after a failure)
        self._pending: tuple[bool, _Kernel | None, dict, dict, list[str], set[str]] | None = None

    @property
    def known(self) -> bool:
        """Whether the kernel's state is known, so that a partial sync is possible."""
        return self.kernel is not None

    # -- bookkeeping of ports ---------------------------------------------------------

    @property
    def _by_service(self) -> dict[tuple[str, str], set[ServicePortName]]:
        """(namespace, name) -> its ports; built on the first partial sync after a full one."""
        if self._by_service_cache is None:
            by: dict[tuple[str, str], set[ServicePortName]] = {}
            for name in self.ports:
                by.setdefault((name.namespace, name.name), set()).add(name)
            self._by_service_cache = by
        return self._by_service_cache

    def _put(self, name: ServicePortName, new: _Port | None) -> _Port | None:
        old = self.ports.get(name)
        if old is new:
            return old
        by_service = self._by_service  # built from self.ports before they change
        if old is not None:
            self._nat_rules -= old.nat_rules
            self._filter_rules -= old.filter_rules
            self._chains -= len(old.chains)
        if new is not None:
            self._nat_rules += new.nat_rules
            self._filter_rules += new.filter_rules
            self._chains += len(new.chains)
            self.ports[name] = new
            if old is None:
                bisect.insort(self._order, name, key=_sort_key)
                by_service.setdefault(name.service, set()).add(name)
        else:
            del self.ports[name]
            i = bisect.bisect_left(self._order, _sort_key(name), key=_sort_key)
            del self._order[i]
            names = by_service[name.service]
            names.discard(name)
            if not names:
                del by_service[name.service]
        return old

    def _reset_ports(self, ports: dict[ServicePortName, _Port]) -> None:
        self.ports = ports
        self._order = sorted(ports, key=_sort_key)
        self._by_service_cache = None
        self._nat_rules = sum(p.nat_rules for p in ports.values())
        self._filter_rules = sum(p.filter_rules for p in ports.values())
        self._chains = sum(len(p.chains) for p in ports.values())

    def _totals(self, c: _Ctx) -> tuple[int, int, int]:
        fixed_filter, fixed_nat, tail = _fixed_lines(c)
        return (
            self._nat_rules + sum(len(v) for v in fixed_nat.values()) + len(tail),
            self._filter_rules + sum(len(v) for v in fixed_filter.values()),
            self._chains + len(_NAT_TOP),
        )

    # -- the sync -------------------------------------------------------------------

    def plan(
        self,
        state: ProxyState,
        changed: set[ServicePortName] | None = None,
        existing_nat_chains: Iterable[str] | None = None,
    ) -> Ruleset:
        """The transaction that makes the kernel match `state`.

        `changed` None asks for a full sync; otherwise the service ports whose
        service or endpoints changed since the last committed plan (a
        partial sync, when the kernel's state is known and the node context
        is unchanged; else a full one). `existing_nat_chains`, from an
        iptables-save read now, adds any stale service chain found there.
        """
        c = _context(state, self.opts)
        ck = _ctx_key(c)
        # A full plan allocates ~10 objects per rule it has not seen; the cyclic GC would
        # walk the growing heap over and over meanwhile (a fifth of a cold 10k-service plan).
        gc_was = gc.isenabled()
        gc.disable()
        try:
            if changed is None or self.kernel is None or ck != self._ctx_key:
                return self._full(c, ck, state, existing_nat_chains)
            return self._partial(c, ck, state, changed, existing_nat_chains)
        finally:
            if gc_was:
                gc.enable()

    def commit(self) -> None:
        """The last plan's transaction was applied."""
        assert self._pending is not None, "commit without a plan"
        full, kernel, filt, nat_top, stale, new_chains = self._pending
        self._pending = None
        if full:
            self.kernel = kernel
            return
        assert self.kernel is not None
        self.kernel.filter.update(filt)
        self.kernel.nat_top.update(nat_top)
        self.kernel.chains.difference_update(stale)
        self.kernel.chains.update(new_chains)

    def abort(self) -> None:
        """The last plan's transaction failed (or its outcome is unknown): the next sync is full."""
        self._pending = None
        self.kernel = None

    def _full(self, c: _Ctx, ck: tuple, state: ProxyState, existing: Iterable[str] | None) -> Ruleset:
        self._ctx_key = ck
        self._reset_ports(_ports(c, state, self.ports))
        filt, nat_top = _top_level(c, (self.ports[n] for n in self._order))
        nat = dict(nat_top)
        for p in self.ports.values():
            nat.update(p.chains)
        active = set(nat)
        stale: set[str] = set()
        if existing is not None:
            stale.update(ch for ch in set(existing) - active if is_service_chain(ch))
        if self.kernel is not None:
            stale.update(ch for ch in self.kernel.chains - active if is_service_chain(ch))
        stale_list = sorted(stale)
        self._pending = (True, _Kernel(filt, nat_top, active), {}, {}, stale_list, set())
        return self._ruleset(c, True, filt, nat, stale_list)

    def _partial(
        self, c: _Ctx, ck: tuple, state: ProxyState, changed: set[ServicePortName], existing: Iterable[str] | None
    ) -> Ruleset:
        assert self.kernel is not None
        services = {n.service for n in changed}
        # kube-proxy rewrites a changed service's chains whole: every port of it, old and new.
        names = set(changed)
        for s in services:
            names.update(self._by_service.get(s, ()))
        old_chains: set[str] = set()
        new_chains: set[str] = set()
        nat: dict[str, list[str]] = {}
        top_dirty = False
        for name in names:
            sp = state.services.get(name)
            old = self.ports.get(name)
            new = None
            if sp is not None:
                eps = state.endpoints_of(name)
                key = (sp, eps, ck)
                new = old if old is not None and old.key == key else _port(c, sp, eps, key)
            self._put(name, new)
            if old is not None:
                old_chains.update(old.chains)
            if new is not None:
                new_chains.update(new.chains)
                nat.update(new.chains)
            if old is not new:
                old_top = (old.top, old.filter) if old is not None else ({}, {})
                new_top = (new.top, new.filter) if new is not None else ({}, {})
                top_dirty = top_dirty or old_top != new_top
        stale = old_chains - new_chains
        if existing is not None:
            active = set(_NAT_TOP)
            for p in self.ports.values():
                active.update(p.chains)
            stale.update(ch for ch in set(existing) - active if is_service_chain(ch))
        filt_write: dict[str, list[str]] = {}
        nat_top_write: dict[str, list[str]] = {}
        if top_dirty:
            filt, nat_top = _top_level(c, (self.ports[n] for n in self._order))
            filt_write = {ch: v for ch, v in filt.items() if self.kernel.filter.get(ch) != v}
            nat_top_write = {ch: v for ch, v in nat_top.items() if self.kernel.nat_top.get(ch) != v}
        nat.update(nat_top_write)
        stale_list = sorted(stale)
        self._pending = (False, None, filt_write, nat_top_write, stale_list, new_chains)
        return self._ruleset(c, False, filt_write or None, nat, stale_list)

    def _ruleset(
        self, c: _Ctx, full: bool, filt: dict[str, list[str]] | None, nat: dict[str, list[str]], stale: list[str]
    ) -> Ruleset:
        """The transaction writing `filt` and `nat` and deleting `stale`, with the totals of the whole ruleset."""
        nat_rules, filter_rules, chains = self._totals(c)
        return Ruleset(
            text=_text(filt, nat, stale, self.opts.nat_chains_descending),
            full=full,
            chains=chains,
            filter_rules=filter_rules,
            nat_rules=nat_rules,
            written_nat_rules=sum(len(v) for v in nat.values()),
            stale_chains=stale,
        )


def _service(
    c: _Ctx,
    sp: ServicePort,
    all_eps: tuple[Endpoint, ...],
    fr: list[str],
    top: list[str],
    chains: list[str],
    nr: list[str],
) -> None:
    """One service port's rules, in syncProxyRules' order.

    Rules in top-level chains go to `fr` (filter) and `top` (nat); the
    service's own chains are named in `chains` and their rules go to `nr`.
    """
    spn = str(sp.name)
    proto = sp.protocol.lower()
    cluster_eps, local_eps, reachable, has_eps = categorize_endpoints(all_eps, sp)
    uses_cluster_chain = bool(cluster_eps) and _uses_cluster_endpoints(sp)
    uses_local_chain = bool(local_eps) and _uses_local_endpoints(sp)
    # Only the chain names this port uses are hashed (a cold sha256 each).
    svc_chain = service_port_chain_name("KUBE-SVC-", spn, proto)
    local_policy = sp.internal_policy_local or sp.external_policy_local or uses_local_chain
    svl_chain = service_port_chain_name("KUBE-SVL-", spn, proto) if local_policy else ""
    ext_used = has_eps and (sp.external_traffic or bool(sp.external_ips or sp.load_balancer_ips or sp.node_port))
    ext_chain = service_port_chain_name("KUBE-EXT-", spn, proto) if ext_used else ""

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
    fw_chain = service_port_chain_name("KUBE-FW-", spn, proto) if uses_fw else ""
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
        top.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} cluster IP" {pp} -d {sp.cluster_ip} --dport {port}'
            f" -j {internal_chain}"
        )
    else:
        fr.append(
            f"-A {KUBE_SERVICES} -m comment --comment {int_comment} {pp} -d {sp.cluster_ip} --dport {port}"
            f" -j {int_target}"
        )
    # Capture externalIPs.
    for ip in sp.external_ips:
        if has_eps:
            top.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} external IP" {pp} -d {ip} --dport {port} -j {ext_chain}'
            )
        if not has_external:
            fr.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pp} -d {ip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture load-balancer ingress.
    for ip in sp.load_balancer_ips:
        if has_eps:
            top.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} loadbalancer IP" {pp} -d {ip} --dport {port}'
                f" -j {lb_chain}"
            )
        if uses_fw:
            fr.append(
                f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{spn} traffic not accepted by {fw_chain}"'
                f" {pp} -d {ip} --dport {port} -j DROP"
            )
    if not has_external:
        for ip in sp.load_balancer_ips:
            fr.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pp} -d {ip} --dport {port}"
                f" -j {ext_target}"
            )
    # Capture nodeports.
    if sp.node_port:
        if has_eps:
            if c.opts.localhost_nodeports and c.node_port_ips is None:
                acct = f" -m nfacct --nfacct-name {LOCALHOST_NODEPORT_COUNTER}" if c.opts.nfacct else ""
                top.append(
                    f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} -d 127.0.0.0/8 --dport {sp.node_port}"
                    f"{acct} -j {ext_chain}"
                )
            top.append(f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} --dport {sp.node_port} -j {ext_chain}")
        if not has_external:
            fr.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {ext_comment} -m addrtype --dst-type LOCAL"
                f" {pp} --dport {sp.node_port} -j {ext_target}"
            )
    # Capture healthCheckNodePorts.
    if sp.health_check_node_port:
        fr.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{spn} health check node port" -m tcp -p tcp'
            f" --dport {sp.health_check_node_port} -j ACCEPT"
        )

    # Internal traffic: masquerade what comes from outside the pod network (localDetector.IfNotLocal).
    if has_internal:
        args = f'-m comment --comment "{spn} cluster IP" {pp} -d {sp.cluster_ip} --dport {port}'
        if c.node.masquerade_all:
            nr.append(f"-A {internal_chain} {args} -j {KUBE_MARK_MASQ}")
        elif c.if_not_local:
            nr.append(f"-A {internal_chain} {args} {c.if_not_local} -j {KUBE_MARK_MASQ}")

    # External traffic: the KUBE-EXT chain.
    if uses_ext_chain:
        chains.append(ext_chain)
        if not sp.external_policy_local:
            nr.append(
                f'-A {ext_chain} -m comment --comment "masquerade traffic for {spn} external destinations"'
                f" -j {KUBE_MARK_MASQ}"
            )
        else:
            if c.if_local:
                nr.append(
                    f'-A {ext_chain} -m comment --comment "pod traffic for {spn} external destinations"'
                    f" {c.if_local} -j {svc_chain}"
                )
            nr.append(
                f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {spn} external destinations"'
                f" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            nr.append(
                f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {spn} external destinations"'
                f" -m addrtype --src-type LOCAL -j {svc_chain}"
            )
        if has_external:
            nr.append(f"-A {ext_chain} -j {external_policy_chain}")

    # The firewall chain (loadBalancerSourceRanges).
    if uses_fw:
        chains.append(fw_chain)
        head = f'-A {fw_chain} -m comment --comment "{spn} loadbalancer IP"'
        allow_from_node = False
        nets = []
        for cidr in sp.load_balancer_source_ranges:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
            nets.append(net)
            nr.append(f"{head} -s {net} -j {ext_chain}")
            if c.node.node_ips and ipaddress.ip_address(c.node.node_ips[0]) in net:
                allow_from_node = True
        if allow_from_node:
            for ip in sp.load_balancer_ips:
                nr.append(f"{head} -s {ip} -j {ext_chain}")
        nr.append(f'-A {fw_chain} -m comment --comment "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"')

    seps = {e: service_port_endpoint_chain_name(spn, proto, e) for e in map(str, reachable)}
    if uses_cluster_chain:
        chains.append(svc_chain)
        _service_to_endpoints(c, nr, spn, sp, svc_chain, cluster_eps, seps)
    if uses_local_chain:
        chains.append(svl_chain)
        _service_to_endpoints(c, nr, spn, sp, svl_chain, local_eps, seps)

    # Per-endpoint chains (KUBE-SEP): hairpin masquerade, affinity, DNAT.
    for ep in reachable:
        eps = str(ep)
        sep = seps[eps]
        chains.append(sep)
        head = f"-A {sep}" if c.large else f"-A {sep} -m comment --comment {spn}"
        nr.append(f"{head} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        recent = f" -m recent --name {sep} --set" if sp.session_affinity_client_ip else ""
        nr.append(f"{head}{recent} {pp} -j DNAT --to-destination {eps}")


def _service_to_endpoints(
    c: _Ctx, nr: list[str], spn: str, sp: ServicePort, chain: str, eps: list[Endpoint], sep_of: dict[str, str]
) -> None:
    """KUBE-SVC/SVL -> KUBE-SEP rules, as writeServiceToEndpointRules."""
    seps = [(e, sep_of[e]) for e in map(str, eps)]
    if sp.session_affinity_client_ip:
        for ep, sep in seps:
            comment = "" if c.large else f' -m comment --comment "{spn} -> {ep}"'
            nr.append(
                f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {sp.sticky_max_age_seconds}"
                f" --reap -j {sep}"
            )
    n = len(seps)
    for i, (ep, sep) in enumerate(seps):
        comment = "" if c.large else f' -m comment --comment "{spn} -> {ep}"'
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nr.append(f"-A {chain}{comment}{stat} -j {sep}")

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
