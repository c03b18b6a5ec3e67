"""IPVS mode against a real kernel: kube-ipvs0, the IPVS table, ipsets, iptables, packets.

These need a kernel with IPVS and dummy links. On this project's dev
machines the kernel has neither, so the same tests run inside a stock-kernel
QEMU guest (tests/vm/runner.py, launched by test_proxy_ipvs_vm.py). Outside
the guest, on a kernel without IPVS, they skip with the reason; inside it
(NETLAB_REQUIRE_IPVS=1) a missing IPVS fails instead, so the VM run can
never pass by skipping.
"""

from __future__ import annotations

import os

import pytest

from netlab import netns
from proxy import ipset
from proxy.ipvs import DUMMY_DEVICE, GRACEFUL_TIMEOUT, plan
from proxy.ipvs_kernel import IpvsBackend, KernelIpvs, ipvs_unavailable_reason
from tests.helpers import unique
from tests.vm.minilab import CLUSTER_IP, NODE_IP, NODE_PORT, UDP_CLUSTER_IP, MiniLab, mini_state


@pytest.fixture(scope="module")
def lab():
    lab = MiniLab(unique("nltest-pm-"))
    try:
        lab.up(["web-0", "web-1", "client"])
        reason = ipvs_unavailable_reason(lab.node)
        if reason:
            if os.environ.get("NETLAB_REQUIRE_IPVS") == "1":
                pytest.fail(f"IPVS required here but: {reason}")
            pytest.skip(reason + " (these tests run in the stock-kernel VM: test_proxy_ipvs_vm.py)")
        yield lab
    finally:
        lab.down()
    for ns in lab.namespaces():
        assert not netns.exists(ns)


@pytest.fixture(scope="module")
def backend(lab):
    b = IpvsBackend(lab.node)
    b.sync(mini_state(lab), None)
    yield b
    b.cleanup()
    b.close()


def _ipvs_table(lab) -> dict:
    k = KernelIpvs(lab.node)
    try:
        return {str(vs): sorted(str(r) for r in rs) for vs, rs in k.table().items()}
    finally:
        k.close()


def test_sync_builds_kube_proxys_ipvs_state(lab, backend):
    state = mini_state(lab)
    want = plan(state)
    table = _ipvs_table(lab)
    assert table == {
        str(vs): sorted(str(r) for r in want.real_servers[k]) for k, vs in want.virtual_servers.items()
    }
    assert f"TCP {CLUSTER_IP}:80 rr" in table and f"UDP {UDP_CLUSTER_IP}:53 rr" in table
    assert f"TCP {NODE_IP}:30080 rr" in table
    with netns.iproute(lab.node) as ipr:
        idx = ipr.link_lookup(ifname=DUMMY_DEVICE)
        assert idx, "kube-ipvs0 missing"
        link = ipr.get_links(idx[0])[0]
        assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "dummy"
        bound = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0])}
    assert bound == {CLUSTER_IP, UDP_CLUSTER_IP}
    sets = ipset.parse_save(netns.run_in(lab.node, ["ipset", "save"], capture_output=True, text=True).stdout)
    assert set(sets) == {s.name for s in ipset.ALL_SETS}
    assert sets["KUBE-CLUSTER-IP"] == {f"{CLUSTER_IP},tcp:80", f"{UDP_CLUSTER_IP},udp:53"}
    assert sets["KUBE-NODE-PORT-TCP"] == {"30080"}
    assert f"{lab.pods['web-0']},tcp:8080,{lab.pods['web-0']}" in sets["KUBE-LOOP-BACK"]
    save = netns.run_in(lab.node, ["iptables-save"], capture_output=True, text=True).stdout
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in save
    masq = [l for l in save.splitlines() if "--match-set KUBE-CLUSTER-IP dst,dst" in l and "KUBE-MARK-MASQ" in l]
    assert len(masq) == 1 and "! -s 10.244.0.0/16" in masq[0], save
    assert "-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in save
    for key in ("net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template"):
        assert netns.read_sysctl(lab.node, key) == "1", key


def test_resync_changes_only_what_differs(lab, backend):
    state = mini_state(lab)
    backend.sync(state, set())
    assert backend.last_changes.total == 0, vars(backend.last_changes)
    # One endpoint gone: exactly its real servers go (ClusterIP, two NodePort VS, UDP), nothing else.
    fewer = mini_state(lab, endpoints=("web-1",))
    backend.sync(fewer, set(fewer.services))
    ch = backend.last_changes
    assert (ch.real_servers_deleted, ch.real_servers_added, ch.services_added, ch.services_deleted) == (4, 0, 0, 0)
    assert ch.ipset_entries_changed == 2  # web-0's KUBE-LOOP-BACK entries (tcp:8080 and udp:8080)
    # A Service's own scheduler (kube-router.io/service.scheduler) updates only its virtual server, in place.
    dns = next(k for k in fewer.services if k.name == "dns")
    hashed = _with_scheduler(fewer, dns, "sh")
    backend.sync(hashed, {dns})
    assert backend.last_changes.services_updated == 1 and backend.last_changes.total == 1
    table = _ipvs_table(lab)
    assert f"UDP {UDP_CLUSTER_IP}:53 sh" in table and f"TCP {CLUSTER_IP}:80 rr" in table
    # The lab's scheduler (--ipvs-scheduler) for every other Service; the annotation still wins.
    backend.scheduler = "wlc"
    try:
        backend.sync(hashed, None)
        table = _ipvs_table(lab)
        assert f"UDP {UDP_CLUSTER_IP}:53 sh" in table
        assert f"TCP {CLUSTER_IP}:80 wlc" in table and f"TCP {NODE_IP}:30080 wlc" in table
    finally:
        backend.scheduler = "rr"
    backend.sync(state, None)
    assert backend.last_changes.real_servers_added == 4


def _with_scheduler(state, name, scheduler):
    from dataclasses import replace

    from proxy.model import ProxyState

    services = dict(state.services)
    services[name] = replace(services[name], ipvs_scheduler=scheduler)
    return ProxyState(node=state.node, services=services, endpoints=state.endpoints)


def test_graceful_termination_drains_a_removed_endpoint(lab, backend):
    """kube-proxy's graceful termination: weight 0 while the kernel counts connections, deleted later."""
    state = mini_state(lab)
    backend.sync(state, None)
    web0 = (lab.pods["web-0"], 8080)
    for _ in range(6):  # round-robin: web-0 within a few connections
        r = lab.request(lab.pod_ns("client"), CLUSTER_IP, 80)
        if r and r[0] == "web-0":
            break
    else:
        pytest.fail("web-0 never answered through the ClusterIP")

    def dests(address: str, proto: str, port: int) -> dict:
        k = KernelIpvs(lab.node)
        try:
            vs = k.services()[(address, proto, port)]
            return {r.key: r for r in k.real_servers(vs)}
        finally:
            k.close()

    rs = dests(CLUSTER_IP, "TCP", 80)[web0]
    assert rs.active_conns + rs.inactive_conns > 0, rs  # what ipvsadm shows as ActiveConn/InActConn
    fewer = mini_state(lab, endpoints=("web-1",))
    try:
        backend.sync(fewer, set(fewer.services))
        assert backend.last_changes.real_servers_quiesced == 1
        assert dests(CLUSTER_IP, "TCP", 80)[web0].weight == 0  # still there, draining
        assert web0 not in dests(NODE_IP, "TCP", NODE_PORT)  # no connections: deleted at once
        assert web0 not in dests(UDP_CLUSTER_IP, "UDP", 53)  # UDP: no graceful termination
        assert set(lab.reach(lab.pod_ns("client"), CLUSTER_IP, 80, tries=4)) == {"web-1"}
        backend.sync(fewer, set())  # a later sync, connections still counted: it stays
        assert dests(CLUSTER_IP, "TCP", 80)[web0].weight == 0
        assert (backend.last_changes.real_servers_deleted, backend.last_changes.real_servers_quiesced) == (0, 0)
        backend.graceful_timeout = 0.0  # past the drain bound: the next sync deletes it
        backend.sync(fewer, set())
        assert web0 not in dests(CLUSTER_IP, "TCP", 80) and backend.terminating == {}
    finally:
        backend.graceful_timeout = GRACEFUL_TIMEOUT
        backend.sync(state, None)


def test_deleting_a_service_never_refuses_another(lab, backend):
    """KUBE-IPVS-FILTER rejects a new connection to an address on kube-ipvs0 that no
    service ipset entry matches. A sync that deletes one Service (its ipset entries,
    its address, its virtual server) must leave every other Service answering all the
    while: a connection to a live ClusterIP opened during such a sync is never refused."""
    import threading
    import time

    from proxy.model import ProxyState

    state = mini_state(lab)
    backend.sync(state, None)
    dns = next(k for k in state.services if k.name == "dns")
    without = ProxyState(node=state.node, services={k: v for k, v in state.services.items() if k != dns},
                         endpoints={k: v for k, v in state.endpoints.items() if k != dns})
    stop = threading.Event()
    answers: list[tuple[float, float, object]] = []  # (start, end, answer) of every connection

    def client() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = lab.request(lab.pod_ns("client"), CLUSTER_IP, 80, timeout=2.0)
            answers.append((t0, time.monotonic(), r))

    syncs: list[tuple[float, float]] = []
    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        # Until at least 5 connections overlapped a deleting sync (a fast kernel syncs in ms).
        for _ in range(30):
            t0 = time.monotonic()
            backend.sync(without, {dns})
            syncs.append((t0, time.monotonic()))
            assert backend.last_changes.services_deleted == 1
            backend.sync(state, {dns})
            assert backend.last_changes.services_added == 1
            overlapped = [a for a in answers if any(a[0] < e and s < a[1] for s, e in syncs)]
            if len(overlapped) >= 5:
                break
    finally:
        stop.set()
        t.join(5)
        backend.sync(state, None)
    assert len(overlapped) >= 5, f"only {len(overlapped)} connections overlapped a deleting sync"
    refused = [a for a in answers if a[2] is None]
    assert not refused, f"{len(refused)} of {len(answers)} connections to the live Service failed"


def test_schedulers_load(lab):
    """Every scheduler kube-proxy documents is accepted by the kernel (ip_vs_<name> modules)."""
    from proxy.ipvs import VirtualServer
    from proxy.model import IPVS_SCHEDULERS as SCHEDULERS

    k = KernelIpvs(lab.node)
    try:
        for i, s in enumerate(("rr", "wrr", "lc", "wlc", "dh", "sh", "sed", "nq")):
            assert s in SCHEDULERS
            vs = VirtualServer("10.96.99.1", "TCP", 1000 + i, s)
            k.add_service(vs)
            assert k.services()[vs.key].scheduler == s
            k.delete_service(vs)
    finally:
        k.close()


def test_cleanup_removes_everything(lab):
    b = IpvsBackend(lab.node)
    b.sync(mini_state(lab), None)
    b.cleanup()
    b.close()
    assert _ipvs_table(lab) == {}
    with netns.iproute(lab.node) as ipr:
        assert not ipr.link_lookup(ifname=DUMMY_DEVICE)
    save = netns.run_in(lab.node, ["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in save
    out = netns.run_in(lab.node, ["ipset", "list", "-n"], capture_output=True, text=True).stdout
    assert out.strip() == ""
