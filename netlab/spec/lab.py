"""The Lab and Pod documents: model, defaults and validation.

Everything a user can get wrong is caught here, before any kernel object
exists, with one message per problem naming file, line, field and fix.
The Lab's ``podNetwork`` takes flannel's net-conf.json keys verbatim, so a
kube-flannel ConfigMap's net-conf.json can be pasted in; it is validated by
the overlay's own parser (cni.overlay.netconf), the one flanneld's role uses,
with netlab's defaults (Network 10.244.0.0/16, Backend vxlan) filled in.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from cni.overlay.netconf import NetConf
from cni.overlay.netconf import parse as parse_net_conf
from netlab import names
from netlab.errors import SpecError, SpecErrors, closest
from netlab.spec.source import Document, Path

LAB_API_VERSION = "netlab/v1alpha1"
PROXY_MODES = ("iptables", "ipvs", "nftables", "userspace")
IPTABLES_BACKENDS = ("nft", "legacy")  # kube-proxy's and flanneld's iptables binaries in every node
RESTART_POLICIES = ("Always", "OnFailure", "Never")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# Netns names are file names under /run/netns.
_NAME_MAX = 255
# Lab names appear in every netns name and in /run/netlab/<lab>; keep them short.
LAB_NAME_MAX = 32


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientSpec:
    """An external client: a namespace on the underlay, outside the cluster."""

    name: str


STORE_TYPES = ("embedded", "etcd")
ETCD_CLIENT_PORT = 2379  # etcd's client port, as the IANA assigned it


@dataclass(frozen=True)
class StoreSpec:
    """Where the lab's cluster state lives (spec.store).

    ``embedded`` (the default): SQLite in the lab's state dir. ``etcd``
    without endpoints: netlab runs a real etcd (Debian's etcd-server) in
    the lab's namespace, its data in the state dir, and `down` removes it.
    ``etcd`` with endpoints: an etcd the user runs, reached from the host's
    network namespace, or from namespace `netns` when given.
    """

    type: str = "embedded"
    endpoints: tuple[str, ...] = ()  # host:port each; empty: netlab's own etcd
    netns: str | None = None  # where the endpoints are reached from (a name under /run/netns)
    where: str = ""  # file:line of spec.store, for errors found later (etcd not installed, unreachable)

    @property
    def owned(self) -> bool:
        """netlab starts (and `down` removes) this etcd."""
        return self.type == "etcd" and not self.endpoints

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.endpoints:
            out["endpoints"] = [f"http://{e}" for e in self.endpoints]
        if self.netns:
            out["netns"] = self.netns
        return out


@dataclass(frozen=True)
class LabSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    pod_network: NetConf  # flannel's net-conf.json, as cni.overlay.netconf parses it
    service_cidr: ipaddress.IPv4Network
    underlay_cidr: ipaddress.IPv4Network
    underlay_mtu: int
    proxy_mode: str
    node_port_range: tuple[int, int]
    load_balancer_pool: ipaddress.IPv4Network
    clients: tuple[ClientSpec, ...]
    source: str = ""
    ip_masq: bool = True  # flanneld --ip-masq, as the kube-flannel manifest runs it
    iptables_backend: str = "nft"  # kube-proxy's and flanneld's iptables binaries (nft or legacy)
    ipvs_scheduler: str | None = None  # kube-proxy --ipvs-scheduler (proxyMode ipvs only); None: its default
    store: StoreSpec = field(default_factory=StoreSpec)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form, recorded in the state dir and compared by a second `up`."""
        out = {
            "name": self.name,
            "nodes": [{"name": n.name, "labels": dict(n.labels)} for n in self.nodes],
            "podNetwork": self.pod_network.to_json(),
            "serviceCIDR": str(self.service_cidr),
            "underlayCIDR": str(self.underlay_cidr),
            "underlayMTU": self.underlay_mtu,
            "proxyMode": self.proxy_mode,
            "nodePortRange": f"{self.node_port_range[0]}-{self.node_port_range[1]}",
            "loadBalancerPool": str(self.load_balancer_pool),
            "clients": [{"name": c.name} for c in self.clients],
            "ipMasq": self.ip_masq,
            "iptablesBackend": self.iptables_backend,
        }
        if self.ipvs_scheduler is not None:
            out["ipvsScheduler"] = self.ipvs_scheduler
        if self.store.type != "embedded":  # a lab recorded before spec.store reads the same
            out["store"] = self.store.to_dict()
        return out


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str | None = None
    host_port: int | None = None


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    command: tuple[str, ...] = ()  # empty: the built-in test server (agnhost netexec)
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    node: str | None  # None: the scheduler places it
    labels: dict[str, str]
    containers: tuple[ContainerSpec, ...]
    restart_policy: str = "Always"
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- validation helpers --------------------------------------------------------


class _Checker:
    """Collects every problem of a document instead of stopping at the first."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.errors: list[SpecError] = []

    def fail(self, path: Path, message: str, hint: str = "") -> None:
        self.errors.append(self.doc.error(path, message, hint))

    def mapping(self, path: Path, value: Any, allowed: set[str], what: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {type(value).__name__}", f"write {what} as key: value pairs")
            return {}
        for k in value:
            if k not in allowed:
                near = closest(str(k), allowed)
                hint = f"did you mean {near!r}?" if near else f"allowed: {', '.join(sorted(allowed))}"
                self.fail(path + (str(k),), f"unknown field {k!r} in {what}", hint)
        return value

    def integer(self, path: Path, value: Any, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, not {value!r}", f"use a number from {lo} to {hi}")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"{value} is out of range", f"use a number from {lo} to {hi}")
            return None
        return value

    def string(self, path: Path, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, not {value!r}")
            return None
        return value

    def cidr(self, path: Path, value: Any) -> ipaddress.IPv4Network | None:
        if not isinstance(value, str):
            self.fail(path, f"must be an IPv4 CIDR string like 10.244.0.0/16, not {value!r}")
            return None
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as e:
            hint = ""
            try:
                hint = f"did you mean {ipaddress.IPv4Network(value, strict=False)}?"
            except ValueError:
                hint = "write an IPv4 network like 10.244.0.0/16"
            self.fail(path, f"{value!r} is not a valid IPv4 network: {e}", hint)
            return None
        return net

    def dns_label(self, path: Path, value: Any, what: str, max_len: int = 63) -> str | None:
        if not isinstance(value, str) or not _DNS_LABEL.match(value):
            self.fail(
                path,
                f"{what} {value!r} is not a valid name",
                "use lower-case letters, digits and '-', starting and ending with a letter or digit",
            )
            return None
        if len(value) > max_len:
            self.fail(path, f"{what} {value!r} is {len(value)} characters, more than {max_len}", "shorten it")
            return None
        return value

    def labels(self, path: Path, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, "labels must be a mapping of strings")
            return {}
        out = {}
        for k, v in value.items():
            key = str(k)
            name = key.rsplit("/", 1)[-1]
            if not _LABEL_KEY_NAME.match(name) or len(name) > 63:
                self.fail(path + (key,), f"label key {key!r} is not valid", "use letters, digits, '-', '_', '.'")
            if not isinstance(v, str) or not _LABEL_VALUE.match(v) or len(v) > 63:
                self.fail(path + (key,), f"label value {v!r} is not valid", "quote it as a string of at most 63 characters")
                continue
            out[key] = v
        return out


# --- the Lab -------------------------------------------------------------------

_LAB_TOP = {"apiVersion", "kind", "metadata", "spec"}
_LAB_META = {"name", "labels", "annotations"}
_LAB_SPEC = {
    "nodes",
    "podNetwork",
    "serviceCIDR",
    "underlayCIDR",
    "underlayMTU",
    "proxyMode",
    "nodePortRange",
    "loadBalancerPool",
    "clients",
    "ipMasq",
    "iptablesBackend",
    "ipvsScheduler",
    "store",
}
_NODE = {"name", "labels"}
_STORE = {"type", "endpoints", "netns"}
_CLIENT = {"name"}

DEFAULTS = {
    "nodes": 2,
    "Network": "10.244.0.0/16",
    "serviceCIDR": "10.96.0.0/12",
    "underlayCIDR": "192.168.56.0/24",
    "underlayMTU": 1500,
    "proxyMode": "iptables",
    "nodePortRange": "30000-32767",
    "Backend": "vxlan",
    "ipMasq": True,
    "iptablesBackend": "nft",
}

# Hosts of the underlay: nodes count up from .11 (as a Vagrant lab numbers them),
# external clients count down from just below the load-balancer pool.
NODE_HOST_OFFSET = 10


def parse_lab(doc: Document) -> LabSpec:
    c = _Checker(doc)
    data = c.mapping((), doc.data, _LAB_TOP, "a Lab")
    if data.get("apiVersion") != LAB_API_VERSION:
        c.fail(("apiVersion",), f"must be {LAB_API_VERSION!r}, not {data.get('apiVersion')!r}")
    meta = c.mapping(("metadata",), data.get("metadata"), _LAB_META, "metadata")
    name = c.dns_label(("metadata", "name"), meta.get("name"), "lab name", LAB_NAME_MAX) if "name" in meta else None
    if "name" not in meta:
        c.fail(("metadata",), "the lab needs a name", "add metadata: {name: demo}")
    spec = c.mapping(("spec",), data.get("spec"), _LAB_SPEC, "the Lab spec")

    # Nodes
    nodes: list[NodeSpec] = []
    raw_nodes = spec.get("nodes", DEFAULTS["nodes"])
    if isinstance(raw_nodes, int) and not isinstance(raw_nodes, bool):
        n = c.integer(("spec", "nodes"), raw_nodes, 1, 1000)
        nodes = [NodeSpec(f"node{i + 1}") for i in range(n or 0)]
    elif isinstance(raw_nodes, list):
        if not raw_nodes:
            c.fail(("spec", "nodes"), "a lab needs at least one node")
        for i, item in enumerate(raw_nodes):
            p: Path = ("spec", "nodes", i)
            if isinstance(item, str):
                item = {"name": item}
            m = c.mapping(p, item, _NODE, "a node")
            if "name" not in m:
                c.fail(p, "a node needs a name", "add name: node1")
                continue
            nname = _node_name(c, p + ("name",), m["name"])
            if nname:
                nodes.append(NodeSpec(nname, c.labels(p + ("labels",), m.get("labels"))))
    else:
        c.fail(("spec", "nodes"), f"must be a count or a list of nodes, not {raw_nodes!r}", "write nodes: 2")
    seen: dict[str, int] = {}
    for i, nd in enumerate(nodes):
        if nd.name in seen:
            c.fail(("spec", "nodes", i, "name"), f"duplicate node name {nd.name!r}", "give every node its own name")
        seen[nd.name] = i

    # podNetwork: flannel's net-conf.json, through the overlay's own parser.
    pod_net = _pod_network(c, spec.get("podNetwork"))
    network = pod_net.network if pod_net else None

    service_cidr = c.cidr(("spec", "serviceCIDR"), spec.get("serviceCIDR", DEFAULTS["serviceCIDR"]))
    underlay = c.cidr(("spec", "underlayCIDR"), spec.get("underlayCIDR", DEFAULTS["underlayCIDR"]))
    underlay_mtu = c.integer(("spec", "underlayMTU"), spec.get("underlayMTU", DEFAULTS["underlayMTU"]), 1280, 9000)
    proxy_mode = spec.get("proxyMode", DEFAULTS["proxyMode"])
    if proxy_mode not in PROXY_MODES:
        c.fail(("spec", "proxyMode"), f"unknown proxy mode {proxy_mode!r}", f"use one of: {', '.join(PROXY_MODES)}")

    iptables_backend, ipvs_scheduler = _proxy_options(c, spec, proxy_mode)
    store = _store(c, spec.get("store"))
    ip_masq = spec.get("ipMasq", DEFAULTS["ipMasq"])
    if not isinstance(ip_masq, bool):
        c.fail(("spec", "ipMasq"), f"must be true or false, not {ip_masq!r}",
               "flanneld's --ip-masq: true masquerades pod traffic leaving the pod network")
        ip_masq = True

    npr = spec.get("nodePortRange", DEFAULTS["nodePortRange"])
    node_port_range = (30000, 32767)
    m = re.fullmatch(r"(\d+)-(\d+)", str(npr))
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2)) <= 65535):
        c.fail(("spec", "nodePortRange"), f"{npr!r} is not a port range", "write it as 30000-32767")
    else:
        node_port_range = (int(m.group(1)), int(m.group(2)))

    # External clients
    clients: list[ClientSpec] = []
    raw_clients = spec.get("clients", 0)
    if isinstance(raw_clients, int) and not isinstance(raw_clients, bool):
        k = c.integer(("spec", "clients"), raw_clients, 0, 50)
        clients = [ClientSpec(f"client{i + 1}") for i in range(k or 0)]
    elif isinstance(raw_clients, list):
        for i, item in enumerate(raw_clients):
            if isinstance(item, str):
                item = {"name": item}
            cm = c.mapping(("spec", "clients", i), item, _CLIENT, "a client")
            cname = c.dns_label(("spec", "clients", i, "name"), cm.get("name"), "client name", names.IFNAMSIZ - 4)
            if cname:
                if any(cl.name == cname for cl in clients):
                    c.fail(("spec", "clients", i, "name"), f"duplicate client name {cname!r}")
                clients.append(ClientSpec(cname))
    else:
        c.fail(("spec", "clients"), f"must be a count or a list, not {raw_clients!r}")

    # Load-balancer pool: by default the underlay's last /28, as a MetalLB pool on the node LAN.
    pool = None
    if underlay:
        if "loadBalancerPool" in spec:
            pool = c.cidr(("spec", "loadBalancerPool"), spec["loadBalancerPool"])
            if pool and not pool.subnet_of(underlay):
                c.fail(
                    ("spec", "loadBalancerPool"),
                    f"{pool} is not inside the underlay {underlay}",
                    "load-balancer IPs are announced on the node network; pick a range inside underlayCIDR",
                )
        elif underlay.prefixlen <= 26:
            pool = ipaddress.IPv4Network((int(underlay.broadcast_address) - 15, 28))
        else:
            pool = ipaddress.IPv4Network((int(underlay.broadcast_address), 32))

    # Overlaps between the lab's networks (as kubeadm refuses overlapping pod/service CIDRs).
    nets = [
        (("spec", "podNetwork", "Network"), "podNetwork.Network", network),
        (("spec", "serviceCIDR"), "serviceCIDR", service_cidr),
        (("spec", "underlayCIDR"), "underlayCIDR", underlay),
    ]
    for i, (pa, na, a) in enumerate(nets):
        for pb, nb, b in nets[i + 1:]:
            if a and b and a.overlaps(b):
                c.fail(pb, f"{nb} {b} overlaps {na} {a}", "give each network its own range")

    # Capacity: subnets for the nodes, underlay addresses for nodes and clients.
    if pod_net:
        available = len(pod_net.candidate_subnets())
        if len(nodes) > available:
            c.fail(
                ("spec", "nodes"),
                f"{len(nodes)} nodes need {len(nodes)} pod subnets, but {network} with SubnetLen {pod_net.subnet_len}"
                f" has only {available} between SubnetMin and SubnetMax",
                "use fewer nodes, a larger Network or a longer SubnetLen",
            )
    if underlay and pool:
        first_pool_host = int(pool.network_address) - int(underlay.network_address)
        need = NODE_HOST_OFFSET + len(nodes) + len(clients)
        if need >= first_pool_host:
            c.fail(
                ("spec", "underlayCIDR"),
                f"{underlay} has no room for {len(nodes)} nodes (from .{NODE_HOST_OFFSET + 1}),"
                f" {len(clients)} clients and the load-balancer pool {pool}",
                "use a larger underlayCIDR, e.g. a /24",
            )

    if c.errors:
        raise c.errors[0] if len(c.errors) == 1 else _errors(c.errors)
    assert name and pod_net
    assert service_cidr and underlay and underlay_mtu and pool
    for nd in nodes:
        _check_netns_len(doc, ("spec", "nodes"), names.node_netns(name, nd.name))
    return LabSpec(
        name=name,
        nodes=tuple(nodes),
        pod_network=pod_net,
        service_cidr=service_cidr,
        underlay_cidr=underlay,
        underlay_mtu=underlay_mtu,
        proxy_mode=proxy_mode,
        node_port_range=node_port_range,
        load_balancer_pool=pool,
        clients=tuple(clients),
        source=doc.where(()),
        ip_masq=ip_masq,
        iptables_backend=iptables_backend,
        ipvs_scheduler=ipvs_scheduler,
        store=store,
    )


_HOST = re.compile(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*)$")


def _store(c: _Checker, raw: Any) -> StoreSpec:
    """spec.store: {type: embedded} (default), {type: etcd}, or {type: etcd, endpoints: [...], netns: NAME}."""
    p: Path = ("spec", "store")
    where = c.doc.where(p)
    if raw is None:
        return StoreSpec(where=where)
    if isinstance(raw, str) and raw in STORE_TYPES:
        c.fail(p, f"must be a mapping, not the string {raw!r}", f"write store: {{type: {raw}}}")
        return StoreSpec(where=where)
    m = c.mapping(p, raw, _STORE, "the store")
    kind = m.get("type", "embedded")
    if kind not in STORE_TYPES:
        near = closest(str(kind), set(STORE_TYPES))
        c.fail(p + ("type",), f"unknown store type {kind!r}",
               (f"did you mean {near!r}? " if near else "") + "use embedded (SQLite in the state dir) or etcd")
        kind = "embedded"
    endpoints: list[str] = []
    raw_eps = m.get("endpoints")
    if raw_eps is not None:
        if kind != "etcd":
            c.fail(p + ("endpoints",), "endpoints are for an etcd store", "add type: etcd, or remove endpoints")
        elif isinstance(raw_eps, str) or not isinstance(raw_eps, list) or not raw_eps:
            c.fail(p + ("endpoints",), f"must be a non-empty list of etcd client URLs, not {raw_eps!r}",
                   "write endpoints: [http://192.0.2.10:2379], or leave them out for an etcd netlab runs")
        else:
            for i, ep in enumerate(raw_eps):
                hostport = _endpoint(c, p + ("endpoints", i), ep)
                if hostport in endpoints:
                    c.fail(p + ("endpoints", i), f"endpoint {ep!r} is listed twice", "list each etcd member once")
                elif hostport:
                    endpoints.append(hostport)
    ns = m.get("netns")
    if ns is not None:
        if raw_eps is None:
            c.fail(p + ("netns",), "netns says where a user-run etcd's endpoints are reached from",
                   "give endpoints with it, or remove it (netlab's own etcd runs in the lab's namespace)")
        elif not isinstance(ns, str) or not ns or "/" in ns or ns in (".", ".."):
            c.fail(p + ("netns",), f"{ns!r} is not a network namespace name",
                   "name one under /run/netns, as `ip netns list` shows them")
            ns = None
    return StoreSpec(kind, tuple(endpoints), ns if endpoints else None, where)


def _endpoint(c: _Checker, path: Path, value: Any) -> str | None:
    """An etcd client URL (http://host:port, as etcdctl --endpoints takes it) as host:port."""
    if not isinstance(value, str) or not value:
        c.fail(path, f"must be an etcd client URL like http://192.0.2.10:2379, not {value!r}")
        return None
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    if scheme == "https":
        c.fail(path, f"{value!r}: TLS endpoints are not supported", "serve etcd's client URL over http on the lab's network")
        return None
    if scheme != "http":
        c.fail(path, f"{value!r}: unknown scheme {scheme!r}", "write http://HOST:PORT")
        return None
    rest = rest.rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = rest, str(ETCD_CLIENT_PORT)
    if not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        c.fail(path, f"{value!r} is not an etcd client URL", "write http://HOST:PORT, e.g. http://192.0.2.10:2379")
        return None
    if host[0].isdigit() and host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            c.fail(path, f"{value!r}: {host} is not an IPv4 address", "write http://HOST:PORT")
            return None
    return f"{host}:{int(port)}"


def _pod_network(c: _Checker, raw: Any) -> NetConf | None:
    """podNetwork with netlab's defaults, validated by cni.overlay.netconf; its error gets file:line."""
    p_pn: Path = ("spec", "podNetwork")
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = {"Network": DEFAULTS["Network"], **raw}
        if isinstance(raw.get("Backend", {}), dict):
            raw["Backend"] = {"Type": DEFAULTS["Backend"], **raw.get("Backend", {})}
    try:
        return parse_net_conf(raw, where=c.doc.where(p_pn))
    except SpecError as e:
        c.fail(p_pn + tuple(e.field.split(".")) if e.field else p_pn, e.message, e.hint)
        return None


def _proxy_options(c: _Checker, spec: dict, proxy_mode: str) -> tuple[str, str | None]:
    """iptablesBackend and ipvsScheduler: the node daemons' --iptables and kube-proxy's --ipvs-scheduler."""
    # The proxy's own list, the one its --ipvs-scheduler checks; imported when a Lab is checked
    # (as topology.py imports proxy.model), not with this module.
    from proxy.model import IPVS_SCHEDULERS

    backend = spec.get("iptablesBackend", DEFAULTS["iptablesBackend"])
    if backend not in IPTABLES_BACKENDS:
        c.fail(("spec", "iptablesBackend"), f"unknown iptables backend {backend!r}",
               f"use one of: {', '.join(IPTABLES_BACKENDS)} (Debian 12's iptables is nft)")
        backend = DEFAULTS["iptablesBackend"]
    scheduler = spec.get("ipvsScheduler")
    if scheduler is not None:
        if scheduler not in IPVS_SCHEDULERS:
            c.fail(("spec", "ipvsScheduler"), f"unknown IPVS scheduler {scheduler!r}",
                   f"use one of: {', '.join(IPVS_SCHEDULERS)}")
            scheduler = None
        elif proxy_mode != "ipvs":
            c.fail(("spec", "ipvsScheduler"), f"ipvsScheduler only applies to proxyMode ipvs, not {proxy_mode!r}",
                   "set proxyMode: ipvs or remove ipvsScheduler")
            scheduler = None
    return backend, scheduler


def _node_name(c: _Checker, path: Path, value: Any) -> str | None:
    """A node's name: a DNS label that also names its underlay port, an interface (15 characters)."""
    nname = c.dns_label(path, value, "node name", names.IFNAMSIZ)
    if nname == "ext":
        c.fail(path, "'ext' is reserved for external clients", "pick another node name")
        return None
    return nname


# --- Nodes joining or leaving a running lab ----------------------------------------

_NODE_TOP = {"apiVersion", "kind", "metadata", "spec"}
_NODE_META = {"name", "labels", "annotations"}


def parse_node(doc: Document) -> NodeSpec:
    """A v1 Node for `netlab apply`/`delete` (and `netlab node add`): its name and labels.

    The rest is netlab's to assign, as kubeadm join and the node IPAM
    controller do on a cluster: the InternalIP (the next free underlay
    address from .11) and spec.podCIDR (the lowest free subnet).
    """
    c = _Checker(doc)
    data = c.mapping((), doc.data, _NODE_TOP, "a Node")
    if data.get("apiVersion") != "v1":
        c.fail(("apiVersion",), f"a Node's apiVersion is 'v1', not {data.get('apiVersion')!r}")
    meta = c.mapping(("metadata",), data.get("metadata"), _NODE_META, "metadata")
    name = None
    if "name" not in meta:
        c.fail(("metadata",), "a node needs a name", "add metadata: {name: node3}")
    else:
        name = _node_name(c, ("metadata", "name"), meta["name"])
    labels = c.labels(("metadata", "labels"), meta.get("labels"))
    spec = data.get("spec")
    if spec is not None and not isinstance(spec, dict):
        c.fail(("spec",), f"must be a mapping, not {type(spec).__name__}", "leave spec out")
    for key in spec or {}:
        c.fail(("spec", str(key)), f"spec.{key} cannot be set here",
               "netlab assigns a node's podCIDR and address; give only metadata.name and labels")
    if c.errors:
        raise c.errors[0] if len(c.errors) == 1 else _errors(c.errors)
    assert name
    return NodeSpec(name, labels)


def node_from_args(name: str, labels: tuple[str, ...] | list[str], command: str = "netlab node add") -> NodeSpec:
    """`netlab node add NAME --label k=v`: the same Node, validated the same way (errors name the command)."""
    parsed: dict[str, str] = {}
    for item in labels:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError(command, "--label", f"{item!r} is not key=value", "write --label zone=a")
        if key in parsed:
            raise SpecError(command, "--label", f"label {key!r} is given twice", "give each label once")
        parsed[key] = value
    doc = Document({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": parsed}}, command)
    try:
        return parse_node(doc)
    except SpecError as e:
        raise _arg_error(e) from None
    except SpecErrors as e:
        raise SpecErrors([_arg_error(x) for x in e.errors]) from None


def _arg_error(e: SpecError) -> SpecError:
    """Name the command-line argument instead of the Node field it became."""
    field = e.field.replace("metadata.name", "NAME", 1).replace("metadata.labels.", "--label ", 1)
    return SpecError(e.where, field, e.message, e.hint)


def _errors(errors: list[SpecError]) -> SpecErrors:
    return SpecErrors(errors)


def _check_netns_len(doc: Document, path: Path, netns_name: str) -> None:
    if len(netns_name) > _NAME_MAX:
        raise doc.error(path, f"the namespace name {netns_name[:40]}... would be {len(netns_name)} characters",
                        f"keep lab, node, namespace and pod names together under {_NAME_MAX}")


# --- Pods ----------------------------------------------------------------------

_POD_TOP = {"apiVersion", "kind", "metadata", "spec", "status"}
_POD_META = {"name", "namespace", "labels", "annotations", "generateName", "uid"}
_POD_SPEC = {
    "nodeName",
    "containers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "nodeSelector",
    "hostname",
    "subdomain",
    "dnsPolicy",
    "initContainers",
}
_CONTAINER = {
    "name",
    "image",
    "command",
    "args",
    "ports",
    "env",
    "imagePullPolicy",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "workingDir",
}
_PORT = {"containerPort", "protocol", "name", "hostPort", "hostIP"}
_ENV = {"name", "value"}


def parse_pod(doc: Document) -> PodSpec:
    c = _Checker(doc)
    data = c.mapping((), doc.data, _POD_TOP, "a Pod")
    if data.get("apiVersion") != "v1":
        c.fail(("apiVersion",), f"a Pod's apiVersion is 'v1', not {data.get('apiVersion')!r}")
    meta = c.mapping(("metadata",), data.get("metadata"), _POD_META, "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        c.fail(("metadata", "name"), f"pod name {name!r} is not valid",
               "use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
        name = None
    namespace = c.dns_label(("metadata", "namespace"), meta.get("namespace", "default"), "namespace")
    labels = c.labels(("metadata", "labels"), meta.get("labels"))
    spec = c.mapping(("spec",), data.get("spec"), _POD_SPEC, "the Pod spec")
    node = spec.get("nodeName")
    if node is not None:
        node = c.dns_label(("spec", "nodeName"), node, "node name", names.IFNAMSIZ)
    if spec.get("initContainers"):
        c.fail(("spec", "initContainers"), "init containers are not supported", "remove them")
    restart = spec.get("restartPolicy", "Always")
    if restart not in RESTART_POLICIES:
        c.fail(("spec", "restartPolicy"), f"unknown restartPolicy {restart!r}", f"use one of: {', '.join(RESTART_POLICIES)}")

    containers: list[ContainerSpec] = []
    raw = spec.get("containers")
    if raw is None:
        raw = [{"name": "netexec"}]  # a bare Pod runs the built-in server
    if not isinstance(raw, list) or not raw:
        c.fail(("spec", "containers"), "must be a non-empty list of containers", "add containers: [{name: app}]")
        raw = []
    cnames: set[str] = set()
    ports_seen: dict[tuple[int, str], Path] = {}
    for i, item in enumerate(raw):
        p: Path = ("spec", "containers", i)
        cm = c.mapping(p, item, _CONTAINER, "a container")
        cname = c.dns_label(p + ("name",), cm.get("name"), "container name") if "name" in cm else None
        if "name" not in cm:
            c.fail(p, "a container needs a name", "add name: app")
        if cname in cnames:
            c.fail(p + ("name",), f"duplicate container name {cname!r}")
        cnames.add(cname or "")
        cmd = _str_list(c, p + ("command",), cm.get("command"))
        args = _str_list(c, p + ("args",), cm.get("args"))
        env: list[tuple[str, str]] = []
        for j, e in enumerate(cm.get("env") or []):
            em = c.mapping(p + ("env", j), e, _ENV, "an env var")
            if isinstance(em.get("name"), str) and em["name"]:
                env.append((em["name"], str(em.get("value", ""))))
            else:
                c.fail(p + ("env", j, "name"), "an env var needs a name")
        ports: list[ContainerPort] = []
        for j, pt in enumerate(cm.get("ports") or []):
            pp = p + ("ports", j)
            pm = c.mapping(pp, pt, _PORT, "a container port")
            cp = c.integer(pp + ("containerPort",), pm.get("containerPort"), 1, 65535)
            proto = pm.get("protocol", "TCP")
            if proto not in ("TCP", "UDP", "SCTP"):
                c.fail(pp + ("protocol",), f"unknown protocol {proto!r}", "use TCP, UDP or SCTP")
            hp = c.integer(pp + ("hostPort",), pm["hostPort"], 1, 65535) if "hostPort" in pm else None
            if cp:
                if (cp, proto) in ports_seen:
                    c.fail(pp + ("containerPort",), f"port {cp}/{proto} is declared twice in this pod")
                ports_seen[(cp, proto)] = pp
                ports.append(ContainerPort(cp, proto, pm.get("name"), hp))
        if cname:
            containers.append(ContainerSpec(cname, tuple(cmd), tuple(args), tuple(env), tuple(ports)))

    if c.errors:
        raise c.errors[0] if len(c.errors) == 1 else _errors(c.errors)
    assert name and namespace
    return PodSpec(namespace, name, node, labels, tuple(containers), restart, doc.where(()))


def _str_list(c: _Checker, path: Path, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        c.fail(path, "must be a list of strings", "write it as a list: " + str(value.split()).replace("'", '"'))
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        c.fail(path, "must be a list of strings")
        return []
    return [str(v) for v in value]
