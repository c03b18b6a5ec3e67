"""The iptables mode's kernel adapter: one `iptables-restore --noflush` per sync.

The rule text comes from proxy/iptables.py (pure); this module only runs
iptables-restore / iptables-save inside the node's namespace, as kube-proxy
runs them inside its pod on the host network. iptables-nft is the default
(what current distributions and kube-proxy's image pick); `legacy` selects
the x_tables binaries.

Never run in the host's root namespace: the backend refuses `netns=None`
unless it was explicitly told the current namespace is a node's
(`--netns` unset in a process that was started inside a node namespace).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from netlab import netns
from proxy.backend import SyncError, SyncResult
from proxy.iptables import JUMP_RULES, Options, build, jump_rules_missing
from proxy.model import ProxyState, ServicePortName
from proxy.walker import BUILTIN, parse

BINARIES = {
    "nft": ("iptables-nft-restore", "iptables-nft-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
}


@dataclass
class Runner:
    """Runs a command in a namespace (None: this process's own) and returns stdout."""

    netns: str | None
    timeout: float = 120.0

    def __call__(self, argv: list[str], stdin: str | None = None) -> str:
        kwargs = dict(input=stdin, capture_output=True, text=True, timeout=self.timeout)
        if self.netns:
            p = netns.run_in(self.netns, argv, **kwargs)
        else:
            p = subprocess.run(argv, **kwargs)
        if p.returncode != 0:
            raise SyncError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
        return p.stdout


def _root_netns_inode() -> int | None:
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return None


def in_root_namespace() -> bool:
    """Whether this thread is in PID 1's network namespace (the host's)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino == _root_netns_inode()
    except OSError:
        return False


class IptablesBackend:
    """proxy.backend.Backend for iptables mode (kube-proxy --proxy-mode=iptables)."""

    name = "iptables"

    def __init__(self, netns_name: str | None = None, variant: str = "nft", opts: Options | None = None) -> None:
        if variant not in BINARIES:
            raise ValueError(f"unknown iptables variant {variant!r}: use nft or legacy")
        if netns_name is None and in_root_namespace():
            raise SyncError("refusing to program iptables in the host's root namespace; run inside a node namespace")
        self.netns = netns_name
        self.variant = variant
        self.restore_bin, self.save_bin = BINARIES[variant]
        self.run = Runner(netns_name)
        self.opts = opts or Options(random_fully=True)
        self.last_text = ""  # what the last successful sync wrote (for tests and `netlab trace`)
        self.last_cleanup = 0.0
        self.cache: dict = {}  # per-service-port lines, reused while unchanged (see iptables.build)
        self.cleanup_period = 30.0  # large clusters: iptables-save at most this often (kube-proxy's syncPeriod)

    def save(self) -> str:
        return self.run([self.save_bin])

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        """syncProxyRules: build the text, add missing jumps, drop stale chains, restore once."""
        full = changed is None
        n_eps = sum(len(v) for v in state.endpoints.values())
        large = n_eps > self.opts.large_cluster_endpoints
        existing = None
        missing = list(JUMP_RULES) if full else []
        # kube-proxy skips iptables-save in large clusters except once per syncPeriod.
        if full or not large or time.monotonic() - self.last_cleanup > self.cleanup_period:
            existing, builtin_rules = scan_save(self.save())
            missing = jump_rules_missing(builtin_rules)
            self.last_cleanup = time.monotonic()
        services = None if full else {n.service for n in changed}
        rs = build(state, services, self.opts, existing, self.cache)
        text = _with_jumps(rs.text, missing)
        self.run([self.restore_bin, "--noflush", "--counters"], stdin=text)
        self.last_text = text
        return SyncResult(
            full=full,
            rules=rs.nat_rules + rs.filter_rules,
            chains=len(rs.nat_chains),
            stale_chains_removed=len(rs.stale_chains),
            bytes_written=len(text),
            details={"nat": rs.nat_rules, "filter": rs.filter_rules},
        )

    def cleanup(self) -> None:
        """kube-proxy --cleanup: remove our jumps, then flush and delete every KUBE- chain."""
        saved = parse(self.save())
        lines: list[str] = []
        for table in ("filter", "nat"):
            chains = saved.chains.get(table)
            if not chains:
                continue
            lines.append(f"*{table}")
            ours = [c for c in chains if c.startswith("KUBE-")]
            for j in JUMP_RULES:
                if j.table == table and any(r.target == j.target for r in chains.get(j.source, [])):
                    for r in chains[j.source]:
                        if r.target == j.target:
                            lines.append(f"-D {j.source} {r.text}")
            lines += [f":{c} - [0:0]" for c in ours]
            lines += [f"-X {c}" for c in ours]
            lines.append("COMMIT")
        if lines:
            self.run([self.restore_bin, "--noflush"], stdin="\n".join(lines) + "\n")


def scan_save(text: str) -> tuple[set[str], dict[str, dict[str, list[str]]]]:
    """From iptables-save: the nat table's chain names, and the built-in chains' rules.

    What a sync needs (stale chains, missing jumps) without parsing every
    rule: at 10k services the full parse costs seconds; this is a line scan.
    """
    nat_chains: set[str] = set()
    builtin: dict[str, dict[str, list[str]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            if table == "nat":
                nat_chains.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A ") and line[3:4].isupper():
            chain, _, rest = line[3:].partition(" ")
            if chain in BUILTIN.get(table, ()):
                builtin.setdefault(table, {}).setdefault(chain, []).append(rest)
    return nat_chains, builtin


def _with_jumps(text: str, missing: list) -> str:
    """Insert missing built-in-chain jumps at the end of each table's section, before COMMIT.

    `-I CHAIN 1` in reverse list order leaves them in JUMP_RULES order at the
    top of the built-in chain, as kube-proxy's EnsureRule(Prepend) does.
    """
    if not missing:
        return text
    out = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            for j in reversed(missing):
                if j.table == table:
                    out.append(f"-I {j.source} 1 {j.args()}")
        out.append(line)
    return "\n".join(out) + "\n"
