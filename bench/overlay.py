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

    sudo .venv/bin/python bench/overlay.py [--seconds 5] [--repeat 3] [--nodes 10] [--adds 3] [--store sqlite|etcd]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--adds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="iperf3 runs per path (the median is shown)")
    ap.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/overlay.py needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="netlab-bench-overlay-") as workdir:
        tp = throughput(workdir, args.store, args.seconds, args.repeat)
        conv = convergence(workdir, args.store, args.nodes, args.adds)
    same = tp["same-node"]
    print(f"# bench/overlay.py --seconds {args.seconds:g} --repeat {args.repeat} --nodes {args.nodes} "
          f"--adds {args.adds} --store {args.store}")
    print(f"{'path':<28} {'Gbit/s':>8} {'ratio to same-node':>20}")
    print(f"{'pod->pod same node (cni0)':<28} {same:>8.2f} {1.0:>20.2f}")
    print(f"{'pod->pod across, vxlan':<28} {tp['vxlan']:>8.2f} {tp['vxlan'] / same:>20.2f}")
    print(f"{'pod->pod across, host-gw':<28} {tp['host-gw']:>8.2f} {tp['host-gw'] / same:>20.2f}")
    ms = [t * 1000 for t in conv]
    print(f"node add in a {args.nodes}-node lab: lease -> programmed on every peer: "
          f"median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms over {len(ms)} adds")


if __name__ == "__main__":
    main()
