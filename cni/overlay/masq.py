"""flanneld's iptables rules: FLANNEL-POSTRTG (--ip-masq) and FLANNEL-FWD, as pure rule text.

The rules are flannel's (pkg/trafficmngr/iptables: masqRules and
forwardRules), written here exactly as ``iptables-save`` prints them so that
what is observed compares line for line with what is wanted::

    *nat
    -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
    -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 ... -j RETURN         kube-proxy masquerades these itself
    -A FLANNEL-POSTRTG -s <node subnet> -d <network> ... -j RETURN         pod to pod: keep the pod address
    -A FLANNEL-POSTRTG -s <network> -d <node subnet> ... -j RETURN
    -A FLANNEL-POSTRTG ! -s <network> -d <node subnet> ... -j RETURN       outside to a local pod: no SNAT
    -A FLANNEL-POSTRTG -s <network> ! -d 224.0.0.0/4 ... -j MASQUERADE --random-fully   pod to outside
    -A FLANNEL-POSTRTG ! -s <network> -d <network> ... -j MASQUERADE --random-fully     host to remote pods
    *filter
    -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
    -A FLANNEL-FWD -s <network> ... -j ACCEPT
    -A FLANNEL-FWD -d <network> ... -j ACCEPT

Converging is the overlay's usual pure step: desired rules, the observed
``iptables-save``, and the smallest ``iptables-restore --noflush`` text
that turns one into the other (None when they already agree). A chain is
rewritten whole when any of its rules differs (its order matters, as
flannel's ensureIPTables re-bootstraps all rules when one is missing); the
jump from the built-in chain is appended once and left where it is.
With --ip-masq off (or --iptables-forward-rules off) the chain and its jump
are removed if an earlier run made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

POSTRTG = "FLANNEL-POSTRTG"
FWD = "FLANNEL-FWD"
KUBE_PROXY_MARK = "0x4000/0x4000"  # flannel's trafficmngr.KubeProxyMark: kube-proxy's masquerade mark
MULTICAST = "224.0.0.0/4"
_MASQ = '-m comment --comment "flanneld masq"'
_FWD = '-m comment --comment "flanneld forward"'


@dataclass(frozen=True)
class ChainRules:
    """One flannel chain in one table, and the jump to it from a built-in chain."""

    table: str
    builtin: str  # POSTROUTING or FORWARD
    chain: str
    rules: tuple[str, ...]  # "-A CHAIN ..." lines, in order

    @property
    def jump(self) -> str:
        comment = _MASQ if self.chain == POSTRTG else _FWD
        return f"-A {self.builtin} {comment} -j {self.chain}"


def masq_rules(network: IPv4Network, subnet: IPv4Network, random_fully: bool = True) -> ChainRules:
    """flannel's masqRules for this node's lease (IPv4)."""
    n, s = str(network), str(subnet)
    masq = "MASQUERADE --random-fully" if random_fully else "MASQUERADE"
    c = POSTRTG
    return ChainRules("nat", "POSTROUTING", c, (
        f"-A {c} -m mark --mark {KUBE_PROXY_MARK} {_MASQ} -j RETURN",
        f"-A {c} -s {s} -d {n} {_MASQ} -j RETURN",
        f"-A {c} -s {n} -d {s} {_MASQ} -j RETURN",
        f"-A {c} ! -s {n} -d {s} {_MASQ} -j RETURN",
        f"-A {c} -s {n} ! -d {MULTICAST} {_MASQ} -j {masq}",
        f"-A {c} ! -s {n} -d {n} {_MASQ} -j {masq}",
    ))


def forward_rules(network: IPv4Network) -> ChainRules:
    """flannel's forwardRules: accept forwarding to and from the pod network (a FORWARD policy DROP stays harmless)."""
    n = str(network)
    return ChainRules("filter", "FORWARD", FWD, (
        f"-A {FWD} -s {n} {_FWD} -j ACCEPT",
        f"-A {FWD} -d {n} {_FWD} -j ACCEPT",
    ))


def desired(network: IPv4Network, subnet: IPv4Network, ip_masq: bool, forward: bool,
            random_fully: bool = True) -> dict[str, ChainRules | None]:
    """What each flannel chain should hold: its rules, or None for "absent" (the option is off)."""
    return {
        POSTRTG: masq_rules(network, subnet, random_fully) if ip_masq else None,
        FWD: forward_rules(network) if forward else None,
    }


# Where each chain lives, also when it is wanted absent.
_HOME = {POSTRTG: ("nat", "POSTROUTING"), FWD: ("filter", "FORWARD")}


@dataclass
class Saved:
    """The part of `iptables-save` that matters here: chains per table and their rules."""

    chains: dict[str, dict[str, list[str]]]  # table -> chain -> "-A ..." lines

    def rules(self, table: str, chain: str) -> list[str] | None:
        """The chain's rules, or None if the chain does not exist."""
        return self.chains.get(table, {}).get(chain)


def parse_save(text: str) -> Saved:
    chains: dict[str, dict[str, list[str]]] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            chains.setdefault(table, {})
        elif table is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chains[table].setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains[table].setdefault(line.split()[1], []).append(line)
    return Saved(chains)


def restore_text(want: dict[str, ChainRules | None], have: Saved) -> str | None:
    """The `iptables-restore --noflush` input that makes `have` match `want`; None if it already does."""
    per_table: dict[str, list[str]] = {}
    for chain, rules in want.items():
        table, builtin = _HOME[chain]
        existing = have.rules(table, chain)
        jump = rules.jump if rules else ChainRules(table, builtin, chain, ()).jump
        jumps = (have.rules(table, builtin) or []).count(jump)
        lines: list[str] = []
        if rules is None:
            lines += [jump.replace("-A ", "-D ", 1)] * jumps
            if existing is not None:
                lines += [f":{chain} - [0:0]", f"-X {chain}"]  # flush, then delete
        else:
            if existing != list(rules.rules):
                lines += [f":{chain} - [0:0]", *rules.rules]  # declaring it flushes it under --noflush
            if jumps == 0:
                lines.append(jump)
            else:
                lines += [jump.replace("-A ", "-D ", 1)] * (jumps - 1)  # one jump, not several
        if lines:
            per_table.setdefault(table, []).extend(lines)
    if not per_table:
        return None
    out = []
    for table in ("nat", "filter"):
        if table in per_table:
            out += [f"*{table}", *per_table[table], "COMMIT"]
    return "\n".join(out) + "\n"
