"""IPVS mode and the shared packet-flow table, with real packets (in the stock-kernel VM here).

Same fabric, objects and checks as the iptables and nftables modes
(tests/packet_flows.py and the iptables real-packet harness); skips with
the reason on a kernel without IPVS, fails instead inside the VM.
"""

from __future__ import annotations

import os

import pytest

from netlab import netns
from proxy.ipvs_kernel import IpvsBackend, ipvs_unavailable_reason
from tests.integration.test_proxy_iptables_flows import build_fabric, check_flow, flow_state
from tests.packet_flows import FLOWS, PROXY_NODE, Flow


@pytest.fixture(scope="module")
def ipvs():
    f, where = build_fabric()
    try:
        reason = ipvs_unavailable_reason(where[PROXY_NODE])
        if reason:
            if os.environ.get("NETLAB_REQUIRE_IPVS") == "1":
                pytest.fail(f"IPVS required here but: {reason}")
            pytest.skip(reason + " (these tests run in the stock-kernel VM: test_proxy_ipvs_vm.py)")
        backend = IpvsBackend(where[PROXY_NODE])
        backend.sync(flow_state(), None)
        try:
            yield where, backend
        finally:
            backend.cleanup()
            backend.close()
    finally:
        f.close()
    assert not [n for n in netns.list_names() if n.startswith(f.prefix)]


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flow_with_real_packets(ipvs, flow: Flow):
    where, _backend = ipvs
    check_flow(where, flow)
