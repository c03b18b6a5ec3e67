"""proxy.iptables: kube-proxy's own golden ruleset, chain hashing, partial syncs."""

from __future__ import annotations

import dataclasses
import random
import textwrap

import pytest

from netlab.spec.source import load_text
from proxy.iptables import (
    Options,
    Proxier,
    build,
    probability,
    service_port_chain_name,
    service_port_endpoint_chain_name,
)
from proxy.model import Endpoint, NodeContext, ProxyState, build_state, load_objects
from proxy.walker import parse

# kube-proxy's TestOverallIPTablesRules services (pkg/proxy/iptables/proxier_test.go),
# written as kubectl would accept them. Its fake proxier: node "test-node",
# node IP 192.168.0.2, local detector by cluster CIDR 10.0.0.0/8, nfacct counters,
# localhost nodeports on, no --random-fully.
GOLDEN_OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  clusterIP: 172.30.0.41
  ports: [{name: p80, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: ns2}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.0.42
  ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3001}]
  externalIPs: [192.168.99.22]
  healthCheckNodePort: 30000
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: v1
kind: Service
metadata: {name: svc3, namespace: ns3}
spec:
  type: NodePort
  clusterIP: 172.30.0.43
  ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3003}]
---
apiVersion: v1
kind: Service
metadata: {name: svc4, namespace: ns4}
spec:
  type: NodePort
  clusterIP: 172.30.0.44
  externalIPs: [192.168.99.33]
  ports: [{name: p80, port: 80, protocol: TCP, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: svc5, namespace: ns5}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Cluster
  clusterIP: 172.30.0.45
  ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3002}]
  healthCheckNodePort: 30000
  loadBalancerSourceRanges: [203.0.113.0/25]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10800}}
status:
  loadBalancer:
    ingress: [{ip: 5.6.7.8}]
---
apiVersion: v1
kind: Service
metadata: {name: svc6, namespace: ns6}
spec:
  type: ClusterIP
  clusterIP: 172.30.0.46
  ports: [{name: p80, port: 80, protocol: TCP, targetPort: 80}]
""" + "".join(
    f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
ports: [{{name: p80, port: 80, protocol: TCP}}]
endpoints:
{eps}
"""
    for ns, svc, eps in [
        ("ns1", "svc1", "- addresses: [10.180.0.1]"),
        ("ns2", "svc2", "- addresses: [10.180.0.2]"),
        ("ns3", "svc3", "- addresses: [10.180.0.3]"),
        ("ns4", "svc4", "- addresses: [10.180.0.4]\n- addresses: [10.180.0.5]\n  nodeName: test-node"),
        ("ns5", "svc5", "- addresses: [10.180.0.3]"),
    ]
)

GOLDEN_NODE = NodeContext(node_name="test-node", node_ips=("192.168.0.2",), cluster_cidr="10.0.0.0/8")
GOLDEN_OPTS = Options(localhost_nodeports=True, nfacct=True, random_fully=False)

# The expected ruleset of TestOverallIPTablesRules, as kube-proxy's test states it.
GOLDEN_EXPECTED = textwrap.dedent("""\
    *filter
    :KUBE-NODEPORTS - [0:0]
    :KUBE-SERVICES - [0:0]
    :KUBE-EXTERNAL-SERVICES - [0:0]
    :KUBE-FIREWALL - [0:0]
    :KUBE-FORWARD - [0:0]
    :KUBE-PROXY-FIREWALL - [0:0]
    -A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
    -A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
    -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
    -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
    -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
    -A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
    -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    -A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
    COMMIT
    *nat
    :KUBE-NODEPORTS - [0:0]
    :KUBE-SERVICES - [0:0]
    :KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
    :KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
    :KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
    :KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
    :KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
    :KUBE-MARK-MASQ - [0:0]
    :KUBE-POSTROUTING - [0:0]
    :KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
    :KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
    :KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
    :KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
    :KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
    :KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
    :KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
    :KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
    :KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
    :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
    :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
    -A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
    -A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
    -A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3003 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X27LE4BHSL4DOUIK
    -A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
    -A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3002 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-NUKIZ6OKUXPJNT4C
    -A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
    -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
    -A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
    -A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
    -A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
    -A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
    -A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
    -A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
    -A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
    -A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
    -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
    -A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
    -A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
    -A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
    -A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
    -A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
    -A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
    -A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
    -A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
    -A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
    -A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
    -A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
    -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
    -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
    -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
    -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
    -A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
    -A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
    -A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
    -A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
    -A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
    -A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
    -A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
    -A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
    -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
    -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
    -A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
    -A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
    -A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
    -A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
    -A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
    -A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
    -A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
    -A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
    -A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
    -A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
    -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
    -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
    -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
    -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
    COMMIT
    """)


def golden_state() -> ProxyState:
    services, slices = load_objects(load_text(GOLDEN_OBJECTS, "golden.yaml"))
    return build_state(services, slices, GOLDEN_NODE)


def canonical(text: str) -> dict[str, dict[str, list[str]]]:
    """table -> chain -> rules, order kept within a chain (kube-proxy's sortIPTablesRules compares so)."""
    return parse(text).texts()


def test_kube_proxy_overall_rules_golden():
    rs = build(golden_state(), None, GOLDEN_OPTS)
    assert canonical(rs.text) == canonical(GOLDEN_EXPECTED)
    # Rule counts, as kube-proxy's sync_proxy_rules_iptables_total{table="nat"}.
    assert rs.nat_rules == sum(1 for l in GOLDEN_EXPECTED.split("*nat")[1].splitlines() if l.startswith("-A"))


def test_chain_names_are_kube_proxys_hashes():
    assert service_port_chain_name("KUBE-SVC-", "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert service_port_chain_name("KUBE-FW-", "ns5/svc5:p80", "TCP") == "KUBE-FW-NUKIZ6OKUXPJNT4C"
    assert service_port_endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_probabilities_are_one_over_n_minus_i():
    assert [probability(n) for n in (4, 3, 2)] == ["0.2500000000", "0.3333333333", "0.5000000000"]


def _state_with(eps_a: int) -> ProxyState:
    st = golden_state()
    eps = dict(st.endpoints)
    name = next(n for n in st.services if n.name == "svc1")
    eps[name] = tuple(Endpoint(f"10.180.1.{i}", 80) for i in range(1, eps_a + 1))
    return ProxyState(st.node, st.services, eps)


def test_partial_sync_rewrites_only_changed_services_and_top_level_chains():
    full = build(_state_with(2), None, GOLDEN_OPTS)
    partial = build(_state_with(3), {("ns1", "svc1")}, GOLDEN_OPTS)
    declared = {l[1:].split()[0] for l in partial.text.splitlines() if l.startswith(":")}
    svc1 = service_port_chain_name("KUBE-SVC-", "ns1/svc1:p80", "tcp")
    svc3 = service_port_chain_name("KUBE-SVC-", "ns3/svc3:p80", "tcp")
    assert svc1 in declared and svc3 not in declared
    assert {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} <= declared
    # KUBE-SERVICES still jumps to every service: it is always rewritten whole.
    assert f"-j {svc3}" in partial.text
    # The whole ruleset, after the partial restore over the full one, is what a full sync writes.
    kernel = parse(full.text)
    parse(partial.text, into=kernel)
    assert kernel.texts() == canonical(build(_state_with(3), None, GOLDEN_OPTS).text)
    assert partial.nat_rules == build(_state_with(3), None, GOLDEN_OPTS).nat_rules


def test_stale_chains_are_flushed_and_deleted():
    full = build(_state_with(2), None, GOLDEN_OPTS)
    old_sep = service_port_endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.1.2:80")
    existing = set(canonical(full.text)["nat"]) | {"KUBE-SEP-NOTOURSATALL", "DOCKER"}
    rs = build(_state_with(1), {("ns1", "svc1")}, GOLDEN_OPTS, existing_nat_chains=existing)
    assert old_sep in rs.stale_chains and "DOCKER" not in rs.stale_chains
    assert f":{old_sep} - [0:0]" in rs.text and f"-X {old_sep}" in rs.text


def test_large_clusters_drop_endpoint_comments():
    rs = build(_state_with(3), None, Options(large_cluster_endpoints=2))
    sep = service_port_endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.1.1:80")
    assert f"-A {sep} -s 10.180.1.1 -j KUBE-MARK-MASQ" in rs.text


@pytest.mark.parametrize("bit, mark", [(14, "0x4000"), (15, "0x8000")])
def test_masquerade_mark_follows_the_bit(bit, mark):
    node = NodeContext(masquerade_bit=bit)
    assert f"-j MARK --or-mark {mark}" in build(ProxyState(node=node), None).text


def test_the_per_service_cache_changes_nothing_but_time():
    cache: dict = {}
    for n_eps, changed in ((2, None), (3, {("ns1", "svc1")}), (1, {("ns1", "svc1")}), (1, None)):
        cached = build(_state_with(n_eps), changed, GOLDEN_OPTS, cache=cache)
        plain = build(_state_with(n_eps), changed, GOLDEN_OPTS)
        assert canonical(cached.text) == canonical(plain.text)
        assert (cached.nat_rules, cached.filter_rules) == (plain.nat_rules, plain.filter_rules)
    st = golden_state()
    assert len(cache) == len(st.services)
    build(ProxyState(st.node, {}, {}), None, GOLDEN_OPTS, cache=cache)
    assert cache == {}  # deleted services leave the cache


# -- Proxier: kube-proxy's partial syncs with memory of what the kernel holds ----------------


def _apply(kernel, text: str):
    """What `iptables-restore --noflush` of `text` leaves, on the walker's model of the tables."""
    return parse(text, into=kernel)


def _mutate(rng: random.Random, st: ProxyState, spare: dict) -> ProxyState:
    """One random change a cluster makes: endpoints come and go, services too, a spec changes."""
    services, endpoints = dict(st.services), dict(st.endpoints)
    name = rng.choice(sorted(set(services) | set(spare)))
    op = rng.randrange(6)
    if name in spare:
        services[name], eps = spare.pop(name)
        if eps:
            endpoints[name] = eps
    elif op == 0:
        spare[name] = (services.pop(name), endpoints.pop(name, ()))
    elif op == 1:
        endpoints.pop(name, None)  # no endpoints: REJECT, in the filter table
    elif op == 2:
        ep = Endpoint(f"10.181.{rng.randrange(256)}.{rng.randrange(1, 255)}", 80, is_local=rng.random() < 0.5)
        endpoints[name] = (*endpoints.get(name, ()), ep)
    elif op == 3 and endpoints.get(name):
        eps = list(endpoints[name])
        eps.pop(rng.randrange(len(eps)))
        endpoints[name] = tuple(eps)
    elif op == 4:
        sp = services[name]
        services[name] = dataclasses.replace(
            sp, session_affinity_client_ip=not sp.session_affinity_client_ip, sticky_max_age_seconds=10800
        )
    else:
        sp = services[name]
        services[name] = dataclasses.replace(sp, external_ips=() if sp.external_ips else ("192.168.99.77",))
    return ProxyState(st.node, services, endpoints)


def test_proxier_full_sync_is_the_golden_ruleset():
    px = Proxier(GOLDEN_OPTS)
    rs = px.plan(golden_state())
    assert canonical(rs.text) == canonical(GOLDEN_EXPECTED)
    full = build(golden_state(), None, GOLDEN_OPTS)
    assert (rs.nat_rules, rs.filter_rules, rs.chains) == (full.nat_rules, full.filter_rules, full.chains)


def test_proxier_endpoint_change_leaves_kube_services_alone():
    px = Proxier(GOLDEN_OPTS)
    kernel = _apply(None, px.plan(_state_with(2)).text)
    px.commit()
    new = _state_with(3)
    rs = px.plan(new, new.changed_from(_state_with(2)))
    declared = {l[1:].split()[0] for l in rs.text.splitlines() if l.startswith(":")}
    svc1 = service_port_chain_name("KUBE-SVC-", "ns1/svc1:p80", "tcp")
    # Only svc1's chains: its KUBE-SERVICES line is the same, so the chain is not rewritten.
    assert svc1 in declared and not declared & {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING"}
    assert "*filter" not in rs.text
    assert not rs.full and rs.nat_rules == build(new, None, GOLDEN_OPTS).nat_rules
    px.commit()
    assert _apply(kernel, rs.text).texts() == canonical(build(new, None, GOLDEN_OPTS).text)


def test_proxier_rewrites_kube_services_whole_when_a_service_comes_or_goes():
    px = Proxier(GOLDEN_OPTS)
    st = golden_state()
    kernel = _apply(None, px.plan(st).text)
    px.commit()
    gone = next(n for n in st.services if n.name == "svc3")
    services = {k: v for k, v in st.services.items() if k != gone}
    endpoints = {k: v for k, v in st.endpoints.items() if k != gone}
    new = ProxyState(st.node, services, endpoints)
    rs = px.plan(new, new.changed_from(st))
    svc3 = service_port_chain_name("KUBE-SVC-", "ns3/svc3:p80", "tcp")
    assert ":KUBE-SERVICES - [0:0]" in rs.text and ":KUBE-NODEPORTS - [0:0]" in rs.text
    assert f"-X {svc3}" in rs.text and svc3 in rs.stale_chains
    assert "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\"" in rs.text  # whole
    px.commit()
    assert _apply(kernel, rs.text).texts() == canonical(build(new, None, GOLDEN_OPTS).text)


@pytest.mark.parametrize("seed", range(8))
def test_proxier_random_partial_syncs_end_where_a_full_sync_starts(seed):
    """After any run of partial syncs, the tables are exactly what one full sync writes."""
    rng = random.Random(seed)
    opts = Options(localhost_nodeports=True, nfacct=True, random_fully=False, large_cluster_endpoints=8)
    px = Proxier(opts)
    st = golden_state()
    kernel = _apply(None, px.plan(st).text)
    px.commit()
    spare: dict = {}
    for _ in range(25):
        new = _mutate(rng, st, spare)
        rs = px.plan(new, new.changed_from(st))
        _apply(kernel, rs.text)
        px.commit()
        fresh = build(new, None, opts)
        assert kernel.texts() == canonical(fresh.text)
        assert (rs.nat_rules, rs.filter_rules, rs.chains) == (fresh.nat_rules, fresh.filter_rules, fresh.chains)
        st = new
    # A full sync over the result writes the same tables again, and deletes nothing.
    rs = px.plan(st)
    assert rs.full and not rs.stale_chains
    assert _apply(kernel, rs.text).texts() == canonical(build(st, None, opts).text)


def test_proxier_after_a_failed_transaction_plans_a_full_sync():
    px = Proxier(GOLDEN_OPTS)
    px.plan(_state_with(2))
    px.commit()
    new = _state_with(3)
    px.plan(new, new.changed_from(_state_with(2)))
    px.abort()
    assert not px.known
    rs = px.plan(_state_with(1), {next(n for n in new.services if n.name == "svc1")})
    assert rs.full and canonical(rs.text) == canonical(build(_state_with(1), None, GOLDEN_OPTS).text)


def test_proxier_with_nothing_to_change_writes_nothing():
    px = Proxier(GOLDEN_OPTS)
    st = golden_state()
    px.plan(st)
    px.commit()
    rs = px.plan(st, {next(iter(st.services))})  # "changed", but its rules are the same
    declared = {l[1:].split()[0] for l in rs.text.splitlines() if l.startswith(":")}
    assert not declared & {"KUBE-SERVICES", "KUBE-NODEPORTS"} and "*filter" not in rs.text


def test_nat_chains_are_declared_and_written_largest_name_first():
    """For iptables-nft-restore's sorted chain list (see proxy/iptables.py): same tables, other order."""
    text = build(golden_state(), None, GOLDEN_OPTS).text
    nat = text.split("*nat\n")[1].splitlines()
    declared = [l[1:].split()[0] for l in nat if l.startswith(":")]
    assert declared == sorted(declared, reverse=True)
    written = [l.split()[1] for l in nat if l.startswith("-A")]
    assert written == sorted(written, reverse=True)  # each chain's rules together, in chain order
