"""Benchmark: reading back an IPVS table (what every IPVS sync diffs against), alone and beside
another namespace's.

KernelIpvs.snapshot reads all real servers from one /proc/net/ip_vs read and dumps
only the virtual servers that file left out; beside another namespace's virtual
servers (every other node of a lab on one kernel) the file stops after its first
page on Linux 6.1 (proxy.ipvs_batch.merge_snapshot). Printed per case: the
snapshot, and for scale the all-dumps read (one GET_DEST dump per virtual server,
kube-proxy's GetRealServers), with the ratio; both must give the same table.

Needs IPVS, so on this project's machines it runs in the stock-kernel guest:

    sudo .venv/bin/python -m tests.vm.runner --shell '$PY bench/ipvs_snapshot.py --services 1000'
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netlab import netns  # noqa: E402
from proxy.ipvs import RealServer, VirtualServer  # noqa: E402
from proxy.ipvs_batch import Op, parse_proc_ip_vs  # noqa: E402
from proxy.ipvs_kernel import KernelIpvs, ipvs_unavailable_reason  # noqa: E402


def filled(name: str, services: int, endpoints: int) -> KernelIpvs:
    """A new namespace with `services` TCP virtual servers of `endpoints` real servers each."""
    netns.create(name)
    with netns.iproute(name) as ipr:  # IPVS takes real servers only with a local table (lo up)
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    reason = ipvs_unavailable_reason(name)
    if reason:
        raise SystemExit(f"bench/ipvs_snapshot.py: {reason} (run it in the VM: see the docstring)")
    k = KernelIpvs(name)
    ops = []
    for i in range(services):
        vs = VirtualServer(f"10.96.{i // 250}.{i % 250 + 1}", "TCP", 80, "rr")
        ops.append(Op("add-vs", vs))
        ops += [Op("add-rs", vs, RealServer(f"10.244.{j}.{i % 250 + 1}", 8080 + i // 250)) for j in range(endpoints)]
    failed = [op for op, code in zip(ops, k.apply(ops)) if code]
    if failed:
        raise SystemExit(f"bench/ipvs_snapshot.py: {len(failed)} requests failed, first {failed[0]}")
    return k


def measure(k: KernelIpvs, label: str, services: int) -> None:
    with netns.entered(k.netns_name), open("/proc/thread-self/net/ip_vs") as f:
        listed = len(parse_proc_ip_vs(f.read()))
    t = time.perf_counter()
    snap = k.snapshot()
    t_snap = time.perf_counter() - t
    t = time.perf_counter()
    dumps = {vs.key: (vs, rs) for vs, rs in k.table().items()}
    t_dumps = time.perf_counter() - t
    if snap != dumps:
        raise SystemExit(f"bench/ipvs_snapshot.py: {label}: the snapshot differs from the dumps")
    print(f"| {label} | {services} | {listed} | {t_snap:.2f} | {t_dumps:.2f} | {t_snap / t_dumps:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=2, help="real servers per virtual server")
    args = ap.parse_args(argv)
    names = [f"nlbsnap-a{os.getpid() % 100000}", f"nlbsnap-b{os.getpid() % 100000}"]
    made: list[KernelIpvs] = []
    try:
        print("| case | services | listed by /proc | snapshot s | all dumps s | ratio |")
        print("|------|---------:|----------------:|-----------:|------------:|------:|")
        made.append(filled(names[0], args.services, args.endpoints))
        measure(made[0], "alone", args.services)
        made.append(filled(names[1], args.services, args.endpoints))
        measure(made[0], "beside another namespace's", args.services)
        print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs")
    finally:
        for k in made:
            k.close()
        for name in names:
            if netns.exists(name):
                netns.remove(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
