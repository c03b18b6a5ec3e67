"""iptables rules of the bridge plugin's ipMasq and of portmap, in one text transaction per family.

Chains and comments are named as the reference plugins name them
(utils.FormatChainName / FormatComment): ``CNI-<sha512(name+id)[:24]>`` and
``name: "<net>" id: "<container>"``, so `iptables-save` on a netlab node
reads like a real node's. Rules are applied with one ``iptables-restore
--noflush`` (kube-proxy's way) after one ``iptables-save`` to keep ADD
idempotent, instead of the reference's one exec per rule (go-iptables).

Imports stay light (no subprocess at module level): this module is on
every plugin executable's start-up path; `cni.hostns` (which runs the
commands) is imported when a command is run.
"""

from __future__ import annotations

try:  # the built-in digest: hashlib would load OpenSSL (~3-8 ms per plugin start-up)
    from _sha512 import sha512
except ImportError:  # an interpreter built without it
    from hashlib import sha512

from cni import skel
from cni.errors import CNIError, INTERNAL

MAX_CHAIN = 28
COMMENT_MAX = 255


def chain_name(name: str, container_id: str, prefix: str = "CNI-") -> str:
    """utils.FormatChainNameWithPrefix: ``CNI-<prefix><sha512(name+id)>`` cut to 28 characters."""
    h = sha512((name + container_id).encode()).hexdigest()
    return prefix + h[: MAX_CHAIN - len(prefix)]


def comment(name: str, container_id: str) -> str:
    return f'name: "{name}" id: "{container_id}"'


def trim_comment(val: str) -> str:
    """portmap's trimComment: iptables refuses comments over 255 characters.

    The reference cuts to 253 characters and adds "...", 256 in all, which
    iptables then refuses; netlab cuts to 252 so that the result fits.
    """
    return val if len(val) <= COMMENT_MAX else val[: COMMENT_MAX - 3] + "..."


def _q(s: str) -> str:
    """Quote a comment as iptables-save prints it."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def arg(s: str) -> str:
    """One argv element as iptables-restore's line splitter reads it back as one element."""
    if s and not any(c.isspace() or c in "\"'\\#" for c in s):
        return s
    return _q(s)


def binary(family: int, tool: str) -> str:
    return ("ip6tables" if family == 6 else "iptables") + tool


def _run(args: skel.Args, argv: list[str], input: str | None = None):
    from cni import hostns  # subprocess, imported when a command runs

    return hostns.run(args, argv, input=input)


def save(args: skel.Args, table: str, family: int = 4) -> list[str]:
    p = _run(args, [binary(family, "-save"), "-t", table])
    if p.returncode != 0:
        raise CNIError(INTERNAL, f"{binary(family, '-save')} failed", p.stderr.strip())
    return p.stdout.splitlines()


def restore(args: skel.Args, text: str, family: int = 4) -> None:
    p = _run(args, [binary(family, "-restore"), "-w", "--noflush"], input=text)
    if p.returncode != 0:
        raise CNIError(INTERNAL, f"{binary(family, '-restore')} failed", p.stderr.strip() + "\n" + text)


def rule_exists(args: skel.Args, table: str, chain: str, rule: list[str], family: int = 4) -> bool:
    """`iptables -C`: the kernel-side comparison go-iptables' Exists makes, for rules whose
    iptables-save form cannot be predicted from their arguments (user-given matches)."""
    p = _run(args, [binary(family, ""), "-w", "-t", table, "-C", chain] + rule)
    return p.returncode == 0


def chains_of(saved: list[str]) -> set[str]:
    """The chains an iptables-save listing declares."""
    return {l[1:].split(" ", 1)[0] for l in saved if l.startswith(":")}


class NetnsLock:
    """An exclusive flock(2) on the plugin's network namespace file, for one save -> restore.

    go-iptables runs one atomic command per rule; netlab reads the table
    once and writes it once, so two plugins working in one node namespace
    at once could each see a shared chain missing and each declare it (and
    a declared chain is flushed by --noflush). The lock is on the
    namespace's nsfs inode: every opener of that namespace shares it, and
    no file is created for it.
    """

    def __init__(self, args: skel.Args) -> None:
        self.args = args
        self.fd = -1

    def __enter__(self) -> "NetnsLock":
        import fcntl
        import os

        if self.args.host_netns is None:
            path = "/proc/thread-self/ns/net"
        else:
            from netlab import netns

            path = netns.path(self.args.host_netns)
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        os.close(self.fd)  # closing the only descriptor releases the lock


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


def teardown_text(saved: list[str], table: str, chains: list[str]) -> str | None:
    """Pure: the restore text removing every jump to `chains` and the chains themselves (None: none exist).

    As the reference's chain.teardown: jumps found by their "-j <chain>"
    suffix, deleted by their full rule text; a missing chain is success.
    """
    present = [c for c in chains if c in chains_of(saved)]
    if not present:
        return None
    lines = [f"*{table}"]
    for l in saved:
        if not l.startswith("-A "):
            continue
        src = l[3:].split(" ", 1)[0]
        if src not in present and any(l.endswith(f" -j {c}") for c in present):
            lines.append("-D " + l[3:])
    lines += [f"-F {c}" for c in present] + [f"-X {c}" for c in present] + ["COMMIT", ""]
    return "\n".join(lines)


def teardown_chains(args: skel.Args, table: str, chains: list[str], families: tuple[int, ...] = (4, 6)) -> None:
    """Remove every jump to `chains` and the chains themselves, per family; missing is success."""
    for family in families:
        try:
            saved = save(args, table, family)
        except CNIError:
            continue  # as maybeGetIptables: a family whose tables cannot be read is skipped
        text = teardown_text(saved, table, chains)
        if text is not None:
            restore(args, text, family)


def teardown_chain(args: skel.Args, table: str, chain: str, families: tuple[int, ...] = (4, 6)) -> None:
    """Remove every jump to `chain` and the chain itself; a missing chain is success."""
    teardown_chains(args, table, [chain], families)
