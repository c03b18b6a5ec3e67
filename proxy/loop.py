"""The proxy's control loop, as kube-proxy's syncRunner around syncProxyRules.

- Watches its Source; every change marks a sync as pending.
- Rate-limited: at most one sync per `min_sync_period` (BoundedFrequencyRunner's
  minInterval), and a sync at least every `sync_period`, which is a full one.
- Partial syncs pass the backend only the service ports that changed since
  the last *successful* sync; a failed sync makes the next one full, as
  kube-proxy's needFullSync.
- Bad input never reaches the kernel: every object is validated here too,
  and an invalid one is replaced by its last good version (or left out if
  it never had one); the error is kept in `status()` and counted in metrics.
  A sync that fails leaves the previous rules in place (iptables-restore is
  one transaction).
- After each successful sync, stale UDP conntrack entries are flushed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from netlab import store as st
from netlab.errors import SpecError
from proxy import conntrack
from proxy.backend import Backend, SyncResult
from proxy.metrics import Metrics
from proxy.model import NodeContext, ProxyState, build_state, validate_endpointslice, validate_service
from proxy.sources import Source

log = logging.getLogger("netlab.proxy")


class ProxyLoop:
    def __init__(
        self,
        source: Source,
        backend: Backend,
        node: NodeContext | Callable[[], NodeContext],
        *,
        min_sync_period: float = 1.0,
        sync_period: float = 30.0,
        metrics: Metrics | None = None,
        conntrack_run: Callable[[list[str]], object] | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        self.source = source
        self.backend = backend
        self._node = node
        self.min_sync_period = min_sync_period
        self.sync_period = sync_period
        self.metrics = metrics or Metrics(backend.name)
        self.conntrack_run = conntrack_run
        self.poll_interval = poll_interval
        self.applied: ProxyState | None = None  # the state of the last successful sync
        self.need_full = True
        self.pending = True
        self.last_sync = float("-inf")
        self.last_full = float("-inf")
        self.last_success_wall = 0.0
        self.last_error = ""
        self.invalid: dict[str, str] = {}
        self._good: dict[str, dict[str, Any]] = {}  # key -> last valid normalized object
        self._checked: dict[str, tuple[Any, str]] = {}  # key -> (Document validated, its error or "")
        self.syncs = 0
        self.synced = threading.Event()  # set after each successful sync (tests wait on it)

    def node(self) -> NodeContext:
        return self._node() if callable(self._node) else self._node

    # -- input ---------------------------------------------------------------------

    def _validated(self) -> tuple[list[dict], list[dict]]:
        """Valid objects; invalid ones fall back to their last good version."""
        docs = self.source.documents()
        invalid = dict(self.source.errors())
        services, slices = [], []
        for key in list(self._good):
            if key not in docs:
                del self._good[key]
        for key in list(self._checked):
            if key not in docs:
                del self._checked[key]
        for key, doc in docs.items():
            seen = self._checked.get(key)
            if seen is not None and seen[0] is doc:  # sources keep unchanged Documents: validated already
                err = seen[1]
            else:
                err = ""
                try:
                    obj = validate_service(doc) if key.startswith(st.SERVICES) else validate_endpointslice(doc)
                    self._good[key] = obj
                except SpecError as e:
                    err = str(e)
                self._checked[key] = (doc, err)
            if err:
                invalid[key] = err
            obj = self._good.get(key)
            if obj is None:
                continue
            (services if key.startswith(st.SERVICES) else slices).append(obj)
        if invalid != self.invalid:
            for key, msg in invalid.items():
                if self.invalid.get(key) != msg:
                    log.error("invalid object %s (keeping its last good version): %s", key, msg)
        self.invalid = invalid
        self.metrics.invalid_objects = len(invalid)
        return services, slices

    # -- one sync ------------------------------------------------------------------

    def sync_once(self, force_full: bool = False) -> SyncResult | None:
        """Build the state and hand it to the backend; None if nothing needed doing."""
        services, slices = self._validated()
        state = build_state(services, slices, self.node())
        full = force_full or self.need_full
        changed = None if full else state.changed_from(self.applied)
        if changed is not None and not changed:
            self.pending = False
            return None
        start = time.monotonic()
        self.last_sync = start
        try:
            result = self.backend.sync(state, changed)
        except Exception as e:  # noqa: BLE001 - any failure: keep old rules, full sync next
            self.need_full = True
            self.last_error = f"sync failed: {e}"
            self.metrics.failed(changed is None)
            log.error("%s", self.last_error)
            return None
        took = time.monotonic() - start
        if self.conntrack_run is not None:
            try:
                self.metrics.stale_udp_flushed += conntrack.flush(
                    conntrack.stale_udp_flushes(self.applied, state), self.conntrack_run)
            except Exception as e:  # noqa: BLE001 - a failed flush must not undo a good sync
                log.warning("conntrack flush failed: %s", e)
        self.applied = state
        self.need_full = False
        self.pending = False
        if result.full:
            self.last_full = start
        self.last_success_wall = time.time()
        self.last_error = ""
        self.syncs += 1
        self.metrics.services = len(state.services)
        self.metrics.endpoints = sum(len(v) for v in state.endpoints.values())
        self.metrics.observe_sync(took, result.full, result.details or {"total": result.rules}, self.last_success_wall)
        log.info("%s sync: %d rules, %d chains, %.1f ms", "full" if result.full else "partial",
                 result.rules, result.chains, took * 1000)
        self.synced.set()
        return result

    # -- the loop ----------------------------------------------------------------

    def step(self) -> SyncResult | None:
        """One turn: take in changes, and sync if it is due."""
        if self.source.refresh():
            self.pending = True
            self.metrics.last_queued_timestamp = time.time()
        now = time.monotonic()
        full_due = now - self.last_full >= self.sync_period
        if (self.pending or full_due or self.need_full) and now - self.last_sync >= self.min_sync_period:
            return self.sync_once(force_full=full_due)
        return None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad turn
                log.exception("proxy loop turn failed")
                self.need_full = True
            stop.wait(self.poll_interval)

    def status(self) -> dict[str, Any]:
        """What /status shows and `netlab status` can read."""
        return {
            "mode": self.backend.name,
            "node": self.node().node_name,
            "syncs": self.syncs,
            "lastSuccessfulSync": self.last_success_wall,
            "lastError": self.last_error,
            "invalidObjects": dict(self.invalid),
            "servicePorts": self.metrics.services,
            "endpoints": self.metrics.endpoints,
            "rules": dict(self.metrics.rules),
        }

