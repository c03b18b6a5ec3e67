"""The LoadBalancer controller: status.loadBalancer.ingress from the Lab's pool, as MetalLB does.

Allocation (MetalLB's controller): every Service of type LoadBalancer gets
one IP from the pool (spec.loadBalancerIP if given, free and in the pool;
otherwise the lowest free address), kept while the Service exists; other
types lose theirs. The proxies then capture traffic to it (KUBE-SERVICES
"loadbalancer IP" rules).

Announcement (MetalLB's speaker in BGP mode): an external client learns a
/32 route per assigned IP via a node's InternalIP, installed in each of the
lab's external-client namespaces with protocol "bgp" (186), so netlab's
routes are recognisable and removed exactly. The next hop is the first
node (by name) that has a ready endpoint for a Local service, or the first
node for a Cluster one, as a BGP router would only learn routes from
nodes that announce.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from netlab import names, netns
from netlab import store as st
from netlab.controllers.loop import run_reconciler

log = logging.getLogger("netlab.controllers.loadbalancer")

RTPROT_BGP = 186


def assign(services: dict[str, dict], pool: str) -> dict[str, list[str]]:
    """key -> ingress IPs for every LoadBalancer Service (pure; stable across calls)."""
    net = ipaddress.ip_network(pool)
    hosts = [str(h) for h in (net.hosts() if net.num_addresses > 2 else net)]
    out: dict[str, list[str]] = {}
    taken: set[str] = set()
    lbs = {k: v for k, v in sorted(services.items()) if v.get("spec", {}).get("type") == "LoadBalancer"}
    # Keep what is already assigned (and valid), then honour requests, then fill.
    for key, svc in lbs.items():
        cur = [i.get("ip") for i in (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or [])]
        cur = [ip for ip in cur if ip in hosts and ip not in taken]
        if cur:
            out[key] = cur[:1]
            taken.add(cur[0])
    for key, svc in lbs.items():
        if key in out:
            continue
        want = svc.get("spec", {}).get("loadBalancerIP")
        if want and want in hosts and want not in taken:
            out[key] = [want]
            taken.add(want)
    for key, svc in lbs.items():
        if key in out:
            continue
        free = next((h for h in hosts if h not in taken), None)
        if free is None:
            log.warning("load-balancer pool %s is exhausted: %s stays pending", pool, key)
            continue
        out[key] = [free]
        taken.add(free)
    return out


def with_ingress(svc: dict, ips: list[str]) -> dict:
    obj = dict(svc)
    status = dict(obj.get("status") or {})
    if ips:
        status["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ips]}
    else:
        status.pop("loadBalancer", None)
    if status:
        obj["status"] = status
    else:
        obj.pop("status", None)
    return obj


class LoadBalancerController:
    def __init__(self, store: st.Store, lab: str, pool: str, poll_interval: float = 0.1) -> None:
        self.store = store
        self.lab = lab
        self.pool = pool
        self.poll_interval = poll_interval

    def reconcile(self) -> int:
        kvs, _ = self.store.list(st.SERVICES)
        services = {kv.key: kv.value for kv in kvs}
        want = assign(services, self.pool)
        writes = 0
        for kv in kvs:
            new = with_ingress(kv.value, want.get(kv.key, []))
            if new != kv.value:
                if self.store.update(kv.key, new, expect_revision=kv.mod_revision) is not None:
                    writes += 1
        self.announce(want)
        return writes

    def next_hops(self, want: dict[str, list[str]]) -> dict[str, str]:
        """LB IP -> node InternalIP (the BGP next hop)."""
        nodes = {}
        for kv in self.store.list(st.NODES)[0]:
            ips = [a["address"] for a in kv.value.get("status", {}).get("addresses", []) if a.get("type") == "InternalIP"]
            if ips:
                nodes[kv.value["metadata"]["name"]] = ips[0]
        if not nodes:
            return {}
        slices = [kv.value for kv in self.store.list(st.ENDPOINTSLICES)[0]]
        hops = {}
        for key, ips in want.items():
            svc = self.store.get(key)
            local = svc is not None and svc.value.get("spec", {}).get("externalTrafficPolicy") == "Local"
            candidates = sorted(nodes)
            if local:
                ns, name = key[len(st.SERVICES):].split("/", 1)
                with_eps = {
                    e.get("nodeName") for s in slices
                    if s["metadata"].get("namespace") == ns
                    and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
                    for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready", True)
                }
                candidates = [n for n in candidates if n in with_eps] or candidates
            for ip in ips:
                hops[ip] = nodes[candidates[0]]
        return hops

    def announce(self, want: dict[str, list[str]]) -> None:
        """Routes in the lab's external-client namespaces: one /32 per LB IP, proto bgp."""
        hops = self.next_hops(want)
        prefix = names.client_netns(self.lab, "")
        for ns in netns.list_names():
            if not ns.startswith(prefix):
                continue
            try:
                with netns.iproute(ns) as ipr:
                    have = {
                        r.get_attr("RTA_DST"): r.get_attr("RTA_GATEWAY")
                        for r in ipr.get_routes(family=2, proto=RTPROT_BGP)
                    }
                    for ip, hop in hops.items():
                        if have.get(ip) != hop:
                            ipr.route("replace", dst=f"{ip}/32", gateway=hop, proto=RTPROT_BGP)
                    for ip in set(have) - set(hops):
                        ipr.route("del", dst=f"{ip}/32", proto=RTPROT_BGP)
            except OSError as e:  # a client namespace going away under us
                log.warning("announce in %s: %s", ns, e)

    def run(self, stop: threading.Event) -> None:
        """Reconcile on every Service, EndpointSlice or Node change until `stop`; a store error is waited out."""
        run_reconciler(self.store, (st.SERVICES, st.ENDPOINTSLICES, st.NODES), self.reconcile, stop,
                       self.poll_interval, log)
