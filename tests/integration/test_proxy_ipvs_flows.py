"""IPVS mode and the shared packet-flow table, with real packets (in the stock-kernel VM here).

Same fabric, objects and checks as the other modes (tests/packet_flows.py
and tests/flow_lab.py); skips with the reason on a kernel without IPVS,
fails instead inside the VM.
"""

from __future__ import annotations

import os

import pytest

from proxy.ipvs_kernel import IpvsBackend, ipvs_unavailable_reason
from tests.flow_lab import check_flow, flow_fabric, programmed
from tests.packet_flows import FLOWS, MODE_FLOWS, PROXY_NODE, Flow, flow_for_mode


@pytest.fixture(scope="module")
def ipvs():
    with flow_fabric() as (_f, where):
        reason = ipvs_unavailable_reason(where[PROXY_NODE])
        if reason:
            if os.environ.get("NETLAB_REQUIRE_IPVS") == "1":
                pytest.fail(f"IPVS required here but: {reason}")
            pytest.skip(reason + " (these tests run in the stock-kernel VM: test_proxy_ipvs_vm.py)")
        with programmed(where, IpvsBackend(where[PROXY_NODE])) as p:
            yield p


@pytest.mark.parametrize("flow", FLOWS + MODE_FLOWS, ids=[f.name for f in FLOWS + MODE_FLOWS])
def test_flow_with_real_packets(ipvs, flow: Flow):
    # MODE_FLOWS: where kube-proxy's modes disagree (internalTrafficPolicy Local with no local
    # endpoint: IPVS falls back to every endpoint, kubernetes#97081), IPVS's own outcome.
    where, _backend = ipvs
    check_flow(where, flow_for_mode(flow, "ipvs"))
