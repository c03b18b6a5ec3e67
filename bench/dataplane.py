"""Benchmark: first-packet latency to a ClusterIP, and sync time, per proxy mode and service count.

The shape the Kubernetes nftables blog post (2025) showed: iptables'
first-packet cost grows with the number of services (KUBE-SERVICES is
walked rule by rule), nftables' stays flat (one verdict-map lookup), IPVS
stays flat (one hash lookup). Here, in one node namespace with a client
pod and one server pod (tests/vm/minilab.py's fixture): N ClusterIP
services, each with the server pod as its endpoint (`--endpoints K`: K
server pods, every service has all K); every connection goes
to a randomly chosen service, so the rule position is random, as in a real
cluster. Latency is the time of connect() (SYN out, SYN-ACK back: the
first packet is the one that walks the NAT rules), p50 and p99 over
`--connections` new connections. Sync time is one full sync of N services
into an empty node (wall time, and the CPU time it took in this process
and its children), then one more over the programmed node (a periodic full
resync); each mode's full sync is also given as a ratio to iptables'.
"partial" is the median of 5 partial syncs, each after one service's
endpoint moved to another address (a pod rescheduled).

    sudo .venv/bin/python bench/dataplane.py [--modes iptables,nftables,userspace] [--services 1000,10000,30000]

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
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netlab import netns  # noqa: E402
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName  # noqa: E402
from tests.vm.minilab import NODE_IP, POD_CIDR, POD_GW, MiniLab  # noqa: E402


def service_ip(i: int) -> str:
    """The i-th ClusterIP in 10.96.0.0/12 (room for a million)."""
    n = (10 << 24) | (96 << 16) | (i + 10)
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def state_with(n: int, server_ip: str | list[str]) -> ProxyState:
    servers = [server_ip] if isinstance(server_ip, str) else server_ip
    services, eps = {}, {}
    for i in range(n):
        spn = ServicePortName("bench", f"svc-{i}", "", "TCP")
        services[spn] = ServicePort(spn, cluster_ip=service_ip(i), port=80, target_port=8080)
        eps[spn] = tuple(Endpoint(ip, 8080, node_name="node", is_local=True) for ip in servers)
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
    if mode == "userspace":
        from proxy.userspace import UserspaceBackend

        # A listening socket per service port in this process (one reactor thread waits on all,
        # as Go's netpoller did for kube-proxy's goroutines): 1k fits the default limits, 10k
        # needs RLIMIT_NOFILE raised (done in main).
        return UserspaceBackend(node_ns)
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


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (nft, iptables-restore).

    On a shared machine the wall time of a sync depends on who else runs;
    its CPU time much less so (kernel work done in the restore's system
    calls is charged to the restore).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def partial_sync_ms(backend, state: ProxyState, rounds: int = 5) -> float:
    """Median ms of a partial sync after one service's first endpoint moved (a pod rescheduled)."""
    names = sorted(state.services)
    times = []
    for i in range(rounds):
        spn = names[(i * 7919) % len(names)]
        eps = dict(state.endpoints)
        eps[spn] = (replace(eps[spn][0], ip="10.244.1.250"),) + eps[spn][1:]
        moved = ProxyState(node=state.node, services=state.services, endpoints=eps)
        t0 = time.perf_counter()
        backend.sync(moved, {spn})
        times.append(time.perf_counter() - t0)
        backend.sync(state, {spn})
    return statistics.median(times) * 1000


def run(modes: list[str], sizes: list[int], connections: int, seed: int, iptables: str = "legacy",
        endpoints: int = 1, partial_rounds: int = 5) -> list[dict]:
    results = []
    for n in sizes:
        for mode in modes:
            lab = MiniLab(f"nltest-pm-bench{os.getpid() % 10000}")
            try:
                servers = ["server"] + [f"server{i}" for i in range(1, endpoints)]
                lab.up(servers + ["client"])
                backend = make_backend(mode, lab.node, iptables)
                state = state_with(n, [lab.pods[s] for s in servers])
                t0, c0 = time.perf_counter(), cpu_seconds()
                first = backend.sync(state, None)
                sync_s, sync_cpu = time.perf_counter() - t0, cpu_seconds() - c0
                # A second full sync over the programmed node: what every periodic full resync costs.
                t0 = time.perf_counter()
                again = backend.sync(state, None)
                resync_s = time.perf_counter() - t0
                rng = random.Random(seed)
                ips = [service_ip(i) for i in range(n)]
                connect_times(lab.pod_ns("client"), ips[:20], 20, rng)  # warm ARP and caches
                times = connect_times(lab.pod_ns("client"), ips, connections, rng)
                results.append({
                    "mode": mode, "services": n, "endpoints": endpoints, "sync_s": round(sync_s, 2),
                    "sync_cpu_s": round(sync_cpu, 2),
                    "resync_s": round(resync_s, 2),
                    "partial_ms": round(partial_sync_ms(backend, state, partial_rounds), 1) if partial_rounds else "-",
                    "p50_ms": round(statistics.median(times) * 1000, 3),
                    "p99_ms": round(pct(times, 0.99) * 1000, 3),
                    # Per-step ms where the backend reports them (IPVS: ipset, iptables, addresses, ipvs).
                    "sync_steps_ms": _steps(first), "resync_steps_ms": _steps(again),
                })
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                backend.cleanup()
            finally:
                lab.down()
    return results


def _steps(result) -> dict:
    return {k[:-3]: v for k, v in ((result.details or {}) if result else {}).items() if k.endswith("_ms") and k != "sync_ms"}


def table(results: list[dict]) -> str:
    base = {r["services"]: r["p50_ms"] for r in results if r["mode"] == "iptables"}
    sync_base = {r["services"]: r["sync_s"] for r in results if r["mode"] == "iptables"}
    lines = ["| mode | services | full sync s | (CPU s) | resync s | sync / iptables | partial ms | p50 ms | p99 ms "
             "| p50 / iptables |",
             "|------|---------:|------------:|--------:|---------:|----------------:|-----------:|-------:|-------:"
             "|---------------:|"]
    for r in results:
        n = r["services"]
        ratio = f"{r['p50_ms'] / base[n]:.2f}" if n in base else "-"
        sync_ratio = f"{r['sync_s'] / sync_base[n]:.2f}" if sync_base.get(n) else "-"
        lines.append(f"| {r['mode']} | {n} | {r['sync_s']} | {r.get('sync_cpu_s', '-')} | {r.get('resync_s', '-')} "
                     f"| {sync_ratio} "
                     f"| {r.get('partial_ms', '-')} | {r['p50_ms']} | {r['p99_ms']} | {ratio} |")
    return "\n".join(lines)


def machine() -> str:
    """One line on where the numbers come from (the machine is shared: say so with them)."""
    u = os.uname()
    return f"kernel {u.release}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--services", default="1000,10000,30000")
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--endpoints", type=int, default=1, help="endpoints (server pods) behind every service")
    ap.add_argument("--partial-rounds", type=int, default=5,
                    help="partial syncs to time (0: none; an IPVS sync in the TCG guest takes ~2 s at 1k, ~10 s at 10k)")
    ap.add_argument("--iptables", choices=("legacy", "nft"), default="legacy", help="iptables mode's binaries")
    args = ap.parse_args(argv)
    if "userspace" in args.modes.split(","):
        import resource

        # userspace mode: a listening socket per service port, and one per proxied connection.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(int(x) for x in args.services.split(",")) * 2 + 1024
        if soft < want:
            # Root with CAP_SYS_RESOURCE may raise the hard limit too (30k services need ~31k).
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    results = run(args.modes.split(","), [int(x) for x in args.services.split(",")], args.connections, args.seed,
                  args.iptables, args.endpoints, args.partial_rounds)
    print(table(results))
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
