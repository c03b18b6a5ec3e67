"""The packet-flow table with real packets: iptables mode (nft and legacy) in real namespaces.

The fabric and the per-flow checks are tests/flow_lab.py's (every mode's);
node-a gets iptables rules through IptablesBackend, as netlab-proxy writes them.
"""

from __future__ import annotations

import pytest

from proxy.iptables_apply import IptablesBackend
from tests.flow_lab import check_flow, connect, flow_fabric, programmed
from tests.packet_flows import FLOWS, MODE_FLOWS, PROXY_NODE, Flow, flow_for_mode, flow_state


@pytest.fixture(scope="module")
def fabric():
    with flow_fabric() as fw:
        yield fw


@pytest.fixture(scope="module", params=["nft", "legacy"])
def programmed_iptables(fabric, request):
    _f, where = fabric
    with programmed(where, IptablesBackend(where[PROXY_NODE], request.param)) as p:
        yield p


@pytest.mark.parametrize("flow", FLOWS + MODE_FLOWS, ids=[f.name for f in FLOWS + MODE_FLOWS])
def test_flow_with_real_packets(programmed_iptables, flow: Flow):
    where, _backend = programmed_iptables
    check_flow(where, flow_for_mode(flow, "iptables"))


def test_cleanup_removes_the_rules_and_the_service_with_them():
    """The flows pass because of the rules: after --cleanup the ClusterIP goes nowhere.

    On a fabric of its own, so no other test's rules are in its node.
    """
    with flow_fabric() as (_f, where):
        flow = FLOWS[0]
        backend = IptablesBackend(where[PROXY_NODE], "nft")
        backend.sync(flow_state(), None)
        try:
            assert connect(where[flow.source], flow).pod in ("a1", "a2")
        finally:
            backend.cleanup()
        assert "KUBE-" not in backend.save()
        assert connect(where[flow.source], flow, timeout=0.5).pod is None
