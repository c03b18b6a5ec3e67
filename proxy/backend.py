"""What the control loop needs from a proxy mode (iptables, IPVS, nftables, userspace).

kube-proxy's Provider interface (pkg/proxy/types.go) mixes the change
trackers and syncRunner into each proxier. Here the loop (proxy/loop.py)
owns watching, rate limiting and change tracking for every mode, and a
mode only has to turn one `ProxyState` into kernel state: `sync` is
proxier.go's syncProxyRules, minus the bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from netlab.errors import NetlabError
from proxy.model import ProxyState, ServicePortName


class SyncError(NetlabError):
    """The kernel refused a sync (e.g. iptables-restore failed).

    The loop keeps its previous state as "last applied", counts the error,
    and makes the next sync a full one, as kube-proxy sets needFullSync
    after a failed restore.
    """


@dataclass
class SyncResult:
    """What one sync did, for metrics and status."""

    full: bool  # a full sync (every chain rewritten) rather than a partial one
    rules: int = 0  # rules in the written ruleset (kube-proxy's sync_proxy_rules_iptables_total)
    chains: int = 0
    stale_chains_removed: int = 0
    bytes_written: int = 0
    details: dict[str, int] = field(default_factory=dict)  # mode-specific counters (e.g. per table)


@runtime_checkable
class Backend(Protocol):
    """One proxy mode. Every method runs in the node's network namespace's context
    (the backend itself enters it; the loop never does)."""

    name: str  # "iptables", "ipvs", "nftables", "userspace"

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        """Make the kernel match `state`.

        `changed` is None for a full sync (rewrite everything, remove stale
        chains); otherwise the service ports whose service or endpoints
        changed since the last *successful* sync, and the backend may rewrite
        only those (plus its top-level chains). Raises SyncError on failure;
        the loop then retries with a full sync.
        """
        ...

    def cleanup(self) -> None:
        """Remove everything this mode ever wrote (kube-proxy --cleanup)."""
        ...
