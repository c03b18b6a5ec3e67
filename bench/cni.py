"""Benchmark: 100 sequential ADDs, then 100 DELs, through exec, ours vs the reference.

Both run in the same process, against the same kind of fresh node and pod
namespaces, with the same bridge + host-local config; each call is one
fork+exec of the plugin (inside the node namespace, as a runtime would run
it), timed from fork to exit. Prints p50/p95 per call and the ratios.

    sudo .venv/bin/python bench/cni.py [--pods 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cni import cli  # noqa: E402
from cni.runtime import Runtime  # noqa: E402
from netlab import netns  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"


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


def run_one(label: str, rt: Runtime, c: dict, exe: str, pods: int, tag: str) -> dict[str, list[float]]:
    node = f"nltest-cni-bench-{tag}-{label}"
    names = [f"{node}-p{i}" for i in range(pods)]
    netns.create(node)
    for n in names:
        netns.create(n)
    rt.host_netns = node
    stdin = json.dumps(c).encode()
    times: dict[str, list[float]] = {"ADD": [], "DEL": []}
    try:
        for cmd in ("ADD", "DEL"):
            for i, n in enumerate(names):
                env = rt.env(cmd, f"ctr{i}", netns.path(n), "eth0")
                t = time.perf_counter()
                r = rt.exec_raw(exe, env, stdin)
                times[cmd].append(time.perf_counter() - t)
                if r.code != 0:
                    raise SystemExit(f"{label} {cmd} failed: {r.stdout} {r.stderr}")
    finally:
        for n in names + [node]:
            netns.remove(n)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    opts = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    tmp = tempfile.mkdtemp(prefix="nltest-cni-bench-")
    try:
        ours_dir = os.path.join(tmp, "bin")
        cli.install(ours_dir)
        # Reference first on CNI_PATH would shadow nothing: ours are netlab-*.
        rt = Runtime(cni_path=[REFERENCE_DIR, ours_dir])
        res = {
            "reference": run_one("ref", rt, conf("bridge", "host-local", os.path.join(tmp, "ref")),
                                 os.path.join(REFERENCE_DIR, "bridge"), opts.pods, tag),
            "netlab": run_one("ours", rt, conf("netlab-bridge", "netlab-host-local", os.path.join(tmp, "ours")),
                              os.path.join(ours_dir, "netlab-bridge"), opts.pods, tag),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'plugin':<10} {'verb':<4} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for who, t in res.items():
        for cmd, xs in t.items():
            print(f"{who:<10} {cmd:<4} {pct(xs, .5)*1e3:8.2f} {pct(xs, .95)*1e3:8.2f} {statistics.mean(xs)*1e3:8.2f}")
    for cmd in ("ADD", "DEL"):
        r = pct(res["netlab"][cmd], .5) / pct(res["reference"][cmd], .5)
        print(f"{cmd} p50 ratio netlab/reference: {r:.2f}")


if __name__ == "__main__":
    main()
