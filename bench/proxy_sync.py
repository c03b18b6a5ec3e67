"""Service proxy sync benchmark: N services x 2 endpoints in one node namespace.

Reports, for iptables-nft (the default) and iptables-legacy (the peer measured
in the same run): full sync time (build text + iptables-save + one
iptables-restore), partial sync time after one endpoint change, and the
ruleset size. Run as root:

    sudo .venv/bin/python bench/proxy_sync.py [--sizes 1000,5000,10000]

The namespace is created for the run and removed afterwards (never the host's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlab import netns  # noqa: E402
from proxy.iptables_apply import IptablesBackend  # noqa: E402
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName  # noqa: E402


def state(n: int, bump: int = 0) -> ProxyState:
    services, endpoints = {}, {}
    for i in range(n):
        name = ServicePortName("bench", f"svc-{i}", "http", "TCP")
        services[name] = ServicePort(name=name, cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}", port=80, target_port=8080)
        base = 2 * i + 2
        eps = [Endpoint(f"10.244.{base // 250}.{base % 250 + 1}", 8080, node_name="node-a"),
               Endpoint(f"10.244.{(base + 1) // 250}.{(base + 1) % 250 + 1}", 8080, node_name="node-b")]
        if i == 0 and bump:
            eps[1] = Endpoint(f"10.245.0.{bump}", 8080, node_name="node-b")
        endpoints[name] = tuple(eps)
    node = NodeContext(node_name="node-a", node_ips=("192.168.50.2",), cluster_cidr="10.244.0.0/16")
    return ProxyState(node=node, services=services, endpoints=endpoints)


def run(n: int, variant: str, ns: str, partial_runs: int = 5) -> dict[str, float]:
    backend = IptablesBackend(ns, variant)
    backend.run.timeout = 1800.0  # iptables-nft-restore of 10k services takes minutes
    s0 = state(n)
    t = time.perf_counter()
    res = backend.sync(s0, None)
    full = time.perf_counter() - t
    t = time.perf_counter()
    backend.sync(s0, None)  # a full resync over existing rules (the periodic one)
    resync = time.perf_counter() - t
    partials = []
    prev = s0
    for k in range(1, partial_runs + 1):
        s1 = state(n, bump=k)
        changed = s1.changed_from(prev)
        assert changed is not None and len(changed) == 1
        t = time.perf_counter()
        backend.sync(s1, changed)
        partials.append(time.perf_counter() - t)
        prev = s1
    partials.sort()
    backend.cleanup()
    return {"full": full, "resync": resync, "partial": partials[len(partials) // 2],
            "rules": res.rules, "chains": res.chains, "bytes": res.bytes_written}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,5000,10000")
    args = ap.parse_args()
    ns = f"nlbench-px-{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        rows = []
        for n in (int(x) for x in args.sizes.split(",")):
            r = {v: run(n, v, ns) for v in ("nft", "legacy")}
            rows.append((n, r))
        print(f"{'services':>8} {'variant':>7} {'full s':>8} {'resync s':>9} {'partial ms':>11} "
              f"{'rules':>7} {'chains':>7} {'MB':>6}")
        for n, r in rows:
            for v, m in r.items():
                print(f"{n:>8} {v:>7} {m['full']:>8.3f} {m['resync']:>9.3f} {m['partial'] * 1000:>11.1f} "
                      f"{m['rules']:>7} {m['chains']:>7} {m['bytes'] / 1e6:>6.2f}")
            print(f"{n:>8} {'nft/leg':>7} {r['nft']['full'] / r['legacy']['full']:>8.2f} "
                  f"{r['nft']['resync'] / r['legacy']['resync']:>9.2f} "
                  f"{r['nft']['partial'] / r['legacy']['partial']:>11.2f}")
    finally:
        netns.remove(ns)


if __name__ == "__main__":
    main()
