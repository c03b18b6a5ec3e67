"""A lab's life: up, apply, delete, down, cleanup, status.

The CLI is a thin shell over these functions, and so are the tests and the
benchmark. The order of `up` follows the principles: validate everything
(no kernel object yet), plan purely, take the lab's lock, record the lab in
its state dir before creating anything (so `down` can undo a crashed
`up`), make the kernel match, write the desired objects to the store, start
the daemons, and wait for the pods and for every node to be ready.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cni.netlink import RT_TABLE_MAIN
from netlab import daemons, fabric, names, netns, statedir
from netlab.errors import LabBusy, NetlabError, NeedsRoot, SpecError, SpecErrors
from netlab.plan import LabFull, LabPlan, NodePlan, plan_lab
from netlab.spec.lab import ETCD_CLIENT_PORT, LabSpec, NodeSpec
from netlab.spec.topology import ApiObject, check_pods_fit, load_topology, parse_objects, pod_object, schedule
from netlab.spec.source import Document, load_files
from netlab.store import (ENDPOINTSLICES, FLANNEL_CONFIG, FLANNEL_SUBNETS, LABS, NODES, PODS, SERVICES, Compacted, Store,
                          object_key, open_store)

LAB_FILE = "lab.json"
LABD = "labd"
ETCD = "etcd"  # the lab's own etcd, when spec.store is {type: etcd} without endpoints
# How long netlab's own etcd may take to answer after it is started.
ETCD_START_TIMEOUT = 30.0

Progress = Callable[[str, int, int], None]  # (what, done, total)


def require_root() -> None:
    if os.geteuid() != 0:
        raise NeedsRoot("netlab needs root to create network namespaces: run it with sudo")


def lab_file(lab: str) -> str:
    return os.path.join(names.lab_dir(lab), LAB_FILE)


def list_labs() -> list[str]:
    """Labs with a state dir or any namespace on this machine."""
    found = set()
    if os.path.isdir(names.RUN_DIR):
        found.update(d for d in os.listdir(names.RUN_DIR) if os.path.isdir(os.path.join(names.RUN_DIR, d)))
    found.update(filter(None, (names.lab_of_netns(n) for n in netns.list_names())))
    return sorted(found)


def resolve_lab(name: str | None) -> str:
    """The lab a command means: the named one, or the only one there is."""
    labs = list_labs()
    if name:
        if name not in labs:
            raise NetlabError(f"no lab named {name!r}" + (f" (labs here: {', '.join(labs)})" if labs else " (no labs are up)"))
        return name
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise NetlabError("no lab is up: start one with `netlab up -f LAB.yaml`")
    raise NetlabError(f"several labs are up ({', '.join(labs)}): name one")


@contextlib.contextmanager
def lab_lock(lab: str, create: bool = False) -> Iterator[None]:
    """The lab's lock: a concurrent `up`/`down` of the same lab is refused, not queued.

    `create` (up): the lab's dir is made first, in memory (netlab.statedir).
    """
    if create:
        statedir.make(lab)
    os.makedirs(names.lab_dir(lab), exist_ok=True)
    fd = os.open(os.path.join(names.lab_dir(lab), "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabBusy(f"lab {lab!r} is busy: another netlab command is changing it; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def store_url(record: dict | None, lab: str) -> str:
    """The URL netlab's commands open the lab's store with, as `up` recorded it (embedded before spec.store)."""
    return ((record or {}).get("store") or {}).get("url") or f"sqlite://{names.store_path(lab)}"


def store_for(lab: str) -> Store:
    """The lab's store (embedded, netlab's own etcd or the user's), as recorded in its state dir."""
    return open_store(store_url(read_lab(lab), lab))


def store_record(plan: LabPlan, keep_config: bool = False) -> dict:
    """What lab.json says about the store: its URLs and who owns what in it."""
    spec = plan.lab.store
    out = {"type": spec.type, "url": plan.store_url, "daemonUrl": plan.daemon_store_url, "managed": spec.owned}
    if spec.owned:
        out["dataDir"] = etcd_dir(plan.lab.name)
    if spec.endpoints:
        # /coreos.com/network/config was there before the lab (the user's): `down` leaves it.
        out["keepConfig"] = keep_config
    return out


def etcd_dir(lab: str) -> str:
    """netlab's own etcd's data (and nothing else): under the lab's state dir, gone with it."""
    return os.path.join(names.lab_dir(lab), "etcd")


def read_lab(lab: str) -> dict | None:
    try:
        with open(lab_file(lab)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def require_record(lab: str) -> dict:
    record = read_lab(lab)
    if record is None:
        raise NetlabError(f"lab {lab!r} has no state (an interrupted up?): run `netlab down {lab}` and up again")
    return record


def write_record(lab: str, record: dict) -> None:
    _write_if_changed(lab_file(lab), json.dumps(record, indent=2))


def members(record: dict) -> list[dict]:
    """The running lab's nodes, each with its slot (see netlab.plan).

    `record["nodes"]` since nodes can join and leave a running lab; a lab
    recorded before that has exactly its file's nodes, in order.
    """
    if "nodes" in record:
        return record["nodes"]
    return [{"name": n["name"], "labels": n.get("labels", {}), "slot": i} for i, n in enumerate(record["spec"]["nodes"])]


def membership(plan: LabPlan) -> list[dict]:
    return [{"name": n.name, "labels": dict(n.labels), "slot": n.slot} for n in plan.nodes]


def plan_from_record(record: dict) -> LabPlan:
    """Re-derive the plan of a running lab from its recorded spec and nodes (the plan is pure)."""
    from netlab.spec.lab import parse_lab
    from netlab.spec.source import load_text

    doc_text = json.dumps({"apiVersion": "netlab/v1alpha1", "kind": "Lab", "metadata": {"name": record["spec"]["name"]},
                           "spec": {k: v for k, v in record["spec"].items() if k != "name"}})
    lab = parse_lab(load_text(doc_text, lab_file(record["spec"]["name"]))[0])
    nodes = members(record)
    lab = dataclasses.replace(lab, nodes=tuple(NodeSpec(m["name"], dict(m.get("labels") or {})) for m in nodes))
    return plan_lab(lab, {m["name"]: m["slot"] for m in nodes})


# --- node-level daemons (flanneld's and kube-proxy's roles) ------------------------


def node_daemons(plan: LabPlan, node) -> list[tuple[str, list[str]]]:
    """The per-node daemons `up` starts inside each node's namespace, as a DaemonSet would.

    Each entry is (daemon name, argv); the process gets NETLAB_LAB=<lab>.
    """
    spec = plan.lab
    lab = spec.name
    store = plan.daemon_store_url
    proxy_flags = ["--iptables", spec.iptables_backend]
    if spec.proxy_mode == "ipvs" and spec.ipvs_scheduler:
        proxy_flags += ["--ipvs-scheduler", spec.ipvs_scheduler]
    return [
        # flanneld's role: lease the node's subnet, program flannel.1 / host-gw routes, and
        # its iptables chains (FLANNEL-POSTRTG with --ip-masq, FLANNEL-FWD).
        ("flanneld", daemons.python_argv("cni.overlay", "--store", store, "--node", node.name,
                                         "--subnet-file", names.subnet_env_path(lab, node.name),
                                         "--iface", names.NODE_UPLINK, "--node-ip", str(node.ip),
                                         "--ip-masq" if spec.ip_masq else "--no-ip-masq",
                                         "--iptables", spec.iptables_backend)),
        # kube-proxy's role: Services and EndpointSlices to rules in the node's namespace.
        ("kube-proxy", daemons.python_argv("proxy", "--store", store, "--node", node.name, "--node-ip", str(node.ip),
                                           "--cluster-cidr", str(spec.pod_network.network),
                                           "--service-cluster-ip-range", str(spec.service_cidr),
                                           "--mode", spec.proxy_mode, *proxy_flags)),
    ]


# --- up --------------------------------------------------------------------------


@dataclass
class UpResult:
    lab: str
    created: bool
    changes: list[str] = field(default_factory=list)
    pods: int = 0
    seconds: float = 0.0


def _node_files(plan: LabPlan, node) -> list[str]:
    """subnet.env and the CNI config of a node, as flanneld and kube-flannel's install-cni write them."""
    from cni import subnet_env

    made = []
    env_path = names.subnet_env_path(plan.lab.name, node.name)
    text = subnet_env.render(plan.lab.pod_network.network, node.pod_cidr, plan.pod_mtu, plan.lab.ip_masq)
    if _write_if_changed(env_path, text):
        made.append(f"{node.name}: {env_path}")
    conf = {
        "cniVersion": "1.1.0",
        "name": "cbr0",
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": env_path,
                "dataDir": os.path.join(names.cni_data_dir(plan.lab.name, node.name), "flannel"),
                "delegate": {"hairpinMode": True, "isDefaultGateway": True},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    from netlab.kubelet import CNI_CONF_NAME

    conf_path = os.path.join(names.cni_net_dir(plan.lab.name, node.name), CNI_CONF_NAME)
    if _write_if_changed(conf_path, json.dumps(conf, indent=2) + "\n"):
        made.append(f"{node.name}: {conf_path}")
    return made


def _write_if_changed(path: str, text: str) -> bool:
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def _put_if_changed(store: Store, key: str, value: Any, changes: list[str], what: str) -> None:
    kv = store.get(key)
    if kv is None or kv.value != value:
        store.put(key, value)
        changes.append(what)


def _same_pod(stored: dict, wanted: dict) -> bool:
    return stored.get("spec") == wanted.get("spec") and stored.get("metadata", {}).get("labels") == wanted["metadata"]["labels"]


def sync_pods(store: Store, lab: LabSpec, pods, changes: list[str], prune: bool) -> None:
    """Make the store's Pods match `pods`: create, replace changed ones, prune the rest if asked."""
    existing = {f"{kv.value['metadata']['namespace']}/{kv.value['metadata']['name']}": kv for kv in store.list(PODS)[0]}
    wanted = {}
    writes: dict[str, dict] = {}
    for p in pods:
        obj = pod_object(lab, p)
        wanted[p.key] = obj
        kv = existing.get(p.key)
        if kv is not None and _same_pod(kv.value, obj):
            continue
        if kv is not None:
            store.delete(kv.key)  # a Pod's spec is immutable: replace it, as kubectl replace --force
        obj["metadata"]["uid"] = str(uuid.uuid4())
        writes[object_key("Pod", p.namespace, p.name)] = obj
        changes.append(f"pod {p.key}")
    # One transaction for all of them (a thousand Pods: one commit, and one wake-up for the kubelet).
    store.put_many(writes)
    if prune:
        for key, kv in existing.items():
            if key not in wanted:
                store.delete(kv.key)
                changes.append(f"pod {key} deleted")


def put_objects(store: Store, lab: LabSpec, objects: list[ApiObject], changes: list[str]) -> None:
    """Services and EndpointSlices, admitted as the API server would (ClusterIP, nodePorts)."""
    for o in objects:
        key = object_key(o.kind, o.namespace, o.name)
        body = o.body
        if o.kind == "Service":
            try:
                from netlab.controllers import admit_service
            except ImportError:
                admit_service = None
            if admit_service is not None:
                body = admit_service(store, body, lab, lab.node_port_range, where=o.doc)
        kv = store.get(key)
        if kv is None or kv.value != body:
            store.put(key, body)
            changes.append(f"{o.kind.lower()} {o.namespace}/{o.name}")


def ensure_labd(plan: LabPlan, changes: list[str]) -> None:
    """The lab daemon (every node's kubelet, the controllers), started before the nodes are made.

    Its start-up (imports, the store, reaping a previous kubelet's sandboxes)
    then overlaps with the fabric; it starts a node's pods once that node's
    Node object is stored, which `ensure_node` does last.
    """
    lab = plan.lab.name
    if not daemons.alive(lab, LABD):
        daemons.spawn(lab, LABD, plan.netns,
                      daemons.python_argv("netlab.labd", "--lab", lab, "--store", plan.daemon_store_url))
        changes.append("daemon labd (kubelet, controllers)")


# What the node agents import (pyroute2 above all): loaded once by the zygote that forks them all.
NODE_AGENT_MODULES = ("cni.overlay.agent", "proxy.cli")


def missing_node_daemons(plan: LabPlan, nodes: list[NodePlan]) -> list[tuple[str, str, list[str]]]:
    """(daemon, netns, argv) of each flanneld and kube-proxy of `nodes` that is not running."""
    return [(f"{name}-{node.name}", node.netns, argv) for node in nodes for name, argv in node_daemons(plan, node)
            if not daemons.alive(plan.lab.name, f"{name}-{node.name}")]


def ensure_node_daemons(plan: LabPlan, nodes: list[NodePlan], changes: list[str]) -> None:
    """flanneld and kube-proxy of every node in `nodes` that lacks them, as forks of one zygote."""
    missing = missing_node_daemons(plan, nodes)
    daemons.spawn_many(plan.lab.name, missing, preload=NODE_AGENT_MODULES)
    changes.extend(f"daemon {d}" for d, _ns, _argv in missing)


def ensure_node(plan: LabPlan, node: NodePlan, store: Store, changes: list[str], start_daemons: bool = True) -> None:
    """A node as `up` makes it: fabric, subnet.env and CNI config, Node object, flanneld and kube-proxy.

    The Node object comes after the node's files: the kubelet starts a
    node's pods once it sees its Node, and a sandbox needs the node's CNI
    config (as a real kubelet waits for /etc/cni/net.d before it reports
    the node Ready). `start_daemons=False` leaves flanneld and kube-proxy to the caller.
    """
    ch = fabric.Changes()
    fabric.ensure_node(plan, node, ch)
    changes.extend(ch.made)
    changes.extend(_node_files(plan, node))
    _put_if_changed(store, object_key("Node", None, node.name), plan.node_object(node), changes, f"node {node.name}")
    if start_daemons:
        ensure_node_daemons(plan, [node], changes)


def ensure_etcd(plan: LabPlan, changes: list[str], timeout: float = ETCD_START_TIMEOUT) -> None:
    """netlab's own etcd for the lab: a lab daemon in the lab namespace, its data in the state dir.

    Debian's etcd-server as a single member, listening on the lab namespace's
    loopback and on the underlay's gateway address (the control plane's
    address on the node network). Started like the other lab daemons (marked,
    its PID recorded, ended by PID); a restarted etcd finds its data again.
    """
    from netlab.store_etcd import EtcdError, etcd_argv, etcd_binary, wait_ready

    lab = plan.lab.name
    log_path = os.path.join(daemons.log_dir(lab), f"{ETCD}.log")
    if not daemons.alive(lab, ETCD):
        try:
            binary = etcd_binary()
        except EtcdError as e:
            raise NetlabError(f"{plan.lab.store.where}: spec.store: {e}") from None
        os.makedirs(etcd_dir(lab), exist_ok=True)
        argv = etcd_argv(binary, etcd_dir(lab), ["127.0.0.1", str(plan.gateway)], ETCD_CLIENT_PORT, name=lab)
        daemons.spawn(lab, ETCD, plan.netns, argv)
        changes.append(f"daemon {ETCD} (data {etcd_dir(lab)})")

    def log() -> str:
        try:
            with open(log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    try:
        wait_ready(plan.store_url, timeout, lambda: None if daemons.alive(lab, ETCD) else "early", log)
    except EtcdError as e:
        raise NetlabError(f"lab {lab}: {e} (see {log_path})") from None


def check_store(spec: LabSpec, record: dict | None) -> bool:
    """Before anything is made: the store the spec names can hold this lab. Returns keepConfig.

    netlab's own etcd needs etcd installed. A user's etcd must be reachable
    and hold one lab, as an etcd holds one cluster: no other lab, no
    Kubernetes objects that are not this lab's, no different flannel
    network config, no lease on a subnet this lab's nodes take. A flannel
    config that is already there and the same is the user's: `down` keeps it.
    """
    from netlab.store_etcd import EtcdError, etcd_binary

    store = spec.store
    if store.owned:
        try:
            etcd_binary()
        except EtcdError as e:
            raise SpecError(store.where, "spec.store.type", str(e),
                            "install it, or use store: {type: embedded}") from None
        return False
    if not store.endpoints:
        return False
    if store.netns and not netns.exists(store.netns):
        raise SpecError(store.where, "spec.store.netns", f"there is no network namespace {store.netns!r}",
                        "name one `ip netns list` shows, or leave netns out to reach the endpoints from the host")
    if record is not None:  # the lab is up on this etcd: it checked at its first `up`
        return bool((record.get("store") or {}).get("keepConfig"))
    plan = plan_lab(spec)
    where = ", ".join(f"http://{e}" for e in store.endpoints)
    try:
        with open_store(plan.store_url) as st:
            labs = [kv.key[len(LABS):] for kv in st.list(LABS)[0]]
            others = [name for name in labs if name != spec.name]
            if others:
                raise SpecError(store.where, "spec.store.endpoints", f"etcd at {where} holds lab {others[0]!r}",
                                f"an etcd holds one lab, as it holds one cluster: `netlab down {others[0]}` first,"
                                " or give this lab an etcd of its own")
            if spec.name in labs:  # this lab's keys, from a state dir that is gone (a reboot): netlab's own
                return False
            foreign = [kv.key for p in (PODS, SERVICES, ENDPOINTSLICES, NODES) for kv in st.list(p)[0]]
            if foreign:
                raise SpecError(store.where, "spec.store.endpoints",
                                f"etcd at {where} holds {len(foreign)} Kubernetes object(s) of another cluster"
                                f" ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})",
                                "the lab is the cluster this etcd stores: give it an etcd of its own, or remove them")
            conf = st.get(FLANNEL_CONFIG)
            if conf is not None and conf.value != spec.pod_network.to_json():
                raise SpecError(store.where, "spec.store.endpoints",
                                f"etcd at {where} holds another flannel network at {FLANNEL_CONFIG}:"
                                f" {json.dumps(conf.value, separators=(',', ':'))}",
                                "make podNetwork the same, or delete the key if no flanneld uses it")
            from cni.overlay.lease import parse_leases

            ours = {n.pod_cidr: str(n.ip) for n in plan.nodes}
            for subnet, lease in parse_leases([(kv.key, kv.value) for kv in st.list(FLANNEL_SUBNETS)[0]]).items():
                if subnet in ours and str(lease.public_ip) != ours[subnet]:
                    raise SpecError(store.where, "spec.store.endpoints",
                                    f"etcd at {where}: subnet {subnet} is leased to {lease.public_ip} by another flanneld",
                                    "use another podNetwork (SubnetMin), or an etcd of the lab's own")
            return conf is not None
    except EtcdError as e:
        raise NetlabError(f"{store.where}: spec.store: {e}") from None


# How often `up` looks at the nodes' readiness while it waits for the pods.
NODE_POLL = 0.25


def _every(period: float, fn: Callable[[], object]) -> Callable[[], None]:
    """`fn`, called at most once per `period` seconds (the first call runs it)."""
    last = [-period]

    def call() -> None:
        now = time.monotonic()
        if now - last[0] >= period:
            last[0] = now
            fn()

    return call


def wait_for_pods(store: Store, keys: set[str], timeout: float, progress: Progress | None,
                  also: Callable[[], None] | None = None) -> dict[str, str]:
    """Watch the store until every pod in `keys` left Pending; return phases.

    One list, then the store's events (as `kubectl wait` watches): a poll
    reads only what changed since the last one, not every Pod again. A
    compacted watch lists again. A pod whose sandbox could not be made fails
    the wait at once with the kubelet's message (as `kubectl describe` shows
    FailedCreatePodSandBox). `also` runs once per poll.
    """
    deadline = time.monotonic() + timeout
    statuses: dict[str, dict] = {}
    rev: int | None = None
    while True:
        if rev is None:
            items, rev = store.list(PODS)
            statuses = {k: v for k, v in ((kv.key[len(PODS):], kv.value.get("status", {})) for kv in items) if k in keys}
            changed = set(statuses)
        else:
            try:
                events, rev_now = store.events_since(PODS, rev)
            except Compacted:
                rev = None
                continue
            rev, changed = rev_now, set()
            for ev in events:
                k = ev.key[len(PODS):]
                if k in keys:
                    statuses[k] = (ev.value or {}).get("status", {}) if ev.type == "PUT" else {}
                    changed.add(k)
        broken = sorted(k for k in changed if statuses[k].get("reason") == "FailedCreatePodSandBox")
        if broken:
            raise NetlabError(f"pod {broken[0]}: sandbox failed: {statuses[broken[0]].get('message', '?')}")
        phases = {k: statuses.get(k, {}).get("phase", "Pending") for k in keys}
        ready = sum(1 for ph in phases.values() if ph != "Pending")
        if progress:
            progress("pods", ready, len(keys))
        if ready == len(keys) or time.monotonic() > deadline:
            return phases
        if also is not None:
            also()
        time.sleep(0.05)


def up(paths: list[str], progress: Progress | None = None, timeout: float = 300.0) -> UpResult:
    t0 = time.monotonic()
    topo = load_topology(paths)  # raises SpecError(s): nothing exists yet
    require_root()
    lab = topo.lab.name
    # The store can hold the lab (etcd installed; a user's etcd reachable and not another cluster's):
    # checked before the lab's lock, whose file would be the first thing made.
    keep_config = check_store(topo.lab, read_lab(lab))
    with lab_lock(lab, create=True):
        record = read_lab(lab)
        spec = topo.lab.to_dict()
        created = record is None
        if record is not None and record["spec"] != spec:
            diff = [k for k in {**record["spec"], **spec} if record["spec"].get(k) != spec.get(k)]
            raise NetlabError(
                f"lab {lab!r} is already up with a different {', '.join(diff)}; "
                f"pods and services can change with `netlab apply`, the lab itself cannot: run `netlab down {lab}` first"
            )
        plan = _plan_up(topo.lab, record)
        # Journal first: the state dir names the lab before any kernel object exists.
        write_record(lab, {"spec": spec, "files": [os.path.abspath(p) for p in paths], "nodes": membership(plan),
                           "store": store_record(plan, keep_config)})
        ch = fabric.Changes()
        fabric.ensure_lab_namespace(plan, ch)
        for client in plan.clients:
            fabric.ensure_client(plan, client, ch)
        changes = list(ch.made)
        if topo.lab.store.owned:
            ensure_etcd(plan, changes)
        store = open_store(plan.store_url)
        try:
            _put_if_changed(store, object_key("Lab", None, lab), {"apiVersion": "netlab/v1alpha1", "kind": "Lab",
                                                                  "metadata": {"name": lab}, "spec": spec},
                            changes, "lab object")
            _put_if_changed(store, FLANNEL_CONFIG, topo.lab.pod_network.to_json(), changes, "flannel net-conf")
            # labd first: the kubelet's start-up overlaps with the nodes', and it starts each
            # node's pods as soon as that node and the Pods are stored. The node agents' zygote too:
            # it imports their modules while the nodes are made.
            ensure_labd(plan, changes)
            agents = missing_node_daemons(plan, list(plan.nodes))
            with daemons.Zygote(lab, plan.netns, NODE_AGENT_MODULES, [argv for *_, argv in agents]) as zygote:
                if progress:
                    progress("nodes", 0, len(plan.nodes))
                for i, node in enumerate(plan.nodes):
                    ensure_node(plan, node, store, changes, start_daemons=False)
                    if progress:
                        progress("nodes", i + 1, len(plan.nodes))
                # The agents (flanneld, kube-proxy) before the Pods: sandboxes need neither (subnet.env and
                # the CNI config are written above), and flanneld's first converges see nodes without pods.
                zygote.fork(agents)
                sync_pods(store, topo.lab, topo.pods, changes, prune=True)
                put_objects(store, topo.lab, topo.objects, changes)
                zygote.started()
                changes.extend(f"daemon {d}" for d, _ns, _argv in agents)
            keys = {p.key for p in topo.pods}
            # Every node ready too (its lease held, routes to every peer), as `node add` returns: a pod
            # can reach every other pod once `up` returns. Looked at while the pods start, too.
            readiness = NodeReadiness(plan, list(plan.nodes), store)
            phases = wait_for_pods(store, keys, timeout, progress, also=_every(NODE_POLL, readiness.poll))
            if not [k for k, ph in phases.items() if ph == "Pending"]:
                readiness.wait(max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            store.close()
        stuck = sorted(k for k, ph in phases.items() if ph == "Pending")
        if stuck:
            raise NetlabError(
                f"lab {lab}: {len(stuck)} pod(s) did not start within {timeout:.0f}s: {', '.join(stuck[:5])}"
                f" (see {daemons.log_dir(lab)}/labd.log)"
            )
    return UpResult(lab, created, changes, len(topo.pods), time.monotonic() - t0)


def _plan_up(lab: LabSpec, record: dict | None) -> LabPlan:
    """The plan `up` makes real: the file's nodes, plus those that joined the running lab since.

    Nodes of a running lab keep their slots; a file's node that `node remove`
    took away comes back (the file says it exists), in the lowest free slot.
    """
    if record is None:
        return plan_lab(lab)
    running = members(record)
    have = {m["name"] for m in running}
    nodes = tuple(NodeSpec(m["name"], dict(m.get("labels") or {})) for m in running)
    nodes += tuple(n for n in lab.nodes if n.name not in have)
    return plan_lab(dataclasses.replace(lab, nodes=nodes), {m["name"]: m["slot"] for m in running})


# --- apply / delete on a running lab ------------------------------------------------


def apply(lab_name: str | None, paths: list[str], wait: float = 60.0) -> list[str]:
    """Create or update Nodes, Pods, Services and EndpointSlices in a running lab.

    Everything is validated first (pods may name nodes the same files add);
    then nodes join, as `netlab node add` makes them, and the objects are stored.
    """
    docs = load_files(paths)
    require_root()
    lab = resolve_lab(lab_name)
    pods, objects, errors = parse_objects(docs)
    nodes = [o for o in objects if o.kind == "Node"]
    objects = [o for o in objects if o.kind != "Node"]
    # Nodes change the lab itself: one such change at a time, and never during an `up`.
    with lab_lock(lab) if nodes else contextlib.nullcontext():
        plan = plan_from_record(require_record(lab))
        if nodes:
            try:
                plan = plan_join(plan, [(node_of(o), o.doc) for o in nodes])
            except SpecError as e:
                errors.append(e)
        store = store_for(lab)
        try:
            existing: dict[str, int] = {}
            for kv in store.list(PODS)[0]:
                n = kv.value["spec"].get("nodeName")
                existing[n] = existing.get(n, 0) + 1
            pods = schedule(plan.lab, pods, existing)
            errors.extend(check_pods_fit(plan.lab, pods))
            if errors:
                raise errors[0] if len(errors) == 1 else SpecErrors(errors)
            changes: list[str] = []
            if nodes:
                joined = [plan.node(o.name) for o in nodes]
                made = join(plan, joined, store)
                changes += [f"node {n}" for n, ch in made.items() if ch]
                if wait:
                    wait_nodes_ready(plan, joined, store, NODE_READY_TIMEOUT)
            sync_pods(store, plan.lab, pods, changes, prune=False)
            put_objects(store, plan.lab, objects, changes)
            if pods and wait:
                wait_for_pods(store, {p.key for p in pods}, wait, None)
        finally:
            store.close()
    return changes


DELETABLE = ("Pod", "Service", "EndpointSlice", "Node")


def delete(lab_name: str | None, paths: list[str], force: bool = False) -> list[str]:
    """Delete the objects FILE names; Nodes last, as `netlab node remove` (`force`: with their pods)."""
    docs = load_files(paths)
    targets: list[tuple[str, str | None, str]] = []
    for d in docs:  # validate every document before deleting anything
        meta = d.data.get("metadata", {}) if isinstance(d.data, dict) else {}
        if d.kind not in DELETABLE:
            raise d.error(("kind",), f"cannot delete a {d.kind or 'document without kind'}",
                          f"netlab delete takes {', '.join(DELETABLE[:-1])} and {DELETABLE[-1]} objects")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise d.error(("metadata", "name"), f"a {d.kind} to delete needs a name", "add metadata: {name: ...}")
        ns = None if d.kind == "Node" else meta.get("namespace", "default")
        targets.append((d.kind, ns, meta["name"]))
    require_root()
    lab = resolve_lab(lab_name)
    store = store_for(lab)
    removed = []
    try:
        for kind, ns, name in targets:
            if kind != "Node" and store.delete(object_key(kind, ns, name)):
                removed.append(f"{kind.lower()} {ns}/{name}")
    finally:
        store.close()
    for kind, _ns, name in targets:
        if kind == "Node":
            with lab_lock(lab):
                plan = plan_from_record(require_record(lab))
                if name in plan.slots:  # missing on delete is success
                    res = _remove_node(plan, name, force)
                    removed.append(f"node {name}" + (f" (and {len(res.pods)} pod(s))" if res.pods else ""))
    return removed


# --- nodes joining and leaving a running lab ----------------------------------------

# How long a joining node may take to hold its lease and route to every peer.
NODE_READY_TIMEOUT = 30.0
# How long a leaving node's pods may take to be torn down by the kubelet (CNI DEL) before
# their namespaces are removed regardless.
POD_TEARDOWN_TIMEOUT = 15.0


def node_of(obj: ApiObject) -> NodeSpec:
    return NodeSpec(obj.name, dict(obj.body.get("metadata", {}).get("labels") or {}))


def plan_join(plan: LabPlan, nodes: list[tuple[NodeSpec, Document | str]]) -> LabPlan:
    """The lab's plan with `nodes` in it (pure): new ones take the lowest free slots, known ones new labels.

    A lab without room (pod subnets, underlay addresses) is a SpecError
    naming the Node document or command that asked, before anything is made.
    """
    by_name = {n.name: n for n in plan.lab.nodes}
    for node, _where in nodes:
        by_name[node.name] = node  # joins, or relabels a node that is already there
    lab = dataclasses.replace(plan.lab, nodes=tuple(by_name.values()))
    try:
        return plan_lab(lab, plan.slots)
    except LabFull as e:
        node, where = next((n, w) for n, w in nodes if n.name not in plan.slots)
        hint = "remove a node first, or use a larger podNetwork or underlayCIDR for the lab"
        if isinstance(where, Document):
            raise where.error(("metadata", "name"), str(e), hint) from None
        raise SpecError(where, "NAME", str(e), hint) from None


def join(plan: LabPlan, nodes: list[NodePlan], store: Store) -> dict[str, list[str]]:
    """Make `nodes` of `plan` real: recorded first (so `down` finds a half-made node), then built.

    Returns what changed, per node (nothing for a node that was already right).
    """
    record = require_record(plan.lab.name)
    write_record(plan.lab.name, dict(record, nodes=membership(plan)))
    made: dict[str, list[str]] = {}
    for node in nodes:
        made[node.name] = []
        ensure_node(plan, node, store, made[node.name])
    return made


@dataclass
class NodeResult:
    lab: str
    node: NodePlan
    changes: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)  # pods deleted with a removed node
    created: bool = False  # the node joined (rather than being there already)
    ready_at: float = 0.0  # time.monotonic() when the node held its lease and routed to every peer
    released_at: float = 0.0  # time.monotonic() when a removed node's lease was released
    seconds: float = 0.0


def node_add(lab_name: str | None, name: str, labels: list[str] | tuple[str, ...] = (),
             timeout: float = NODE_READY_TIMEOUT) -> NodeResult:
    """`netlab node add`: a node joins a running lab, as `kubeadm join` and flannel make one.

    It gets the next node address and the lowest free pod subnet, its
    namespace and underlay link, its Node object (/registry/minions), its
    flanneld and kube-proxy; the kubelet then runs pods bound to it.
    Returns once the node holds its lease and routes to every peer (ready);
    peers route to it within a second of its lease. Adding a node that is
    already there changes nothing (or only its labels).
    """
    from netlab.spec.lab import node_from_args

    t0 = time.monotonic()
    spec = node_from_args(name, labels)  # SpecError: nothing made yet
    require_root()
    lab = resolve_lab(lab_name)
    with lab_lock(lab):
        before = plan_from_record(require_record(lab))
        plan = plan_join(before, [(spec, "netlab node add")])
        node = plan.node(name)
        store = store_for(lab)
        try:
            changes = join(plan, [node], store)[name]
            ready_at = wait_nodes_ready(plan, [node], store, timeout)
        finally:
            store.close()
    return NodeResult(lab, node, changes, created=name not in before.slots, ready_at=ready_at,
                      seconds=time.monotonic() - t0)


def wait_nodes_ready(plan: LabPlan, nodes: list[NodePlan], store: Store, timeout: float) -> float:
    """Poll until every node holds its lease and routes to every other lease; returns when (monotonic)."""
    return NodeReadiness(plan, nodes, store).wait(timeout)


class NodeReadiness:
    """Which of `nodes` are ready: each holds its lease and routes to every other lease (flannel's view of Ready).

    Nodes are checked only once every node of the lab holds a lease, so a
    node that passed routes to all of its peers, not only to those that
    leased first. A node that passed is not checked again. `poll` is one
    look (`up` polls while it waits for the pods, so the nodes are known
    ready when the pods are); `wait` polls until all are ready.
    """

    def __init__(self, plan: LabPlan, nodes: list[NodePlan], store: Store) -> None:
        self.plan, self.store = plan, store
        self.pending = list(nodes)
        self.ready_at = time.monotonic()

    def poll(self) -> bool:
        """One look at the pending nodes; True once none is left."""
        from cni.overlay.lease import parse_leases

        if not self.pending:
            return True
        leases = parse_leases([(kv.key, kv.value) for kv in self.store.list(FLANNEL_SUBNETS)[0]])
        if all(n.pod_cidr in leases for n in self.plan.nodes):
            self.pending = [n for n in self.pending if not self._ready(n, leases)]
        if not self.pending:
            self.ready_at = time.monotonic()
            return True
        lab = self.plan.lab.name
        for node in self.pending:
            if not daemons.alive(lab, f"flanneld-{node.name}"):
                raise NetlabError(f"node {node.name}: flanneld exited (see {daemons.log_dir(lab)}/flanneld-{node.name}.log)")
        return False

    def _ready(self, node: NodePlan, leases: dict) -> bool:
        own = leases.get(node.pod_cidr)
        if own is None or str(own.public_ip) != str(node.ip):
            return False
        backend = self.plan.lab.pod_network.backend.type
        peers = {str(s) for s, lease in leases.items() if s != node.pod_cidr and lease.backend_type == backend}
        return peers <= routed_subnets(node.netns)

    def wait(self, timeout: float) -> float:
        """Poll until every node is ready; returns when that was (monotonic)."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                node = self.pending[0].name
                raise NetlabError(f"node {node} was not ready within {timeout:.0f}s: no lease or no routes to its peers"
                                  f" (see {daemons.log_dir(self.plan.lab.name)}/flanneld-{node}.log)")
            time.sleep(0.02)
        return self.ready_at


def routed_subnets(ns: str) -> set[str]:
    """Destinations of the unicast IPv4 routes in the main table of namespace `ns` (one route dump).

    What readiness needs of a node's kernel: a route to each peer's pod
    subnet (via flannel.1 or the peer's address), without the rest of the
    overlay's state (links, neighbours, FDB: a node with a hundred pods has
    a hundred veths to parse).
    """
    with fabric.netlink_in(ns) as nl:
        # Unicast routes lead somewhere (a gateway or a device); unreachable, blackhole and
        # prohibit routes have neither.
        return {r.dst for r in nl.routes(socket.AF_INET)
                if r.table == RT_TABLE_MAIN and not r.dst.endswith("/0") and (r.gw or r.oif)}


def node_remove(lab_name: str | None, name: str, force: bool = False) -> NodeResult:
    """`netlab node remove`: a node leaves a running lab, and every peer forgets it.

    A node that still has pods is refused unless `force`: then its pods are
    deleted with it, as Kubernetes' pod garbage collector deletes the pods
    of a deleted Node (bare pods are not rescheduled elsewhere).
    """
    t0 = time.monotonic()
    require_root()
    lab = resolve_lab(lab_name)
    with lab_lock(lab):
        plan = plan_from_record(require_record(lab))
        if name not in plan.slots:
            raise NetlabError(f"lab {lab} has no node {name!r} (nodes: {', '.join(n.name for n in plan.nodes)})")
        res = _remove_node(plan, name, force)
    res.seconds = time.monotonic() - t0
    return res


def _remove_node(plan: LabPlan, name: str, force: bool) -> NodeResult:
    """Stop the node's agents (by PID), release its lease, delete its pods and Node, remove its namespaces."""
    from cni.overlay.lease import release_node

    lab, node = plan.lab.name, plan.node(name)
    if len(plan.nodes) == 1:
        raise NetlabError(f"node {name} is the last node of lab {lab}: a lab needs one (`netlab down {lab}` removes it all)")
    store = store_for(lab)
    try:
        bound = sorted(kv.key for kv in store.list(PODS)[0] if kv.value.get("spec", {}).get("nodeName") == name)
        pods = [k[len(PODS):] for k in bound]
        if pods and not force:
            raise NetlabError(
                f"node {name} has {len(pods)} pod(s): {', '.join(pods[:5])}{' ...' if len(pods) > 5 else ''}; "
                "delete them first (`netlab delete -f`), or pass --force to delete them with the node"
                " (as Kubernetes' pod garbage collector does)"
            )
        res = NodeResult(lab, node, pods=pods)
        for daemon in ("flanneld", "kube-proxy"):
            daemons.stop(lab, f"{daemon}-{name}")
            res.changes.append(f"daemon {daemon}-{name} stopped")
        res.released_at = time.monotonic()
        res.changes += [f"lease {k} released" for k in release_node(store, str(node.ip))]
        for key in bound:
            store.delete(key)
        store.delete(object_key("Node", None, name))
        res.changes.append(f"node {name} deleted")
    finally:
        store.close()
    # The kubelet tears the pods down (CNI DEL needs the node's namespace and config): wait for it.
    prefix = node.netns + "."
    deadline = time.monotonic() + POD_TEARDOWN_TIMEOUT
    while any(n.startswith(prefix) for n in netns.list_names()) and time.monotonic() < deadline:
        time.sleep(0.02)
    for ns in [n for n in netns.list_names() if n.startswith(prefix)]:
        netns.remove(ns)  # the kubelet did not: remove them regardless
    fabric.remove_node(plan, node)
    shutil.rmtree(names.node_dir(lab, name), ignore_errors=True)
    write_record(lab, dict(require_record(lab), nodes=[m for m in membership(plan) if m["name"] != name]))
    res.changes.append(f"netns {node.netns} removed")
    return res


# --- down / cleanup ----------------------------------------------------------------


def teardown(lab: str) -> list[str]:
    """Remove everything of `lab`: its processes, namespaces (and so links) and state dir.

    Found by name and marker, not by the record alone, so a crashed or
    interrupted `up` is undone as completely as a finished one. What could
    not be removed (a user's etcd that did not answer) is the last entry,
    starting with "kept:".
    """
    removed, kept = _teardown(lab)
    return removed + ([f"kept: {kept}"] if kept else [])


def _teardown(lab: str) -> tuple[list[str], str | None]:
    removed: list[str] = []
    record = read_lab(lab)
    store = (record or {}).get("store") or {}
    # The daemons first, netlab's own etcd last (by its recorded PID), so nothing writes to a store
    # that is going away, and no flanneld renews a lease `down` releases.
    etcd_pid = daemons.recorded_pid(lab, ETCD)
    ended = _end_lab_processes(lab, keep=etcd_pid)
    if etcd_pid is not None:
        daemons.stop(lab, ETCD)
        removed.append(f"etcd (pid {etcd_pid}) and its data")
    if ended:
        removed.append(f"{ended} process(es)")
    kept = None
    if store.get("type") == "etcd" and not store.get("managed") and record is not None:
        try:
            n = remove_lab_keys(record)
            removed.append(f"{n} key(s) in etcd")
        except Exception as e:  # noqa: BLE001 - the machine is cleaned regardless; say what remains
            kept = (f"the lab's keys in the etcd at {store['url']} ({e}); remove them with"
                    f" `etcdctl del --prefix` on {', '.join(lab_key_prefixes(record))}")
    spaces = fabric.lab_namespaces(lab)
    for n in spaces:
        netns.remove(n)
    if spaces:
        removed.append(f"{len(spaces)} namespace(s)")
    if statedir.remove(lab):
        removed.append(f"state dir {names.lab_dir(lab)}")
    return removed, kept


def _end_lab_processes(lab: str, keep: int | None = None, rounds: int = 5) -> int:
    """End every process of `lab` but `keep`; the number ended.

    Listed again after each round: a lab process may start another while
    the first list is ended (the zygote forking the agents an interrupted
    `up` asked it for, labd forking its sandbox workers), and a process
    started after the list was read would outlive `down`.
    """
    ended: set[int] = set()
    for _ in range(rounds):
        pids = [p for p in daemons.lab_processes(lab) if p != keep]
        if not pids:
            break
        daemons.terminate(pids)
        ended.update(pids)
    return len(ended)


# The Kubernetes objects netlab keeps in the store; on a user's etcd they are the lab's (`up` refuses
# an etcd holding another cluster's).
LAB_OBJECT_PREFIXES = (PODS, SERVICES, ENDPOINTSLICES, NODES)


def lab_key_prefixes(record: dict) -> list[str]:
    """The keys `down` removes from a user's etcd (as prefixes; leases and the config are exact keys)."""
    from cni.overlay.lease import subnet_key

    plan = plan_from_record(record)
    keys = [*LAB_OBJECT_PREFIXES, object_key("Lab", None, plan.lab.name)]
    keys += [subnet_key(n.pod_cidr) for n in plan.nodes]
    if not (record.get("store") or {}).get("keepConfig"):
        keys.append(FLANNEL_CONFIG)
    return keys


def remove_lab_keys(record: dict) -> int:
    """A user's etcd as it was before the lab: the lab's objects, its nodes' leases and the config it wrote.

    The lab's Kubernetes objects (/registry/...) are all its own. Under
    flannel's /coreos.com/network/, shared by every flanneld on the etcd,
    only the leases the lab's nodes hold (subnet and PublicIP both theirs)
    go, and the network config only if the lab wrote it.
    """
    from cni.overlay.lease import Lease

    plan = plan_from_record(record)
    ours = {n.pod_cidr: str(n.ip) for n in plan.nodes}
    count = 0
    with open_store(record["store"]["url"]) as st:
        for kv in st.list(FLANNEL_SUBNETS)[0]:
            lease = Lease.from_store(kv.key, kv.value)
            if lease is not None and ours.get(lease.subnet) == str(lease.public_ip):
                count += st.delete(kv.key)
        for prefix in LAB_OBJECT_PREFIXES:
            count += st.delete_prefix(prefix)
        count += st.delete(object_key("Lab", None, plan.lab.name))
        if not record["store"].get("keepConfig"):
            count += st.delete(FLANNEL_CONFIG)
    return count


def down(lab_name: str | None) -> tuple[str, list[str]]:
    """Remove the lab; a user's etcd that did not answer keeps the lab's keys (NetlabError after the rest is gone)."""
    require_root()
    lab = resolve_lab(lab_name)
    with lab_lock(lab):
        removed, kept = _teardown(lab)
    with contextlib.suppress(OSError):
        os.rmdir(names.RUN_DIR)
    if kept:
        raise NetlabError(f"lab {lab} is down (removed {', '.join(removed)}), but not {kept}")
    return lab, removed


def cleanup(lab_name: str | None = None) -> dict[str, list[str]]:
    """Every lab's objects on this machine (or only lab `lab_name`'s), and nothing else.

    A lab is found by its namespace (netlab.<lab>) or its state dir
    (/run/netlab/<lab>/); only processes marked as one of those labs are
    ended. A process carrying some other NETLAB_LAB marker (a test bed, a
    lab of another run with no namespace here) is not a lab's and stays.
    """
    require_root()
    labs = list_labs()
    if lab_name is not None:
        labs = [lab_name] if lab_name in labs else []
    out = {lab: teardown(lab) for lab in labs}
    with contextlib.suppress(OSError):
        os.rmdir(names.RUN_DIR)
    return out


# --- status --------------------------------------------------------------------------


def status(lab_name: str | None) -> dict[str, Any]:
    """The documented `status -o json` contract (see README: "Status contract")."""
    lab = resolve_lab(lab_name)
    record = read_lab(lab)
    if record is None:
        raise NetlabError(f"lab {lab!r} has no state (an interrupted up?): run `netlab down {lab}`")
    plan = plan_from_record(record)
    store = open_store(store_url(record, lab))
    try:
        nodes = node_status(plan, store)
        pods = []
        for kv in store.list(PODS)[0]:
            p = kv.value
            meta, st = p["metadata"], p.get("status", {})
            node = p["spec"].get("nodeName")
            pods.append({
                "namespace": meta["namespace"], "name": meta["name"], "node": node,
                "netns": names.pod_netns(lab, node, meta["namespace"], meta["name"]),
                "ip": st.get("podIP"), "phase": st.get("phase", "Pending"),
                "restarts": sum(c.get("restartCount", 0) for c in st.get("containerStatuses", [])),
                "labels": meta.get("labels", {}),
            })
        slices: dict[tuple[str, str], list[str]] = {}
        for kv in store.list(ENDPOINTSLICES)[0]:
            s = kv.value
            svc = s.get("metadata", {}).get("labels", {}).get("kubernetes.io/service-name")
            ns = s.get("metadata", {}).get("namespace", "default")
            for ep in s.get("endpoints", []) or []:
                if ep.get("conditions", {}).get("ready", True):
                    slices.setdefault((ns, svc), []).extend(ep.get("addresses", []))
        services = []
        for kv in store.list(SERVICES)[0]:
            s = kv.value
            meta, spec = s["metadata"], s.get("spec", {})
            ns = meta.get("namespace", "default")
            services.append({
                "namespace": ns, "name": meta["name"], "type": spec.get("type", "ClusterIP"),
                "clusterIP": spec.get("clusterIP"),
                "ports": [{k: p.get(k) for k in ("name", "port", "protocol", "targetPort", "nodePort") if p.get(k) is not None}
                          for p in spec.get("ports", [])],
                "loadBalancerIPs": [i.get("ip") for i in s.get("status", {}).get("loadBalancer", {}).get("ingress", []) or []],
                "endpoints": sorted(slices.get((ns, meta["name"]), [])),
            })
        return {
            "apiVersion": "netlab/v1alpha1",
            "lab": lab,
            "netns": plan.netns,
            "proxyMode": plan.lab.proxy_mode,
            "backend": plan.lab.pod_network.backend.type,
            "store": store_status(plan),
            "nodes": nodes,
            "pods": sorted(pods, key=lambda p: (p["namespace"], p["name"])),
            "services": sorted(services, key=lambda s: (s["namespace"], s["name"])),
            "clients": [{"name": c.name, "netns": c.netns, "ip": str(c.ip)} for c in plan.clients],
        }
    finally:
        store.close()


NODE_AGENTS = ("flanneld", "kube-proxy")


def node_status(plan: LabPlan, store: Store) -> list[dict[str, Any]]:
    """Each node as `status` shows it: ready when its namespace is there, its agents run and it holds its lease.

    The lease is the one flanneld takes: the node's podCIDR with the node's
    address as PublicIP (a Ready node on a flannel cluster has both).
    """
    from cni.overlay.lease import parse_leases

    leases = parse_leases([(kv.key, kv.value) for kv in store.list(FLANNEL_SUBNETS)[0]])
    out = []
    for n in plan.nodes:
        lease = leases.get(n.pod_cidr)
        ready = (netns.exists(n.netns) and all(daemons.alive(plan.lab.name, f"{d}-{n.name}") for d in NODE_AGENTS)
                 and lease is not None and str(lease.public_ip) == str(n.ip))
        out.append({"name": n.name, "netns": n.netns, "ip": str(n.ip), "podCIDR": str(n.pod_cidr),
                    "ready": ready, "labels": dict(n.labels)})
    return out


def store_status(plan: LabPlan) -> dict[str, Any]:
    """The store: embedded, or etcd (`managed`: netlab runs it; endpoints as a client reaches them)."""
    spec = plan.lab.store
    if spec.type == "embedded":
        return {"type": "embedded", "path": names.store_path(plan.lab.name)}
    if spec.owned:
        return {"type": "etcd", "managed": True, "endpoints": [f"http://{plan.gateway}:{ETCD_CLIENT_PORT}"],
                "netns": plan.netns}
    out = {"type": "etcd", "managed": False, "endpoints": [f"http://{e}" for e in spec.endpoints]}
    if spec.netns:
        out["netns"] = spec.netns
    return out


def target_netns(lab_name: str | None, target: str) -> str:
    """The namespace of NODE, POD, NS/POD or client name, as `netlab exec` resolves it."""
    st = status(lab_name)
    for n in st["nodes"]:
        if n["name"] == target:
            return n["netns"]
    ns, _, name = target.rpartition("/")
    matches = [p for p in st["pods"] if p["name"] == name and (not ns or p["namespace"] == ns)]
    if len(matches) == 1:
        return matches[0]["netns"]
    if len(matches) > 1:
        raise NetlabError(f"{target!r} names pods in several namespaces: write NAMESPACE/{name}")
    for c in st["clients"]:
        if c["name"] == target:
            return c["netns"]
    raise NetlabError(f"no node, pod or client {target!r} in lab {st['lab']}: see `netlab status`")
