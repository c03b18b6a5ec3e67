"""Service proxy sync benchmark: N services x 2 endpoints in one node namespace.

For iptables-nft (the default) and iptables-legacy (the peer measured in the
same run), in a fresh namespace per size and variant:

- full:    the first sync into the empty namespace (cold: every rule built,
           one iptables-restore);
- resync:  a full sync over the existing rules, as the periodic one between
           kernel reads (rules cached, one iptables-restore);
- read:    what reading the kernel adds to a full sync (first sync after a
           restart, after a failure, once per read period in large clusters);
- partial: median of --partials syncs after one endpoint change;
- floor:   a transaction that rewrites one rule as it was: what the kernel
           charges any commit at this table size, however small;
- add:     a partial sync that adds one service, which rewrites KUBE-SERVICES
           whole (as kube-proxy does on every sync);
- loop:    the control loop's own cost for that change (validate the changed
           object, update the proxier values, diff), median, no kernel.

"resync / partial" is the gain over re-restoring everything on every sync,
kube-proxy's behaviour before MinimizeIPTablesRestore (1.26). Each figure is
the median over --runs runs; the per-part split (read, build in Python,
iptables-restore) is the last run's. Run as root:

    sudo .venv/bin/python bench/proxy_sync.py [--sizes 1000,5000,10000] [--runs 3]

Every namespace is created for the run and removed afterwards (never the host's).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlab import netns  # noqa: E402
from netlab import store as st  # noqa: E402
from netlab.spec.source import Document  # noqa: E402
from proxy.backend import SyncResult  # noqa: E402
from proxy.iptables_apply import IptablesBackend  # noqa: E402
from proxy.loop import ProxyLoop  # noqa: E402
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName  # noqa: E402

NODE = NodeContext(node_name="node-a", node_ips=("192.168.50.2",), cluster_cidr="10.244.0.0/16")


def _ip(prefix: str, k: int) -> str:
    return f"{prefix}.{k // 250}.{k % 250 + 1}"


def state(n: int, bump: int = 0) -> ProxyState:
    """n ClusterIP services, 2 endpoints each; `bump` moves service 0's second endpoint."""
    services, endpoints = {}, {}
    for i in range(n):
        name = ServicePortName("bench", f"svc-{i}", "http", "TCP")
        services[name] = ServicePort(name=name, cluster_ip=_ip("10.96", i), port=80, target_port=8080)
        eps = [Endpoint(_ip("10.244", 2 * i + 2), 8080, node_name="node-a"),
               Endpoint(_ip("10.244", 2 * i + 3), 8080, node_name="node-b")]
        if i == 0 and bump:
            eps[1] = Endpoint(f"10.245.0.{bump}", 8080, node_name="node-b")
        endpoints[name] = tuple(eps)
    return ProxyState(node=NODE, services=services, endpoints=endpoints)


def run(n: int, variant: str, prefix: str, partials: int) -> dict[str, float]:
    ns = f"{prefix}{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        backend = IptablesBackend(ns, variant)
        backend.run.timeout = 1800.0  # iptables-nft-restore of 10k services takes many seconds
        s0 = state(n)
        t = time.perf_counter()
        res = backend.sync(s0, None)
        full = time.perf_counter() - t
        split = {f"full {k}": v for k, v in backend.timing.items()}
        t = time.perf_counter()
        backend.sync(s0, None)
        resync = time.perf_counter() - t
        split.update({f"resync {k}": v for k, v in backend.timing.items()})
        backend.last_read = float("-inf")  # the read is due: a periodic full sync in a large cluster
        backend.sync(s0, None)
        read = backend.timing["read"]
        read_cpu = backend.timing["cpu"] + backend.timing["child cpu"] - split["resync cpu"] - split["resync child cpu"]
        times, prev, parts = [], s0, []
        for k in range(1, partials + 1):
            s1 = state(n, bump=k)
            changed = s1.changed_from(prev)
            assert changed is not None and len(changed) == 1
            t = time.perf_counter()
            r = backend.sync(s1, changed)
            times.append(time.perf_counter() - t)
            parts.append(backend.timing)
            assert not r.full
            prev = s1
        mid = sorted(range(partials), key=times.__getitem__)[partials // 2]
        split.update({f"partial {k}": v for k, v in parts[mid].items()})
        partial_bytes = len(backend.last_text)
        floor, floor_cpu = one_rule_restore(backend, partials)
        grown = state(n + 1, bump=partials)  # one service more: KUBE-SERVICES is rewritten whole
        t = time.perf_counter()
        r = backend.sync(grown, grown.changed_from(prev))
        added = time.perf_counter() - t
        assert not r.full
        cpu = {f"{what} cpu total": split[f"{what} cpu"] + split[f"{what} child cpu"]
               for what in ("full", "resync")}
        cpu["partial cpu total"] = statistics.median(p["cpu"] + p["child cpu"] for p in parts)
        return {"full": full, "resync": resync, "read": read, "read cpu total": max(read_cpu, 0.0),
                "floor": floor, "floor cpu total": floor_cpu, "add": added,
                "partial": times[mid], "rules": res.rules, "chains": res.chains, "bytes": res.bytes_written,
                "partial bytes": partial_bytes, **split, **cpu}
    finally:
        netns.remove(ns)


def one_rule_restore(backend: IptablesBackend, times: int) -> tuple[float, float]:
    """Median wall and CPU seconds of a transaction rewriting one rule as it is (KUBE-MARK-MASQ).

    The kernel's cost of any commit at this table size: x_tables replaces the
    whole table; nf_tables validates every chain reachable from the hooks.
    """
    text = "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\nCOMMIT\n"
    walls, cpus = [], []
    for _ in range(times):
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        backend.run([backend.restore_bin, "--noflush"], stdin=text)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def _service_doc(i: int) -> Document:
    data = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "bench"},
            "spec": {"clusterIP": _ip("10.96", i), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    return Document(data, f"{st.SERVICES}bench/svc-{i}")


def _slice_doc(i: int, bump: int = 0) -> Document:
    second = f"10.245.0.{bump}" if bump else _ip("10.244", 2 * i + 3)
    data = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-1", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [_ip("10.244", 2 * i + 2)], "nodeName": "node-a"},
                          {"addresses": [second], "nodeName": "node-b"}]}
    return Document(data, f"{st.ENDPOINTSLICES}bench/svc-{i}-1")


class _Objects:
    """A Source of n Services and their EndpointSlices, as the store would hand them over."""

    def __init__(self, n: int) -> None:
        self.docs = {}
        for i in range(n):
            for d in (_service_doc(i), _slice_doc(i)):
                self.docs[d.filename] = d

    def refresh(self) -> bool:
        return True

    def documents(self) -> dict[str, Document]:
        return dict(self.docs)

    def errors(self) -> dict[str, str]:
        return {}


class _NoKernel:
    name = "none"

    def sync(self, state: ProxyState, changed) -> SyncResult:
        return SyncResult(full=changed is None)

    def cleanup(self) -> None:
        pass


def loop_cost(n: int, partials: int) -> float:
    """The loop's median cost for one EndpointSlice change (no backend work)."""
    src = _Objects(n)
    loop = ProxyLoop(src, _NoKernel(), NODE, min_sync_period=0, sync_period=3600)
    loop.sync_once()
    times = []
    for k in range(1, partials + 1):
        d = _slice_doc(0, bump=k)
        src.docs[d.filename] = d
        t = time.perf_counter()
        r = loop.sync_once()
        times.append(time.perf_counter() - t)
        assert r is not None and not r.full
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partials", type=int, default=7)
    ap.add_argument("--netns-prefix", default="nlbench-px-", help="namespaces are this plus 6 hex digits")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    load = [os.getloadavg()[0]]
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    loops: dict[int, list[float]] = {}
    for _ in range(args.runs):
        for n in sizes:
            loops.setdefault(n, []).append(loop_cost(n, args.partials))
            for v in ("nft", "legacy"):
                results.setdefault((n, v), []).append(run(n, v, args.netns_prefix, args.partials))
                load.append(os.getloadavg()[0])

    def med(n: int, v: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(n, v)])

    print(f"{args.runs} runs, medians; load average (1 min) {min(load):.1f}-{max(load):.1f} during the run")
    print(f"{'services':>8} {'variant':>7} {'full s':>7} {'resync s':>8} {'read s':>7} {'partial ms':>10} "
          f"{'floor ms':>8} {'add ms':>7} {'loop ms':>7} {'rules':>6} {'chains':>6} {'MB':>5} {'partial kB':>10}")
    for n in sizes:
        for v in ("nft", "legacy"):
            r = results[(n, v)][-1]
            print(f"{n:>8} {v:>7} {med(n, v, 'full'):>7.3f} {med(n, v, 'resync'):>8.3f} {med(n, v, 'read'):>7.3f} "
                  f"{med(n, v, 'partial') * 1000:>10.1f} {med(n, v, 'floor') * 1000:>8.1f} "
                  f"{med(n, v, 'add') * 1000:>7.0f} "
                  f"{statistics.median(loops[n]) * 1000:>7.1f} "
                  f"{r['rules']:>6} {r['chains']:>6} {r['bytes'] / 1e6:>5.2f} {r['partial bytes'] / 1e3:>10.1f}")
    print("\nCPU time (this process + iptables-restore/save), medians: less sensitive to the load")
    print(f"{'services':>8} {'variant':>7} {'full s':>7} {'resync s':>8} {'read s':>7} {'partial ms':>10} "
          f"{'floor ms':>8}")
    for n in sizes:
        for v in ("nft", "legacy"):
            print(f"{n:>8} {v:>7} {med(n, v, 'full cpu total'):>7.3f} {med(n, v, 'resync cpu total'):>8.3f} "
                  f"{med(n, v, 'read cpu total'):>7.3f} {med(n, v, 'partial cpu total') * 1000:>10.1f} "
                  f"{med(n, v, 'floor cpu total') * 1000:>8.1f}")
    print("\nratios (medians): nft/legacy for full, resync, partial; resync/partial per variant")
    for n in sizes:
        ratio = [med(n, "nft", k) / med(n, "legacy", k) for k in ("full", "resync", "partial")]
        gain = [med(n, v, "resync") / med(n, v, "partial") for v in ("nft", "legacy")]
        print(f"{n:>8} nft/legacy {ratio[0]:.2f} {ratio[1]:.2f} {ratio[2]:.2f}   "
              f"resync/partial nft {gain[0]:.0f}x legacy {gain[1]:.0f}x")
    print("\nwhere the time goes (last run, ms): read / build (Python) / iptables-restore")
    for n in sizes:
        for v in ("nft", "legacy"):
            r = results[(n, v)][-1]
            cells = "  ".join(f"{what} {r[f'{what} read'] * 1000:.0f}/{r[f'{what} build'] * 1000:.0f}/"
                              f"{r[f'{what} restore'] * 1000:.0f}" for what in ("full", "resync", "partial"))
            print(f"{n:>8} {v:>7}  {cells}")


if __name__ == "__main__":
    main()
