"""IPVS mode's pure half: the plan, the ipset restore text, the iptables text, the sync's diff and draining."""

from __future__ import annotations

from proxy import ipset
from proxy.ipvs import (
    IPSET_RULES,
    RealServer,
    VirtualServer,
    categorize_endpoints,
    iptables_text,
    missing_jumps,
    plan,
    sysctls_for_kernel,
)
from proxy.ipvs_kernel import PerCallIpvs
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
             scheduler="wlc")
    cip = p.virtual_servers[("10.96.0.10", "TCP", 80)]
    assert (cip.scheduler, cip.persistent_timeout) == ("wlc", 600)
    np_rs = p.real_servers[("192.168.1.10", "TCP", 30080)]
    assert sorted(map(str, np_rs)) == ["10.244.1.5:8080"]  # Local: only this node's endpoint
    assert p.ipsets["KUBE-NODE-PORT-LOCAL-TCP"] == {"30080"}
    p2 = plan(state(ipvs_scheduler="sh"), scheduler="wlc")  # the Service's annotation wins over the flag
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


def test_scheduler_per_lab_and_per_service_from_the_objects():
    from netlab.spec.source import load_text
    from proxy.model import build_state, load_objects

    text = """\
apiVersion: v1
kind: Service
metadata:
  name: hashed
  annotations: {kube-router.io/service.scheduler: sh}
spec:
  clusterIP: 10.96.0.21
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec:
  type: NodePort
  clusterIP: 10.96.0.22
  ports: [{port: 80, nodePort: 30022}]
"""
    st = build_state(*load_objects(load_text(text, "s.yaml")), NODE)
    by_addr = {(vs.address, vs.port): vs.scheduler for vs in plan(st, scheduler="lc").virtual_servers.values()}
    assert by_addr == {("10.96.0.21", 80): "sh", ("10.96.0.22", 80): "lc", ("192.168.1.10", 30022): "lc"}
    assert {vs.scheduler for vs in plan(st).virtual_servers.values()} == {"sh", "rr"}


# -- the sync against a kernel: a fake one with ipvsadm's counters -----------------------------------


class FakeIpvs(PerCallIpvs):
    """KernelIpvs's interface over dicts; `conns` sets what the kernel would count per real server."""

    def __init__(self) -> None:
        self.table: dict[tuple, VirtualServer] = {}
        self.dests: dict[tuple, dict[tuple[str, int], RealServer]] = {}
        self.conns: dict[tuple[str, int], tuple[int, int]] = {}  # (address, port) -> (active, inactive)
        self.calls: list[str] = []

    def services(self):
        return dict(self.table)

    def real_servers(self, vs):
        return {RealServer(r.address, r.port, r.weight, *self.conns.get(r.key, (0, 0)))
                for r in self.dests[vs.key].values()}

    def add_service(self, vs):
        self.calls.append(f"add-vs {vs}")
        self.table[vs.key], self.dests[vs.key] = vs, {}

    def update_service(self, vs):
        self.calls.append(f"update-vs {vs}")
        self.table[vs.key] = vs

    def delete_service(self, vs):
        self.calls.append(f"delete-vs {vs}")
        del self.table[vs.key], self.dests[vs.key]

    def add_real_server(self, vs, rs):
        self.calls.append(f"add-rs {vs.address}:{vs.port} {rs} w{rs.weight}")
        self.dests[vs.key][rs.key] = RealServer(rs.address, rs.port, rs.weight)

    def update_real_server(self, vs, rs):
        self.calls.append(f"update-rs {vs.address}:{vs.port} {rs} w{rs.weight}")
        self.dests[vs.key][rs.key] = RealServer(rs.address, rs.port, rs.weight)

    def delete_real_server(self, vs, rs):
        self.calls.append(f"delete-rs {vs.address}:{vs.port} {rs}")
        del self.dests[vs.key][rs.key]

    def weights(self, vs_key) -> dict[str, int]:
        return {f"{a}:{p}": r.weight for (a, p), r in self.dests[vs_key].items()}


def _sync(k: FakeIpvs, st: ProxyState, terminating=None, now=0.0, timeout=900.0, scheduler="rr"):
    from proxy.ipvs_kernel import IpvsChanges, sync_ipvs_table

    ch = IpvsChanges()
    k.calls.clear()
    return sync_ipvs_table(k, plan(st, scheduler), ch, terminating, now, timeout), ch


def test_a_scheduler_change_updates_only_that_services_virtual_servers_in_place():
    k = FakeIpvs()
    _sync(k, state())
    _, ch = _sync(k, state())
    assert ch.total == 0 and k.calls == []
    _, ch = _sync(k, state(ipvs_scheduler="sh"))
    assert sorted(k.calls) == ["update-vs TCP 10.96.0.10:80 sh", "update-vs TCP 192.168.1.10:30080 sh"]
    assert ch.services_updated == 2 and ch.total == 2
    _, ch = _sync(k, state(), scheduler="sed")  # the flag, once the annotation is gone
    assert {vs.scheduler for vs in k.table.values()} == {"sed"} and ch.services_updated == 2


def _without(st: ProxyState, ip: str) -> ProxyState:
    return ProxyState(node=st.node, services=st.services,
                      endpoints={k: tuple(e for e in v if e.ip != ip) for k, v in st.endpoints.items()})


CIP = ("10.96.0.10", "TCP", 80)
NP = ("192.168.1.10", "TCP", 30080)


def test_graceful_termination_drains_then_deletes_in_a_later_sync():
    """graceful_termination.go: weight 0 while connections remain, deleted once they are gone."""
    k = FakeIpvs()
    term, _ = _sync(k, state())
    assert term == {}
    k.conns[("10.244.2.5", 8080)] = (1, 3)  # a live connection and three closing ones
    fewer = _without(state(), "10.244.2.5")
    term, ch = _sync(k, fewer, term, now=100.0)
    assert k.weights(CIP) == {"10.244.1.5:8080": 1, "10.244.2.5:8080": 0}  # drains: no new connections
    assert term == {CIP: {("10.244.2.5", 8080): 100.0}, NP: {("10.244.2.5", 8080): 100.0}}
    assert (ch.real_servers_quiesced, ch.real_servers_deleted) == (2, 0)
    # A later sync, connections still there: nothing is written.
    term, ch = _sync(k, fewer, term, now=160.0)
    assert k.calls == [] and term[CIP] == {("10.244.2.5", 8080): 100.0}
    # They are gone: the next sync deletes it.
    k.conns[("10.244.2.5", 8080)] = (0, 0)
    term, ch = _sync(k, fewer, term, now=220.0)
    assert sorted(k.calls) == ["delete-rs 10.96.0.10:80 10.244.2.5:8080", "delete-rs 192.168.1.10:30080 10.244.2.5:8080"]
    assert term == {} and k.weights(CIP) == {"10.244.1.5:8080": 1}


def test_graceful_termination_gives_up_after_the_timeout():
    k = FakeIpvs()
    term, _ = _sync(k, state())
    k.conns[("10.244.2.5", 8080)] = (1, 0)
    fewer = _without(state(), "10.244.2.5")
    term, _ = _sync(k, fewer, term, now=10.0, timeout=60.0)
    term, _ = _sync(k, fewer, term, now=69.0, timeout=60.0)
    assert k.calls == [] and term
    term, ch = _sync(k, fewer, term, now=70.0, timeout=60.0)
    assert ch.real_servers_deleted == 2 and term == {}


def test_no_draining_without_connections_or_for_udp():
    k = FakeIpvs()
    _sync(k, state())
    term, ch = _sync(k, _without(state(), "10.244.2.5"))  # no connections: deleted at once
    assert (ch.real_servers_deleted, ch.real_servers_quiesced, term) == (2, 0, {})
    udp = state(protocol="UDP")
    k = FakeIpvs()
    _sync(k, udp)
    k.conns[("10.244.2.5", 8080)] = (0, 5)
    term, ch = _sync(k, _without(udp, "10.244.2.5"))  # UDP: no graceful termination, as kube-proxy
    assert (ch.real_servers_deleted, term) == (2, {})


def test_an_endpoint_that_comes_back_while_draining_gets_its_weight_back():
    k = FakeIpvs()
    term, _ = _sync(k, state())
    k.conns[("10.244.2.5", 8080)] = (2, 0)
    term, _ = _sync(k, _without(state(), "10.244.2.5"), term, now=5.0)
    assert k.weights(CIP)["10.244.2.5:8080"] == 0
    term, ch = _sync(k, state(), term, now=6.0)
    assert k.weights(CIP)["10.244.2.5:8080"] == 1 and term == {}
    assert (ch.real_servers_updated, ch.real_servers_added, ch.real_servers_deleted) == (2, 0, 0)


def test_a_virtual_server_that_goes_away_goes_at_once_with_its_draining_real_servers():
    k = FakeIpvs()
    term, _ = _sync(k, state())
    k.conns[("10.244.2.5", 8080)] = (1, 0)
    term, _ = _sync(k, _without(state(), "10.244.2.5"), term, now=1.0)
    empty = ProxyState(node=NODE)
    term, ch = _sync(k, empty, term, now=2.0)
    assert k.table == {} and term == {} and ch.services_deleted == 2


def test_draining_after_a_restart_starts_from_the_kernels_weight_0():
    """A new proxy (empty list) finds a weight-0 real server with connections: it keeps draining it."""
    k = FakeIpvs()
    _sync(k, state())
    k.conns[("10.244.2.5", 8080)] = (1, 0)
    _sync(k, _without(state(), "10.244.2.5"), now=1.0)
    term, ch = _sync(k, _without(state(), "10.244.2.5"), None, now=500.0)
    assert k.calls == [] and term[CIP] == {("10.244.2.5", 8080): 500.0}
