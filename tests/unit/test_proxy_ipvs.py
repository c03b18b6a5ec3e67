"""IPVS mode's pure half: the plan, the ipset restore text, the iptables text."""

from __future__ import annotations

import pytest

from proxy import ipset
from proxy.ipvs import (
    IPSET_RULES,
    categorize_endpoints,
    iptables_text,
    missing_jumps,
    plan,
    schedulers_from_services,
    sysctls_for_kernel,
)
from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName

WEB = ServicePortName("default", "web", "http", "TCP")
NODE = NodeContext(node_name="n1", node_ips=("192.168.1.10",), cluster_cidr="10.244.0.0/16")


def state(**svc_kw) -> ProxyState:
    kw = dict(type="NodePort", cluster_ip="10.96.0.10", port=80, node_port=30080, protocol="TCP")
    kw.update(svc_kw)
    eps = (
        Endpoint("10.244.1.5", 8080, node_name="n1", is_local=True),
        Endpoint("10.244.2.5", 8080, node_name="n2"),
        Endpoint("10.244.2.6", 8080, ready=False, serving=False, node_name="n2"),
    )
    return ProxyState(node=NODE, services={WEB: ServicePort(WEB, **kw)}, endpoints={WEB: eps})


def test_virtual_servers_real_servers_and_bound_addresses():
    p = plan(state())
    assert sorted(map(str, p.virtual_servers.values())) == [
        "TCP 10.96.0.10:80 rr",
        "TCP 192.168.1.10:30080 rr",
    ]
    rs = p.real_servers[("10.96.0.10", "TCP", 80)]
    assert sorted(map(str, rs)) == ["10.244.1.5:8080", "10.244.2.5:8080"]  # not-ready one left out
    assert all(r.weight == 1 for r in rs)
    assert p.bound_addresses == {"10.96.0.10"}  # node IPs are local already: not bound to kube-ipvs0
    assert p.ipsets == {
        "KUBE-CLUSTER-IP": {"10.96.0.10,tcp:80"},
        "KUBE-NODE-PORT-TCP": {"30080"},
        "KUBE-LOOP-BACK": {"10.244.1.5,tcp:8080,10.244.1.5"},
        "KUBE-IPVS-IPS": {"10.96.0.10"},
    }


def test_affinity_scheduler_and_local_policy():
    p = plan(state(session_affinity_client_ip=True, sticky_max_age_seconds=600, external_policy_local=True),
             scheduler="wlc", service_schedulers={("default", "other"): "sh"})
    cip = p.virtual_servers[("10.96.0.10", "TCP", 80)]
    assert (cip.scheduler, cip.persistent_timeout) == ("wlc", 600)
    np_rs = p.real_servers[("192.168.1.10", "TCP", 30080)]
    assert sorted(map(str, np_rs)) == ["10.244.1.5:8080"]  # Local: only this node's endpoint
    assert p.ipsets["KUBE-NODE-PORT-LOCAL-TCP"] == {"30080"}
    p2 = plan(state(), service_schedulers={("default", "web"): "sh"})
    assert {vs.scheduler for vs in p2.virtual_servers.values()} == {"sh"}


def test_terminating_endpoints_serve_only_when_none_is_ready():
    svc = ServicePort(WEB, cluster_ip="10.96.0.10", port=80)
    term = Endpoint("10.244.1.7", 80, ready=False, serving=True, terminating=True)
    ready = Endpoint("10.244.1.8", 80)
    assert categorize_endpoints(svc, [term, ready])[0] == (ready,)
    assert categorize_endpoints(svc, [term])[0] == (term,)


def test_external_and_load_balancer_ips():
    p = plan(state(type="LoadBalancer", external_ips=("203.0.113.7",), load_balancer_ips=("198.51.100.9",),
                   load_balancer_source_ranges=("192.0.2.0/24",)))
    assert p.bound_addresses == {"10.96.0.10", "203.0.113.7", "198.51.100.9"}
    assert p.ipsets["KUBE-EXTERNAL-IP"] == {"203.0.113.7,tcp:80"}
    assert p.ipsets["KUBE-LOAD-BALANCER"] == {"198.51.100.9,tcp:80"}
    assert p.ipsets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {"198.51.100.9,tcp:80,192.0.2.0/24"}


def test_iptables_text_is_constant_in_the_number_of_services():
    one = plan(state()).iptables
    many_services = {}
    many_eps = {}
    for i in range(50):
        n = ServicePortName("default", f"s{i}", "", "TCP")
        many_services[n] = ServicePort(n, cluster_ip=f"10.96.1.{i}", port=80)
        many_eps[n] = (Endpoint(f"10.244.3.{i}", 80),)
    many = plan(ProxyState(node=NODE, services=many_services, endpoints=many_eps)).iptables
    assert len(one.splitlines()) >= len(many.splitlines())  # one has NodePort rules on top
    assert "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" " \
           "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in one
    assert "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" " \
           "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ" in one
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000" in one
    # acceptIPVSTraffic stays the last rule of KUBE-SERVICES.
    svc_rules = [l for l in one.splitlines() if l.startswith("-A KUBE-SERVICES")]
    assert svc_rules[-1] == "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"


def test_cluster_ip_masquerade_without_cluster_cidr_and_masquerade_all():
    t = iptables_text(NodeContext(), {"KUBE-CLUSTER-IP": True})
    assert "--match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ" in t
    t = iptables_text(NodeContext(masquerade_all=True, cluster_cidr="10.0.0.0/8"), {"KUBE-CLUSTER-IP": True})
    assert "--match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ" in t


def test_local_sets_come_before_their_general_set():
    names = [r[0].name for r in IPSET_RULES]
    assert names.index("KUBE-NODE-PORT-LOCAL-TCP") < names.index("KUBE-NODE-PORT-TCP")
    assert names.index("KUBE-NODE-PORT-LOCAL-UDP") < names.index("KUBE-NODE-PORT-UDP")


def test_jumps_inserted_only_when_missing():
    j = missing_jumps("")
    assert j["nat"][0] == '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    save = "*nat\n" + "\n".join(
        f'-A {b} -m comment --comment "{c}" -j {k}' for t, b, k, c in
        [("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
         ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
         ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules")]) + "\nCOMMIT\n"
    assert "nat" not in missing_jumps(save)
    assert len(missing_jumps(save)["filter"]) == 6


def test_ipset_restore_text_touches_only_differences():
    text, n = ipset.restore_text({"KUBE-CLUSTER-IP": {"10.96.0.10,tcp:80", "10.96.0.11,tcp:80"}},
                                 {"KUBE-CLUSTER-IP": {"10.96.0.10,tcp:80", "10.96.0.12,tcp:80"}})
    assert n == 2
    changes = [l for l in text.splitlines() if not l.startswith("create")]
    assert changes == ["del KUBE-CLUSTER-IP 10.96.0.12,tcp:80 -exist", "add KUBE-CLUSTER-IP 10.96.0.11,tcp:80 -exist"]
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 comment -exist" in text
    text, _ = ipset.restore_text({}, None)
    assert "flush KUBE-LOOP-BACK" in text
    assert ipset.parse_save("create KUBE-CLUSTER-IP hash:ip,port family inet\nadd KUBE-CLUSTER-IP 1.2.3.4,tcp:80\n"
                            "create other hash:ip\nadd other 1.1.1.1\n") == {"KUBE-CLUSTER-IP": {"1.2.3.4,tcp:80"}}


def test_conn_reuse_mode_only_where_kube_proxy_sets_it():
    assert ("net.ipv4.vs.conn_reuse_mode", "0") in sysctls_for_kernel("4.19.0-20-amd64")
    assert ("net.ipv4.vs.conn_reuse_mode", "0") not in sysctls_for_kernel("6.1.0-26-amd64")
    assert ("net.ipv4.vs.conntrack", "1") in sysctls_for_kernel("6.1.0-26-amd64")


def test_scheduler_annotation():
    svcs = [{"metadata": {"name": "a", "namespace": "x", "annotations": {"netlab.io/ipvs-scheduler": "sh"}}},
            {"metadata": {"name": "b"}}]
    assert schedulers_from_services(svcs) == {("x", "a"): "sh"}
    with pytest.raises(ValueError, match="not an IPVS scheduler"):
        schedulers_from_services([{"metadata": {"name": "c", "annotations": {"netlab.io/ipvs-scheduler": "fast"}}}])
