"""nftables mode, the kernel half: each sync is one `nft -f -` transaction in the node.

kube-proxy's nftables proxier hands knftables one transaction per sync; the
kernel applies it all or nothing. A full sync rewrites every chain, map and
set (replacing the table when the backend does not know what is in it); a
partial sync (the loop passes the changed service ports) rewrites only their
chains and map elements, against what the last successful sync applied.
Nothing is read back from the kernel on a sync, and a partial sync that
changes only chains (an endpoint came or went) is written so that `nft`
needs no cache of the table either (see proxy/nftables.py's `_rules_line`). A failed transaction leaves
the old table intact and makes the next sync a replacing one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from netlab import netns
from proxy.backend import SyncError, SyncResult
from proxy.model import ProxyState, ServicePortName
from proxy.nftables import T, Applied, full_text, partial_text


class NftablesBackend:
    """kube-proxy's nftables mode for one node namespace (implements proxy.backend.Backend)."""

    name = "nftables"

    def __init__(
        self, netns_name: str, service_cidr: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.netns_name = netns_name
        self.service_cidr = service_cidr  # the Service CIDRs (kube-proxy: its ServiceCIDR objects), to drop unallocated VIPs
        self.clock = clock  # when chains went stale (they are deleted STALE_CHAIN_AGE later)
        self._applied: Applied | None = None
        self.last_text = ""

    def _nft(self, script: str) -> None:
        p = netns.run_in(self.netns_name, ["nft", "-f", "-"], input=script, capture_output=True, text=True)
        if p.returncode != 0:
            raise SyncError(f"nft -f in {self.netns_name} failed: {p.stderr.strip()[:2000]}")

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        t0 = time.perf_counter()
        r = None
        if changed is not None and self._applied is not None:
            r = partial_text(state, changed, self._applied, self.clock())
        full = r is None
        if r is None:
            # With the last sync's record: kube-proxy's full sync over the live table (affinity
            # sets kept). Without one (first sync, after a failure): the table is replaced.
            r = full_text(state, self.service_cidr, self._applied, self.clock())
        try:
            if r.text:
                self._nft(r.text)
        except SyncError:
            self._applied = None
            raise
        self._applied = r.applied
        self.last_text = r.text
        return SyncResult(
            full=full,
            rules=r.rules,
            chains=r.chains,
            bytes_written=len(r.text),
            details={"services_touched": r.touched_services, "sync_ms": int((time.perf_counter() - t0) * 1000)},
        )

    def ruleset(self) -> str:
        """`nft list table ip kube-proxy` (empty when absent), for the walker and for users."""
        p = netns.run_in(self.netns_name, ["nft", "list", "table", *T.split()], capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    def cleanup(self) -> None:
        """kube-proxy --cleanup: the table goes, and with it every chain, set and map."""
        self._nft(f"add table {T}\ndelete table {T}\n")
        self._applied = None
