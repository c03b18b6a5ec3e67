"""A rule walker for nftables rulesets: where can a new connection go?

The nftables counterpart of proxy/walker.py (same `Outcome`s), so the one
packet-flow table checks every mode without root. It reads either the
transaction text netlab feeds to `nft -f` or the kernel's own
`nft list table ip kube-proxy` output, and understands the expressions
kube-proxy's nftables proxier writes: verdict-map lookups on
`daddr . l4proto . dport`, sets, `numgen random mod N vmap` and netlab's
`numgen random mod N K goto` ladder (every branch is followed),
`fib ... type local`, marks, `dnat to`, `masquerade`, `reject`, `drop`,
`jump`/`goto`/`return`. A connection is new, so dynamic affinity sets are
empty.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from proxy.walker import Outcome

PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}


@dataclass
class Ruleset:
    chains: dict[str, list[str]] = field(default_factory=dict)
    hooks: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # hook -> (prio, type, chain)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # key "a . b . c" -> verdict
    sets: dict[str, set[str]] = field(default_factory=dict)


def _prio(text: str) -> int:
    text = text.strip().rstrip(";").strip()
    m = re.fullmatch(r"([a-z]+)\s*([+-])\s*(\d+)", text)
    if m:
        base = PRIORITIES[m.group(1)]
        return base + int(m.group(3)) * (1 if m.group(2) == "+" else -1)
    return PRIORITIES[text] if text in PRIORITIES else int(text)


def _strip_comment(rule: str) -> str:
    return re.sub(r'\s*comment\s+"[^"]*"', "", rule).strip()


def _normalize(rule: str) -> str:
    """`nft list` spellings -> the script spellings the walk reads."""
    rule = rule.replace("meta mark", "mark").replace(" & ", " and ").replace(" | ", " or ").replace(" ^ ", " xor ")
    return rule


def _add_elements(rs: Ruleset, name: str, body: str) -> None:
    body = body.strip().strip("{}").strip()
    if not body:
        return
    for item in (i.strip() for i in body.split(",")):
        if not item:
            continue
        if " : " in item:
            k, v = item.split(" : ", 1)
            rs.maps.setdefault(name, {})[_strip_comment(k)] = v.strip()
            rs.sets.pop(name, None)
        else:
            rs.sets.setdefault(name, set()).add(_strip_comment(item))


def _hook_def(rs: Ruleset, chain: str, text: str) -> None:
    m = re.search(r"type (\w+) hook (\w+) priority ([^;]+);", text)
    if m:
        rs.hooks.setdefault(m.group(2), []).append((_prio(m.group(3)), m.group(1), chain))


def _block_items(body: str) -> list[str]:
    """`{ a ; b { c, d } ; "e;f" }` -> ["a", "b { c, d }", '"e;f"']: top-level `;`-separated items."""
    body = body.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    items, cur, depth, quoted = [], [], 0, False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{}":
            depth += 1 if ch == "{" else -1
        elif not quoted and depth == 0 and ch == ";":
            items.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur).strip())
    return [i for i in items if i]


def _chain_block(rs: Ruleset, name: str, body: str) -> None:
    """`add chain T NAME { type ... ; }` or `{ rule ; rule ; }`: the hook, and rules appended."""
    if not body.strip():
        return
    for item in _block_items(body):
        if item.startswith("type "):
            _hook_def(rs, name, item + " ;")
        elif item.split()[0] in ("comment", "policy", "devices", "flags"):
            continue
        else:
            rs.chains[name].append(_strip_comment(item))


def parse(text: str) -> Ruleset:
    """A ruleset from `nft -f` transaction text or from `nft list table` output."""
    rs = Ruleset()
    if re.search(r"^\s*table \S+ \S+ \{", text, re.M):
        _parse_listing(text, rs)
        return rs
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(add|flush|delete) (chain|rule|element|set|map|table) \S+ \S+ ?(\S+)? ?(.*)$", line)
        if not m:
            continue
        verb, what, name, rest = m.groups()
        if what == "table":
            if verb == "delete":
                rs.__init__()  # type: ignore[misc]
            continue
        if what == "chain":
            if verb == "add":
                rs.chains.setdefault(name, [])
                _chain_block(rs, name, rest)
            elif verb == "flush":
                rs.chains[name] = []
            else:
                rs.chains.pop(name, None)
                for h in rs.hooks.values():
                    h[:] = [x for x in h if x[2] != name]
        elif what == "rule":
            rs.chains.setdefault(name, []).append(_strip_comment(rest))
        elif what in ("set", "map"):
            if verb == "add" and "verdict" in rest:
                rs.maps.setdefault(name, {})
            elif verb == "add":
                rs.sets.setdefault(name, set())
            elif verb == "delete":
                rs.maps.pop(name, None)
                rs.sets.pop(name, None)
        elif what == "element":
            if verb == "add":
                _add_elements(rs, name, rest)
            elif verb == "delete":
                for k in (i.strip() for i in rest.strip().strip("{}").split(",")):
                    rs.maps.get(name, {}).pop(k, None)
                    rs.sets.get(name, set()).discard(k)
    return rs


def _parse_listing(text: str, rs: Ruleset) -> None:
    cur_kind = cur_name = None
    buf = ""  # a multi-line "elements = { ... }"
    for raw in text.splitlines():
        line = raw.strip()
        if buf:
            buf += " " + line
            if "}" in line:
                _add_elements(rs, cur_name, buf.split("=", 1)[1])
                buf = ""
            continue
        m = re.match(r"(chain|set|map) (\S+) \{$", line)
        if m:
            cur_kind, cur_name = m.groups()
            cur_name = cur_name.strip('"')
            if cur_kind == "chain":
                rs.chains[cur_name] = []
            elif cur_kind == "map":
                rs.maps.setdefault(cur_name, {})
            continue
        if line == "}":
            cur_kind = cur_name = None
            continue
        if cur_kind == "chain":
            if line.startswith("type "):
                _hook_def(rs, cur_name, line if line.endswith(";") else line + ";")
            elif line:
                rs.chains[cur_name].append(_normalize(_strip_comment(line).replace('"', "")))
        elif cur_kind in ("set", "map"):
            if line.startswith("type ") and cur_kind == "set":
                rs.sets.setdefault(cur_name, set())
            if line.startswith("elements = "):
                if "}" in line:
                    _add_elements(rs, cur_name, line.split("=", 1)[1])
                else:
                    buf = line
    for m in list(rs.maps):
        rs.maps[m] = {k.replace('"', ""): v.replace('"', "") for k, v in rs.maps[m].items()}


# -- the walk -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str
    dport: int
    mark: int = 0
    dnat: str | None = None
    masquerade: bool = False

    @property
    def cur_dst(self) -> str:
        return self.dnat.rsplit(":", 1)[0] if self.dnat else self.dst

    @property
    def cur_port(self) -> int:
        return int(self.dnat.rsplit(":", 1)[1]) if self.dnat else self.dport


def _in(ip: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def _tokens(rule: str) -> list[str]:
    """Whitespace tokens, with `{ ... }` groups kept whole."""
    out, depth, cur = [], 0, []
    for t in rule.split():
        if depth:
            cur.append(t)
            depth += t.count("{") - t.count("}")
            if depth == 0:
                out.append(" ".join(cur))
                cur = []
        elif t.startswith("{") and t.count("{") > t.count("}"):
            depth = t.count("{") - t.count("}")
            cur = [t]
        else:
            out.append(t)
    return out


class NftWalker:
    """Walks new connections through one ruleset. `local_ips`: the node's own addresses."""

    def __init__(self, rs: Ruleset, local_ips: Iterable[str]) -> None:
        self.rs = rs
        self.local = set(local_ips)

    def is_local(self, ip: str) -> bool:
        return ip in self.local or _in(ip, "127.0.0.0/8")

    def _ipmatch(self, ip: str, arg: str) -> bool:
        if arg.startswith("@"):
            return ip in self.rs.sets.get(arg[1:], set())
        if arg.startswith("{"):
            return any(_in(ip, a.strip()) for a in arg.strip("{} ").split(","))
        return _in(ip, arg)

    def _run_rule(self, rule: str, p: Packet, depth: int):
        """Yields (packet, verdict) for each way the rule can end: verdict "" means "next rule"."""
        toks = _tokens(rule)
        i = 0
        while i < len(toks):
            t = toks[i]
            nxt = toks[i + 1] if i + 1 < len(toks) else ""
            if t == "ct" and nxt == "state":
                if "new" not in toks[i + 2].split(","):
                    yield p, ""
                    return
                i += 3
            elif t == "ip" and nxt in ("saddr", "daddr") and toks[i + 2] == "." and toks[i + 3] == "meta":
                # ip daddr . meta l4proto . th dport vmap @map
                key = f"{p.cur_dst} . {p.proto} . {p.cur_port}"
                m = toks[i + 9][1:] if toks[i + 8] == "vmap" else ""
                v = self.rs.maps.get(m, {}).get(key)
                if v is None:
                    yield p, ""
                    return
                yield from self._verdict(v.split(), p, depth)
                return
            elif t == "meta" and nxt == "l4proto" and i + 2 < len(toks) and toks[i + 2] == ".":
                key = f"{p.proto} . {p.cur_port}"
                v = self.rs.maps.get(toks[i + 6][1:], {}).get(key)
                if v is None:
                    yield p, ""
                    return
                yield from self._verdict(v.split(), p, depth)
                return
            elif t == "ip" and nxt in ("saddr", "daddr"):
                ip = p.src if nxt == "saddr" else p.cur_dst
                neg = toks[i + 2] == "!="
                arg = toks[i + 3] if neg else toks[i + 2]
                if self._ipmatch(ip, arg) == neg:
                    yield p, ""
                    return
                i += 4 if neg else 3
            elif t in ("tcp", "udp", "sctp") and nxt == "dport":
                if p.proto != t or p.cur_port != int(toks[i + 2]):
                    yield p, ""
                    return
                i += 3
            elif t == "meta" and nxt == "l4proto":
                if p.proto != toks[i + 2]:
                    yield p, ""
                    return
                i += 3
            elif t == "fib":
                ip = p.src if nxt == "saddr" else p.cur_dst
                if not self.is_local(ip):
                    yield p, ""
                    return
                i += 4  # fib saddr type local
            elif t == "mark" and nxt == "and":
                bits = int(toks[i + 2], 16)
                want = int(toks[i + 4], 16)
                if (p.mark & bits) != want:
                    yield p, ""
                    return
                i += 5
            elif t == "mark" and nxt == "set":
                op, val = toks[i + 3], int(toks[i + 4], 16)
                p = replace(p, mark=p.mark | val if op == "or" else p.mark ^ val)
                i += 5
            elif t == "update":
                i += 3
            elif t == "numgen" and toks[i + 4] == "vmap":
                # kube-proxy's `numgen random mod N vmap { 0 : goto A, ... }`: every branch.
                branches = toks[i + 5].strip("{} ").split(",")
                for b in branches:
                    _, v = b.split(":", 1)
                    yield from self._verdict(v.split(), p, depth)
                return
            elif t == "numgen":
                # netlab's ladder `numgen random mod N K goto A` (also spelled `== K`):
                # it matches for some packets and not for others, unless N is 1.
                j = i + 5 if toks[i + 4] == "==" else i + 4
                modulus, value = int(toks[i + 3]), int(toks[j])
                if value >= modulus:
                    yield p, ""
                    return
                if modulus > 1:
                    yield p, ""
                i = j + 1
            else:
                yield from self._verdict(toks[i:], p, depth)
                return
        yield p, ""

    def _verdict(self, toks: list[str], p: Packet, depth: int):
        v = toks[0]
        if v in ("jump", "goto"):
            for q, r in self._chain(toks[1], p, depth + 1):
                if v == "goto":
                    yield q, r or "return"
                else:
                    yield q, "" if r == "return" else r
        elif v == "return":
            yield p, "return"
        elif v in ("accept", "drop", "reject"):
            yield p, v
        elif v == "dnat":
            yield replace(p, dnat=toks[2]), "accept"
        elif v == "masquerade":
            yield replace(p, masquerade=True), "accept"
        else:
            raise ValueError(f"nft walker: unknown statement {' '.join(toks)!r}")

    def _chain(self, name: str, p: Packet, depth: int = 0):
        """(packet, verdict) per path; verdict "" when the chain ran off its end."""
        if depth > 50:
            raise RecursionError(f"chain loop at {name}")
        paths = [(p, "")]
        for rule in self.rs.chains.get(name, []):
            nxt = []
            for q, v in paths:
                if v:
                    nxt.append((q, v))
                    continue
                nxt.extend(self._run_rule(rule, q, depth))
            paths = nxt
        return paths

    def _hook(self, hook: str, paths: list[tuple[Packet, str]], types: tuple[str, ...] = ("filter", "nat")):
        for _prio_, typ, chain in sorted(self.rs.hooks.get(hook, [])):
            if typ not in types:
                continue
            nxt = []
            for q, v in paths:
                if v in ("drop", "reject"):
                    nxt.append((q, v))
                    continue
                for q2, v2 in self._chain(chain, q):
                    nxt.append((q2, v2 if v2 in ("drop", "reject") else ""))
            paths = nxt
        return paths

    def trace(self, src: str, dst: str, proto: str, dport: int) -> list[Outcome]:
        p = Packet(src, dst, proto.lower(), dport)
        local_src = self.is_local(src)
        paths = self._hook("output" if local_src else "prerouting", [(p, "")])
        out: list[Outcome] = []
        for q, v in paths:
            if v:
                out.append(Outcome(v.upper(), q.dnat, False))
                continue
            if not local_src:
                hook = "input" if self.is_local(q.cur_dst) else "forward"
                for q2, v2 in self._hook(hook, [(q, "")]):
                    if v2:
                        out.append(Outcome(v2.upper(), q2.dnat, False))
                    elif hook == "input":
                        out.append(Outcome("ACCEPT", q2.dnat, False))
                    else:
                        for q3, _ in self._hook("postrouting", [(q2, "")]):
                            out.append(Outcome("ACCEPT", q3.dnat, q3.masquerade))
            else:
                for q3, _ in self._hook("postrouting", [(q, "")]):
                    out.append(Outcome("ACCEPT", q3.dnat, q3.masquerade))
        seen: dict[tuple, Outcome] = {}
        for o in out:
            seen.setdefault((o.verdict, o.endpoint, o.masquerade), o)
        return list(seen.values())
