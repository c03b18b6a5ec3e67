"""Lab build and teardown rate: netlab against Mininet 2.3 in the same run.

    sudo .venv/bin/python bench/lab_build.py [--nodes 10] [--pods 100] [--skip-mininet]

netlab: `up` of NODES x PODS pods with built-in servers, then `down`;
reports pods/s, teardown time and the memory (PSS) of all the lab's
processes. Mininet: the same number of hosts on NODES LinuxBridge
switches, no controller, inside a namespace of the benchmark's own (so
its links never touch the host's root namespace). Targets on a 2-core
machine: >= 200 pods/s, 5x Mininet's host rate, 1000 pods down in < 3 s,
all netlab processes of a 1000-pod lab within 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlab import daemons, lab, netns  # noqa: E402


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def bench_netlab(nodes: int, pods: int) -> dict:
    name = f"bench{uuid.uuid4().hex[:5]}"
    docs = [f"apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec: {{nodes: {nodes}}}\n"]
    for n in range(nodes):
        for p in range(pods):
            docs.append(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n + 1}-{p}, labels: {{app: web}}}}\n"
                        f"spec: {{nodeName: node{n + 1}}}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("---\n".join(docs))
        path = f.name
    try:
        t0 = time.perf_counter()
        res = lab.up([path], None, timeout=600)
        up_s = time.perf_counter() - t0
        mem = pss_mib(daemons.lab_processes(name) + [os.getpid()])
        t1 = time.perf_counter()
        lab.down(name)
        down_s = time.perf_counter() - t1
    finally:
        lab.teardown(name)
        os.unlink(path)
    return {"pods": res.pods, "up_s": up_s, "down_s": down_s, "pss_mib": mem}


def bench_mininet(nodes: int, pods: int) -> dict:
    ns = f"nlbench-mn-{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        out = netns.run_in(ns, ["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "_mininet_build.py"),
                                str(nodes), str(pods)], capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"mininet failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        netns.remove(ns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--pods", type=int, default=100, help="pods (hosts) per node (switch)")
    ap.add_argument("--skip-mininet", action="store_true")
    args = ap.parse_args()
    total = args.nodes * args.pods
    print(f"machine: {os.cpu_count()} cores, kernel {platform.release()}; {args.nodes} nodes x {args.pods} pods")
    nl = bench_netlab(args.nodes, args.pods)
    nl_rate = total / nl["up_s"]
    print(f"{'':10} {'hosts':>6} {'build s':>8} {'hosts/s':>8} {'teardown s':>10}")
    print(f"{'netlab':10} {total:>6} {nl['up_s']:>8.2f} {nl_rate:>8.1f} {nl['down_s']:>10.2f}   "
          f"(PSS of all lab processes: {nl['pss_mib']:.0f} MiB)")
    if not args.skip_mininet:
        mn = bench_mininet(args.nodes, args.pods)
        mn_rate = mn["hosts"] / mn["build_s"]
        print(f"{'mininet':10} {mn['hosts']:>6} {mn['build_s']:>8.2f} {mn_rate:>8.1f} {mn['stop_s']:>10.2f}")
        print(f"ratio netlab/mininet host rate: {nl_rate / mn_rate:.1f}x")


if __name__ == "__main__":
    main()
