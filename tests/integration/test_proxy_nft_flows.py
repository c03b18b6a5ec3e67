"""nftables mode against the real kernel: the shared packet-flow table, partial syncs, cleanup.

The fabric, the objects and the per-flow checks are every mode's
(tests/packet_flows.py and tests/flow_lab.py); only the backend differs,
so all modes are held to the same table.
"""

from __future__ import annotations

import pytest

from netlab import netns
from proxy.nftables import STALE_CHAIN_AGE
from proxy.nftables_kernel import NftablesBackend
from proxy.model import ProxyState
from tests.flow_lab import check_flow, connect, flow_fabric, programmed
from tests.packet_flows import (FLOWS, MODE_FLOWS, PROXY_NODE, TOPOLOGY, Flow, flow_for_mode, flow_state,
                                local_addresses)


@pytest.fixture(scope="module")
def nft():
    with flow_fabric() as (_f, where), programmed(where, NftablesBackend(where[PROXY_NODE], TOPOLOGY.service_cidr)) as p:
        yield p


@pytest.mark.parametrize("flow", FLOWS + MODE_FLOWS, ids=[f.name for f in FLOWS + MODE_FLOWS])
def test_flow_with_real_packets(nft, flow: Flow):
    where, _backend = nft
    check_flow(where, flow_for_mode(flow, "nftables"))


def _without_endpoint(state: ProxyState, service: str, ip: str) -> ProxyState:
    eps = {k: tuple(e for e in v if not (k.name == service and e.ip == ip)) for k, v in state.endpoints.items()}
    return ProxyState(node=state.node, services=state.services, endpoints=eps)


def test_partial_sync_touches_only_the_changed_service(nft):
    where, backend = nft
    state = flow_state()
    backend.sync(state, None)
    before = backend.ruleset()
    web = next(k for k in state.services if k.name == "web")
    fewer = _without_endpoint(state, "web", TOPOLOGY.pod("a2").ip)
    r = backend.sync(fewer, {web})
    try:
        assert not r.full and r.details["services_touched"] == 1
        # The transaction names only web's chains: nothing of any other service.
        touched = {w for line in backend.last_text.splitlines() for w in line.split() if "/" in w and "-" in w}
        assert touched and all("/web/" in w for w in touched), backend.last_text
        after = backend.ruleset()
        assert after != before
        other = [l for l in before.splitlines() if "default/remote/" in l]
        assert other and all(l in after for l in other)
        flow = FLOWS[0]
        reached = {connect(where[flow.source], flow).pod for _ in range(10)}
        assert reached == {"a1"}
    finally:
        backend.sync(state, None)


def test_cleanup_removes_the_table_and_the_service_with_it():
    with flow_fabric() as (_f, where):
        flow = FLOWS[0]
        backend = NftablesBackend(where[PROXY_NODE])
        backend.sync(flow_state(), None)
        assert connect(where[flow.source], flow).pod in ("a1", "a2")
        backend.cleanup()
        assert backend.ruleset() == ""
        assert connect(where[flow.source], flow, timeout=0.5).pod is None


def test_walker_reads_the_kernels_listing_as_it_reads_the_transaction(nft):
    """`nft list table ip kube-proxy` (what a user sees) walks to the same outcomes as the script."""
    from proxy.nft_walker import NftWalker, parse
    from proxy.nftables import full_text

    _where, backend = nft
    state = flow_state()
    backend.sync(state, None)
    listed = NftWalker(parse(backend.ruleset()), local_addresses())
    scripted = NftWalker(parse(full_text(state, TOPOLOGY.service_cidr).text), local_addresses())
    for flow in FLOWS:
        args = (TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port)
        key = lambda outs: sorted((o.verdict, o.endpoint or "", o.masquerade) for o in outs)  # noqa: E731
        assert key(listed.trace(*args)) == key(scripted.trace(*args)), flow.name


def test_full_sync_over_the_live_table_keeps_affinity_and_removes_stale_chains(nft):
    """As kube-proxy's full sync: chains flushed and rewritten in place, affinity sets kept."""
    from proxy.nftables import endpoint_base

    where, backend = nft
    state = flow_state()
    backend.sync(state, None)
    sticky = next(k for k in state.services if k.name == "sticky")
    client = TOPOLOGY.source_ip("client")
    flow = next(f for f in FLOWS if f.name == "session-affinity")
    first = connect(where[flow.source], flow).pod
    assert first in ("a1", "a2")
    ep = next(e for e in state.endpoints_of(sticky) if e.ip == TOPOLOGY.pod(first).ip)
    aff = f"affinity-{endpoint_base(sticky, ep)}"

    def members() -> str:
        p = netns.run_in(where[PROXY_NODE], ["nft", "list", "set", "ip", "kube-proxy", aff],
                         capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert client in members()
    fewer = _without_endpoint(state, "web", TOPOLOGY.pod("a2").ip)
    try:
        r = backend.sync(fewer, None)
        assert r.full and "delete table" not in backend.last_text
        assert client in members()  # the client's stickiness survived the full sync
        assert {connect(where[flow.source], flow).pod for _ in range(5)} == {first}
        web = next(k for k in state.services if k.name == "web")
        gone = f"endpoint-{endpoint_base(web, next(e for e in state.endpoints_of(web) if e.ip == TOPOLOGY.pod('a2').ip))}"
        assert {connect(where["client"], FLOWS[0]).pod for _ in range(10)} == {"a1"}
        # The gone endpoint's chain is flushed now and deleted by a full sync STALE_CHAIN_AGE later.
        assert f"chain {gone} {{\n\t}}" in backend.ruleset()
        clock = backend.clock
        backend.clock = lambda: clock() + STALE_CHAIN_AGE
        try:
            backend.sync(fewer, None)
        finally:
            backend.clock = clock
        assert f"delete chain ip kube-proxy {gone}" in backend.last_text and gone not in backend.ruleset()
    finally:
        backend.sync(state, None)


def test_an_endpoint_change_at_scale_needs_no_read_back():
    """A partial sync that only rewrites chains: nft reads no cache of the (large) table."""
    import shutil

    from bench.dataplane import state_with

    if not shutil.which("strace"):
        pytest.skip("strace is not installed: it shows which netlink requests nft makes")
    with flow_fabric() as (_f, where):
        node = where[PROXY_NODE]
        backend = NftablesBackend(node)
        state = state_with(3000, [TOPOLOGY.pod("a1").ip, TOPOLOGY.pod("a2").ip])
        backend.sync(state, None)
        spn = sorted(state.services)[7]
        eps = dict(state.endpoints)
        eps[spn] = eps[spn][:1]
        fewer = ProxyState(node=state.node, services=state.services, endpoints=eps)
        r = backend.sync(fewer, {spn})
        assert not r.full and {" ".join(l.split()[:2]) for l in backend.last_text.splitlines()} == {
            "add chain", "flush chain"}
        # nft's own netlink requests for the same script: no dump of chains, sets or rules.
        p = netns.run_in(node, ["strace", "-f", "-e", "trace=sendmsg,sendto", "nft", "-c", "-f", "-"],
                         input=backend.last_text, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "NFT_MSG_GETTABLE" in p.stderr  # strace decodes the requests: proof it saw them
        assert not [m for m in ("NFT_MSG_GETCHAIN", "NFT_MSG_GETSET", "NFT_MSG_GETRULE") if m in p.stderr]
        backend.cleanup()


def test_netlab_proxy_drops_unallocated_addresses_of_its_service_cluster_ip_range(tmp_path):
    """The command line the lab runs: --service-cluster-ip-range reaches cluster-ips-check in the kernel."""
    import subprocess
    import sys

    from tests.helpers import unique
    from tests.packet_flows import OBJECTS

    ns = unique("nlpx-nft-")
    (tmp_path / "flows.yaml").write_text(OBJECTS)
    node = TOPOLOGY.node(PROXY_NODE)
    netns.create(ns, lo_up=True)
    try:
        argv = [sys.executable, "-m", "proxy", "--spec", str(tmp_path), "--mode", "nftables", "--netns", ns,
                "--node", node.name, "--node-ip", node.ip, "--cluster-cidr", TOPOLOGY.cluster_cidr,
                "--service-cluster-ip-range", TOPOLOGY.service_cidr, "--once"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        listed = netns.run_in(ns, ["nft", "list", "chain", "ip", "kube-proxy", "cluster-ips-check"],
                              capture_output=True, text=True, check=True).stdout
        assert f'ip daddr {TOPOLOGY.service_cidr} drop comment "Drop traffic to unallocated ClusterIPs"' in listed
    finally:
        netns.remove(ns)
