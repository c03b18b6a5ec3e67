"""The overlay's pure half: net-conf.json, leases, the desired state and its diff."""

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from cni.overlay import lease as leases
from cni.overlay import netconf, plan
from cni.overlay.lease import Lease
from cni.overlay.plan import Address, FdbEntry, Neighbour, Route
from netlab.errors import SpecError
from netlab.store import SqliteStore

N = IPv4Network


def conf(**backend):
    return netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", **backend}})


def node(ip="192.168.56.11/24"):
    return plan.Node(IPv4Interface(ip), "eth0", 1500)


def vx(subnet, ip):
    return Lease(N(subnet), IPv4Address(ip), "vxlan", 1, plan.vtep_mac(ip, 1))


# -- netconf ---------------------------------------------------------------------


def test_netconf_defaults_are_flannels():
    c = netconf.parse('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (24, "10.244.1.0", "10.244.255.0")
    assert (c.backend.vni, c.backend.port, c.backend.device) == (1, 8472, "flannel.1")
    assert c.mtu(1500) == 1450
    assert netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}).mtu(1500) == 1500
    assert netconf.parse({"Network": "10.1.0.0/26", "Backend": {"Type": "vxlan"}}).subnet_len == 27


def test_netconf_explicit_keys():
    c = netconf.parse({
        "Network": "10.10.0.0/16", "SubnetLen": 26, "SubnetMin": "10.10.4.0", "SubnetMax": "10.10.4.192",
        "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "MTU": 9000, "DirectRouting": True},
    })
    assert c.backend == netconf.Backend("vxlan", 42, 4789, 9000, True)
    assert c.mtu(1500) == 8950 and c.backend.device == "flannel.42"
    assert [str(s) for s in c.candidate_subnets()] == [
        "10.10.4.0/26", "10.10.4.64/26", "10.10.4.128/26", "10.10.4.192/26"]
    assert netconf.parse(c.to_json()) == c


@pytest.mark.parametrize("raw, field", [
    ({}, "Network"),
    ({"Network": "10.244.0.1/16"}, "Network"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 16}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "SubnetMin"),
    ({"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.7"}, "SubnetMax"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}, "SubnetMin"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}, "Backend.VNI"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}, "Backend.Port"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 100}}, "Backend.MTU"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": "yes"}}, "Backend.DirectRouting"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": 1}}, "Backend.GBP"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Learning": "off"}}, "Backend.Learning"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "GBP": True}}, "Backend.GBP"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "VNI": 2}}, "Backend.VNI"),
    ({"Network": "10.244.0.0/16", "SubnetLength": 24}, "SubnetLength"),
    ({"Network": "10.244.0.0/16", "EnableIPv6": True}, "EnableIPv6"),
])
def test_netconf_rejects_with_the_field(raw, field):
    with pytest.raises(SpecError) as e:
        netconf.parse(raw, where="lab.yaml:7")
    assert e.value.field == field and e.value.where == "lab.yaml:7"


# -- leases ------------------------------------------------------------------------


def test_lease_json_is_flannels():
    l = vx("10.244.1.0/24", "192.168.56.11")
    assert l.key == "/coreos.com/network/subnets/10.244.1.0-24"
    assert l.to_json() == {"PublicIP": "192.168.56.11", "PublicIPv6": None, "BackendType": "vxlan",
                           "BackendData": {"VNI": 1, "VtepMAC": l.vtep_mac}}
    assert Lease.from_store(l.key, l.to_json()) == l
    hg = Lease(N("10.244.2.0/24"), IPv4Address("192.168.56.12"), "host-gw")
    assert "BackendData" not in hg.to_json() and Lease.from_store(hg.key, hg.to_json()) == hg
    assert Lease.from_store("/coreos.com/network/subnets/bogus", {"PublicIP": "1.2.3.4"}) is None
    assert Lease.from_store(l.key, {"PublicIP": "nope"}) is None


def test_vtep_mac_is_stable_unicast_and_local():
    m = plan.vtep_mac("192.168.56.11", 1)
    assert m == plan.vtep_mac("192.168.56.11", 1) != plan.vtep_mac("192.168.56.12", 1)
    first = int(m.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_choose_subnet_order():
    c = conf()
    me = IPv4Address("192.168.56.11")
    taken = {N("10.244.1.0/24"): vx("10.244.1.0/24", "192.168.56.12")}
    assert leases.choose_subnet(c, taken, me) == N("10.244.2.0/24")
    assert leases.choose_subnet(c, taken, me, previous=N("10.244.7.0/24")) == N("10.244.7.0/24")
    assert leases.choose_subnet(c, taken, me, previous=N("10.244.1.0/24")) == N("10.244.2.0/24")
    taken[N("10.244.9.0/24")] = vx("10.244.9.0/24", str(me))
    assert leases.choose_subnet(c, taken, me, previous=N("10.244.7.0/24")) == N("10.244.9.0/24")
    assert leases.choose_subnet(c, taken, me, pod_cidr=N("10.244.5.0/24")) == N("10.244.5.0/24")
    with pytest.raises(leases.LeaseError):
        leases.choose_subnet(c, taken, me, pod_cidr=N("10.99.5.0/24"))
    tiny = netconf.parse({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.1.0"})
    with pytest.raises(leases.LeaseError, match="no free"):
        leases.choose_subnet(tiny, {N("10.244.1.0/24"): vx("10.244.1.0/24", "192.168.56.12")}, me)


def test_acquire_is_exclusive_reuses_and_prefers_pod_cidr(tmp_path):
    store = SqliteStore(str(tmp_path / "s.db"))
    c = conf()
    a = leases.acquire(store, c, vx("0.0.0.0/32", "192.168.56.11"), "n1")
    b = leases.acquire(store, c, vx("0.0.0.0/32", "192.168.56.12"), "n2")
    assert (a.subnet, b.subnet) == (N("10.244.1.0/24"), N("10.244.2.0/24"))
    assert leases.acquire(store, c, vx("0.0.0.0/32", "192.168.56.11"), "n1") == a  # a restart keeps it
    store.put("/registry/minions/n3", {"spec": {"podCIDR": "10.244.7.0/24"}})
    assert leases.acquire(store, c, vx("0.0.0.0/32", "192.168.56.13"), "n3").subnet == N("10.244.7.0/24")
    store.put("/registry/minions/n4", {"spec": {"podCIDR": "10.244.1.0/24"}})
    with pytest.raises(leases.LeaseError, match="leased to 192.168.56.11"):
        leases.acquire(store, c, vx("0.0.0.0/32", "192.168.56.14"), "n4")
    assert store.get(a.key).value == a.to_json()
    assert leases.release_node(store, "192.168.56.11") == [a.key]
    assert store.get(a.key) is None
    store.close()


# -- plan ----------------------------------------------------------------------------


def test_vxlan_plan_is_flannels():
    c = conf()
    own = vx("10.244.1.0/24", "192.168.56.11")
    peer = vx("10.244.2.0/24", "192.168.56.12")
    other_type = Lease(N("10.244.3.0/24"), IPv4Address("192.168.56.13"), "host-gw")
    outside = vx("10.99.0.0/24", "192.168.56.14")
    st = plan.desired(c, node(), own, {l.subnet: l for l in (own, peer, other_type, outside)})
    assert st.device == plan.VxlanDevice("flannel.1", 1, "192.168.56.11", 8472, 1450, own.vtep_mac, "eth0")
    assert st.addresses == {Address("10.244.1.0/32", "flannel.1")}
    assert st.neighbours == {Neighbour("10.244.2.0", peer.vtep_mac, "flannel.1")}
    assert st.fdb == {FdbEntry(peer.vtep_mac, "192.168.56.12", "flannel.1")}
    assert st.routes == {Route("10.244.2.0/24", "10.244.2.0", "flannel.1", onlink=True)}


def test_vxlan_backend_mtu_and_direct_routing():
    c = conf(MTU=1400, DirectRouting=True)
    own = vx("10.244.1.0/24", "192.168.56.11")
    near = vx("10.244.2.0/24", "192.168.56.12")
    far = vx("10.244.3.0/24", "192.168.57.13")
    st = plan.desired(c, node(), own, {l.subnet: l for l in (own, near, far)})
    assert st.device.mtu == 1350
    assert st.routes == {Route("10.244.2.0/24", "192.168.56.12", "eth0"),
                         Route("10.244.3.0/24", "10.244.3.0", "flannel.1", onlink=True)}
    assert {n.ip for n in st.neighbours} == {"10.244.3.0"}


def test_vxlan_gbp_and_learning_are_flannels_keys():
    """flannel's vxlan.go reads Backend.GBP and Backend.Learning; a net-conf.json with them works here too."""
    assert (conf().backend.gbp, conf().backend.learning) == (False, False)
    c = conf(GBP=True, Learning=True)
    assert (c.backend.gbp, c.backend.learning) == (True, True)
    assert c.to_json()["Backend"] == {"Type": "vxlan", "VNI": 1, "Port": 8472, "GBP": True, "Learning": True}
    assert netconf.parse(c.to_json()) == c
    own = vx("10.244.1.0/24", "192.168.56.11")
    dev = plan.desired(c, node(), own, {own.subnet: own}).device
    assert (dev.gbp, dev.learning) == (True, True)
    # Neither can change on a live device (flannel's vxlanLinksIncompat checks gbp): recreate it.
    from dataclasses import replace
    assert plan.diff(plan.State(dev), plan.State(replace(dev, gbp=False))).create_device == dev
    assert plan.diff(plan.State(dev), plan.State(replace(dev, learning=False))).create_device == dev


def test_host_gw_plan():
    c = netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
    own = Lease(N("10.244.1.0/24"), IPv4Address("192.168.56.11"), "host-gw")
    peer = Lease(N("10.244.2.0/24"), IPv4Address("192.168.56.12"), "host-gw")
    st = plan.desired(c, node(), own, {own.subnet: own, peer.subnet: peer})
    assert st == plan.State(routes=frozenset({Route("10.244.2.0/24", "192.168.56.12", "eth0")}))


def test_diff_is_empty_when_converged_and_minimal_otherwise():
    c = conf()
    own = vx("10.244.1.0/24", "192.168.56.11")
    p2, p3 = vx("10.244.2.0/24", "192.168.56.12"), vx("10.244.3.0/24", "192.168.56.13")
    want = plan.desired(c, node(), own, {l.subnet: l for l in (own, p2, p3)})
    assert plan.diff(want, want).empty()

    fresh = plan.diff(want, plan.State())
    assert fresh.create_device == want.device and len(fresh.add_routes) == 2 and not fresh.del_routes

    # A peer left: exactly its three entries go.
    have = want
    want2 = plan.desired(c, node(), own, {l.subnet: l for l in (own, p2)})
    ch = plan.diff(want2, have)
    assert [r.dst for r in ch.del_routes] == ["10.244.3.0/24"]
    assert [n.ip for n in ch.del_neighbours] == ["10.244.3.0"] and [f.dst for f in ch.del_fdb] == ["192.168.56.13"]
    assert not (ch.add_routes or ch.add_neighbours or ch.add_fdb or ch.create_device)


def test_diff_replaces_an_incompatible_device_and_fixes_mtu_in_place():
    c = conf()
    own = vx("10.244.1.0/24", "192.168.56.11")
    want = plan.desired(c, node(), own, {own.subnet: own})
    from dataclasses import replace
    ch = plan.diff(want, replace(want, device=replace(want.device, local="192.168.56.99")))
    assert ch.delete_device == "flannel.1" and ch.create_device == want.device and ch.add_addresses
    ch = plan.diff(want, replace(want, device=replace(want.device, mtu=1500, up=False)))
    assert ch.set_device == want.device and not ch.create_device and not ch.delete_device
    # A changed peer gateway is one replace, never a delete of the destination.
    stale = replace(want, routes=frozenset({Route("10.244.2.0/24", "192.168.56.12", "eth0")}))
    p2 = vx("10.244.2.0/24", "192.168.56.12")
    want2 = plan.desired(c, node(), own, {own.subnet: own, p2.subnet: p2})
    ch = plan.diff(want2, stale)
    assert not ch.del_routes and ch.add_routes == (Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True),)


def test_owns_route_scope():
    c = conf()
    own = N("10.244.1.0/24")
    assert plan.owns_route(c, own, N("10.244.2.0/24"))
    assert not plan.owns_route(c, own, own)
    assert not plan.owns_route(c, own, N("10.244.0.0/16"))
    assert not plan.owns_route(c, own, N("192.168.56.0/24"))
