"""Benchmark: first-packet latency to a ClusterIP, and sync time, per proxy mode and service count.

The shape the Kubernetes nftables blog post (2025) showed: iptables'
first-packet cost grows with the number of services (KUBE-SERVICES is
walked rule by rule), nftables' stays flat (one verdict-map lookup), IPVS
stays flat (one hash lookup). Here, in one node namespace with a client
pod and one server pod (tests/vm/minilab.py's fixture): N ClusterIP
services, each with the server pod as its endpoint; every connection goes
to a randomly chosen service, so the rule position is random, as in a real
cluster. Latency is the time of connect() (SYN out, SYN-ACK back: the
first packet is the one that walks the NAT rules), p50 and p99 over
`--connections` new connections. Sync time is one full sync of N services.

    sudo .venv/bin/python bench/dataplane.py [--modes iptables,nftables] [--services 1000,10000,30000]

IPVS needs a kernel with IPVS; on this machine that is the stock-kernel VM:

    sudo .venv/bin/python -m tests.vm.runner --bench   (see BENCHMARKS.md)

Prints a table and, per size, each mode's p50 as a ratio to iptables'.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netlab import netns  # noqa: E402
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName  # noqa: E402
from tests.vm.minilab import NODE_IP, POD_CIDR, POD_GW, MiniLab  # noqa: E402


def service_ip(i: int) -> str:
    """The i-th ClusterIP in 10.96.0.0/12 (room for a million)."""
    n = (10 << 24) | (96 << 16) | (i + 10)
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def state_with(n: int, server_ip: str) -> ProxyState:
    services, eps = {}, {}
    for i in range(n):
        spn = ServicePortName("bench", f"svc-{i}", "", "TCP")
        services[spn] = ServicePort(spn, cluster_ip=service_ip(i), port=80, target_port=8080)
        eps[spn] = (Endpoint(server_ip, 8080, node_name="node", is_local=True),)
    return ProxyState(
        node=NodeContext(node_name="node", node_ips=(NODE_IP, POD_GW), cluster_cidr=POD_CIDR),
        services=services,
        endpoints=eps,
    )


def make_backend(mode: str, node_ns: str, iptables: str = "legacy"):
    if mode == "iptables":
        from proxy.iptables_apply import IptablesBackend

        # legacy by default: iptables-nft-restore needs ~100 s for 10k services here and
        # exceeds the backend's 120 s restore timeout at 30k.
        return IptablesBackend(node_ns, iptables)
    if mode == "nftables":
        from proxy.nftables_kernel import NftablesBackend

        return NftablesBackend(node_ns)
    if mode == "ipvs":
        from proxy.ipvs_kernel import IpvsBackend

        return IpvsBackend(node_ns)
    raise SystemExit(f"unknown mode {mode}")


def connect_times(client_ns: str, ips: list[str], count: int, rng: random.Random) -> list[float]:
    """Seconds per connect() to random services; every connection is new (its own source port)."""
    out = []
    for _ in range(count):
        ip = rng.choice(ips)
        s = netns.socket_in(client_ns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        t0 = time.perf_counter()
        s.connect((ip, 80))
        out.append(time.perf_counter() - t0)
        s.close()
    return out


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def run(modes: list[str], sizes: list[int], connections: int, seed: int, iptables: str = "legacy") -> list[dict]:
    results = []
    for n in sizes:
        for mode in modes:
            lab = MiniLab(f"nltest-pm-bench{os.getpid() % 10000}")
            try:
                lab.up(["server", "client"])
                backend = make_backend(mode, lab.node, iptables)
                state = state_with(n, lab.pods["server"])
                t0 = time.perf_counter()
                backend.sync(state, None)
                sync_s = time.perf_counter() - t0
                rng = random.Random(seed)
                ips = [service_ip(i) for i in range(n)]
                connect_times(lab.pod_ns("client"), ips[:20], 20, rng)  # warm ARP and caches
                times = connect_times(lab.pod_ns("client"), ips, connections, rng)
                results.append({
                    "mode": mode, "services": n, "sync_s": round(sync_s, 2),
                    "p50_ms": round(statistics.median(times) * 1000, 3),
                    "p99_ms": round(pct(times, 0.99) * 1000, 3),
                })
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                backend.cleanup()
            finally:
                lab.down()
    return results


def table(results: list[dict]) -> str:
    base = {r["services"]: r["p50_ms"] for r in results if r["mode"] == "iptables"}
    lines = ["| mode | services | sync s | p50 ms | p99 ms | p50 / iptables |",
             "|------|---------:|-------:|-------:|-------:|---------------:|"]
    for r in results:
        ratio = f"{r['p50_ms'] / base[r['services']]:.2f}" if r["services"] in base else "-"
        lines.append(f"| {r['mode']} | {r['services']} | {r['sync_s']} | {r['p50_ms']} | {r['p99_ms']} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--services", default="1000,10000,30000")
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iptables", choices=("legacy", "nft"), default="legacy", help="iptables mode's binaries")
    args = ap.parse_args(argv)
    results = run(args.modes.split(","), [int(x) for x in args.services.split(",")], args.connections, args.seed,
                  args.iptables)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
