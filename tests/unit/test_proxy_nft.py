"""nftables mode's pure half: names, the full and partial transactions, and the flow table via the walker."""

from __future__ import annotations

import pytest

from proxy.model import Endpoint, ProxyState, ServicePort, ServicePortName
from proxy.nft_walker import NftWalker, parse
from proxy.nftables import full_text, hash_and_truncate, partial_text
from tests.packet_flows import FLOWS, TOPOLOGY, Flow, assert_walk, flow_state, local_addresses


def walker_for(text: str) -> NftWalker:
    return NftWalker(parse(text), local_addresses())


@pytest.fixture(scope="module")
def walker() -> NftWalker:
    return walker_for(full_text(flow_state(), TOPOLOGY.service_cidr).text)


def test_chain_names_hash_as_kube_proxys():
    # The examples in kube-proxy's nftables proxier comments.
    assert hash_and_truncate("ns1/svc1/tcp/p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80") == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert len(hash_and_truncate("x" * 300)) == 256


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_flow(walker: NftWalker, flow: Flow):
    assert_walk(walker.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port), flow)


def _drop_endpoint(services, slices):
    for s in slices:
        if s["metadata"]["name"] == "web-flows":
            s["endpoints"] = s["endpoints"][:1]


def test_walker_sees_a_removed_endpoint_disappear():
    w = walker_for(full_text(flow_state(_drop_endpoint)).text)
    flow = FLOWS[0]
    eps = {o.endpoint for o in w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, "TCP", flow.dest_port)}
    assert len(eps) == 1 and eps < set(flow.endpoints)


def test_full_text_has_kube_proxys_structure():
    text = full_text(flow_state(), TOPOLOGY.service_cidr).text
    assert text.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")
    assert "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }" in text
    lines = text.splitlines()
    # Rules go in as `add chain NAME { ... }` (no `add rule`: it makes nft read every chain back first).
    assert not [l for l in lines if l.startswith("add rule")]
    assert ("add chain ip kube-proxy services { ip daddr . meta l4proto . th dport vmap @service-ips ; "
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports ; }") in lines
    assert ("add chain ip kube-proxy masquerading { mark and 0x4000 == 0 return ; mark set mark xor 0x4000 ; "
            "masquerade fully-random ; }") in lines
    web = hash_and_truncate("default/web/tcp/")
    assert f"10.96.0.10 . tcp . 80 : goto service-{web}" in text
    # The endpoint choice: a numgen ladder (no anonymous set per service; see proxy/nftables.py).
    a1, a2 = (hash_and_truncate(f"default/web/tcp/__{TOPOLOGY.pod(p).ip}/8080") for p in ("a1", "a2"))
    assert (f"add chain ip kube-proxy service-{web} {{ ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 "
            f"jump mark-for-masquerade ; numgen random mod 2 0 goto endpoint-{a1} ; goto endpoint-{a2} ; }}") in lines
    assert "vmap {" not in text
    assert "10.96.0.20 . tcp . 80 : goto reject-chain" in text  # no endpoints: rejected
    assert "tcp . 30082 : drop" in text  # Local, none here: dropped
    assert "flags dynamic,timeout ; timeout 10800s" in text  # sticky's affinity sets


def test_partial_sync_names_only_the_changed_service():
    before = flow_state()
    applied = full_text(before).applied
    after = flow_state(_drop_endpoint)
    web = next(k for k in before.services if k.name == "web")
    r = partial_text(after, {web}, applied)
    assert r is not None and r.touched_services == 1
    lines = r.text.splitlines()
    assert all("default/web/" in l for l in lines if "chain" in l or "service-ips" in l), r.text
    # Only commands nft runs without reading the table back: the gone endpoint's chain is flushed...
    assert {" ".join(l.split()[:2]) for l in lines} == {"add chain", "flush chain"}, r.text
    gone = [l.split()[-1] for l in lines if l.startswith("flush chain ip kube-proxy endpoint-")]
    assert len(gone) == 1 and r.applied.stale == {gone[0]: 0.0}
    # ...and deleted by the first full sync at least STALE_CHAIN_AGE later (kube-proxy's staleChains).
    assert f"delete chain ip kube-proxy {gone[0]}" not in full_text(after, applied=r.applied, now=0.5).text
    later = full_text(after, applied=r.applied, now=1.0)
    assert f"delete chain ip kube-proxy {gone[0]}" in later.text.splitlines() and later.applied.stale == {}
    # The walker applying the partial text on top of the full one reaches the same result as a full sync.
    w = walker_for(full_text(before).text + r.text)
    flow = FLOWS[0]
    eps = {o.endpoint for o in w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, "TCP", flow.dest_port)}
    assert len(eps) == 1
    assert partial_text(after, set(), r.applied).text == ""


def test_partial_sync_of_a_deleted_service_removes_its_chains_and_elements():
    before = flow_state()
    applied = full_text(before).applied
    web = next(k for k in before.services if k.name == "web")
    gone = ProxyState(node=before.node, services={k: v for k, v in before.services.items() if k != web},
                      endpoints={k: v for k, v in before.endpoints.items() if k != web})
    r = partial_text(gone, {web}, applied)
    assert "delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }" in r.text
    assert "delete element ip kube-proxy cluster-ips { 10.96.0.10 }" in r.text
    w = walker_for(full_text(before).text + r.text)
    assert {o.endpoint for o in w.trace("10.244.1.10", "10.96.0.10", "TCP", 80)} == {None}


def test_affinity_timeout_change_needs_a_full_sync():
    n = ServicePortName("default", "s", "", "TCP")
    eps = {n: (Endpoint("10.244.1.2", 80),)}
    s1 = ProxyState(services={n: ServicePort(n, cluster_ip="10.96.0.5", port=80, session_affinity_client_ip=True,
                                              sticky_max_age_seconds=60)}, endpoints=eps)
    s2 = ProxyState(services={n: ServicePort(n, cluster_ip="10.96.0.5", port=80, session_affinity_client_ip=True,
                                              sticky_max_age_seconds=120)}, endpoints=eps)
    assert partial_text(s2, {n}, full_text(s1).applied) is None


def test_endpoint_choice_is_uniform_and_set_free():
    from fractions import Fraction

    from proxy.nftables import endpoint_choice

    assert endpoint_choice([]) == []
    assert endpoint_choice(["e0"]) == ["goto e0"]
    for n in (2, 3, 5, 8):
        rules = endpoint_choice([f"e{i}" for i in range(n)])
        assert len(rules) == n and rules[-1] == f"goto e{n - 1}"
        reach, got = Fraction(1), []
        for r in rules[:-1]:
            mod = int(r.split()[3])
            assert r.split()[4] == "0" and "{" not in r
            got.append(reach / mod)
            reach -= reach / mod
        got.append(reach)
        assert got == [Fraction(1, n)] * n


def _sticky_timeout(seconds):
    def edit(services, slices):
        for s in services:
            if s["metadata"]["name"] == "sticky":
                s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = seconds
    return edit


def test_full_sync_over_a_known_table_keeps_affinity_sets_and_drops_stale_chains():
    """kube-proxy's full sync: no table replacement when the last sync is known."""
    before = flow_state()
    first = full_text(before, TOPOLOGY.service_cidr)
    after = flow_state(_drop_endpoint)
    r = full_text(after, TOPOLOGY.service_cidr, first.applied)
    lines = r.text.splitlines()
    assert "delete table ip kube-proxy" not in lines
    assert "flush map ip kube-proxy service-ips" in lines and "flush set ip kube-proxy cluster-ips" in lines
    web = hash_and_truncate("default/web/tcp/")
    assert lines.index(f"add chain ip kube-proxy service-{web}") + 1 == lines.index(
        f"flush chain ip kube-proxy service-{web}")
    # The endpoint a2 of web is gone: its chain is flushed after everything else...
    a2 = "endpoint-" + hash_and_truncate(f"default/web/tcp/__{TOPOLOGY.pod('a2').ip}/8080")
    assert lines[-1] == f"flush chain ip kube-proxy {a2}" and r.applied.stale == {a2: 0.0}
    assert not [l for l in lines if l.startswith("delete chain")]
    # ...and deleted by a full sync at least STALE_CHAIN_AGE later, once; not before.
    assert full_text(after, TOPOLOGY.service_cidr, r.applied, now=0.9).applied.stale == {a2: 0.0}
    later = full_text(after, TOPOLOGY.service_cidr, r.applied, now=1.0)
    assert later.text.splitlines()[-1] == f"delete chain ip kube-proxy {a2}" and later.applied.stale == {}
    assert "delete chain" not in full_text(after, TOPOLOGY.service_cidr, later.applied, now=9.0).text
    # Affinity sets are added (kept if present), never deleted when unchanged.
    assert not [l for l in lines if l.startswith("delete set")]
    assert [l for l in lines if l.startswith("add set ip kube-proxy affinity-")]
    # Walked on top of the first sync, it gives what a fresh table gives.
    w = walker_for(first.text + r.text)
    fresh = walker_for(full_text(after, TOPOLOGY.service_cidr).text)
    for flow in FLOWS:
        args = (TOPOLOGY.source_ip(flow.source), flow.dest_ip, flow.protocol, flow.dest_port)
        key = lambda outs: sorted((o.verdict, o.endpoint or "", o.masquerade) for o in outs)  # noqa: E731
        assert key(w.trace(*args)) == key(fresh.trace(*args)), flow.name


def test_full_sync_recreates_an_affinity_set_whose_timeout_changed():
    first = full_text(flow_state(), TOPOLOGY.service_cidr)
    r = full_text(flow_state(_sticky_timeout(60)), TOPOLOGY.service_cidr, first.applied)
    lines = r.text.splitlines()
    deleted = [l.split()[-1] for l in lines if l.startswith("delete set")]
    assert len(deleted) == 2  # sticky has two endpoints, one set each
    for name in deleted:
        i = lines.index(f"delete set ip kube-proxy {name}")
        assert lines[i + 1] == f"add set ip kube-proxy {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }}"
        users = [j for j, l in enumerate(lines) if f"@{name}" in l]
        flushes = [j for j, l in enumerate(lines) if l.startswith("flush chain") and "sticky" in l]
        assert users and min(users) > i and max(flushes) < i  # referring chains flushed before, rules after


def test_an_endpoint_back_before_its_stale_chain_is_deleted_gets_the_chain_rewritten():
    before = flow_state()
    first = full_text(before)
    web = next(k for k in before.services if k.name == "web")
    gone = partial_text(flow_state(_drop_endpoint), {web}, first.applied, now=1.0)
    back = partial_text(before, {web}, gone.applied, now=1.5)
    a2 = next(iter(gone.applied.stale))
    assert back.applied.stale == {}
    assert f"add chain ip kube-proxy {a2} {{ ip saddr {TOPOLOGY.pod('a2').ip} jump mark-for-masquerade ; " \
           f"meta l4proto tcp dnat to {TOPOLOGY.pod('a2').ip}:8080 ; }}" in back.text.splitlines()
    w = walker_for(first.text + gone.text + back.text)
    flow = FLOWS[0]
    eps = {o.endpoint for o in w.trace(TOPOLOGY.source_ip(flow.source), flow.dest_ip, "TCP", flow.dest_port)}
    assert eps == set(flow.endpoints)
    # A later full sync has nothing stale to delete.
    assert "delete chain" not in full_text(before, applied=back.applied, now=9.0).text


def test_walker_reads_chain_blocks():
    from proxy.nft_walker import _block_items

    assert _block_items('{ ip daddr { 10.0.0.0/8, 10.1.0.0/16 } drop ; comment "a;b" ; }') == [
        "ip daddr { 10.0.0.0/8, 10.1.0.0/16 } drop", 'comment "a;b"']
    rs = parse("add table ip kube-proxy\n"
               "add chain ip kube-proxy x { type nat hook prerouting priority -100 ; }\n"
               'add chain ip kube-proxy y { comment "helper" ; }\n'
               "add chain ip kube-proxy x { jump y ; }\n"
               'add chain ip kube-proxy y { reject comment "no" ; }\n')
    assert rs.hooks["prerouting"] == [(-100, "nat", "x")]
    assert rs.chains == {"x": ["jump y"], "y": ["reject"]}
