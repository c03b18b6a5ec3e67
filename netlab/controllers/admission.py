"""Service admission, as the API server's service REST storage does at create/update.

Allocates spec.clusterIP from the service CIDR and nodePorts from the
node-port range (30000-32767), keeps values the user gave, keeps what an
existing Service already holds (clusterIP is immutable), and rejects
clashes with the API server's wording ("provided IP is already allocated").
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from netlab import store as st
from netlab.errors import SpecError
from netlab.spec.source import Document, path_text

NODE_PORT_RANGE = (30000, 32767)  # --service-node-port-range


def _error(where: Document | None, obj: dict, path: tuple, message: str, hint: str = "") -> SpecError:
    if where is not None:
        return where.error(path, message, hint)
    meta = obj.get("metadata", {})
    return SpecError(f"Service {meta.get('namespace', 'default')}/{meta.get('name')}", path_text(path), message, hint)


def _used(store: st.Store, me: str) -> tuple[set[str], set[int]]:
    """Cluster IPs and node ports held by every other Service."""
    ips: set[str] = set()
    ports: set[int] = set()
    kvs, _ = store.list(st.SERVICES)
    for kv in kvs:
        if kv.key == me:
            continue
        spec = kv.value.get("spec", {})
        if spec.get("clusterIP") not in (None, "", "None"):
            ips.add(spec["clusterIP"])
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                ports.add(int(p["nodePort"]))
        if spec.get("healthCheckNodePort"):
            ports.add(int(spec["healthCheckNodePort"]))
    return ips, ports


def admit_service(
    store: st.Store,
    obj: dict[str, Any],
    lab: Any,
    node_port_range: tuple[int, int] = NODE_PORT_RANGE,
    *,
    where: Document | None = None,
) -> dict[str, Any]:
    """The Service as the API server would store it. `lab`: a LabSpec or the service CIDR."""
    cidr = ipaddress.ip_network(str(getattr(lab, "service_cidr", lab)))
    obj = copy.deepcopy(obj)
    meta, spec = obj["metadata"], obj.setdefault("spec", {})
    key = st.object_key("Service", meta.get("namespace", "default"), meta["name"])
    old = store.get(key)
    old_spec = old.value.get("spec", {}) if old else {}
    used_ips, used_ports = _used(store, key)
    typ = spec.get("type", "ClusterIP")
    if typ == "ExternalName":
        return obj

    # clusterIP: immutable once allocated; otherwise the user's (checked) or the next free.
    ip = spec.get("clusterIP") or ""
    old_ip = old_spec.get("clusterIP") or ""
    if old_ip and ip and ip != old_ip:
        raise _error(where, obj, ("spec", "clusterIP"), f"field is immutable (it is {old_ip})",
                     "delete the Service first, or leave clusterIP out")
    ip = ip or old_ip
    if ip and ip != "None":
        if ipaddress.ip_address(ip) not in cidr:
            raise _error(where, obj, ("spec", "clusterIP"),
                         f"Invalid value: {ip!r}: provided IP is not in the valid range. "
                         f"The range of valid IPs is {cidr}", "leave clusterIP out to get one allocated")
        if ip in used_ips:
            raise _error(where, obj, ("spec", "clusterIP"),
                         f"Invalid value: {ip!r}: provided IP is already allocated",
                         "pick a free address or leave clusterIP out")
    elif not ip:
        ip = next((str(a) for a in cidr.hosts() if str(a) not in used_ips), "")
        if not ip:
            raise _error(where, obj, ("spec", "clusterIP"), f"range {cidr} is full", "delete unused Services")
    spec["clusterIP"] = ip
    spec["clusterIPs"] = [ip]

    # nodePorts (and the health-check port of Local load balancers).
    if typ in ("NodePort", "LoadBalancer"):
        lo, hi = node_port_range
        old_np = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old_spec.get("ports") or []}
        taken = set(used_ports)
        for i, p in enumerate(spec.get("ports") or []):
            np_ = p.get("nodePort") or old_np.get((p.get("port"), p.get("protocol", "TCP")))
            if np_:
                if not lo <= np_ <= hi:
                    raise _error(where, obj, ("spec", "ports", i, "nodePort"),
                                 f"Invalid value: {np_}: provided port is not in the valid range. "
                                 f"The range of valid ports is {lo}-{hi}", "leave nodePort out to get one allocated")
                if np_ in taken:
                    raise _error(where, obj, ("spec", "ports", i, "nodePort"),
                                 f"Invalid value: {np_}: provided port is already allocated",
                                 "pick a free port or leave nodePort out")
            else:
                np_ = next((n for n in range(lo, hi + 1) if n not in taken), 0)
                if not np_:
                    raise _error(where, obj, ("spec", "ports", i), "node port range is full")
            p["nodePort"] = np_
            taken.add(np_)
        if typ == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
            hc = spec.get("healthCheckNodePort") or old_spec.get("healthCheckNodePort")
            if not hc:
                hc = next(n for n in range(lo, hi + 1) if n not in taken)
            spec["healthCheckNodePort"] = hc
    # A LoadBalancer keeps the ingress its controller assigned.
    if typ == "LoadBalancer" and old and "status" not in obj and old.value.get("status"):
        obj["status"] = old.value["status"]
    return obj
