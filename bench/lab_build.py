"""Lab build and teardown rate: netlab against Mininet 2.3 in the same run.

    sudo .venv/bin/python bench/lab_build.py [--nodes 10] [--pods 100] [--runs 1] [--skip-mininet] [--prefix bench]

netlab: `up` of NODES x PODS pods with built-in servers, then `down`, RUNS
times; reports pods/s, where the build's time went (spec, fabric and the
node daemons; the kubelet's pods; the wait for every node's overlay),
teardown time and the memory (PSS) of all the lab's processes (right after
`up`, and again 8 s later, once every flanneld has resynced) and of its
state dir (in memory: /run's tmpfs or the lab's own, see netlab.statedir), and how the
machine's CPU went during the build: `up`, the lab's processes by role
(labd: kubelet and controllers; agents: flanneld, kube-proxy and their
zygote), and everything else (other users' work, kernel threads, which
include the kernel's own namespace work). Mininet: the same number of hosts on
NODES LinuxBridge switches, no controller, cleanup=False, inside a
namespace of the benchmark's own (so its links never touch the host's root
namespace; never `mn -c`). Targets on a 2-core machine: >= 200 pods/s, 5x
Mininet's host rate, 1000 pods down in < 3 s, all netlab processes of a
1000-pod lab within 1 GiB.

The kernel destroys namespaces after their last reference is gone, in the
background; before each build the benchmark waits until the machine's
kernel time has settled, so one contender's cleanup is not billed to the
next. The load average is printed with each result: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlab import daemons, lab, names, netns, statedir  # noqa: E402


# Seconds after `up` returned when the lab's memory is measured again.
PSS_AGAIN_AFTER = 8.0


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


def dir_mib(path: str) -> float:
    """Space the files under `path` take (as du): the lab's state dir, which is memory when it is a tmpfs."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                total += os.lstat(os.path.join(root, fn)).st_blocks * 512
            except OSError:
                pass
    return total / (1 << 20)


def load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def _kernel_ticks() -> tuple[int, int]:
    """(system+irq+softirq ticks, all ticks) of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[2] + v[5] + v[6], sum(v)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def settle(limit: float = 30.0, share: float = 0.15) -> float:
    """Wait until kernel time is under `share` of the machine for two 0.5 s windows (at most `limit` s).

    What is left of the previous phase (namespaces being destroyed, by a
    kworker) shows as system time; the wait polls for it to end.
    """
    t0 = time.monotonic()
    calm = 0
    k0, a0 = _kernel_ticks()
    while time.monotonic() - t0 < limit and calm < 2:
        time.sleep(0.5)
        k1, a1 = _kernel_ticks()
        calm = calm + 1 if a1 > a0 and (k1 - k0) / (a1 - a0) < share else 0
        k0, a0 = k1, a1
    return time.monotonic() - t0


def bench_netlab(nodes: int, pods: int, prefix: str) -> dict:
    name = f"{prefix}{uuid.uuid4().hex[:5]}"
    docs = [f"apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {{name: {name}}}\nspec: {{nodes: {nodes}}}\n"]
    for n in range(nodes):
        for p in range(pods):
            docs.append(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n + 1}-{p}, labels: {{app: web}}}}\n"
                        f"spec: {{nodeName: node{n + 1}}}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("---\n".join(docs))
        path = f.name
    marks: dict[str, float] = {}

    def progress(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if what == "pods":
            marks.setdefault("pods_from", now)  # nodes, daemons and store written: the wait for pods begins
            if done * 2 >= total:
                marks.setdefault("half_pods", now)
            marks["pods_to"] = now

    cpu0 = os.times()
    busy0 = _busy_seconds()
    try:
        t0 = time.perf_counter()
        res = lab.up([path], progress, timeout=600)
        up_s = time.perf_counter() - t0
        cpu1 = os.times()
        busy = _busy_seconds() - busy0
        procs = daemons.lab_processes(name)
        mem = pss_mib(procs + [os.getpid()])
        cpu_by = cpu_by_role(procs)
        cpu_lab = sum(cpu_by.values())
        # Again once every flanneld has made its first periodic resync (5 s after it started): the
        # lab's memory as it stays (until 291ab40 each resync's dump of the node's links and FDB
        # grew every flanneld by ~10 MiB; observe now asks for flannel.1's objects only).
        time.sleep(max(0.0, PSS_AGAIN_AFTER - (time.perf_counter() - t0 - up_s)))
        mem_later = pss_mib(daemons.lab_processes(name) + [os.getpid()])
        state_mib, state_in_memory = dir_mib(names.lab_dir(name)), statedir.in_memory(names.lab_dir(name))
        t1 = time.perf_counter()
        lab.down(name)
        down_s = time.perf_counter() - t1
    finally:
        lab.teardown(name)
        os.unlink(path)
    start, end = marks.get("pods_from", t0 + up_s) - t0, marks.get("pods_to", t0 + up_s) - t0
    cpu_up = (cpu1[0] + cpu1[1]) - (cpu0[0] + cpu0[1])
    return {"pods": res.pods, "up_s": up_s, "down_s": down_s, "pss_mib": mem, "pss_later_mib": mem_later,
            "state_mib": state_mib, "state_in_memory": state_in_memory,
            "before_pods_s": start,
            "pods_s": end - start, "after_pods_s": up_s - end, "half_pods_s": marks.get("half_pods", t0 + up_s) - t0,
            "cpu_up_s": cpu_up, "cpu_lab_s": cpu_lab, "cpu_by": cpu_by,
            "cpu_others_s": max(0.0, busy - cpu_up - cpu_lab), "cpu_machine_s": busy}


def cpu_by_role(pids: list[int]) -> dict[str, float]:
    """CPU seconds of the lab's processes by role: labd (kubelet, controllers), node agents, pods' own processes."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        module = argv[argv.index(b"-m") + 1].decode() if b"-m" in argv[:-1] else ""
        role = {"netlab.labd": "labd", "cni.overlay": "agents", "proxy": "agents", "netlab.zygote": "agents"}.get(module, "other")
        out[role] = out.get(role, 0.0) + cpu_seconds(pid)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_mininet(nodes: int, pods: int, prefix: str) -> dict:
    ns = f"{prefix}-mn-{uuid.uuid4().hex[:6]}"
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
    ap.add_argument("--runs", type=int, default=1, help="netlab builds (Mininet builds once)")
    ap.add_argument("--skip-mininet", action="store_true")
    ap.add_argument("--prefix", default="bench", help="lab name prefix (a DNS label)")
    args = ap.parse_args()
    total = args.nodes * args.pods
    print(f"machine: {os.cpu_count()} cores, kernel {platform.release()}; {args.nodes} nodes x {args.pods} pods")
    print(f"{'':10} {'hosts':>6} {'build s':>8} {'hosts/s':>8} {'teardown s':>10} {'load':>5}   notes")
    rates = []
    for _ in range(args.runs):
        waited = settle()
        at = load()
        nl = bench_netlab(args.nodes, args.pods, args.prefix)
        rate = total / nl["up_s"]
        rates.append(rate)
        print(f"{'netlab':10} {total:>6} {nl['up_s']:>8.2f} {rate:>8.1f} {nl['down_s']:>10.2f} {at:>5}   "
              f"spec+fabric+daemons {nl['before_pods_s']:.2f} s, pods {nl['pods_s']:.2f} s "
              f"({total / max(nl['pods_s'], 1e-3):.0f} pods/s), nodes ready {nl['after_pods_s']:.2f} s; "
              f"half the pods running at {nl['half_pods_s']:.2f} s; "
              f"CPU: up {nl['cpu_up_s']:.1f} s, lab processes {nl['cpu_lab_s']:.1f} s ("
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(nl["cpu_by"].items())) + "), "
              f"the rest of the machine {nl['cpu_others_s']:.1f} s of {nl['cpu_machine_s']:.1f} s busy; "
              f"PSS of all lab processes {nl['pss_mib']:.0f} MiB, {PSS_AGAIN_AFTER:.0f} s later "
              f"{nl['pss_later_mib']:.0f} MiB; state dir {nl['state_mib']:.1f} MiB "
              f"({'in memory' if nl['state_in_memory'] else 'on disk'}); settled {waited:.1f} s",
              flush=True)
    if not args.skip_mininet:
        waited = settle()
        at = load()
        mn = bench_mininet(args.nodes, args.pods, args.prefix)
        mn_rate = mn["hosts"] / mn["build_s"]
        print(f"{'mininet':10} {mn['hosts']:>6} {mn['build_s']:>8.2f} {mn_rate:>8.1f} {mn['stop_s']:>10.2f} {at:>5}   "
              f"settled {waited:.1f} s")
        rate = statistics.median(rates)
        print(f"ratio netlab/mininet host rate: {rate / mn_rate:.1f}x" + (" (median netlab run)" if len(rates) > 1 else ""))
        if len(rates) > 1:
            print("ratio of each netlab run: " + ", ".join(f"{r / mn_rate:.1f}x" for r in rates))


if __name__ == "__main__":
    main()
