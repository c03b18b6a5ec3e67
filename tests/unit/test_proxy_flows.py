"""The packet-flow table through the rule walker: iptables rules, no root (kube-proxy's packetFlowTest)."""

from __future__ import annotations

import pytest

from proxy.iptables import Options, build
from proxy.walker import parse, Walker
from tests.packet_flows import FLOWS, PROXY_NODE, TOPOLOGY, Flow, assert_walk, flow_state, local_addresses


@pytest.fixture(scope="module")
def walker() -> Walker:
    rs = build(flow_state(), None, Options(random_fully=True))
    return Walker(parse(rs.text), local_addresses())


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flow(walker: Walker, flow: Flow):
    assert_walk(walker.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port), flow)


def test_walker_sees_a_removed_endpoint_disappear():
    """A table that cannot fail is no test: changing the objects changes the walk."""
    def one_endpoint(services, slices):
        for s in slices:
            if s["metadata"]["name"] == "web-flows":
                s["endpoints"] = s["endpoints"][:1]

    rs = build(flow_state(one_endpoint), None)
    w = Walker(parse(rs.text), [TOPOLOGY.node(PROXY_NODE).ip])
    flow = FLOWS[0]
    eps = {o.endpoint for o in w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, "TCP", flow.dest_port)}
    assert len(eps) == 1 and eps < set(flow.endpoints)
