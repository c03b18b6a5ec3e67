"""The iptables mode's kernel adapter: one `iptables-restore --noflush` per sync.

The rule text comes from proxy/iptables.py (pure); this module only runs
iptables-restore / iptables-save (and, to read chain names, `nft list
chains`) inside the node's namespace, as kube-proxy runs them inside its pod
on the host network. iptables-nft is the default (what current distributions
and kube-proxy's image pick); `legacy` selects the x_tables binaries. With
iptables-nft, built-in chains that do not exist yet are linked to our empty
chains in a small transaction ahead of the sync, as kube-proxy's
EnsureChain/EnsureRule do before its restore.

Never run in the host's root namespace: with `netns=None` (no --netns: the
namespace the process runs in) the backend refuses when that is PID 1's
namespace, or, where PID 1's cannot be read, any namespace without a name
under /run/netns (netlab.netns.in_root_namespace).
"""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass

from netlab import netns
from proxy.backend import SyncError, SyncResult
from proxy.iptables import JUMP_RULES, JumpRule, Options, Proxier, jump_rules_missing
from proxy.model import ProxyState, ServicePortName
from proxy.walker import BUILTIN

BINARIES = {
    "nft": ("iptables-nft-restore", "iptables-nft-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
}
IPTABLES = {"nft": "iptables-nft", "legacy": "iptables-legacy"}


@dataclass
class Runner:
    """Runs a command in a namespace (None: this process's own) and returns stdout."""

    netns: str | None
    timeout: float = 120.0

    def __call__(self, argv: list[str], stdin: str | None = None, check: bool = True) -> str:
        kwargs = dict(input=stdin, capture_output=True, text=True, timeout=self.timeout)
        if self.netns:
            # The child inherits the namespace of the thread that spawns it. Entering it here
            # (this thread only) rather than in a preexec_fn lets subprocess use vfork: a
            # fork of a proxy holding 10k services' rules costs ~70 ms, a partial sync ~20.
            with netns.entered(self.netns):
                p = subprocess.run(argv, **kwargs)
        else:
            p = subprocess.run(argv, **kwargs)
        if check and p.returncode != 0:
            raise SyncError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
        return p.stdout


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children, iptables-restore included."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class IptablesBackend:
    """proxy.backend.Backend for iptables mode (kube-proxy --proxy-mode=iptables).

    Each sync is one `iptables-restore --noflush` transaction, planned by a
    `proxy.iptables.Proxier`, which remembers what the kernel holds. A
    partial sync reads nothing from the kernel. A full sync reads it (the
    nat chains, to delete stale ones, and the built-in chains' jumps, to add
    missing ones) when the backend does not know what is there (its first
    sync, after a failure), and otherwise, in a large cluster, at most once
    per `read_period`, as kube-proxy reads iptables-save at most once per
    syncPeriod in large clusters. Between reads, stale chains are known from
    what earlier syncs wrote.
    """

    name = "iptables"

    def __init__(self, netns_name: str | None = None, variant: str = "nft", opts: Options | None = None) -> None:
        if variant not in BINARIES:
            raise ValueError(f"unknown iptables variant {variant!r}: use nft or legacy")
        if netns_name is None and netns.in_root_namespace():
            raise SyncError("refusing to program iptables in the host's root namespace; run inside a node namespace")
        self.netns = netns_name
        self.variant = variant
        self.restore_bin, self.save_bin = BINARIES[variant]
        self.iptables_bin = IPTABLES[variant]
        self.run = Runner(netns_name)
        # The order of lines that each variant's restore handles best (see proxy/iptables.py).
        self.opts = dataclasses.replace(opts or Options(random_fully=True), nat_chains_descending=variant == "legacy")
        self.proxier = Proxier(self.opts)
        self.last_text = ""  # what the last successful sync wrote (for tests and `netlab trace`)
        self.last_read = float("-inf")
        self.read_period = 30.0  # large clusters: read the kernel at most this often (kube-proxy's syncPeriod)
        self.timing: dict[str, float] = {}  # the last sync's seconds: wall (read, build, restore) and cpu

    def save(self) -> str:
        return self.run([self.save_bin])

    def read(self) -> tuple[dict[str, set[str]], dict[str, dict[str, list[str]]]]:
        """What a full sync needs from the kernel: table -> chain names, table -> built-in chain -> rules.

        iptables-legacy-save reads each whole table in one system call anyway.
        iptables-nft-save fetches and translates every rule (a second at 10k
        services); with nft the chain names come from `nft list chains` and
        the built-in chains' rules from `iptables -S CHAIN`, which fetches
        that chain alone.
        """
        if self.variant != "nft" or not shutil.which("nft"):
            tables = scan_tables(self.save())
            return {t: c for t, (c, _) in tables.items()}, {t: b for t, (_, b) in tables.items() if b}
        chains: dict[str, set[str]] = {}
        table = ""
        for line in self.run(["nft", "list", "chains", "ip"], check=False).splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "table":
                table = words[2]
            elif len(words) >= 2 and words[0] == "chain":
                chains.setdefault(table, set()).add(words[1])
        builtin: dict[str, dict[str, list[str]]] = {}
        for table, names in BUILTIN.items():
            for chain in names:
                if chain not in chains.get(table, ()):
                    continue
                for line in self.run([self.iptables_bin, "-t", table, "-S", chain], check=False).splitlines():
                    if line.startswith(f"-A {chain} "):
                        builtin.setdefault(table, {}).setdefault(chain, []).append(line[len(chain) + 4 :])
        return chains, builtin

    def _link(self, jumps: list[JumpRule], chains: dict[str, set[str]]) -> None:
        """Jumps from built-in chains that do not exist yet, and their targets if new, ahead of the sync.

        As kube-proxy's EnsureChain/EnsureRule before its restore: the new
        chains are empty, so nothing changes for packets until the sync's
        transaction fills them. With iptables-nft this keeps the sync's `-S`
        (_fetch_all_first) from meeting a built-in chain that its listing
        shows but the kernel does not have yet.
        """
        lines: list[str] = []
        for table in dict.fromkeys(j.table for j in jumps):
            new = [j.target for j in jumps if j.table == table and j.target not in chains.get(table, ())]
            lines += [f"*{table}", *(f":{c} - [0:0]" for c in dict.fromkeys(new)), "COMMIT"]
        self.run([self.restore_bin, "--noflush"], stdin=_with_jumps("\n".join(lines) + "\n", jumps))

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        """syncProxyRules: plan the transaction, add missing jumps, restore once."""
        t0 = time.perf_counter()
        cpu0, kids0 = time.process_time(), _children_cpu()
        full = changed is None or not self.proxier.known
        existing = None
        missing: list[JumpRule] = []
        if full:
            large = sum(len(v) for v in state.endpoints.values()) > self.opts.large_cluster_endpoints
            now = time.monotonic()
            if not self.proxier.known or not large or now - self.last_read > self.read_period:
                chains, builtin_rules = self.read()
                existing = chains.get("nat", set())
                missing = jump_rules_missing(builtin_rules)
                self.last_read = now
                unhooked = [j for j in missing if j.source not in chains.get(j.table, ())]
                if unhooked and self.variant == "nft":
                    self._link(unhooked, chains)
                    missing = [j for j in missing if j not in unhooked]
        t1 = time.perf_counter()
        rs = self.proxier.plan(state, changed, existing)
        text = _with_jumps(rs.text, missing)
        if self.variant == "nft":
            text = _fetch_all_first(text)
        t2 = time.perf_counter()
        try:
            if text:
                self.run([self.restore_bin, "--noflush", "--counters"], stdin=text)
        except BaseException:
            self.proxier.abort()
            raise
        self.proxier.commit()
        t3 = time.perf_counter()
        self.timing = {"read": t1 - t0, "build": t2 - t1, "restore": t3 - t2,
                       "cpu": time.process_time() - cpu0, "child cpu": _children_cpu() - kids0}
        self.last_text = text
        return SyncResult(
            full=rs.full,
            rules=rs.nat_rules + rs.filter_rules,
            chains=rs.chains,
            stale_chains_removed=len(rs.stale_chains),
            bytes_written=len(text),
            details={"nat": rs.nat_rules, "filter": rs.filter_rules},
        )

    def cleanup(self) -> None:
        """kube-proxy --cleanup: remove our jumps, then flush and delete every KUBE- chain."""
        self.proxier.abort()
        tables = scan_tables(self.save())
        lines: list[str] = []
        for table in ("filter", "nat"):
            if table not in tables:
                continue
            chains, builtin = tables[table]
            ours = sorted((c for c in chains if c.startswith("KUBE-")), reverse=True)
            deletes = [
                f"-D {j.source} {r}"
                for j in JUMP_RULES
                if j.table == table
                for r in builtin.get(j.source, [])
                if _jumps_to(r, j.target)
            ]
            if not ours and not deletes:
                continue
            lines.append(f"*{table}")
            lines += list(dict.fromkeys(deletes))
            lines += [f":{c} - [0:0]" for c in ours]
            lines += [f"-X {c}" for c in ours]
            lines.append("COMMIT")
        if lines:
            text = "\n".join(lines) + "\n"
            self.run([self.restore_bin, "--noflush"], stdin=_fetch_all_first(text) if self.variant == "nft" else text)


def _jumps_to(rule: str, target: str) -> bool:
    return f" -j {target} " in f" {rule} "


_SECTION = re.compile(r"^\*(\w+)\n(.*?)^COMMIT$", re.M | re.S)
_CHAIN = re.compile(r"^:(\S+)", re.M)
_BUILTIN_RULE = re.compile(r"^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) (.*)$", re.M)


def scan_tables(text: str) -> dict[str, tuple[set[str], dict[str, list[str]]]]:
    """From iptables-save: table -> (its chain names, its built-in chains' rules).

    A regular-expression scan, not a parse of every rule: at 10k services
    iptables-save is 8.8 MB, which proxy.walker.parse needs seconds for.
    """
    out: dict[str, tuple[set[str], dict[str, list[str]]]] = {}
    for m in _SECTION.finditer(text):
        table, body = m.group(1), m.group(2)
        builtin: dict[str, list[str]] = {}
        for chain, rule in _BUILTIN_RULE.findall(body):
            if chain in BUILTIN.get(table, ()):
                builtin.setdefault(chain, []).append(rule)
        out[table] = (set(_CHAIN.findall(body)), builtin)
    return out


FETCH_ALL_LINES = 2000  # nat lines from which one cache fetch of every chain costs less


def _fetch_all_first(text: str) -> str:
    """For iptables-nft-restore --noflush: a `-S` first in a big nat section.

    iptables-nft-restore 1.8.x collects the chain names a transaction
    mentions (each rule's chain and jump target) in a sorted linked list,
    inserting each by a walk from the smallest name (nft-cache.c,
    cache_chain_list_insert), then fetches those chains one request each:
    quadratic in the chains mentioned, 85 s for a full sync of 10k services
    (30k chains), and over a second for a KUBE-SERVICES of 10k jumps. A
    command with no chain instead makes it fetch every chain of the table
    in one dump and stop collecting names; `-S` is the only such command
    that changes nothing (it lists the table, before the transaction, to
    stdout, which the runner discards). It costs a fetch of every rule, so
    it is used only where the names would cost more.
    """
    head, sep, nat = text.partition("*nat\n")
    if not sep or nat.count("\n") < FETCH_ALL_LINES:
        return text
    return f"{head}*nat\n-S\n{nat}"


def _with_jumps(text: str, missing: list[JumpRule]) -> str:
    """Insert missing built-in-chain jumps at the end of each table's section, before COMMIT.

    `-I CHAIN 1` in reverse list order leaves them in JUMP_RULES order at the
    top of the built-in chain, as kube-proxy's EnsureRule(Prepend) does. A
    table the text does not write gets a section of its own.
    """
    if not missing:
        return text
    inserts: dict[str, list[str]] = {}
    for j in reversed(missing):
        inserts.setdefault(j.table, []).append(f"-I {j.source} 1 {j.args()}")
    out = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            out += inserts.pop(table, [])
        out.append(line)
    for table, lines in inserts.items():
        out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"
