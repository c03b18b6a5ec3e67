"""The proxier's view of the cluster: service ports, endpoints, node context.

kube-proxy never programs rules from raw API objects. Its ServiceChangeTracker
and EndpointsChangeTracker turn Services and EndpointSlices into
`ServicePortInfo` and `BaseEndpointInfo` values keyed by `ServicePortName`,
and every mode (iptables, IPVS, nftables) reads only those. This module is
that layer for netlab, so every backend shares one parse of the objects:

- `validate_service` / `validate_endpointslice`: reject bad objects the way
  the API server's validation does, with file:line:field errors, and return
  the object as the API server would store it (defaults filled in);
- `service_ports` / `endpoints_for`: objects -> proxier values;
- `ProxyState`: one immutable snapshot (services, endpoints, node context)
  that a backend turns into rules.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netlab.errors import SpecError, SpecErrors
from netlab.spec.source import Document, Path
from proxy.schema import ENDPOINTSLICE, SERVICE, unknown_fields

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # discovery.LabelServiceName
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
DEFAULT_STICKY_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds
MAX_STICKY_SECONDS = 86400  # v1.MaxClientIPServiceAffinitySeconds

# IPVS schedulers: the names kube-proxy's config validation accepts for --ipvs-scheduler
# (validateIPVSSchedulerMethod; "" there means the default, rr), each an ip_vs_<name> module.
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq")
# A Service's own scheduler. kube-proxy has only the node-wide flag; kube-router, the other
# IPVS service proxy, reads this annotation per Service (it knows rr, lc, dh, sh and mh and
# falls back to rr on anything else). netlab takes kube-proxy's names from it and rejects
# the rest with an error, as it does every invalid field.
IPVS_SCHEDULER_ANNOTATION = "kube-router.io/service.scheduler"

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


# -- proxier values ----------------------------------------------------------


@dataclass(frozen=True, order=True)
class ServicePortName:
    """One port of one Service, as kube-proxy's proxy.ServicePortName.

    `str()` is kube-proxy's ServicePortName.String(): "ns/name" plus ":port"
    when the port is named. It feeds the chain-name hashes, so it must match
    byte for byte.
    """

    namespace: str
    name: str
    port: str = ""
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port}" if self.port else "")

    @property
    def service(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class ServicePort:
    """One service port, as kube-proxy's BaseServicePortInfo."""

    name: ServicePortName
    type: str = "ClusterIP"
    cluster_ip: str | None = None  # None: headless (no rules)
    port: int = 0
    target_port: int | str = 0  # informational: endpoints carry the resolved port
    node_port: int = 0
    protocol: str = "TCP"
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_client_ip: bool = False
    sticky_max_age_seconds: int = 0
    external_policy_local: bool = False  # externalTrafficPolicy: Local
    internal_policy_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0
    ipvs_scheduler: str = ""  # IPVS_SCHEDULER_ANNOTATION; "" means the proxy's --ipvs-scheduler

    @property
    def external_traffic(self) -> bool:
        """Has any "external" destination (kube-proxy's ExternallyAccessible)."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_local_endpoints(self) -> bool:
        return self.external_policy_local or self.internal_policy_local


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of one service port, as kube-proxy's BaseEndpointInfo."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    is_local: bool = False  # on this proxy's node

    def __str__(self) -> str:
        # net.JoinHostPort: IPv6 gets brackets.
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class NodeContext:
    """What the proxier knows about its own node (kube-proxy's flags and node info)."""

    node_name: str = ""
    node_ips: tuple[str, ...] = ()
    cluster_cidr: str | None = None  # --cluster-cidr: traffic from outside it is masqueraded
    node_port_addresses: tuple[str, ...] = ()  # --nodeport-addresses; () means all local addresses
    masquerade_bit: int = 14  # --iptables-masquerade-bit: mark 0x4000
    masquerade_all: bool = False


@dataclass(frozen=True)
class ProxyState:
    """One snapshot a backend syncs to: every service port, its endpoints, the node."""

    node: NodeContext = field(default_factory=NodeContext)
    services: Mapping[ServicePortName, ServicePort] = field(default_factory=dict)
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]] = field(default_factory=dict)

    def endpoints_of(self, name: ServicePortName) -> tuple[Endpoint, ...]:
        return tuple(self.endpoints.get(name, ()))

    def changed_from(self, old: "ProxyState | None") -> set[ServicePortName] | None:
        """Service ports whose service or endpoints differ from `old` (None: everything)."""
        if old is None or old.node != self.node:
            return None
        changed: set[ServicePortName] = set()
        for name in set(self.services) | set(old.services):
            if self.services.get(name) != old.services.get(name):
                changed.add(name)
        for name in set(self.endpoints) | set(old.endpoints):
            if tuple(self.endpoints.get(name, ())) != tuple(old.endpoints.get(name, ())):
                changed.add(name)
        return changed


# -- objects -> proxier values ---------------------------------------------------


def service_ports(svc: Mapping[str, Any]) -> list[ServicePort]:
    """The proxier values of one (validated) Service, as kube-proxy's newBaseServiceInfo."""
    meta = svc.get("metadata", {})
    spec = svc.get("spec", {})
    ns, name = meta.get("namespace", "default"), meta["name"]
    typ = spec.get("type", "ClusterIP")
    cluster_ip = spec.get("clusterIP") or None
    if typ == "ExternalName" or cluster_ip in (None, "None"):
        return []  # kube-proxy's ShouldSkipService: headless and ExternalName get no rules
    ingress = tuple(
        i["ip"] for i in (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []) if i.get("ip")
    )
    affinity = spec.get("sessionAffinity") == "ClientIP"
    scheduler = (meta.get("annotations") or {}).get(IPVS_SCHEDULER_ANNOTATION, "")
    timeout = 0
    if affinity:
        timeout = (
            spec.get("sessionAffinityConfig", {}).get("clientIP", {}).get("timeoutSeconds", DEFAULT_STICKY_SECONDS)
        )
    out = []
    for p in spec.get("ports", []):
        proto = p.get("protocol", "TCP")
        out.append(
            ServicePort(
                name=ServicePortName(ns, name, p.get("name", "") or "", proto),
                type=typ,
                cluster_ip=cluster_ip,
                port=int(p["port"]),
                target_port=p.get("targetPort", p["port"]),
                node_port=int(p.get("nodePort") or 0) if typ in ("NodePort", "LoadBalancer") else 0,
                protocol=proto,
                external_ips=tuple(spec.get("externalIPs") or ()),
                load_balancer_ips=ingress if typ == "LoadBalancer" else (),
                load_balancer_source_ranges=tuple(spec.get("loadBalancerSourceRanges") or ()),
                session_affinity_client_ip=affinity,
                sticky_max_age_seconds=int(timeout),
                external_policy_local=(
                    typ in ("NodePort", "LoadBalancer") or bool(spec.get("externalIPs"))
                )
                and spec.get("externalTrafficPolicy") == "Local",
                internal_policy_local=spec.get("internalTrafficPolicy") == "Local",
                # apiservice.NeedsHealthCheck: only LoadBalancers with externalTrafficPolicy Local.
                health_check_node_port=int(spec.get("healthCheckNodePort") or 0)
                if typ == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"
                else 0,
                ipvs_scheduler=scheduler,
            )
        )
    return out


def endpoints_for(
    slices: Iterable[Mapping[str, Any]], node_name: str = ""
) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Endpoints per service port from EndpointSlices, as kube-proxy's EndpointSliceCache.

    A slice belongs to the Service named by its kubernetes.io/service-name
    label; each slice port (name, protocol) is one ServicePortName. The same
    ip:port in two slices is kept once (kube-proxy dedupes by endpoint string).
    """
    out: dict[ServicePortName, dict[str, Endpoint]] = {}
    for s in sorted(slices, key=lambda s: (s["metadata"].get("namespace", "default"), s["metadata"]["name"])):
        meta = s["metadata"]
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc or s.get("addressType", "IPv4") == "FQDN":
            continue
        ns = meta.get("namespace", "default")
        for p in s.get("ports") or []:
            if p.get("port") is None:
                continue
            spn = ServicePortName(ns, svc, p.get("name") or "", p.get("protocol", "TCP"))
            bucket = out.setdefault(spn, {})
            for e in s.get("endpoints") or []:
                cond = e.get("conditions") or {}
                ready = cond.get("ready") is not False  # nil means ready
                serving = cond["serving"] if cond.get("serving") is not None else ready
                terminating = cond.get("terminating") is True
                ip = e["addresses"][0]  # kube-proxy uses only the first address
                ep = Endpoint(
                    ip=ip,
                    port=int(p["port"]),
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    node_name=e.get("nodeName", "") or "",
                    zone=e.get("zone", "") or "",
                    is_local=bool(node_name) and e.get("nodeName") == node_name,
                )
                bucket.setdefault(str(ep), ep)
    return {k: tuple(sorted(v.values(), key=_ep_sort_key)) for k, v in out.items()}


def _ep_sort_key(ep: Endpoint) -> tuple:
    try:
        return (0, int(ipaddress.ip_address(ep.ip)), ep.port)
    except ValueError:
        return (1, ep.ip, ep.port)


def build_state(
    services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]], node: NodeContext
) -> ProxyState:
    """A ProxyState from validated Service and EndpointSlice objects."""
    ports: dict[ServicePortName, ServicePort] = {}
    for svc in services:
        for sp in service_ports(svc):
            ports[sp.name] = sp
    eps = endpoints_for(slices, node.node_name)
    return ProxyState(node=node, services=ports, endpoints={k: v for k, v in eps.items() if k in ports})


# -- validation, as the API server's ValidateService / ValidateEndpointSlice ------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _need(doc: Document, path: Path, ok: bool, message: str, hint: str = "") -> None:
    if not ok:
        raise doc.error(path, message, hint)


def _get(doc: Document, path: Path, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
    """Value at `path`, type-checked; a missing optional field gives `default`."""
    cur: Any = doc.data
    for p in path:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and p < len(cur):
            cur = cur[p]
        else:
            if required:
                raise doc.error(path, "Required value", f"set {path[-1]}")
            return default
    if cur is None and not required:
        return default
    if kind is int and isinstance(cur, bool) or not isinstance(cur, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise doc.error(path, f"expected {_kind_word(names)}, got {type(cur).__name__} {cur!r}")
    return cur


def _kind_word(names: str) -> str:
    return {"str": "a string", "int": "an integer", "dict": "a mapping", "list": "a list", "bool": "true or false"}.get(
        names, names.replace("str", "a string").replace("int", "an integer")
    )


def check_ipvs_scheduler(name: str) -> str:
    """`name` if it is an IPVS scheduler kube-proxy accepts, else ValueError saying which ones are."""
    if name not in IPVS_SCHEDULERS:
        raise ValueError(f"unknown IPVS scheduler {name!r}: use one of {', '.join(IPVS_SCHEDULERS)}")
    return name


def _check_header(doc: Document, api_version: str, kind: str) -> tuple[str, str]:
    _need(doc, (), isinstance(doc.data, dict), f"expected a {kind} object (a mapping)")
    av = _get(doc, ("apiVersion",), str, required=True)
    _need(doc, ("apiVersion",), av == api_version, f"unsupported apiVersion {av!r} for {kind}", f"use {api_version}")
    k = _get(doc, ("kind",), str, required=True)
    _need(doc, ("kind",), k == kind, f"expected kind {kind}, got {k!r}")
    _get(doc, ("metadata",), dict, required=True)
    name = _get(doc, ("metadata", "name"), str, required=True)
    ns = _get(doc, ("metadata", "namespace"), str, default="default")
    _need(
        doc,
        ("metadata", "namespace"),
        len(ns) <= 63 and bool(_DNS1123_LABEL.match(ns)),
        f"invalid namespace {ns!r}: a lowercase RFC 1123 label must consist of lower case alphanumeric "
        "characters or '-', and must start and end with an alphanumeric character",
        "e.g. 'default' or 'my-team'",
    )
    labels = _get(doc, ("metadata", "labels"), dict, default={})
    for k2, v in labels.items():
        _need(doc, ("metadata", "labels", k2), isinstance(v, str), f"label value must be a string, got {v!r}",
              "quote it in YAML")
        _check_label(doc, ("metadata", "labels", k2), k2, v)
    for k2, v in _get(doc, ("metadata", "annotations"), dict, default={}).items():
        _need(doc, ("metadata", "annotations", k2), isinstance(v, str),
              f"annotation value must be a string, got {v!r}", "quote it in YAML")
    return ns, name


def _check_label(doc: Document, path: Path, key: Any, value: str) -> None:
    key = str(key)
    prefix, _, nm = key.rpartition("/")
    _need(
        doc,
        path,
        len(nm) <= 63 and bool(_LABEL_NAME.match(nm)) and (not prefix or bool(_DNS1123_SUBDOMAIN.match(prefix))),
        f"invalid label key {key!r}",
        "a label key is an optional DNS prefix and '/', then alphanumerics, '-', '_' or '.'",
    )
    _need(
        doc,
        path,
        len(value) <= 63 and bool(_LABEL_VALUE.match(value)),
        f"invalid label value {value!r}",
        "at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
    )


def _check_ip(doc: Document, path: Path, value: Any, what: str = "IP address") -> str:
    _need(doc, path, isinstance(value, str), f"must be a valid {what}, got {value!r}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise doc.error(path, f"must be a valid {what}, got {value!r}", "e.g. 10.96.0.10") from None
    _need(doc, path, str(ip) == value, f"must be a valid {what} in canonical form, got {value!r}", f"use {ip}")
    return value


def _check_port(doc: Document, path: Path, value: Any, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    _need(
        doc,
        path,
        isinstance(value, int) and not isinstance(value, bool) and lo <= value <= 65535,
        f"must be between {lo} and 65535, inclusive, got {value!r}",
    )
    return value


def _check_protocol(doc: Document, path: Path, value: Any) -> str:
    _need(doc, path, value in PROTOCOLS, f"Unsupported value: {value!r}", "supported values: TCP, UDP, SCTP")
    return value


def _port_name_and_protocol(doc: Document, base: Path, seen: set[str]) -> tuple[str, str]:
    """A port's name (a unique DNS label, or "") and protocol (default TCP)."""
    pname = _get(doc, base + ("name",), str, default="")
    if pname:
        _need(doc, base + ("name",), len(pname) <= 63 and bool(_DNS1123_LABEL.match(pname)),
              f"invalid port name {pname!r}", "lowercase alphanumerics and '-', e.g. 'http'")
    _need(doc, base + ("name",), pname not in seen, f"Duplicate value: {pname!r}", "port names must be unique")
    seen.add(pname)
    return pname, _check_protocol(doc, base + ("protocol",), _get(doc, base + ("protocol",), str, default="TCP"))


def _strictly(doc: Document, schema: dict, validate, strict: bool) -> dict:
    """`validate(doc)`, and with `strict` every unknown field an error too (fieldValidation=Strict).

    One problem raises its SpecError; several (unknown fields and the
    validator's first problem) raise SpecErrors, all reported at once.
    """
    unknown = unknown_fields(doc, schema) if strict else []
    try:
        obj = validate(doc)
    except SpecError as e:
        if unknown:
            raise SpecErrors(unknown + [e]) from None
        raise
    if len(unknown) == 1:
        raise unknown[0]
    if unknown:
        raise SpecErrors(unknown)
    return obj


def validate_service(doc: Document, strict: bool = True) -> dict:
    """A v1 Service as the API server would accept it, with its defaults filled in.

    Raises SpecError (file:line: field: message (hint)) for the first problem,
    as `kubectl apply` reports the API server's validation; with `strict`
    (what kubectl asks for) unknown fields are errors too, every one of them
    reported (SpecErrors when there are several problems). clusterIP and
    nodePort values are checked for form here; allocation and range checks are
    admission's (netlab.controllers.admission), as the API server's registry.
    """
    return _strictly(doc, SERVICE, _validate_service, strict)


def _validate_service(doc: Document) -> dict:
    ns, name = _check_header(doc, "v1", "Service")
    _need(
        doc,
        ("metadata", "name"),
        len(name) <= 63 and bool(_DNS1035_LABEL.match(name)),
        f"invalid Service name {name!r}: a DNS-1035 label must consist of lower case alphanumeric characters "
        "or '-', start with an alphabetic character, and end with an alphanumeric character",
        "e.g. 'my-name' or 'abc-123'",
    )
    scheduler = (doc.data["metadata"].get("annotations") or {}).get(IPVS_SCHEDULER_ANNOTATION)
    if scheduler is not None:
        try:
            check_ipvs_scheduler(scheduler)
        except ValueError as e:
            raise doc.error(("metadata", "annotations", IPVS_SCHEDULER_ANNOTATION), str(e),
                            "or drop the annotation for the proxy's --ipvs-scheduler (default rr)") from None
    spec = _get(doc, ("spec",), dict, required=True)
    typ = _get(doc, ("spec", "type"), str, default="ClusterIP")
    _need(doc, ("spec", "type"), typ in SERVICE_TYPES, f"Unsupported value: {typ!r}",
          "supported values: ClusterIP, NodePort, LoadBalancer, ExternalName")

    cluster_ip = _get(doc, ("spec", "clusterIP"), str, default="")
    if cluster_ip not in ("", "None"):
        _check_ip(doc, ("spec", "clusterIP"), cluster_ip)
    headless = cluster_ip == "None"
    _need(doc, ("spec", "clusterIP"), not (headless and typ in ("NodePort", "LoadBalancer")),
          f"may not be set to 'None' for {typ} services", "use type ClusterIP for a headless service")
    cluster_ips = _get(doc, ("spec", "clusterIPs"), list, default=[])
    for i, ip in enumerate(cluster_ips):
        if ip != "None":
            _check_ip(doc, ("spec", "clusterIPs", i), ip)
    if cluster_ips and cluster_ip:
        _need(doc, ("spec", "clusterIPs", 0), cluster_ips[0] == cluster_ip,
              "must match spec.clusterIP", "set clusterIPs[0] to the clusterIP, or drop clusterIPs")

    selector = _get(doc, ("spec", "selector"), dict, default={})
    for k, v in selector.items():
        _need(doc, ("spec", "selector", k), isinstance(v, str), f"selector value must be a string, got {v!r}",
              "quote it in YAML")
        _check_label(doc, ("spec", "selector", k), k, v)

    ports = _get(doc, ("spec", "ports"), list, default=[])
    if typ != "ExternalName" and not headless:
        _need(doc, ("spec", "ports"), bool(ports), "Required value", "a Service needs at least one port")
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    out_ports = []
    for i, p in enumerate(ports):
        base: Path = ("spec", "ports", i)
        _need(doc, base, isinstance(p, dict), "expected a mapping with port, protocol, targetPort")
        pname, proto = _port_name_and_protocol(doc, base, seen_names)
        if len(ports) > 1:
            _need(doc, base + ("name",), bool(pname), "Required value",
                  "every port of a multi-port Service needs a name")
        port = _check_port(doc, base + ("port",), _get(doc, base + ("port",), int, required=True))
        _need(doc, base, (port, proto) not in seen_ports, f"Duplicate value: port {port}/{proto}",
              "each port and protocol may appear once")
        seen_ports.add((port, proto))
        tp = _get(doc, base + ("targetPort",), (int, str), default=port)
        if isinstance(tp, int) and not isinstance(tp, bool):
            _check_port(doc, base + ("targetPort",), tp)
        else:
            _need(doc, base + ("targetPort",), isinstance(tp, str) and 0 < len(tp) <= 15
                  and bool(_IANA_SVC_NAME.match(tp)) and any(c.isalpha() for c in tp) and "--" not in tp,
                  f"invalid targetPort {tp!r}", "a number 1-65535 or a container port name such as 'http'")
        np_ = _get(doc, base + ("nodePort",), int, default=0)
        if np_:
            _need(doc, base + ("nodePort",), typ in ("NodePort", "LoadBalancer"),
                  f"may not be used when `type` is '{typ}'", "use type NodePort or LoadBalancer, or drop nodePort")
            _check_port(doc, base + ("nodePort",), np_)
        q = dict(p)
        q["protocol"] = proto
        q["targetPort"] = tp
        if pname:
            q["name"] = pname
        out_ports.append(q)

    affinity = _get(doc, ("spec", "sessionAffinity"), str, default="None")
    _need(doc, ("spec", "sessionAffinity"), affinity in ("None", "ClientIP"), f"Unsupported value: {affinity!r}",
          "supported values: None, ClientIP")
    timeout = _get(doc, ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"), int, default=None)
    if timeout is not None:
        _need(doc, ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"),
              affinity == "ClientIP", "must not be set when sessionAffinity is None",
              "set sessionAffinity: ClientIP or drop sessionAffinityConfig")
        _need(doc, ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"),
              0 < timeout <= MAX_STICKY_SECONDS, f"must be in the range 0 < timeoutSeconds <= {MAX_STICKY_SECONDS}")

    etp = _get(doc, ("spec", "externalTrafficPolicy"), str, default=None)
    external = typ in ("NodePort", "LoadBalancer")
    if etp is not None:
        _need(doc, ("spec", "externalTrafficPolicy"), etp in ("Cluster", "Local"), f"Unsupported value: {etp!r}",
              "supported values: Cluster, Local")
        _need(doc, ("spec", "externalTrafficPolicy"), external or bool(spec.get("externalIPs")),
              f"may only be set for externally-accessible services, not type {typ}",
              "use type NodePort or LoadBalancer, or drop externalTrafficPolicy")
    itp = _get(doc, ("spec", "internalTrafficPolicy"), str, default="Cluster")
    _need(doc, ("spec", "internalTrafficPolicy"), itp in ("Cluster", "Local"), f"Unsupported value: {itp!r}",
          "supported values: Cluster, Local")
    for i, ip in enumerate(_get(doc, ("spec", "externalIPs"), list, default=[])):
        _check_ip(doc, ("spec", "externalIPs", i), ip)
    for i, cidr in enumerate(_get(doc, ("spec", "loadBalancerSourceRanges"), list, default=[])):
        path = ("spec", "loadBalancerSourceRanges", i)
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (ValueError, TypeError):
            raise doc.error(path, f"must be a CIDR, got {cidr!r}", "e.g. 192.0.2.0/24") from None
    hc = _get(doc, ("spec", "healthCheckNodePort"), int, default=0)
    if hc:
        _check_port(doc, ("spec", "healthCheckNodePort"), hc)
    for i, ing in enumerate(_get(doc, ("status", "loadBalancer", "ingress"), list, default=[])):
        if isinstance(ing, dict) and "ip" in ing:
            _check_ip(doc, ("status", "loadBalancer", "ingress", i, "ip"), ing["ip"])

    obj = copy.deepcopy(doc.data)
    obj["metadata"]["namespace"] = ns
    s = obj["spec"]
    s["type"] = typ
    if typ != "ExternalName":
        s["ports"] = out_ports
    s["sessionAffinity"] = affinity
    if affinity == "ClientIP":
        s.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {}).setdefault(
            "timeoutSeconds", DEFAULT_STICKY_SECONDS)
    s["internalTrafficPolicy"] = itp
    if external:
        s["externalTrafficPolicy"] = etp or "Cluster"
    if cluster_ip:
        s["clusterIP"] = cluster_ip
        s.setdefault("clusterIPs", [cluster_ip])
    return obj


def validate_endpointslice(doc: Document, strict: bool = True) -> dict:
    """A discovery.k8s.io/v1 EndpointSlice as the API server would accept it (`strict`: as validate_service)."""
    return _strictly(doc, ENDPOINTSLICE, _validate_endpointslice, strict)


def _validate_endpointslice(doc: Document) -> dict:
    ns, name = _check_header(doc, "discovery.k8s.io/v1", "EndpointSlice")
    _need(doc, ("metadata", "name"), len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name)),
          f"invalid EndpointSlice name {name!r}: a lowercase RFC 1123 subdomain must consist of lower case "
          "alphanumeric characters, '-' or '.'", "e.g. 'web-abc12'")
    at = _get(doc, ("addressType",), str, required=True)
    _need(doc, ("addressType",), at in ADDRESS_TYPES, f"Unsupported value: {at!r}",
          "supported values: IPv4, IPv6, FQDN")
    endpoints = _get(doc, ("endpoints",), list, default=[])
    out_eps = []
    for i, e in enumerate(endpoints):
        base: Path = ("endpoints", i)
        _need(doc, base, isinstance(e, dict), "expected a mapping with addresses and conditions")
        addrs = _get(doc, base + ("addresses",), list, required=True)
        _need(doc, base + ("addresses",), 1 <= len(addrs) <= 100, "must contain at least 1 and at most 100 addresses")
        for j, a in enumerate(addrs):
            path = base + ("addresses", j)
            if at == "FQDN":
                _need(doc, path, isinstance(a, str) and bool(_DNS1123_SUBDOMAIN.match(a)), f"invalid FQDN {a!r}")
                continue
            _check_ip(doc, path, a, f"{at} address")
            v = ipaddress.ip_address(a)
            _need(doc, path, (v.version == 4) == (at == "IPv4"), f"must be an {at} address, got {a!r}",
                  "match addressType")
        for c in ("ready", "serving", "terminating"):
            _get(doc, base + ("conditions", c), bool, default=None)
        node = _get(doc, base + ("nodeName",), str, default="")
        if node:
            _need(doc, base + ("nodeName",), bool(_DNS1123_SUBDOMAIN.match(node)), f"invalid nodeName {node!r}")
        _get(doc, base + ("zone",), str, default="")
        out_eps.append(e)
    ports = _get(doc, ("ports",), list, default=[])
    seen: set[str] = set()
    out_ports = []
    for i, p in enumerate(ports):
        base = ("ports", i)
        _need(doc, base, isinstance(p, dict), "expected a mapping with name, port, protocol")
        pname, proto = _port_name_and_protocol(doc, base, seen)
        port = _get(doc, base + ("port",), int, default=None)
        if port is not None:
            _check_port(doc, base + ("port",), port)
        out_ports.append({**p, "name": pname, "protocol": proto})
    obj = copy.deepcopy(doc.data)
    obj["metadata"]["namespace"] = ns
    obj["ports"] = out_ports
    obj["endpoints"] = copy.deepcopy(out_eps)
    return obj


def load_objects(docs: Iterable[Document]) -> tuple[list[dict], list[dict]]:
    """Validated Services and EndpointSlices from documents (other kinds are skipped)."""
    services, slices = [], []
    for d in docs:
        if d.kind == "Service":
            services.append(validate_service(d))
        elif d.kind == "EndpointSlice":
            slices.append(validate_endpointslice(d))
    return services, slices


__all__ = [
    "IPVS_SCHEDULERS",
    "IPVS_SCHEDULER_ANNOTATION",
    "Endpoint",
    "NodeContext",
    "ProxyState",
    "ServicePort",
    "ServicePortName",
    "SpecError",
    "build_state",
    "check_ipvs_scheduler",
    "endpoints_for",
    "load_objects",
    "service_ports",
    "validate_endpointslice",
    "validate_service",
]
