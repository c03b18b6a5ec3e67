"""Benchmark: 100 sequential ADDs, then 100 DELs, through exec, ours vs the reference.

Both run in the same process, against the same kind of fresh node and pod
namespaces, with the same bridge + host-local config; each call is one
fork+exec of the plugin (inside the node namespace, as a runtime would run
it), timed from fork to exit. Prints p50/p95 per call and the ratios.

By default the two plugins take turns, call by call (ADD of pod i by the
reference, then by netlab; then the DELs the same way), so a change in the
shared machine's load hits both alike; ``--order blocks`` runs all of the
reference's calls, then all of netlab's. Every call is still sequential:
one plugin process at a time.

The floor of an exec'd call is printed too: the interpreter started with
the plugin's flags and doing nothing, and the reference bridge answering
VERSION (Go's start-up), exec'd the same way.

    sudo .venv/bin/python bench/cni.py [--pods 100] [--order turns|blocks] [--ours daemon|shim|python]
    sudo .venv/bin/python bench/cni.py --in-process 50

``--ours`` picks netlab's executables: ``daemon`` (the default), as
`netlab cni install` builds them (cni/shim.c) with `netlab cni serve`
running in the node namespace, so each exec hands its call to the daemon;
``shim``, the same executables with no daemon (each call falls back to a
Python process of its own, one exec more); ``python``, the Python
executables of ``netlab cni install --no-shim``. With the daemon, "CPU"
adds the daemon's own CPU time per call (all its threads, from
/proc/PID/task/*/schedstat) to the exec'd process's.

``--in-process N`` measures instead what the lab does: `cni.api.add` and
`cni.api.delete` of the same config for N pods, called in this process
with the node's namespace as host_netns (no exec at all).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cni import cli  # noqa: E402
from cni.runtime import Runtime  # noqa: E402
from netlab import netns  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"
PREFIX = "nlca-bench"


def conf(type_: str, ipam: str, data_dir: str) -> dict:
    return {
        "cniVersion": "1.0.0", "name": "bench", "type": type_, "bridge": "cni0",
        "isGateway": True, "isDefaultGateway": True, "hairpinMode": True, "mtu": 1450,
        "ipam": {"type": ipam, "dataDir": data_dir, "ranges": [[{"subnet": "10.250.0.0/16"}]],
                 "routes": [{"dst": "10.0.0.0/8"}]},
    }


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def task_cpu(pid: int) -> float:
    """CPU seconds of every thread of process `pid` so far (schedstat: nanoseconds on CPU)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


class Side:
    """One plugin under test: its node namespace, pod namespaces, config and executable."""

    daemon_pid: int | None = None  # the node's CNI daemon, whose CPU counts for the calls

    def __init__(self, label: str, rt: Runtime, c: dict, exe: str, pods: int, tag: str) -> None:
        self.label, self.exe = label, exe
        self.node = f"{PREFIX}-{tag}-{label}"
        self.pods = [f"{self.node}-p{i}" for i in range(pods)]
        self.rt = Runtime(cni_path=rt.cni_path, host_netns=self.node)
        self.stdin = json.dumps(c).encode()
        self.times: dict[str, list[float]] = {"ADD": [], "DEL": []}
        self.cpu: dict[str, list[float]] = {"ADD": [], "DEL": []}

    def create(self) -> None:
        netns.create(self.node)
        for n in self.pods:
            netns.create(n)

    def call(self, cmd: str, i: int) -> None:
        env = self.rt.env(cmd, f"ctr{i}", netns.path(self.pods[i]), "eth0")
        c = _children_cpu() + (task_cpu(self.daemon_pid) if self.daemon_pid else 0.0)
        t = time.perf_counter()
        r = self.rt.exec_raw(self.exe, env, self.stdin)
        self.times[cmd].append(time.perf_counter() - t)
        self.cpu[cmd].append(_children_cpu() + (task_cpu(self.daemon_pid) if self.daemon_pid else 0.0) - c)
        if r.code != 0:
            raise SystemExit(f"{self.label} {cmd} failed: {r.stdout} {r.stderr}")

    def remove(self) -> None:
        for n in self.pods + [self.node]:
            netns.remove(n)


def _children_cpu() -> float:
    """CPU seconds (user + system) of every child reaped so far, and of their reaped children.

    The reference bridge waits for the host-local it execs, so its CPU
    counts here as well. Unlike wall time, this hardly moves with the
    shared machine's load.
    """
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def floor(node: str, argv: list[str], env: dict[str, str], stdin: bytes, n: int) -> float:
    """p50 of `n` execs of argv inside `node`, as the plugins are exec'd."""
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        netns.run_in(node, argv, input=stdin, capture_output=True, env=env)
        xs.append(time.perf_counter() - t)
    return pct(xs, .5)


def in_process(pods: int) -> None:
    """api.add then api.delete of `pods` pods, in this process (the lab's path)."""
    from cni import api

    tag = uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    node = f"{PREFIX}-{tag}-node"
    names = [f"{node}-p{i}" for i in range(pods)]
    c = conf("bridge", "host-local", tmp)
    times: dict[str, list[float]] = {"ADD": [], "DEL": []}
    netns.create(node)
    try:
        for n in names:
            netns.create(n)
        for cmd, f in (("ADD", api.add), ("DEL", api.delete)):
            for i, n in enumerate(names):
                t = time.perf_counter()
                f(c, container_id=f"ctr{i}", netns=netns.path(n), host_netns=node)
                times[cmd].append(time.perf_counter() - t)
    finally:
        api.forget(node)
        for n in names + [node]:
            netns.remove(n)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"in-process, {pods} pods, load average {os.getloadavg()[0]:.2f}")
    for cmd, xs in times.items():
        print(f"{cmd:<4} p50 {pct(xs, .5)*1e3:6.2f} ms  p95 {pct(xs, .95)*1e3:6.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--order", choices=("turns", "blocks"), default="turns")
    ap.add_argument("--in-process", type=int, default=0, metavar="N", help="measure cni.api in this process instead")
    ap.add_argument("--ours", choices=("daemon", "shim", "python"), default="daemon",
                    help="netlab's executables: shim + node daemon, shim alone, or the Python ones")
    opts = ap.parse_args()
    if opts.in_process:
        in_process(opts.in_process)
        return
    tag = uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    sides: list[Side] = []
    served = None
    try:
        ours_dir = os.path.join(tmp, "bin")
        cli.install(ours_dir, shim=opts.ours != "python")
        # Reference first on CNI_PATH would shadow nothing: ours are netlab-*.
        rt = Runtime(cni_path=[REFERENCE_DIR, ours_dir])
        sides = [
            Side("ref", rt, conf("bridge", "host-local", os.path.join(tmp, "ref")),
                 os.path.join(REFERENCE_DIR, "bridge"), opts.pods, tag),
            Side("ours", rt, conf("netlab-bridge", "netlab-host-local", os.path.join(tmp, "ours")),
                 os.path.join(ours_dir, "netlab-bridge"), opts.pods, tag),
        ]
        for s in sides:
            s.create()
        if opts.ours == "daemon":
            netlab = os.path.join(os.path.dirname(sys.executable), "netlab")
            served = subprocess.Popen([netlab, "cni", "serve", "--netns", sides[1].node],
                                      stderr=subprocess.PIPE, text=True)
            if "serving" not in served.stderr.readline():
                raise SystemExit("netlab cni serve did not start")
            sides[1].daemon_pid = served.pid
        load = os.getloadavg()[0]
        if opts.order == "turns":
            for cmd in ("ADD", "DEL"):
                for i in range(opts.pods):
                    for s in sides:
                        s.call(cmd, i)
        else:
            for s in sides:
                for cmd in ("ADD", "DEL"):
                    for i in range(opts.pods):
                        s.call(cmd, i)
        python = [os.path.realpath(sys.executable), "-IS"]  # as the executables run it
        env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        floors = {
            "python " + " ".join(python[1:]) + " -c pass": floor(sides[0].node, python + ["-c", "pass"], env, b"", 50),
            "reference bridge VERSION": floor(sides[0].node, [sides[0].exe], env, b'{"cniVersion":"1.0.0"}', 50),
            f"netlab-bridge VERSION ({opts.ours})": floor(sides[1].node, [sides[1].exe], env,
                                                         b'{"cniVersion":"1.0.0"}', 50),
        }
        load_end = os.getloadavg()[0]
    finally:
        if served is not None:
            served.terminate()
            served.wait(30)
        for s in sides:
            s.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"order: {opts.order}, ours: {opts.ours}, {opts.pods} pods, load average {load:.2f} -> {load_end:.2f}")
    print(f"{'plugin':<10} {'verb':<4} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'CPU p50 ms':>11}")
    res = {"reference": sides[0].times, "netlab": sides[1].times}
    cpu = {"reference": sides[0].cpu, "netlab": sides[1].cpu}
    for who, t in res.items():
        for cmd, xs in t.items():
            print(f"{who:<10} {cmd:<4} {pct(xs, .5)*1e3:8.2f} {pct(xs, .95)*1e3:8.2f} {statistics.mean(xs)*1e3:8.2f}"
                  f" {pct(cpu[who][cmd], .5)*1e3:11.2f}")
    for what, v in floors.items():
        print(f"floor: {what}: p50 {v*1e3:.2f} ms")
    for cmd in ("ADD", "DEL"):
        r = pct(res["netlab"][cmd], .5) / pct(res["reference"][cmd], .5)
        print(f"{cmd} p50 ratio netlab/reference: {r:.2f}")


if __name__ == "__main__":
    main()
