"""The packet-flow table through the rule walker: iptables rules, no root (kube-proxy's packetFlowTest)."""

from __future__ import annotations

import pytest

from netlab.spec.source import load_text
from proxy.iptables import Options, build
from proxy.model import NodeContext, build_state, load_objects
from proxy.walker import parse, Walker
from tests.packet_flows import FLOWS, OBJECTS, PROXY_NODE, TOPOLOGY, Flow


def node_context() -> NodeContext:
    node = TOPOLOGY.node(PROXY_NODE)
    return NodeContext(node_name=node.name, node_ips=(node.ip,), cluster_cidr=TOPOLOGY.cluster_cidr)


@pytest.fixture(scope="module")
def walker() -> Walker:
    services, slices = load_objects(load_text(OBJECTS, "flows.yaml"))
    rs = build(build_state(services, slices, node_context()), None, Options(random_fully=True))
    node = TOPOLOGY.node(PROXY_NODE)
    return Walker(parse(rs.text), [node.ip, node.gateway])


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flow(walker: Walker, flow: Flow):
    outcomes = walker.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port)
    if flow.verdict != "ACCEPT":
        assert {o.verdict for o in outcomes} == {flow.verdict}, outcomes
        return
    assert {o.verdict for o in outcomes} == {"ACCEPT"}, outcomes
    assert {o.endpoint for o in outcomes} == set(flow.endpoints), outcomes
    assert {o.masquerade for o in outcomes} == {flow.masquerade}, outcomes


def test_walker_sees_a_removed_endpoint_disappear():
    """A table that cannot fail is no test: changing the objects changes the walk."""
    services, slices = load_objects(load_text(OBJECTS, "flows.yaml"))
    for s in slices:
        if s["metadata"]["name"] == "web-flows":
            s["endpoints"] = s["endpoints"][:1]
    rs = build(build_state(services, slices, node_context()), None)
    w = Walker(parse(rs.text), [TOPOLOGY.node(PROXY_NODE).ip])
    flow = FLOWS[0]
    eps = {o.endpoint for o in w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, "TCP", flow.dest_port)}
    assert len(eps) == 1 and eps < set(flow.endpoints)
