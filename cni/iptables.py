"""iptables rules of the bridge plugin's ipMasq (and portmap), in one text transaction.

Chains and comments are named as the reference plugins name them
(utils.FormatChainName / FormatComment): ``CNI-<sha512(name+id)[:24]>`` and
``name: "<net>" id: "<container>"``, so `iptables-save` on a netlab node
reads like a real node's. Rules are applied with one ``iptables-restore
--noflush`` (kube-proxy's way) after one ``iptables-save`` to keep ADD
idempotent, instead of the reference's one exec per rule.
"""

from __future__ import annotations

import hashlib
import shlex

from cni import hostns, skel
from cni.errors import CNIError, INTERNAL

MAX_CHAIN = 28


def chain_name(name: str, container_id: str, prefix: str = "CNI-") -> str:
    h = hashlib.sha512((name + container_id).encode()).hexdigest()
    return prefix + h[: MAX_CHAIN - len(prefix)]


def comment(name: str, container_id: str) -> str:
    return f'name: "{name}" id: "{container_id}"'


def _q(s: str) -> str:
    """Quote a comment as iptables-save prints it."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def binary(family: int, tool: str) -> str:
    return ("ip6tables" if family == 6 else "iptables") + tool


def save(args: skel.Args, table: str, family: int = 4) -> list[str]:
    p = hostns.run(args, [binary(family, "-save"), "-t", table])
    if p.returncode != 0:
        raise CNIError(INTERNAL, f"{binary(family, '-save')} failed", p.stderr.strip())
    return p.stdout.splitlines()


def restore(args: skel.Args, text: str, family: int = 4) -> None:
    p = hostns.run(args, [binary(family, "-restore"), "-w", "--noflush"], input=text)
    if p.returncode != 0:
        raise CNIError(INTERNAL, f"{binary(family, '-restore')} failed", p.stderr.strip() + "\n" + text)


def masq_rules(network: str, address: str, name: str, container_id: str) -> tuple[str, list[str], str]:
    """Pure: the reference SetupIPMasq rules for one pod address (chain, chain rules, jump)."""
    ch = chain_name(name, container_id)
    c = _q(comment(name, container_id))
    multicast = "224.0.0.0/4" if ":" not in address else "ff00::/8"
    host = "/32" if ":" not in address else "/128"
    rules = [
        f"-A {ch} -d {network} -m comment --comment {c} -j ACCEPT",
        f"-A {ch} ! -d {multicast} -m comment --comment {c} -j MASQUERADE",
    ]
    jump = f"-A POSTROUTING -s {address}{host} -m comment --comment {c} -j {ch}"
    return ch, rules, jump


def setup_masq(args: skel.Args, pairs: list[tuple[str, str]], name: str) -> None:
    """ipMasq for (network, address) pairs; upsert: an existing chain is rebuilt, jumps not duplicated."""
    for family in (4, 6):
        mine = [(n, a) for n, a in pairs if (":" in a) == (family == 6)]
        if not mine:
            continue
        existing = set(save(args, "nat", family))
        lines = ["*nat"]
        chain_rules: list[str] = []
        jumps: list[str] = []
        ch = ""
        for net, addr in mine:
            ch, rules, jump = masq_rules(net, addr, name, args.container_id)
            chain_rules += [r for r in rules if r not in chain_rules]
            if jump not in existing and jump not in jumps:
                jumps.append(jump)
        lines.append(f":{ch} - [0:0]")  # declared chains are flushed by --noflush restore
        lines += chain_rules + jumps + ["COMMIT", ""]
        restore(args, "\n".join(lines), family)


def teardown_chain(args: skel.Args, table: str, chain: str, families: tuple[int, ...] = (4, 6)) -> None:
    """Remove every jump to `chain` and the chain itself; a missing chain is success."""
    for family in families:
        try:
            saved = save(args, table, family)
        except CNIError:
            continue
        if not any(l.startswith(f":{chain} ") for l in saved):
            continue
        lines = [f"*{table}"]
        for l in saved:
            if l.startswith("-A ") and l.endswith(f"-j {chain}") and not l.startswith(f"-A {chain} "):
                lines.append("-D " + l[3:])
        lines += [f"-F {chain}", f"-X {chain}", "COMMIT", ""]
        restore(args, "\n".join(lines), family)


def quote_args(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
