"""The packet-flow table through the rule walker: iptables rules, no root (kube-proxy's packetFlowTest).

Also the cases on which kube-proxy's modes disagree (MODE_FLOWS): through
the iptables and nftables walkers, and as IPVS's plan (virtual and real
servers) for IPVS, whose real packets run only in the stock-kernel VM.
"""

from __future__ import annotations

import pytest

from proxy import ipvs
from proxy.iptables import Options, build
from proxy.nft_walker import NftWalker
from proxy.nft_walker import parse as nft_parse
from proxy.nftables import full_text
from proxy.walker import parse, Walker
from tests.packet_flows import (FLOWS, MODE_FLOWS, PROXY_NODE, TOPOLOGY, Flow, assert_walk, flow_for_mode, flow_state,
                                local_addresses)


@pytest.fixture(scope="module")
def walker() -> Walker:
    rs = build(flow_state(), None, Options(random_fully=True))
    return Walker(parse(rs.text), local_addresses())


@pytest.mark.parametrize("flow", FLOWS + MODE_FLOWS, ids=[f.name for f in FLOWS + MODE_FLOWS])
def test_flow(walker: Walker, flow: Flow):
    want = flow_for_mode(flow, "iptables")
    assert_walk(walker.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port), want)


@pytest.mark.parametrize("flow", MODE_FLOWS, ids=[f.name for f in MODE_FLOWS])
def test_mode_flow_through_the_nftables_walker(flow: Flow):
    """tests/unit/test_proxy_nft.py walks FLOWS; these are the cases kept out of it."""
    w = NftWalker(nft_parse(full_text(flow_state(), TOPOLOGY.service_cidr).text), local_addresses())
    want = flow_for_mode(flow, "nftables")
    assert_walk(w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port), want)


def _ipvs_real_servers(dest: str, protocol: str = "TCP") -> set[str]:
    ip, port = dest.rsplit(":", 1)
    p = ipvs.plan(flow_state())
    return {str(rs) for rs in p.real_servers[(ip, protocol, int(port))]}


@pytest.mark.parametrize("name", ["etp-local-without-local-endpoint-from-pod",
                                  "itp-local-with-local-endpoint", "itp-local-nodeport-from-external",
                                  "itp-local-without-local-endpoint-nodeport-from-external",
                                  *(f.name for f in MODE_FLOWS)])
def test_traffic_policy_cases_in_the_ipvs_plan(name: str):
    """IPVS mode's new policy cases as its virtual servers' real servers (the VM runs them with packets).

    IPVS has no verdict of its own for a virtual server: the real servers
    are the endpoints a connection may reach.
    """
    flow = flow_for_mode(next(f for f in FLOWS + MODE_FLOWS if f.name == name), "ipvs")
    assert flow.verdict == "ACCEPT"
    assert _ipvs_real_servers(flow.dest, flow.protocol) == set(flow.endpoints)


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


def test_internal_traffic_policy_rules_read_as_kube_proxys():
    """The rules behind the iTP cases, as kube-proxy writes them (the walkers check what they do)."""
    ipt = build(flow_state(), None).text
    assert ('-A KUBE-SERVICES -m comment --comment "default/itp-local-none has no local endpoints"'
            " -m tcp -p tcp -d 10.96.0.81 --dport 80 -j DROP") in ipt
    svl = next(l.split()[-1] for l in ipt.splitlines()
               if l.startswith("-A KUBE-SERVICES") and "default/itp-local cluster IP" in l)
    assert svl.startswith("KUBE-SVL-")
    nft = full_text(flow_state(), TOPOLOGY.service_cidr).text
    assert "10.96.0.81 . tcp . 80 : drop" in nft  # @no-endpoint-services
    assert "10.96.0.80 . tcp . 80 : goto local-" in nft  # the ClusterIP to the local policy chain
    assert "tcp . 30083 : goto external-" in nft and "tcp . 30084 : goto external-" in nft
