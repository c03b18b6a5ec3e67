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
- Input is taken in object by object, as kube-proxy's change trackers do:
  a changed Service or EndpointSlice is validated and turned into proxier
  values once, and only the services it touches are compared with the last
  applied state. The resulting state is the one proxy.model.build_state
  would build from every object (tests/unit/test_proxy_loop.py checks it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from netlab import store as st
from netlab.errors import SpecError
from netlab.stopflag import StopFlag
from proxy import conntrack
from proxy.backend import Backend, SyncResult
from proxy.metrics import Metrics
from proxy.model import (
    SERVICE_NAME_LABEL,
    Endpoint,
    NodeContext,
    ProxyState,
    ServicePort,
    ServicePortName,
    endpoints_for,
    service_ports,
    validate_endpointslice,
    validate_service,
)
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
        self._doc_errors: dict[str, str] = {}  # key -> why its current Document is invalid
        # The proxier values, kept up to date object by object (see _take_in).
        self._node_seen: NodeContext | None = None
        self._used: dict[str, dict[str, Any]] = {}  # key -> the object its values came from
        self._svc_ports: dict[tuple[str, str], list[ServicePort]] = {}  # (ns, name) -> its ports
        self._slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (ns, service) -> key -> slice
        self._eps_of: dict[tuple[str, str], list[ServicePortName]] = {}  # (ns, service) -> ports with endpoints
        self._services: dict[ServicePortName, ServicePort] = {}
        self._endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}  # of known ports only
        self._eps_stale: set[tuple[str, str]] = set()  # services whose endpoints need recomputing
        self._dirty: set[tuple[str, str]] | None = None  # services touched since the last sync; None: unknown
        self._applied_ports: dict[tuple[str, str], set[ServicePortName]] = {}  # of self.applied
        self.syncs = 0
        self.synced = threading.Event()  # set after each successful sync (tests wait on it)

    def node(self) -> NodeContext:
        return self._node() if callable(self._node) else self._node

    # -- input ---------------------------------------------------------------------
    #
    # As kube-proxy's ServiceChangeTracker and EndpointsChangeTracker: each object is
    # turned into proxier values once per version, and a sync only revisits the
    # services whose Service or EndpointSlices changed. At 10k services, rebuilding
    # the whole ProxyState and diffing it on every sync cost 0.3-0.8 s, fifteen times
    # an iptables partial sync.

    def _take_in(self, node: NodeContext) -> None:
        """Validate what changed in the source, and update the proxier values from it.

        Invalid objects fall back to their last good version (or stay out if
        they never had one). Services whose ports or endpoints may have
        changed are added to self._dirty.
        """
        docs = self.source.documents()
        checked = self._checked
        for key in checked.keys() - docs.keys():
            del checked[key]
            self._good.pop(key, None)
            self._doc_errors.pop(key, None)
            self._forget(key)
        if node != self._node_seen:  # endpoints' is_local depends on the node: start over
            self._node_seen = node
            self._used.clear()
            self._svc_ports.clear()
            self._slices.clear()
            self._eps_of.clear()
            self._services.clear()
            self._endpoints.clear()
            self._dirty = None
            for key, obj in self._good.items():
                self._add(key, obj)
        for key, doc in docs.items():
            seen = checked.get(key)
            if seen is not None and seen[0] is doc:  # sources keep unchanged Documents: taken in already
                continue
            err = ""
            try:
                # Not strict: what the store holds was admitted already, and kube-proxy's
                # client-go decoding ignores fields it does not know.
                obj = (validate_service(doc, strict=False) if key.startswith(st.SERVICES)
                       else validate_endpointslice(doc, strict=False))
                self._good[key] = obj
            except SpecError as e:
                err = str(e)
                self._doc_errors[key] = err
            else:
                self._doc_errors.pop(key, None)
            checked[key] = (doc, err)
            obj = self._good.get(key)
            if obj is not self._used.get(key):
                self._forget(key)
                if obj is not None:
                    self._add(key, obj)
        invalid = dict(self.source.errors())
        invalid.update(self._doc_errors)
        if invalid != self.invalid:
            for key, msg in invalid.items():
                if self.invalid.get(key) != msg:
                    log.error("invalid object %s (keeping its last good version): %s", key, msg)
        self.invalid = invalid
        self.metrics.invalid_objects = len(invalid)
        self._refresh_endpoints(node)

    def _mark(self, service: tuple[str, str]) -> None:
        if self._dirty is not None:
            self._dirty.add(service)
        self._eps_stale.add(service)

    def _forget(self, key: str) -> None:
        """Take back what the object at `key` contributed."""
        obj = self._used.pop(key, None)
        if obj is None:
            return
        if key.startswith(st.SERVICES):
            service = _service_of(obj)
            for sp in self._svc_ports.pop(service, ()):
                if self._services.get(sp.name) is sp:
                    del self._services[sp.name]
            self._mark(service)
        else:
            service = _slice_service(obj)
            if service is not None:
                slices = self._slices[service]
                slices.pop(key, None)
                if not slices:
                    del self._slices[service]
                self._mark(service)

    def _add(self, key: str, obj: dict) -> None:
        self._used[key] = obj
        if key.startswith(st.SERVICES):
            service = _service_of(obj)
            ports = service_ports(obj)
            self._svc_ports[service] = ports
            for sp in ports:
                self._services[sp.name] = sp
            self._mark(service)
        else:
            service = _slice_service(obj)
            if service is not None:
                self._slices.setdefault(service, {})[key] = obj
                self._mark(service)

    def _refresh_endpoints(self, node: NodeContext) -> None:
        """Endpoints of the services marked since the last call, from their slices alone.

        A slice only feeds the ports of the service its label names, so this
        is exactly proxy.model.build_state's endpoints for those services.
        """
        for service in self._eps_stale:
            for name in self._eps_of.pop(service, ()):
                self._endpoints.pop(name, None)
            slices = self._slices.get(service)
            eps = endpoints_for(slices.values(), node.node_name) if slices else {}
            self._eps_of[service] = list(eps)
            for name, v in eps.items():
                if name in self._services:
                    self._endpoints[name] = v
        self._eps_stale.clear()

    def _state(self, node: NodeContext) -> tuple[ProxyState, set[ServicePortName] | None]:
        """The state to sync to, and the service ports that differ from the last applied state
        (None when that state is unknown: everything is new)."""
        self._take_in(node)
        state = ProxyState(node=node, services=dict(self._services), endpoints=dict(self._endpoints))
        old = self.applied
        if self._dirty is None or old is None or old.node != node:
            return state, state.changed_from(old)
        changed: set[ServicePortName] = set()
        for service in self._dirty:
            names = {sp.name for sp in self._svc_ports.get(service, ())}
            names.update(self._applied_ports.get(service, ()))
            for name in names:
                if state.services.get(name) != old.services.get(name) or state.endpoints_of(
                    name
                ) != old.endpoints_of(name):
                    changed.add(name)
        return state, changed

    def _applied_now(self, state: ProxyState) -> None:
        """`state` is in the kernel: the ports per service that the next diff starts from."""
        if self._dirty is None:
            self._applied_ports = {}
            for name in state.services:
                self._applied_ports.setdefault(name.service, set()).add(name)
        else:
            for service in self._dirty:
                names = {sp.name for sp in self._svc_ports.get(service, ())}
                if names:
                    self._applied_ports[service] = names
                else:
                    self._applied_ports.pop(service, None)
        self._dirty = set()

    # -- one sync ------------------------------------------------------------------

    def sync_once(self, force_full: bool = False) -> SyncResult | None:
        """Build the state and hand it to the backend; None if nothing needed doing."""
        state, diff = self._state(self.node())
        full = force_full or self.need_full
        changed = None if full else diff
        if changed is not None and not changed:
            self.pending = False
            if self._dirty is not None:
                self._dirty = set()  # the state is the applied one, value for value
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
        self._applied_now(state)
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

    def run(self, stop: threading.Event | StopFlag) -> None:
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


def _service_of(svc: dict[str, Any]) -> tuple[str, str]:
    meta = svc.get("metadata", {})
    return (meta.get("namespace", "default"), meta["name"])


def _slice_service(sl: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, service) an EndpointSlice feeds, by its kubernetes.io/service-name label."""
    meta = sl.get("metadata", {})
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return (meta.get("namespace", "default"), svc) if svc else None
