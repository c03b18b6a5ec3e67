"""The overlay inside a real lab (`netlab up`): leases, flannel.1 and cross-node pod traffic.

The lab writes net-conf.json and the Node objects and starts one agent per
node (`python -m cni.overlay`); these tests check what a user of the lab
sees, as on a flannel cluster.
"""

from __future__ import annotations

import ipaddress

import pytest

from cni.overlay import netconf
from cni.overlay.kernel import Kernel
from cni.overlay.lease import Lease
from cni.overlay.testbed import icmp_echo, wait_for
from netlab import lab
from netlab.check import http_get, udp_ask
from netlab.store import FLANNEL_CONFIG, FLANNEL_SUBNETS
from tests.integration.conftest import pod

PODS = pod("a", "node1") + pod("c", "node2")


def _programmed(st: dict, conf) -> bool:
    """Every node routes to every other node's podCIDR."""
    for n in st["nodes"]:
        with Kernel(n["netns"]) as k:
            routes = {r.dst for r in k.observe(conf, ipaddress.ip_network(n["podCIDR"])).routes}
        if routes != {m["podCIDR"] for m in st["nodes"] if m["name"] != n["name"]}:
            return False
    return True


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_lab_pods_reach_each_other_across_nodes(labs, backend):
    name = labs.name()
    spec = f"nodes: 2\npodNetwork: {{Network: 10.244.0.0/16, Backend: {{Type: {backend}}}}}"
    labs.up(labs.lab_yaml(name, spec, PODS))
    st = lab.status(name)
    store = lab.store_for(name)
    try:
        conf = netconf.parse(store.get(FLANNEL_CONFIG).value)
        assert conf.backend.type == backend
        wait_for(lambda: _programmed(st, conf), 5, what="the agents to program every peer")
        # One lease per node, on its podCIDR, as flannel writes it.
        held = {}
        for kv in store.list(FLANNEL_SUBNETS)[0]:
            lease = Lease.from_store(kv.key, kv.value)
            held[str(lease.subnet)] = lease
            assert kv.value["PublicIPv6"] is None and kv.value["BackendType"] == backend
        assert {n["podCIDR"]: n["ip"] for n in st["nodes"]} == {s: str(l.public_ip) for s, l in held.items()}
        for n in st["nodes"]:
            with Kernel(n["netns"]) as k:
                have = k.observe(conf, ipaddress.ip_network(n["podCIDR"]))
            if backend == "vxlan":
                assert have.device.name == "flannel.1" and have.device.mtu == 1450
                assert have.device.local == n["ip"] and have.device.mac == held[n["podCIDR"]].vtep_mac
            else:
                assert have.device is None
                assert {(r.dst, r.gateway) for r in have.routes} == {
                    (m["podCIDR"], m["ip"]) for m in st["nodes"] if m["name"] != n["name"]}
    finally:
        store.close()

    pods = {p["name"]: p for p in st["pods"]}
    a, c = pods["a"], pods["c"]
    assert icmp_echo(a["netns"], ipaddress.ip_address(c["ip"])) == ipaddress.ip_address(c["ip"])
    assert http_get(a["netns"], c["ip"], "/clientip").split(":")[0] == a["ip"]
    assert udp_ask(c["netns"], a["ip"], "clientip").split(":")[0] == c["ip"]
