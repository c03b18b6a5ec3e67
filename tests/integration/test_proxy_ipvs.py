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
from proxy.ipvs import DUMMY_DEVICE, plan
from proxy.ipvs_kernel import IpvsBackend, KernelIpvs, ipvs_unavailable_reason
from tests.helpers import unique
from tests.vm.minilab import CLUSTER_IP, NODE_IP, UDP_CLUSTER_IP, MiniLab, mini_state


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
    # A per-service scheduler (annotation) updates only that service's virtual servers in place.
    backend.service_schedulers = {("default", "dns"): "sh"}
    backend.sync(fewer, set(fewer.services))
    assert backend.last_changes.services_updated == 1 and backend.last_changes.total == 1
    assert f"UDP {UDP_CLUSTER_IP}:53 sh" in _ipvs_table(lab)
    backend.service_schedulers = {}
    backend.sync(state, None)
    assert backend.last_changes.real_servers_added == 4


def test_schedulers_load(lab):
    """Every scheduler kube-proxy documents is accepted by the kernel (ip_vs_<name> modules)."""
    from proxy.ipvs import SCHEDULERS, VirtualServer

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
