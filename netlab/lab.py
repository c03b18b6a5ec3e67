"""A lab's life: up, apply, delete, down, cleanup, status.

The CLI is a thin shell over these functions, and so are the tests and the
benchmark. The order of `up` follows the principles: validate everything
(no kernel object yet), plan purely, take the lab's lock, record the lab in
its state dir before creating anything (so `down` can undo a crashed
`up`), make the kernel match, write the desired objects to the store, start
the daemons, and wait for the pods.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from netlab import daemons, fabric, names, netns
from netlab.errors import LabBusy, NetlabError, NeedsRoot, SpecErrors
from netlab.plan import LabPlan, plan_lab
from netlab.spec.lab import LabSpec
from netlab.spec.topology import ApiObject, check_pods_fit, load_topology, parse_objects, pod_object, schedule
from netlab.spec.source import load_files
from netlab.store import ENDPOINTSLICES, FLANNEL_CONFIG, PODS, SERVICES, Store, object_key, open_store

LAB_FILE = "lab.json"
LABD = "labd"

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
def lab_lock(lab: str) -> Iterator[None]:
    """The lab's lock: a concurrent `up`/`down` of the same lab is refused, not queued."""
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


def store_for(lab: str) -> Store:
    return open_store(f"sqlite://{names.store_path(lab)}")


def read_lab(lab: str) -> dict | None:
    try:
        with open(lab_file(lab)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def plan_from_record(record: dict) -> LabPlan:
    """Re-derive the plan of a running lab from its recorded spec (the plan is pure)."""
    from netlab.spec.source import load_text

    doc_text = json.dumps({"apiVersion": "netlab/v1alpha1", "kind": "Lab", "metadata": {"name": record["spec"]["name"]},
                           "spec": {k: v for k, v in record["spec"].items() if k != "name"}})
    from netlab.spec.lab import parse_lab

    return plan_lab(parse_lab(load_text(doc_text, lab_file(record["spec"]["name"]))[0]))


# --- node-level daemons (flanneld's and kube-proxy's roles) ------------------------


def node_daemons(plan: LabPlan, node) -> list[tuple[str, list[str]]]:
    """The per-node daemons `up` starts inside each node's namespace, as a DaemonSet would.

    Each entry is (daemon name, argv); the process gets NETLAB_LAB=<lab>.
    """
    lab = plan.lab.name
    store = f"sqlite://{names.store_path(lab)}"
    return [
        # flanneld's role: lease the node's subnet, program flannel.1 / host-gw routes.
        ("flanneld", daemons.python_argv("cni.overlay", "--store", store, "--node", node.name,
                                         "--subnet-file", names.subnet_env_path(lab, node.name),
                                         "--iface", names.NODE_UPLINK, "--node-ip", str(node.ip))),
        # kube-proxy's role: Services and EndpointSlices to rules in the node's namespace.
        ("kube-proxy", daemons.python_argv("proxy", "--store", store, "--node", node.name, "--node-ip", str(node.ip),
                                           "--cluster-cidr", str(plan.lab.pod_network.network),
                                           "--mode", plan.lab.proxy_mode)),
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
    text = subnet_env.render(plan.lab.pod_network.network, node.pod_cidr, plan.pod_mtu, True)
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
    for p in pods:
        obj = pod_object(lab, p)
        wanted[p.key] = obj
        kv = existing.get(p.key)
        if kv is not None and _same_pod(kv.value, obj):
            continue
        if kv is not None:
            store.delete(kv.key)  # a Pod's spec is immutable: replace it, as kubectl replace --force
        obj["metadata"]["uid"] = str(uuid.uuid4())
        store.put(object_key("Pod", p.namespace, p.name), obj)
        changes.append(f"pod {p.key}")
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


def ensure_daemons(plan: LabPlan, changes: list[str]) -> None:
    lab = plan.lab.name
    if not daemons.alive(lab, LABD):
        daemons.spawn(lab, LABD, plan.netns, daemons.python_argv("netlab.labd", "--lab", lab))
        changes.append("daemon labd (kubelet, controllers)")
    for node in plan.nodes:
        for name, argv in node_daemons(plan, node):
            dname = f"{name}-{node.name}"
            if not daemons.alive(lab, dname):
                daemons.spawn(lab, dname, node.netns, argv)
                changes.append(f"daemon {dname}")


def wait_for_pods(store: Store, keys: set[str], timeout: float, progress: Progress | None) -> dict[str, str]:
    """Poll the store until every pod in `keys` left Pending; return phases.

    A pod whose sandbox could not be made fails the wait at once with the
    kubelet's message (as `kubectl describe` shows FailedCreatePodSandBox).
    """
    deadline = time.monotonic() + timeout
    while True:
        items, _ = store.list(PODS)
        statuses = {f"{kv.value['metadata']['namespace']}/{kv.value['metadata']['name']}": kv.value.get("status", {})
                    for kv in items}
        broken = {k: statuses[k] for k in keys if statuses.get(k, {}).get("reason") == "FailedCreatePodSandBox"}
        if broken:
            k, st = sorted(broken.items())[0]
            raise NetlabError(f"pod {k}: sandbox failed: {st.get('message', '?')}")
        phases = {k: statuses.get(k, {}).get("phase", "Pending") for k in keys}
        ready = sum(1 for ph in phases.values() if ph != "Pending")
        if progress:
            progress("pods", ready, len(keys))
        if ready == len(keys) or time.monotonic() > deadline:
            return phases
        time.sleep(0.05)


def up(paths: list[str], progress: Progress | None = None, timeout: float = 300.0) -> UpResult:
    t0 = time.monotonic()
    topo = load_topology(paths)  # raises SpecError(s): nothing exists yet
    require_root()
    plan = plan_lab(topo.lab)
    lab = topo.lab.name
    with lab_lock(lab):
        record = read_lab(lab)
        spec = topo.lab.to_dict()
        created = record is None
        if record is not None and record["spec"] != spec:
            diff = [k for k in spec if record["spec"].get(k) != spec[k]]
            raise NetlabError(
                f"lab {lab!r} is already up with a different {', '.join(diff)}; "
                f"pods and services can change with `netlab apply`, the lab itself cannot: run `netlab down {lab}` first"
            )
        # Journal first: the state dir names the lab before any kernel object exists.
        _write_if_changed(lab_file(lab), json.dumps({"spec": spec, "files": [os.path.abspath(p) for p in paths]}, indent=2))
        ch = fabric.Changes()
        total = 1 + len(plan.nodes) + len(plan.clients)
        if progress:
            progress("fabric", 0, total)
        fabric.ensure_lab_namespace(plan, ch)
        for i, node in enumerate(plan.nodes):
            fabric.ensure_node(plan, node, ch)
            if progress:
                progress("fabric", i + 2, total)
        for client in plan.clients:
            fabric.ensure_client(plan, client, ch)
        changes = list(ch.made)
        store = store_for(lab)
        try:
            _put_if_changed(store, object_key("Lab", None, lab), {"apiVersion": "netlab/v1alpha1", "kind": "Lab",
                                                                  "metadata": {"name": lab}, "spec": spec},
                            changes, "lab object")
            _put_if_changed(store, FLANNEL_CONFIG, topo.lab.pod_network.net_conf(), changes, "flannel net-conf")
            for node in plan.nodes:
                _put_if_changed(store, object_key("Node", None, node.name), plan.node_object(node), changes, f"node {node.name}")
                changes.extend(_node_files(plan, node))
            sync_pods(store, topo.lab, topo.pods, changes, prune=True)
            put_objects(store, topo.lab, topo.objects, changes)
            ensure_daemons(plan, changes)
            keys = {p.key for p in topo.pods}
            phases = wait_for_pods(store, keys, timeout, progress)
        finally:
            store.close()
        stuck = sorted(k for k, ph in phases.items() if ph == "Pending")
        if stuck:
            raise NetlabError(
                f"lab {lab}: {len(stuck)} pod(s) did not start within {timeout:.0f}s: {', '.join(stuck[:5])}"
                f" (see {daemons.log_dir(lab)}/labd.log)"
            )
    return UpResult(lab, created, changes, len(topo.pods), time.monotonic() - t0)


# --- apply / delete on a running lab ------------------------------------------------


def apply(lab_name: str | None, paths: list[str], wait: float = 60.0) -> list[str]:
    """Create or update Pods, Services and EndpointSlices in a running lab."""
    docs = load_files(paths)
    require_root()
    lab = resolve_lab(lab_name)
    record = read_lab(lab)
    if record is None:
        raise NetlabError(f"lab {lab!r} has no state (an interrupted up?): run `netlab down {lab}` and up again")
    plan = plan_from_record(record)
    pods, objects, errors = parse_objects(docs)
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
        sync_pods(store, plan.lab, pods, changes, prune=False)
        put_objects(store, plan.lab, objects, changes)
        if pods and wait:
            wait_for_pods(store, {p.key for p in pods}, wait, None)
    finally:
        store.close()
    return changes


def delete(lab_name: str | None, paths: list[str]) -> list[str]:
    docs = load_files(paths)
    require_root()
    lab = resolve_lab(lab_name)
    store = store_for(lab)
    removed = []
    try:
        for d in docs:
            meta = d.data.get("metadata", {}) if isinstance(d.data, dict) else {}
            if d.kind in ("Pod", "Service", "EndpointSlice") and meta.get("name"):
                ns = meta.get("namespace", "default")
                if store.delete(object_key(d.kind, ns, meta["name"])):
                    removed.append(f"{d.kind.lower()} {ns}/{meta['name']}")
            else:
                raise d.error(("kind",), f"cannot delete a {d.kind or 'document without kind'}",
                              "netlab delete takes Pods, Services and EndpointSlices")
    finally:
        store.close()
    return removed


# --- down / cleanup ----------------------------------------------------------------


def teardown(lab: str) -> list[str]:
    """Remove everything of `lab`: its processes, namespaces (and so links) and state dir.

    Found by name and marker, not by the record alone, so a crashed or
    interrupted `up` is undone as completely as a finished one.
    """
    removed = []
    pids = daemons.lab_processes(lab)
    daemons.terminate(pids)
    if pids:
        removed.append(f"{len(pids)} process(es)")
    spaces = fabric.lab_namespaces(lab)
    for n in spaces:
        netns.remove(n)
    if spaces:
        removed.append(f"{len(spaces)} namespace(s)")
    if os.path.isdir(names.lab_dir(lab)):
        shutil.rmtree(names.lab_dir(lab), ignore_errors=True)
        removed.append(f"state dir {names.lab_dir(lab)}")
    return removed


def down(lab_name: str | None) -> tuple[str, list[str]]:
    require_root()
    lab = resolve_lab(lab_name)
    with lab_lock(lab):
        removed = teardown(lab)
    with contextlib.suppress(OSError):
        os.rmdir(names.RUN_DIR)
    return lab, removed


def cleanup() -> dict[str, list[str]]:
    """Every lab's objects on this machine, and nothing else."""
    require_root()
    out = {lab: teardown(lab) for lab in list_labs()}
    stray = daemons.lab_processes(None)
    if stray:
        daemons.terminate(stray)
        out.setdefault("(no lab)", []).append(f"{len(stray)} process(es)")
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
    store = store_for(lab)
    try:
        nodes = [
            {"name": n.name, "netns": n.netns, "ip": str(n.ip), "podCIDR": str(n.pod_cidr),
             "ready": netns.exists(n.netns)}
            for n in plan.nodes
        ]
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
            "nodes": nodes,
            "pods": sorted(pods, key=lambda p: (p["namespace"], p["name"])),
            "services": sorted(services, key=lambda s: (s["namespace"], s["name"])),
            "clients": [{"name": c.name, "netns": c.netns, "ip": str(c.ip)} for c in plan.clients],
        }
    finally:
        store.close()


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
