"""Benchmark: pod↔pod throughput over the overlay, and convergence after a node add.

Throughput: iperf3 (Debian's) TCP for --seconds, pod → pod on the same node
(the cni0 bridge: the peer every ratio is taken to), across nodes over
vxlan, and across nodes over host-gw. Each across-node figure is printed as
a ratio to same-node throughput measured in the same bed and run.

Convergence: a --nodes lab (vxlan) whose agents are running; then --adds
more nodes join one at a time, and for each the time from its lease
appearing in the store to every other node having its route, neighbour
and FDB entry is recorded (the agents poll the store every 100 ms).

Nodes, pods and the underlay are namespaces of a cni.overlay.testbed bed
(nltest-ovl-bench-*), agents are `python -m cni.overlay` processes; all
is removed at the end, also on failure.

Lab convergence (--only lab, or part of the full run): a real --nodes lab
(`netlab up` through netlab.lab: fabric, labd, a flanneld and a kube-proxy
per node), once on the embedded store and once on netlab's own etcd
(`store: {type: etcd}`); then `node add` --adds times (netlab.lab.node_add,
as the CLI calls it). For each add: from the add's start, and from the new
node's lease appearing in the store, to every other node having the route
to its subnet and the FDB entry for its VTEP; and the add's own "ready"
(its lease held and its routes to every peer). Labs are named nlf-bench-*
and torn down at the end, also on failure.

Idle (--only idle, or part of the full run): the CPU an idle --nodes lab's
processes use over 10 s (utime + stime from /proc), per kind (labd,
flanneld, kube-proxy, etcd), on each store.

    sudo .venv/bin/python bench/overlay.py [--seconds 5] [--repeat 3] [--nodes 10] [--adds 3] [--store sqlite|etcd]
                                           [--only throughput|convergence|lab|idle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cni.overlay import lease as leases  # noqa: E402
from cni.overlay import netconf  # noqa: E402
from cni.overlay.kernel import Kernel  # noqa: E402
from cni.overlay.testbed import Testbed, wait_for  # noqa: E402
from netlab import netns  # noqa: E402
from netlab.store import FLANNEL_CONFIG, open_store  # noqa: E402

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
HOST_GW = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}


class Bed:
    """A testbed plus its store (embedded or etcd), torn down as one."""

    def __init__(self, workdir: str, store_kind: str, conf: dict) -> None:
        self.name = f"nltest-ovl-bench-{uuid.uuid4().hex[:4]}"
        self.tb = Testbed(self.name, os.path.join(workdir, self.name))
        self.etcd = None
        try:
            if store_kind == "etcd":
                from netlab.store_etcd import EtcdServer

                self.etcd = EtcdServer.start(self.name, os.path.join(workdir, self.name, "etcd"),
                                             env={"NETLAB_LAB": self.name})
                self.url = self.etcd.url
            else:
                self.url = f"sqlite://{os.path.join(workdir, self.name, 'store.db')}"
            self.store = open_store(self.url)
            self.store.put(FLANNEL_CONFIG, conf)
            self.conf = conf
        except BaseException:
            self.close()
            raise

    def node(self, index: int):
        node = self.tb.add_node(f"n{index}", index)
        self.tb.start_agent(node, self.url)
        return node

    def close(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
        self.tb.destroy()
        if self.etcd is not None:
            self.etcd.stop()


def iperf(tb: Testbed, server, client, seconds: float) -> float:
    """TCP throughput client → server in Gbit/s (iperf3's receiver side)."""
    env = dict(os.environ, NETLAB_LAB=tb.name)
    srv = netns.popen_in(server.netns, ["iperf3", "-s", "-1", "-B", str(server.ip)],
                         stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"), env=env)
    try:
        out = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = netns.run_in(client.netns, ["iperf3", "-c", str(server.ip), "-t", str(seconds), "-J"],
                             capture_output=True, text=True, env=env)
            result = json.loads(p.stdout or "{}")
            if "error" not in result and p.returncode == 0:
                out = result
                break
            time.sleep(0.05)  # the server is not listening yet: retry the connect
        if out is None:
            raise RuntimeError(f"iperf3 failed: {p.stdout[-500:]} {p.stderr[-500:]}")
        return out["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=10)


def throughput(workdir: str, store_kind: str, seconds: float, repeat: int) -> dict[str, float]:
    """Median Gbit/s per path over `repeat` runs, the paths interleaved within a bed."""
    runs: dict[str, list[float]] = {}
    for label, conf in (("vxlan", VXLAN), ("host-gw", HOST_GW)):
        bed = Bed(workdir, store_kind, conf)
        try:
            n1, n2 = bed.node(1), bed.node(2)
            a, b = bed.tb.add_pod(n1, "a"), bed.tb.add_pod(n1, "b")
            c = bed.tb.add_pod(n2, "c")
            c_subnet = str(n2.subnet())
            wait_for(lambda: c_subnet in {r.dst for r in _observe(n1, conf).routes}, 10, what="routes")
            for _ in range(repeat):
                if label == "vxlan":
                    runs.setdefault("same-node", []).append(iperf(bed.tb, b, a, seconds))
                runs.setdefault(label, []).append(iperf(bed.tb, c, a, seconds))
        finally:
            bed.close()
    return {k: statistics.median(v) for k, v in runs.items()}


def _observe(node, conf):
    with Kernel(node.netns) as k:
        return k.observe(netconf.parse(conf), node.subnet())


def convergence(workdir: str, store_kind: str, nodes: int, adds: int) -> list[float]:
    bed = Bed(workdir, store_kind, VXLAN)
    times = []
    try:
        running = [bed.node(i) for i in range(1, nodes + 1)]
        for n in running:
            bed.tb.wait_lease(n, timeout=60)
        for extra in range(nodes + 1, nodes + adds + 1):
            new = bed.node(extra)
            ip = str(new.ip.ip)
            key = wait_for(lambda: next((kv.key for kv in bed.store.list(leases.FLANNEL_SUBNETS)[0]
                                         if kv.value["PublicIP"] == ip), None), 60, interval=0.002,
                           what=f"n{extra}'s lease")
            t0 = time.monotonic()
            subnet = str(leases.subnet_of_key(key))
            mac = bed.store.get(key).value["BackendData"]["VtepMAC"]

            pending = list(running)

            def everywhere():
                # Check only the nodes not yet programmed: the probe must not starve the agents.
                for n in list(pending):
                    st = _observe(n, VXLAN)
                    if subnet in {r.dst for r in st.routes} and (mac, ip) in {(f.mac, f.dst) for f in st.fdb}:
                        pending.remove(n)
                return not pending

            wait_for(everywhere, 30, interval=0.01, what="every node to program the new one")
            times.append(time.monotonic() - t0)
            bed.tb.wait_lease(new)
            running.append(new)
    finally:
        bed.close()
    return times


def lab_convergence(workdir: str, store: str, nodes: int, adds: int) -> list[dict[str, float]]:
    """`node add` in a real `nodes`-node lab on `store` (embedded or etcd): seconds per add, see the docstring."""
    from netlab import lab
    from netlab.spec.lab import NodeSpec

    name = f"nlf-bench-{uuid.uuid4().hex[:4]}"
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  nodes: {nodes}\n"
                + ("  store: {type: etcd}\n" if store == "etcd" else ""))
    out = []
    try:
        lab.up([path], None, 600)
        for i in range(adds):
            node = f"node{nodes + i + 1}"
            before = lab.plan_from_record(lab.require_record(name))
            plan = lab.plan_join(before, [(NodeSpec(node), "bench")])
            new = plan.node(node)
            ip, subnet = str(new.ip), str(new.pod_cidr)
            peers = list(before.nodes)
            seen: dict[str, float] = {}
            stop = threading.Event()

            def watch() -> None:
                # The new lease in the store, then each peer's route and FDB entry: only the peers not
                # yet programmed are looked at, so the probe does not starve the agents.
                store = lab.store_for(name)
                try:
                    mac = None
                    while mac is None and not stop.is_set():
                        kv = store.get(leases.subnet_key(new.pod_cidr))
                        if kv is not None and kv.value.get("PublicIP") == ip:
                            seen["lease"] = time.monotonic()
                            mac = kv.value["BackendData"]["VtepMAC"]
                        else:
                            time.sleep(0.002)
                    pending = list(peers)
                    while pending and not stop.is_set():
                        for n in list(pending):
                            with Kernel(n.netns) as k:
                                st = k.observe(plan.lab.pod_network, n.pod_cidr)
                            if subnet in {r.dst for r in st.routes} and (mac, ip) in {(e.mac, e.dst) for e in st.fdb}:
                                pending.remove(n)
                        if pending:
                            time.sleep(0.01)
                    if not pending:
                        seen["peers"] = time.monotonic()
                finally:
                    store.close()

            t = threading.Thread(target=watch, daemon=True)
            t0 = time.monotonic()
            t.start()
            try:
                res = lab.node_add(name, node)
                t.join(30)
            finally:
                stop.set()
            if "peers" not in seen:
                raise RuntimeError(f"{node}: not programmed on every peer within 30 s of its add")
            out.append({"lease": seen["lease"] - t0, "peers": seen["peers"] - t0,
                        "lease_to_peers": seen["peers"] - seen["lease"], "ready": res.ready_at - t0})
    finally:
        lab.teardown(name)
    return out


def idle_cpu(workdir: str, store: str, nodes: int, seconds: float = 10.0) -> dict[str, float]:
    """CPU of an idle `nodes`-node lab's processes over `seconds`, per kind, in % of one core (/proc/PID/stat)."""
    from netlab import daemons, lab

    name = f"nlf-bench-{uuid.uuid4().hex[:4]}"
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec:\n  nodes: {nodes}\n"
                + ("  store: {type: etcd}\n" if store == "etcd" else ""))

    def ticks(pid: int | None) -> int:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, TypeError):
            return 0

    try:
        lab.up([path], None, 600)
        time.sleep(2)  # past the start-up
        pids = {p[:-4]: daemons.recorded_pid(name, p[:-4]) for p in os.listdir(daemons.pid_dir(name))}
        start = {d: ticks(pid) for d, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        out: dict[str, float] = {}
        for d, pid in pids.items():
            kind = d.split("-node")[0]
            out[kind] = out.get(kind, 0.0) + 100 * (ticks(pid) - start[d]) / os.sysconf("SC_CLK_TCK") / elapsed
        return out
    finally:
        lab.teardown(name)


def _ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):>7.0f} {max(ms):>7.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--adds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="iperf3 runs per path (the median is shown)")
    ap.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite",
                    help="the test beds' store (the lab part measures both)")
    ap.add_argument("--only", choices=("throughput", "convergence", "lab", "idle"), help="run one part")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/overlay.py needs root (network namespaces)")
    parts = [args.only] if args.only else ["throughput", "convergence", "lab", "idle"]
    print(f"# bench/overlay.py --seconds {args.seconds:g} --repeat {args.repeat} --nodes {args.nodes} "
          f"--adds {args.adds} --store {args.store}" + (f" --only {args.only}" if args.only else ""))
    print(f"# {os.cpu_count()} cores, kernel {platform.release()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    with tempfile.TemporaryDirectory(prefix="netlab-bench-overlay-") as workdir:
        if "throughput" in parts:
            tp = throughput(workdir, args.store, args.seconds, args.repeat)
            same = tp["same-node"]
            print(f"{'path':<28} {'Gbit/s':>8} {'ratio to same-node':>20}")
            print(f"{'pod->pod same node (cni0)':<28} {same:>8.2f} {1.0:>20.2f}")
            print(f"{'pod->pod across, vxlan':<28} {tp['vxlan']:>8.2f} {tp['vxlan'] / same:>20.2f}")
            print(f"{'pod->pod across, host-gw':<28} {tp['host-gw']:>8.2f} {tp['host-gw'] / same:>20.2f}")
        if "convergence" in parts:
            conv = convergence(workdir, args.store, args.nodes, args.adds)
            ms = [t * 1000 for t in conv]
            print(f"node add in a {args.nodes}-node test bed: lease -> programmed on every peer: "
                  f"median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms over {len(ms)} adds")
        if "lab" in parts:
            print(f"node add in a {args.nodes}-node lab, {args.adds} adds per store (ms: median, max)")
            print(f"{'store':<9} {'add->lease':>15} {'add->peers':>15} {'lease->peers':>15} {'add->ready':>15}")
            for store in ("embedded", "etcd"):
                runs = lab_convergence(workdir, store, args.nodes, args.adds)
                print(f"{store:<9} " + " ".join(f"{_ms([r[k] for r in runs]):>15}"
                                               for k in ("lease", "peers", "lease_to_peers", "ready")))
        if "idle" in parts:
            print(f"idle {args.nodes}-node lab, CPU over 10 s in % of one core")
            for store in ("embedded", "etcd"):
                cpu = idle_cpu(workdir, store, args.nodes)
                print(f"{store:<9} " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items()))
                      + f"; all {sum(cpu.values()):.0f}")
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
