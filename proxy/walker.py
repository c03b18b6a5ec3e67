"""A rule walker: what the nat and filter tables do to one packet, without a kernel.

As kube-proxy's tracePacket (pkg/proxy/iptables/proxier_test.go): parse the
ruleset text (iptables-restore input or iptables-save output), follow a
packet (source, destination, protocol, port) through nat PREROUTING or
OUTPUT, the filter hooks, and nat POSTROUTING, and report every outcome.
Probabilistic rules (`-m statistic`) are followed both ways, so the walk
returns the *set* of endpoints a connection can reach; `-m recent --rcheck`
never matches (a client with no affinity entry yet), as in kube-proxy's
tracer. Marks are tracked, so masquerading is decided by KUBE-POSTROUTING
itself, not guessed.

Pure: no root, no kernel. The packet-flow table (tests/packet_flows.py) runs
through this walker and through real namespaces, and both must agree.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
TERMINAL = {"ACCEPT", "DROP", "REJECT", "DNAT", "MASQUERADE", "SNAT", "RETURN"}
_FLAGS = {"--rcheck", "--set", "--reap", "--rsource", "--rdest", "--random-fully", "--random", "--update", "--persistent"}


@dataclass
class Rule:
    """One `-A` line, as the matches and target the walker understands."""

    text: str
    matches: list[tuple[bool, str, str]]  # (negated, option, value)
    target: str = ""
    target_args: dict[str, str] = field(default_factory=dict)

    def opt(self, name: str) -> str | None:
        for neg, o, v in self.matches:
            if o == name and not neg:
                return v
        return None


@dataclass
class Tables:
    """table -> chain -> rules (every declared chain present, maybe empty)."""

    chains: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)

    def rules(self, table: str, chain: str) -> list[Rule]:
        return self.chains.get(table, {}).get(chain, [])

    def texts(self) -> dict[str, dict[str, list[str]]]:
        return {t: {c: [r.text for r in rs] for c, rs in cs.items()} for t, cs in self.chains.items()}


def _parse_rule(text: str) -> Rule:
    toks = shlex.split(text)
    matches: list[tuple[bool, str, str]] = []
    rule = Rule(text=text, matches=matches)
    i = 0
    neg = False
    while i < len(toks):
        t = toks[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t in ("-j", "--jump", "-g", "--goto"):
            rule.target = toks[i + 1]
            i += 2
            while i < len(toks):
                o = toks[i]
                if o in _FLAGS or i + 1 >= len(toks) or toks[i + 1].startswith("--"):
                    rule.target_args[o] = ""
                    i += 1
                else:
                    rule.target_args[o] = toks[i + 1]
                    i += 2
            break
        name = {"--source": "-s", "--destination": "-d", "--protocol": "-p", "--destination-port": "--dport",
                "--match": "-m", "--in-interface": "-i", "--out-interface": "-o"}.get(t, t)
        if name in _FLAGS:
            matches.append((neg, name, ""))
            i += 1
        else:
            matches.append((neg, name, toks[i + 1] if i + 1 < len(toks) else ""))
            i += 2
        neg = False
    return rule


def parse(text: str, into: Tables | None = None) -> Tables:
    """Tables from iptables-save output or iptables-restore input.

    Restore input applies as `--noflush` would: a `:CHAIN` line flushes
    that chain, `-X` deletes it, other chains keep their rules.
    """
    tables = into or Tables()
    table: dict[str, list[Rule]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.chains.setdefault(line[1:], {})
            continue
        assert table is not None, f"rule outside a table: {line}"
        if line.startswith(":"):
            table[line[1:].split()[0]] = []
        elif line.startswith("-X"):
            table.pop(line.split()[1], None)
        elif line.startswith("-A ") or line.startswith("-I "):
            parts = line.split(None, 2)
            chain, rest = parts[1], parts[2] if len(parts) > 2 else ""
            pos = None
            if parts[0] == "-I":
                head, _, tail = rest.partition(" ")
                if head.isdigit():
                    pos, rest = int(head) - 1, tail
                else:
                    pos = 0
            rules = table.setdefault(chain, [])
            r = _parse_rule(rest)
            r.text = rest
            if pos is None:
                rules.append(r)
            else:
                rules.insert(pos, r)
    return tables


# -- the walk -------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str  # lowercase: tcp, udp, sctp
    dport: int
    mark: int = 0
    dnat: str | None = None  # "ip:port" after DNAT
    masquerade: bool = False

    @property
    def cur_dst(self) -> str:
        return self.dnat.rsplit(":", 1)[0] if self.dnat else self.dst


@dataclass(frozen=True)
class Outcome:
    """One way the packet can go: to `endpoint` (or its original destination), or dropped."""

    verdict: str  # "ACCEPT" (delivered), "DROP" or "REJECT"
    endpoint: str | None  # "ip:port" a DNAT chose, None if not translated
    masquerade: bool
    chains: tuple[str, ...] = ()  # every chain the path went through, for debugging


def _in(ip: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


class Walker:
    """Walks packets through one ruleset. `local_ips`: the node's addresses (addrtype LOCAL)."""

    def __init__(self, tables: Tables, local_ips: Iterable[str], builtin_jumps: bool = True) -> None:
        self.t = tables
        self.local = set(local_ips)
        if builtin_jumps:
            self._add_jumps()

    def _add_jumps(self) -> None:
        """Restore input carries no built-in chains: add kube-proxy's jumps as it ensures them."""
        from proxy.iptables import JUMP_RULES

        for j in JUMP_RULES:
            chains = self.t.chains.setdefault(j.table, {})
            if j.target not in chains:
                continue
            rules = chains.setdefault(j.source, [])
            if not any(r.target == j.target for r in rules):
                r = _parse_rule(j.args())
                rules.insert(0, r)

    def is_local(self, ip: str) -> bool:
        return ip in self.local or _in(ip, "127.0.0.0/8")

    def _match(self, r: Rule, p: Packet, ctstate: set[str]) -> bool | None:
        """True/False; None means "either" (statistic), which the walk forks on."""
        fork = False
        dst = p.cur_dst
        for neg, o, v in r.matches:
            if o in ("-m", "--comment", "--nfacct-name", "--mode", "--name", "--seconds", "--mask", "--set",
                     "--reap", "--rsource", "--every", "--packet", "-i", "-o"):
                if o == "--set":  # recent --set: records, always matches
                    continue
                continue
            if o == "-s":
                ok = _in(p.src, v)
            elif o == "-d":
                ok = _in(dst, v)
            elif o == "-p":
                ok = p.proto == v.lower()
            elif o == "--dport":
                ok = str(p.dport if not p.dnat else int(p.dnat.rsplit(":", 1)[1])) == v
            elif o == "--dst-type":
                ok = v == "LOCAL" and self.is_local(dst)
            elif o == "--src-type":
                ok = v == "LOCAL" and self.is_local(p.src)
            elif o == "--probability":
                if float(v) >= 1.0:
                    ok = True
                else:
                    fork = True
                    continue
            elif o == "--rcheck":
                ok = False  # no affinity entry yet: a new client
            elif o == "--mark":
                val, _, mask = v.partition("/")
                m = int(mask, 0) if mask else 0xFFFFFFFF
                ok = (p.mark & m) == int(val, 0)
            elif o in ("--ctstate", "--state"):
                ok = bool(set(v.split(",")) & ctstate)
            else:
                ok = True  # a match the walker does not model: assume it matches
            if ok == neg:
                return False
        return None if fork else True

    def _chain(self, table: str, chain: str, p: Packet, ctstate: set[str], depth: int = 0,
               trail: tuple[str, ...] = ()) -> list[tuple[Packet, str, tuple[str, ...]]]:
        """Every (packet, verdict, chains) leaving `chain`; verdict "" means it fell through/returned."""
        assert depth < 50, f"jump loop at {chain}"
        trail = trail + (chain,)
        out: list[tuple[Packet, str, tuple[str, ...]]] = []
        pending = [p]
        for r in self.t.rules(table, chain):
            nxt: list[Packet] = []
            for q in pending:
                m = self._match(r, q, ctstate | ({"DNAT"} if q.dnat else set()))
                if m is False:
                    nxt.append(q)
                    continue
                if m is None:
                    nxt.append(q)  # the branch where the statistic did not fire
                for q2, verdict, tr in self._target(table, r, q, ctstate, depth, trail):
                    if verdict:
                        out.append((q2, verdict, tr))
                    else:
                        nxt.append(q2)
            pending = nxt
            if not pending:
                break
        out.extend((q, "", trail) for q in pending)
        return out

    def _target(self, table: str, r: Rule, q: Packet, ctstate: set[str], depth: int,
                trail: tuple[str, ...]) -> list[tuple[Packet, str, tuple[str, ...]]]:
        t = r.target
        if not t:
            return [(q, "", trail)]
        if t == "MARK":
            mark = q.mark
            if "--or-mark" in r.target_args:
                mark |= int(r.target_args["--or-mark"], 0)
            if "--xor-mark" in r.target_args:
                mark ^= int(r.target_args["--xor-mark"], 0)
            if "--set-xmark" in r.target_args:
                val, _, mask = r.target_args["--set-xmark"].partition("/")
                mark = (mark & ~int(mask or "0xffffffff", 0)) ^ int(val, 0)
            return [(replace(q, mark=mark), "", trail)]
        if t == "DNAT":
            return [(replace(q, dnat=r.target_args["--to-destination"]), "DNAT", trail)]
        if t == "MASQUERADE":
            return [(replace(q, masquerade=True), "ACCEPT", trail)]
        if t == "RETURN":
            return [(q, "RETURN", trail)]
        if t in TERMINAL:
            return [(q, t, trail)]
        res = []
        for q2, v, tr in self._chain(table, t, q, ctstate, depth + 1, trail):
            res.append((q2, "" if v == "RETURN" else v, tr))
        return res

    def _hook(self, table: str, chain: str, p: Packet, ctstate: set[str], trail: tuple[str, ...]):
        """A built-in chain: policy ACCEPT when nothing decides."""
        res = []
        for q, v, tr in self._chain(table, chain, p, ctstate, trail=trail):
            res.append((q, v if v not in ("", "RETURN") else "ACCEPT", tr))
        return res

    def trace(self, src: str, dst: str, proto: str, dport: int) -> list[Outcome]:
        """Every outcome for a new connection from `src` to `dst:dport`."""
        p = Packet(src, dst, proto.lower(), dport)
        local_src = self.is_local(src)
        ct = {"NEW"}
        outcomes: list[Outcome] = []
        for q, v, tr in self._hook("nat", "OUTPUT" if local_src else "PREROUTING", p, ct, ()):
            if v in ("DROP", "REJECT"):
                outcomes.append(Outcome(v, q.dnat, False, tr))
                continue
            hooks = ["OUTPUT"] if local_src else ["INPUT" if self.is_local(q.cur_dst) else "FORWARD"]
            verdicts = [(q, "ACCEPT", tr)]
            for hook in hooks:
                nxt = []
                for q2, v2, tr2 in verdicts:
                    nxt.extend(self._hook("filter", hook, q2, ct | ({"DNAT"} if q2.dnat else set()), tr2))
                verdicts = nxt
            for q2, v2, tr2 in verdicts:
                if v2 in ("DROP", "REJECT"):
                    outcomes.append(Outcome(v2, q2.dnat, False, tr2))
                    continue
                if self.is_local(q2.cur_dst) and not local_src:
                    outcomes.append(Outcome("ACCEPT", q2.dnat, False, tr2))  # delivered locally: no POSTROUTING
                    continue
                for q3, _v3, tr3 in self._hook("nat", "POSTROUTING", q2, ct, tr2):
                    outcomes.append(Outcome("ACCEPT", q3.dnat, q3.masquerade, tr3))
        return _dedupe(outcomes)


def _dedupe(outcomes: list[Outcome]) -> list[Outcome]:
    seen: dict[tuple, Outcome] = {}
    for o in outcomes:
        seen.setdefault((o.verdict, o.endpoint, o.masquerade), o)
    return list(seen.values())


def trace(text: str, local_ips: Iterable[str], src: str, dst: str, proto: str, dport: int) -> list[Outcome]:
    """Parse `text` and trace one connection (a convenience for tests)."""
    return Walker(parse(text), local_ips).trace(src, dst, proto, dport)
