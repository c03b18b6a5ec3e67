"""The kubelet's role for every node of a lab: pods from the store to running sandboxes.

As the real kubelet and its container runtime do, for each Pod bound to a
node it creates the sandbox (a network namespace with `lo` up), calls the
node's CNI network (/etc/cni/net.d, here the node's cni/net.d dir) with
ADD, starts the containers, restarts them per restartPolicy with a
back-off, and writes the Pod's status (phase, podIP, hostIP, container
statuses) back to the store. A deleted Pod is stopped, DEL'ed from CNI and
its namespace removed.

One kubelet serves all nodes of a lab from one process: a thousand pods'
built-in servers live on one asyncio loop, which keeps a large lab within
its memory budget. Runtime state (sandbox IDs, as containerd keeps them)
lives under /run/netlab/<lab>/pods/, in one append-only journal.

Sandboxes are made and removed by worker processes that labd forks
(netlab.sandbox_workers), two calls queued per worker, or on threads when
the kubelet has no workers; the statuses of started pods are written in
batches, one store transaction each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from netlab import daemons, names, netexec, netns
from netlab.sandbox_workers import SandboxWorkers
from netlab.store import NODES, PODS, Store

log = logging.getLogger("netlab.kubelet")

CNI_CONF_NAME = "10-flannel.conflist"
# Back-off between restarts: kubelet's CrashLoopBackOff starts at 10 s and
# doubles to 5 min; a lab wants faster feedback, so 0.5 s doubling to 10 s.
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0
STOP_GRACE = 2.0
ENV_POD = "NETLAB_POD"
# Sandbox workers: one process per core keeps every core busy (their work is mostly
# in the kernel; a worker waiting on a lock there leaves its core to the others).
SANDBOX_WORKERS = int(os.environ.get("NETLAB_SANDBOX_WORKERS", "0")) or max(2, os.cpu_count() or 1)
# While pods start, their statuses are written in batches this often (each batch
# is one store transaction, and one wake-up for every watcher of Pods).
REPORT_EVERY = 0.5
# The watch: the store is polled for pod and node events this often, and everything is
# listed again (a resync) at least every RESYNC_EVERY seconds.
WATCH_POLL = 0.05
RESYNC_EVERY = 1.0
# After a store error the kubelet waits this long before relisting, doubling to the maximum
# (client-go's reflector backs off the same way, from 0.8 s to 30 s).
STORE_BACKOFF_START = 0.5
STORE_BACKOFF_MAX = 8.0


def sandbox_id(namespace: str, name: str, uid: str) -> str:
    """A 64-hex sandbox ID, as containerd's, stable for one incarnation of a pod."""
    return hashlib.sha256(f"{namespace}/{name}/{uid}".encode()).hexdigest()


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, as containerd's and kubelet's units set LimitNOFILE.

    Built-in servers hold two sockets per pod in this process: a 1000-pod
    lab needs more than the usual soft limit of 1024 descriptors.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d; large labs may run out", soft)


def load_cni_plugins() -> None:
    """Import the CNI API and every plugin module once, before sandboxes are made on several threads.

    cni.registry.load is safe under concurrency (it waits on the import
    lock for a module another thread is importing); loading here first only
    keeps the sandbox threads from queueing on those imports.
    """
    from cni import api, registry  # noqa: F401 - imported for its side effect

    for short_name in registry.PLUGINS:
        registry.load(short_name)


_conf_cache: dict[str, tuple[tuple, dict]] = {}


def node_cni_conf(lab: str, node: str) -> dict:
    """The node's CNI config, parsed again only when the file changed (`up` replaces it by rename)."""
    path = os.path.join(names.cni_net_dir(lab, node), CNI_CONF_NAME)
    st = os.stat(path)
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _conf_cache.get(path)
    if hit is None or hit[0] != stamp:
        with open(path) as f:
            hit = _conf_cache[path] = (stamp, json.load(f))
    return hit[1]  # callers never change it (libcni deep-copies what it hands to plugins)


class Journal:
    """The runtime's record of its sandboxes: one line per sandbox made and one per sandbox removed.

    Written before a sandbox gets any kernel object, so a restarted kubelet
    finds and removes whatever a crashed one left. Appending a line costs
    far less than a file per sandbox (a new inode), which a 1000-pod build
    would otherwise pay a thousand times. Rewritten with only the live
    entries when removed ones dominate.
    """

    NAME = "sandboxes.jsonl"

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, self.NAME)
        self._lock = threading.Lock()
        self._live: dict[str, dict] = {}
        self._dead = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def read(self) -> list[dict]:
        """Sandboxes added and not removed, as the file says (a torn last line is skipped)."""
        live: dict[str, dict] = {}
        try:
            with open(self.path) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                        if e.get("op") == "add":
                            live[e["id"]] = e
                        elif e.get("op") == "del":
                            live.pop(e["id"], None)
                    except (ValueError, KeyError, AttributeError):
                        continue
        except FileNotFoundError:
            pass
        return list(live.values())

    def _append(self, entry: dict) -> None:
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def added(self, sb: "Sandbox") -> None:
        entry = {"op": "add", "id": sb.id, "key": sb.key, "netns": sb.netns, "node": sb.node}
        with self._lock:
            self._append(entry)
            self._live[sb.id] = entry

    def removed(self, sandbox_id: str) -> None:
        with self._lock:
            if self._live.pop(sandbox_id, None) is None:
                return
            self._append({"op": "del", "id": sandbox_id})
            self._dead += 1
            if self._dead > max(1000, 2 * len(self._live)):
                self._rewrite()

    def reset(self) -> None:
        """Forget everything (after the previous kubelet's sandboxes were removed)."""
        with self._lock:
            self._live.clear()
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for e in self._live.values():
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._dead = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    exit_code: int | None = None
    backoff: float = BACKOFF_START
    waiting: str | None = None  # a kubelet waiting reason, e.g. CrashLoopBackOff


@dataclass
class Sandbox:
    namespace: str
    name: str
    node: str
    netns: str
    id: str
    uid: str | None = None  # the Pod's metadata.uid: a replaced Pod is another incarnation
    ip: str | None = None
    servers: netexec.PodServers | None = None
    containers: list[Container] = field(default_factory=list)
    builtin: bool = False
    restart_policy: str = "Always"
    tasks: list[asyncio.Task] = field(default_factory=list)
    reported: str = ""  # the last status written, to skip identical writes

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def phase(sb: Sandbox) -> str:
    """Kubernetes' pod phase from container states."""
    if sb.builtin and sb.servers is not None:
        return "Running"
    if not sb.containers:
        return "Pending"
    running = [c for c in sb.containers if c.proc is not None and c.proc.returncode is None]
    if running:
        return "Running"
    done = [c for c in sb.containers if c.exit_code is not None]
    will_restart = sb.restart_policy == "Always" or (
        sb.restart_policy == "OnFailure" and any(c.exit_code for c in done)
    )
    if len(done) == len(sb.containers) and not will_restart:
        return "Succeeded" if all(c.exit_code == 0 for c in done) else "Failed"
    return "Running" if any(c.restarts for c in sb.containers) else "Pending"


class Kubelet:
    def __init__(self, lab: str, store: Store, workers: SandboxWorkers | None = None) -> None:
        self.lab = lab
        self.store = store
        raise_nofile()
        self.sandboxes: dict[str, Sandbox] = {}
        self.retry_at: dict[str, float] = {}
        # Namespace, netlink and CNI work is synchronous: it runs in the worker processes
        # (or on threads without them), SANDBOX_WORKERS pods at a time, as many more queued.
        self.workers = workers
        self.worker = concurrent.futures.ThreadPoolExecutor(SANDBOX_WORKERS, thread_name_prefix="sandbox")
        self._slots = asyncio.Semaphore(2 * SANDBOX_WORKERS)
        self._changed: set[str] = set()  # sandboxes whose status may have changed
        self.node_ips: dict[str, str] = {}
        self.stop_event = asyncio.Event()
        self._dirty = asyncio.Event()
        self.state_dir = os.path.join(names.lab_dir(lab), "pods")
        self.log_dir = os.path.join(names.lab_dir(lab), "logs", "pods")
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.journal = Journal(self.state_dir)

    # -- the sync loop --------------------------------------------------------

    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def _in_sandbox_worker(self, fn, *args):
        """fn(*args) in a sandbox worker process: fn is a module-level function (it travels by name)."""
        if self.workers is None:
            return await self._in_worker(fn, *args)
        return await self.workers.call(fn, *args)

    async def run(self) -> None:
        """Sync, wait for a change, sync again, until stopped.

        A store error anywhere (the API server away, etcd restarting, a
        compacted watch) is logged and waited out with a back-off, then the
        kubelet relists everything (a resync), as the real kubelet's
        reflectors relist after a failed watch. The pods keep running meanwhile.
        """
        await self._in_worker(load_cni_plugins)
        await self._in_worker(self._reap_orphans)
        rev = 0
        backoff = STORE_BACKOFF_START
        while not self.stop_event.is_set():
            try:
                rev = await self.sync_once()
            except Exception:
                log.exception("sync failed; retrying in %.1fs", backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, STORE_BACKOFF_MAX)
                continue
            backoff = STORE_BACKOFF_START
            try:
                await self._wait_for_change(rev)
            except Exception as e:  # noqa: BLE001 - any store error: back off, then resync
                log.warning("watching the store failed (%s: %s); resyncing in %.1fs", type(e).__name__, e, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, STORE_BACKOFF_MAX)
            self._dirty.clear()
        await self.shutdown()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the kubelet is stopped."""
        try:
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_change(self, rev: int) -> None:
        """Return when pods or nodes changed after `rev`, a container changed, or after RESYNC_EVERY.

        A watch by polling revisions (the store's events), as the kubelet's
        informers watch the API server.
        """
        deadline = time.monotonic() + RESYNC_EVERY
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            events, rev_now = self.store.events_since(PODS, rev)
            if events or self._dirty.is_set():
                return
            node_events, _ = self.store.events_since(NODES, rev)
            if node_events:
                return
            rev = rev_now
            await asyncio.sleep(WATCH_POLL)

    async def sync_once(self) -> int:
        nodes, _ = self.store.list(NODES)
        self.node_ips = {
            kv.value["metadata"]["name"]: next(
                (a["address"] for a in kv.value.get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), ""
            )
            for kv in nodes
        }
        pods, rev = self.store.list(PODS)
        desired: dict[str, dict] = {}
        for kv in pods:
            pod = kv.value
            node = pod.get("spec", {}).get("nodeName")
            if node in self.node_ips:
                desired[f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"] = pod
        # Gone, or replaced by a new incarnation (a Pod's spec is immutable: `apply` replaces it).
        gone = [self.sandboxes.pop(k) for k, sb in list(self.sandboxes.items())
                if k not in desired or sb.uid != desired[k]["metadata"].get("uid")]
        if gone:
            done = await asyncio.gather(*(self._bounded(self.kill_pod(sb)) for sb in gone), return_exceptions=True)
            for sb, err in zip(gone, done):
                if isinstance(err, Exception):  # its journal entry stays: a later kubelet retries
                    log.error("removing sandbox of %s failed: %s", sb.key, err)
        now = time.monotonic()
        new = [pod for key, pod in desired.items() if key not in self.sandboxes and self.retry_at.get(key, 0) <= now]
        # Round robin over the nodes, so that concurrent sandboxes are mostly on different nodes
        # (each node's host-local lock, bridge and data dirs are its own).
        turns: dict[str, int] = {}

        def turn(pod: dict) -> int:
            n = pod["spec"]["nodeName"]
            turns[n] = turns.get(n, 0) + 1
            return turns[n]

        new.sort(key=turn)
        if new:
            reporter = asyncio.ensure_future(self._report_while_starting())
            try:
                await asyncio.gather(*(self._bounded(self._start_or_retry(pod)) for pod in new))
            finally:
                reporter.cancel()
        self.report_all()
        return rev

    async def _bounded(self, coro):
        async with self._slots:
            return await coro

    async def _start_or_retry(self, pod: dict) -> None:
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        try:
            await self.start_pod(pod)
            self.retry_at.pop(key, None)
        except Exception as e:
            # As kubelet's FailedCreatePodSandBox: undo what was made, retry later.
            log.exception("pod %s failed to start", key)
            sb = self.sandboxes.pop(key, None)
            if sb is not None:
                await self.kill_pod(sb)
            self.retry_at[key] = time.monotonic() + 5.0
            self.report_failure(pod, str(e))

    async def _report_while_starting(self) -> None:
        """Statuses of the pods started so far, written in batches while the rest start."""
        while True:
            await asyncio.sleep(REPORT_EVERY)
            if self._changed:
                keys, self._changed = self._changed, set()
                self.report(keys)

    # -- pods -------------------------------------------------------------------

    async def start_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, node = meta["namespace"], meta["name"], spec["nodeName"]
        uid = meta.get("uid") or str(pod.get("_create_revision", ""))
        sb = Sandbox(ns, name, node, names.pod_netns(self.lab, node, ns, name), sandbox_id(ns, name, uid),
                     uid=meta.get("uid"), restart_policy=spec.get("restartPolicy", "Always"))
        self.sandboxes[sb.key] = sb
        # The record first, so a restarted kubelet finds whatever exists of this sandbox.
        self.journal.added(sb)
        result = await self._in_sandbox_worker(make_sandbox, self.lab, sb.node, sb.namespace, sb.name, sb.id, sb.netns)
        sb.ip = result["ips"][0]["address"].split("/")[0]
        containers = spec.get("containers", [])
        commanded = [c for c in containers if c.get("command")]
        tcp_ports = {p["containerPort"] for c in containers for p in c.get("ports", []) if p.get("protocol", "TCP") == "TCP"}
        udp_ports = {p["containerPort"] for c in containers for p in c.get("ports", []) if p.get("protocol") == "UDP"}
        if len(commanded) < len(containers):
            sb.builtin = True
            sb.servers = await netexec.serve(sb.netns, name, tcp_ports, udp_ports)
        self._changed.add(sb.key)
        for c in commanded:
            env = daemons.env_for(self.lab)
            env.update({"HOSTNAME": name, ENV_POD: sb.key, "POD_IP": sb.ip, "POD_NAME": name, "POD_NAMESPACE": ns,
                        "NODE_NAME": node})
            env.update({e["name"]: e.get("value", "") for e in c.get("env", [])})
            ct = Container(c["name"], list(c["command"]) + list(c.get("args", [])), env)
            sb.containers.append(ct)
            sb.tasks.append(asyncio.ensure_future(self._supervise(sb, ct)))

    async def _supervise(self, sb: Sandbox, ct: Container) -> None:
        """Run one container, restarting it per the pod's restartPolicy with back-off."""
        logfile = os.path.join(self.log_dir, f"{sb.namespace}_{sb.name}_{ct.name}.log")
        while not self.stop_event.is_set():
            with open(logfile, "ab") as out, netns._child_enters(sb.netns) as enter:
                try:
                    ct.proc = await asyncio.create_subprocess_exec(
                        *ct.argv, env=ct.env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                        preexec_fn=enter, start_new_session=True, cwd="/",
                    )
                except OSError as e:
                    out.write(f"netlab: cannot start {ct.argv[0]!r}: {e.strerror}\n".encode())
                    ct.proc, ct.exit_code = None, 128
                    ct.waiting = "RunContainerError"
            if ct.proc is not None:
                ct.started_at, ct.waiting = time.monotonic(), None
                self._changed.add(sb.key)
                self._dirty.set()
                ct.exit_code = await ct.proc.wait()
                if time.monotonic() - ct.started_at > BACKOFF_RESET_AFTER:
                    ct.backoff = BACKOFF_START
            self._changed.add(sb.key)
            self._dirty.set()
            if sb.restart_policy == "Never" or (sb.restart_policy == "OnFailure" and ct.exit_code == 0):
                return
            ct.waiting = "CrashLoopBackOff"
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=ct.backoff)
                return
            except asyncio.TimeoutError:
                pass
            ct.backoff = min(ct.backoff * 2, BACKOFF_MAX)
            ct.restarts += 1

    async def _stop_containers(self, sb: Sandbox) -> None:
        for t in sb.tasks:
            t.cancel()
        procs = [c.proc for c in sb.containers if c.proc is not None and c.proc.returncode is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if procs:
            try:
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_GRACE)
            except asyncio.TimeoutError:
                for p in procs:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
        if sb.servers is not None:
            sb.servers.close()
            sb.servers = None

    async def kill_pod(self, sb: Sandbox) -> None:
        await self._stop_containers(sb)
        await self._in_sandbox_worker(remove_sandbox, self.lab, sb.node, sb.id, sb.netns)
        self.journal.removed(sb.id)

    def _reap_orphans(self) -> None:
        """Sandboxes from a previous kubelet of this lab: torn down, then rebuilt from the store.

        Their containers were ours but are no longer our children; they are
        found by the NETLAB_POD marker and ended, as a restarted kubelet
        kills containers it cannot adopt.
        """
        marker = f"{ENV_POD}=".encode()
        orphans = [p for p in daemons.lab_processes(self.lab) if any(v.startswith(marker) for v in daemons._environ(p))]
        daemons.terminate(orphans)
        for st in self.journal.read():
            try:
                remove_sandbox(self.lab, st["node"], st["id"], st["netns"])
            except (OSError, KeyError):
                log.exception("cannot remove sandbox %s", st.get("key"))
        self.journal.reset()
        # One file per sandbox: what kubelets before the journal recorded.
        for fn in os.listdir(self.state_dir):
            if not fn.endswith(".json"):
                continue
            path = os.path.join(self.state_dir, fn)
            try:
                with open(path) as f:
                    st = json.load(f)
                remove_sandbox(self.lab, st["node"], st["id"], st["netns"])
            except (OSError, ValueError, KeyError):
                log.exception("cannot read sandbox state %s", path)
            os.unlink(path)

    # -- status -----------------------------------------------------------------

    def status_of(self, sb: Sandbox) -> dict[str, Any]:
        statuses = []
        for c in sb.containers:
            if c.proc is not None and c.proc.returncode is None:
                state: dict[str, Any] = {"running": {}}
            elif c.waiting:
                state = {"waiting": {"reason": c.waiting}}
            else:
                state = {"terminated": {"exitCode": c.exit_code}}
            statuses.append({"name": c.name, "ready": "running" in state, "restartCount": c.restarts, "state": state})
        if sb.builtin:
            statuses.insert(0, {"name": "netexec", "ready": sb.servers is not None, "restartCount": 0,
                                "state": {"running": {}}})
        st: dict[str, Any] = {"phase": phase(sb), "hostIP": self.node_ips.get(sb.node, ""), "containerStatuses": statuses}
        if sb.ip:
            st["podIP"] = sb.ip
            st["podIPs"] = [{"ip": sb.ip}]
        return st

    def _write_status(self, namespace: str, name: str, status: dict, uid: str | None) -> bool:
        key = f"{PODS}{namespace}/{name}"
        return key in self.store.modify_many({key: _with_status(status, uid)}) or self._has_status(key, status)

    def _has_status(self, key: str, status: dict) -> bool:
        kv = self.store.get(key)
        return kv is not None and kv.value.get("status") == status

    def report(self, keys) -> None:
        """Write the status of these sandboxes where it changed, all in one store transaction."""
        todo: dict[str, tuple[Sandbox, str, dict]] = {}
        for k in keys:
            sb = self.sandboxes.get(k)
            if sb is None:
                continue
            st = self.status_of(sb)
            text = json.dumps(st, sort_keys=True)
            if text != sb.reported:
                todo[f"{PODS}{sb.key}"] = (sb, text, st)
        if not todo:
            return
        # Never onto a Pod deleted meanwhile (absent keys stay absent) nor onto its replacement (another uid).
        written = self.store.modify_many({key: _with_status(st, sb.uid) for key, (sb, _t, st) in todo.items()})
        for key, (sb, text, st) in todo.items():
            if key in written or self._has_status(key, st):
                sb.reported = text

    def report_all(self) -> None:
        self._changed.clear()
        self.report(list(self.sandboxes))

    def report_failure(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        self._write_status(meta["namespace"], meta["name"], {"phase": "Pending", "reason": "FailedCreatePodSandBox",
                                                             "message": message}, meta.get("uid"))

    async def shutdown(self) -> None:
        for sb in list(self.sandboxes.values()):
            await self._stop_containers(sb)
        self.journal.close()


def make_sandbox(lab: str, node: str, namespace: str, name: str, sandbox: str, netns_name: str) -> dict:
    """As the runtime: the sandbox namespace with lo up, then CNI ADD of the node's network."""
    from cni import api as cni_api

    netns.create(netns_name, lo_up=True)
    return cni_api.add(
        node_cni_conf(lab, node),
        container_id=sandbox,
        netns=netns.path(netns_name),
        ifname=names.POD_IFNAME,
        # As containerd: IgnoreUnknown=1 lets plugins skip the K8S_* args they do not use.
        args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={sandbox}",
        host_netns=names.node_netns(lab, node),
    )


def remove_sandbox(lab: str, node: str, sandbox: str, netns_name: str) -> None:
    """CNI DEL and namespace removal; both succeed on what is already gone."""
    from cni import api as cni_api

    try:
        cni_api.delete(node_cni_conf(lab, node), container_id=sandbox, netns=netns.path(netns_name),
                       ifname=names.POD_IFNAME, host_netns=names.node_netns(lab, node))
    except Exception:
        log.exception("CNI DEL of sandbox %s failed; removing its namespace anyway", sandbox[:12])
    # A cached netlink socket would keep the deleted namespace alive in the kernel.
    cni_api.forget(netns.path(netns_name))
    netns.remove(netns_name)


def _with_status(status: dict, uid: str | None):
    """A modify_many change: the Pod with `status`, unless it is another incarnation or already has it."""

    def change(pod: dict) -> dict | None:
        if uid is not None and pod.get("metadata", {}).get("uid") != uid:
            return None
        if pod.get("status") == status:
            return None
        return dict(pod, status=status)

    return change
