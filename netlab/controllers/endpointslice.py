"""The EndpointSlice controller: Pods + Services -> EndpointSlices, as kube-controller-manager's.

For every Service with a selector, the Pods it selects (same namespace,
labels match, an IP assigned) become endpoints of slices named
"<service>-<5 chars>" and labelled kubernetes.io/service-name and
endpointslice.kubernetes.io/managed-by. An endpoint is ready while its pod
is Running (netlab has no readiness probes), terminating while it has a
deletionTimestamp. A named targetPort is resolved per pod from its
containers' ports; pods that resolve to different ports get different
slices, as the real controller groups endpoints by port mapping.
Slices the controller did not make (no managed-by label) are left alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from netlab import store as st
from netlab.controllers.loop import run_reconciler

log = logging.getLogger("netlab.controllers.endpointslice")

CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME = "kubernetes.io/service-name"


def _suffix(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:5]


def _resolve(target: Any, pod: dict, protocol: str) -> int | None:
    """A targetPort for one pod: a number, or a container port's name (FindPort)."""
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in pod.get("spec", {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                return int(p["containerPort"])
    return None


def desired_slices(svc: dict, pods: list[dict]) -> dict[str, dict]:
    """The slices a Service should have, by name (pure)."""
    meta, spec = svc["metadata"], svc.get("spec", {})
    ns, name = meta.get("namespace", "default"), meta["name"]
    selector = spec.get("selector") or {}
    if not selector or spec.get("type") == "ExternalName":
        return {}
    groups: dict[tuple, list[dict]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        pm = pod["metadata"]
        if pm.get("namespace", "default") != ns:
            continue
        labels = pm.get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        status = pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        ports = []
        for p in spec.get("ports") or []:
            proto = p.get("protocol", "TCP")
            port = _resolve(p.get("targetPort", p.get("port")), pod, proto)
            if port is not None:
                ports.append((p.get("name", ""), proto, port))
        running = status.get("phase") == "Running"
        terminating = bool(pm.get("deletionTimestamp"))
        ep = {
            "addresses": [ip],
            "conditions": {"ready": running and not terminating, "serving": running, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": pm["name"], "uid": pm.get("uid", "")},
        }
        if pod.get("spec", {}).get("nodeName"):
            ep["nodeName"] = pod["spec"]["nodeName"]
        groups.setdefault(tuple(ports), []).append(ep)
    if not groups:
        groups[()] = []  # a Service with no pods still gets one (empty) slice
    out = {}
    for ports, eps in groups.items():
        slice_name = f"{name}-{_suffix(ns, name, repr(ports))}"
        out[slice_name] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": ns,
                "labels": {SERVICE_NAME: name, MANAGED_BY: CONTROLLER_NAME},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                     "uid": meta.get("uid", ""), "controller": True}],
            },
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": n, "protocol": pr, "port": po} for n, pr, po in ports],
        }
    return out


class EndpointSliceController:
    """Reconciles every Service's managed slices whenever a Pod or Service changes."""

    def __init__(self, store: st.Store, poll_interval: float = 0.1) -> None:
        self.store = store
        self.poll_interval = poll_interval

    def reconcile(self) -> int:
        """One pass; returns the number of writes."""
        services = [kv.value for kv in self.store.list(st.SERVICES)[0]]
        # Pods matter only to a Service with a selector: a lab of pods without one (a build of a
        # thousand pods, whose statuses change in batches) is not listed on every batch.
        selecting = any((s.get("spec") or {}).get("selector") for s in services)
        pods = [kv.value for kv in self.store.list(st.PODS)[0]] if selecting else []
        existing = {
            kv.key: kv.value
            for kv in self.store.list(st.ENDPOINTSLICES)[0]
            if (kv.value.get("metadata", {}).get("labels") or {}).get(MANAGED_BY) == CONTROLLER_NAME
        }
        wanted: dict[str, dict] = {}
        for svc in services:
            for name, obj in desired_slices(svc, pods).items():
                wanted[st.object_key("EndpointSlice", obj["metadata"]["namespace"], name)] = obj
        writes = 0
        for key, obj in wanted.items():
            if existing.get(key) != obj:
                self.store.put(key, obj)
                writes += 1
        for key in set(existing) - set(wanted):
            self.store.delete(key)
            writes += 1
        return writes

    def run(self, stop: threading.Event) -> None:
        """Reconcile on every Pod or Service change until `stop`; a store error is waited out, then relisted."""
        run_reconciler(self.store, (st.PODS, st.SERVICES), self.reconcile, stop, self.poll_interval, log)
