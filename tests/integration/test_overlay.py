"""Cross-node pod traffic over flannel's overlay, against the real kernel.

Nodes, pods and the underlay are namespaces this file's fixtures create
(cni.overlay.testbed); node agents run as separate processes
(`python -m cni.overlay`) that share nothing but the store. Every test runs
on the embedded store and on a real etcd server (etcd on the loopback of
the bed's namespace; agents reach it through ``?netns=``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from ipaddress import IPv4Address

import pytest

from cni.overlay import lease as leases
from cni.overlay import masq, netconf, plan
from cni.overlay.kernel import Kernel
from cni.overlay.testbed import IP_MTU, IP_MTU_DISCOVER, IP_PMTUDISC_DO, Testbed, icmp_echo, tcp_exchange, \
    udp_exchange, wait_for
from netlab import netns
from netlab.store import FLANNEL_CONFIG, open_store
from tests.helpers import lab_leaks, unique

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
HOST_GW = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}


@pytest.fixture(params=["sqlite", "etcd"])
def bed(request, tmp_path):
    """A bed namespace with a store; yields (bed, store_url, store)."""
    name = unique("nltest-ovl-")
    tb = Testbed(name, str(tmp_path / "bed"))
    etcd = None
    store = None
    try:
        if request.param == "sqlite":
            url = f"sqlite://{tmp_path / 'store.db'}"
        else:
            from netlab.store_etcd import EtcdServer

            etcd = EtcdServer.start(name, str(tmp_path / "etcd"), env={"NETLAB_LAB": name})
            url = etcd.url
        store = open_store(url)
        yield tb, url, store
    finally:
        if store is not None:
            store.close()
        tb.destroy()
        if etcd is not None:
            etcd.stop()
        left = tb.namespaces() + lab_leaks(name)
        assert not left, f"test bed left behind: {left}"
        if request.param == "etcd":
            # The agents shared nothing but etcd: no embedded store was ever opened.
            assert not list(tmp_path.rglob("*.db")), list(tmp_path.rglob("*.db"))


def start(tb: Testbed, url: str, store, conf: dict, n: int = 2, resync: float = 5.0):
    store.put(FLANNEL_CONFIG, conf)
    nodes = [tb.add_node(f"n{i}", i) for i in range(1, n + 1)]
    for node in nodes:
        tb.start_agent(node, url, resync=resync)
    pods = [tb.add_pod(node, f"p{i}") for i, node in enumerate(nodes, 1)]
    return nodes, pods


def observed(node, conf: dict):
    c = netconf.parse(conf)
    with Kernel(node.netns) as k:
        return k.observe(c, node.subnet())


def wait_peers_programmed(tb: Testbed, conf: dict, timeout: float = 5.0) -> None:
    """Every node has a route to every other node's subnet."""
    def done():
        subnets = {n.name: str(n.subnet()) for n in tb.nodes.values()}
        for node in tb.nodes.values():
            have = {r.dst for r in observed(node, conf).routes}
            if have != {s for name, s in subnets.items() if name != node.name}:
                return False
        return True

    wait_for(done, timeout, what="every node programmed for every peer")


class Capture:
    """tcpdump on the underlay bridge (in the bed's namespace), read back with scapy."""

    def __init__(self, tb: Testbed, path: str) -> None:
        self.path = path
        self.err = path + ".err"
        with open(self.err, "wb") as err:
            self.proc = netns.popen_in(
                tb.name, ["tcpdump", "-n", "-i", "underlay", "-U", "--immediate-mode", "-w", path, "ip and not igmp"],
                stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, NETLAB_LAB=tb.name),
            )
        wait_for(lambda: b"listening on" in open(self.err, "rb").read(), 10, what="tcpdump to listen")

    def read(self) -> list:
        from scapy.all import UDP, VXLAN, bind_layers, rdpcap

        bind_layers(UDP, VXLAN, dport=8472)
        try:
            return list(rdpcap(self.path))
        except Exception:  # the file is still being written: no complete header yet
            return []

    def stop(self, until=lambda packets: True, timeout: float = 3.0) -> list:
        """Stop once what was sent has been written (`until` holds), or after `timeout`."""
        try:
            wait_for(lambda: until(self.read()), timeout, interval=0.05, what="the capture to hold the traffic")
        except TimeoutError:
            pass  # the assertions on what was captured will say what is missing
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        return self.read()


def inner_ip(pkt):
    """The pod-level IP header: inside VXLAN when encapsulated, else the outer one."""
    from scapy.all import IP, VXLAN

    return pkt[VXLAN][IP] if pkt.haslayer(VXLAN) else pkt[IP]


def inner_protocols(packets) -> set[str]:
    from scapy.all import ICMP, TCP, UDP

    names = {ICMP: "icmp", TCP: "tcp", UDP: "udp"}
    return {names[type(inner_ip(p).payload)] for p in packets if type(inner_ip(p).payload) in names}


def test_kernel_adapter_is_upsert(bed):
    tb, _url, _store = bed
    node = tb.add_node("n1", 1)
    c = netconf.parse(VXLAN)
    me = plan.Node(node.ip, "eth0", 1500)
    own = leases.Lease(leases.IPv4Network("10.244.1.0/24"), node.ip.ip, "vxlan", 1, plan.vtep_mac(node.ip.ip, 1))
    peer = leases.Lease(leases.IPv4Network("10.244.2.0/24"), IPv4Address("192.168.56.12"), "vxlan", 1,
                        plan.vtep_mac("192.168.56.12", 1))
    want = plan.desired(c, me, own, {own.subnet: own, peer.subnet: peer})
    with Kernel(node.netns) as k:
        ch = plan.diff(want, k.observe(c, own.subnet))
        k.apply(ch)
        assert k.observe(c, own.subnet) == want
        k.apply(ch)  # the same changes again: replace, not fail
        assert k.observe(c, own.subnet) == want
        gone = plan.diff(plan.desired(c, me, own, {own.subnet: own}), want)
        k.apply(gone)
        k.apply(gone)  # deleting what is already gone is success
        assert k.observe(c, own.subnet) == plan.desired(c, me, own, {own.subnet: own})


def test_vxlan_pod_to_pod_tcp_udp_icmp_encapsulated(bed, tmp_path):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    cap = Capture(tb, str(tmp_path / "underlay.pcap"))
    try:
        assert icmp_echo(p1.netns, p2.ip) == p2.ip
        assert tcp_exchange(p1, p2) == str(p1.ip)  # no NAT between pods
        assert udp_exchange(p1, p2) == (str(p1.ip), 64)
    finally:
        packets = cap.stop(until=lambda pk: inner_protocols(pk) == {"icmp", "tcp", "udp"})
    from scapy.all import IP, UDP, VXLAN as VX

    pods, nodes = {str(p1.ip), str(p2.ip)}, {str(n1.ip.ip), str(n2.ip.ip)}
    for pkt in packets:
        outer = pkt[IP]
        assert {outer.src, outer.dst} == nodes, f"outer addresses must be node IPs: {pkt.summary()}"
        assert outer.haslayer(UDP) and outer[UDP].dport == 8472, pkt.summary()
        assert pkt[VX].vni == 1
        assert {inner_ip(pkt).src, inner_ip(pkt).dst} == pods, pkt.summary()
    assert inner_protocols(packets) == {"icmp", "tcp", "udp"}
    assert observed(n1, VXLAN).device.mtu == 1450 and n1.mtu() == 1450


def test_vxlan_mtu_end_to_end(bed):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    # 1450-byte IP packet (1422 bytes of UDP payload) with DF: fits flannel.1 and, encapsulated, eth0.
    assert udp_exchange(p1, p2, size=1450 - 28, df=True) == (str(p1.ip), 1422)
    # A sender whose link allows 1500 (e.g. a hostNetwork-like pod on a 1500 bridge port):
    # node1 must answer a 1500-byte DF packet with ICMP fragmentation-needed, MTU 1450.
    jumbo = tb.add_pod(n1, "big", mtu=1500)
    s = netns.socket_in(jumbo.netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.connect((str(p2.ip), 9))
        assert s.getsockopt(socket.IPPROTO_IP, IP_MTU) == 1500
        s.send(b"x" * (1500 - 28))
        # The kernel learns the path MTU only from the router's ICMP frag-needed: no black hole.
        wait_for(lambda: s.getsockopt(socket.IPPROTO_IP, IP_MTU) == 1450, 3, what="PMTU 1450 from ICMP")
        with pytest.raises(OSError) as e:
            s.send(b"x" * (1500 - 28))
        assert e.value.errno == 90  # EMSGSIZE: the sender now knows
    finally:
        s.close()


def test_node_add_and_remove_converge_within_a_second(bed):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    n3 = tb.add_node("n3", 3)
    tb.start_agent(n3, url)
    # From the moment node3's lease exists, every peer must route to it within 1 s.
    lease_key = wait_for(lambda: next((kv.key for kv in store.list(leases.FLANNEL_SUBNETS)[0]
                                       if kv.value["PublicIP"] == str(n3.ip.ip)), None),
                         15, interval=0.002, what="node3's lease")
    t0 = time.monotonic()
    subnet3 = str(leases.subnet_of_key(lease_key))
    wait_for(lambda: all(subnet3 in {r.dst for r in observed(n, VXLAN).routes} for n in (n1, n2)),
             1.0, interval=0.005, what="peers routing to node3")
    added = time.monotonic() - t0
    p3 = tb.add_pod(n3, "p3")
    wait_peers_programmed(tb, VXLAN)
    assert icmp_echo(p1.netns, p3.ip) == p3.ip and icmp_echo(p3.netns, p2.ip) == p2.ip

    # Remove node3 as the lab does: stop its agent, release its lease, delete its namespaces.
    tb.stop_agent(n3)
    t0 = time.monotonic()
    assert leases.release_node(store, str(n3.ip.ip)) == [lease_key]
    tb.remove_node("n3")

    def forgotten():
        for n in (n1, n2):
            st = observed(n, VXLAN)
            if subnet3 in {r.dst for r in st.routes} or "192.168.56.13" in {f.dst for f in st.fdb} \
                    or subnet3.split("/")[0] in {x.ip for x in st.neighbours}:
                return False
        return True

    wait_for(forgotten, 1.0, interval=0.005, what="peers forgetting node3")
    removed = time.monotonic() - t0
    assert icmp_echo(p1.netns, p2.ip) == p2.ip
    print(f"converged: add {added * 1000:.0f} ms, remove {removed * 1000:.0f} ms")


def test_resync_restores_deleted_state(bed):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN, resync=1.0)
    wait_peers_programmed(tb, VXLAN)
    want = observed(n1, VXLAN)
    route, = want.routes
    neigh, = want.neighbours
    fdb, = want.fdb
    deletions = [
        lambda k: k.ipr.link("del", index=k.index("flannel.1")),
        lambda k: k.ipr.route("del", dst=route.dst, gateway=route.gateway, oif=k.index("flannel.1")),
        lambda k: k.ipr.neigh("del", dst=neigh.ip, ifindex=k.index("flannel.1")),
        lambda k: k.ipr.fdb("del", ifindex=k.index("flannel.1"), lladdr=fdb.mac, dst=fdb.dst),
    ]
    for delete in deletions:
        with Kernel(n1.netns) as k:
            delete(k)
            assert k.observe(netconf.parse(VXLAN), n1.subnet()) != want
        wait_for(lambda: observed(n1, VXLAN) == want, 1.0 + 1.0, interval=0.02, what="resync to restore")
        assert icmp_echo(p1.netns, p2.ip) == p2.ip


def test_agent_restart_changes_nothing(bed):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    before = {n.name: observed(n, VXLAN) for n in (n1, n2)}
    with Kernel(n1.netns) as k:
        ifindex = k.index("flannel.1")
    lease_before = {kv.key: kv.value for kv in store.list(leases.FLANNEL_SUBNETS)[0]}
    tb.stop_agent(n1, signal.SIGKILL)
    open(n1.log, "w").close()
    tb.start_agent(n1, url)
    wait_for(lambda: "ready:" in tb.agent_log(n1), 15, what="restarted agent to be ready")
    assert "ready: nothing" in tb.agent_log(n1), tb.agent_log(n1)
    assert {n.name: observed(n, VXLAN) for n in (n1, n2)} == before
    with Kernel(n1.netns) as k:
        assert k.index("flannel.1") == ifindex  # reused, not recreated
    assert {kv.key: kv.value for kv in store.list(leases.FLANNEL_SUBNETS)[0]} == lease_before
    assert icmp_echo(p1.netns, p2.ip) == p2.ip


def test_host_gw_routes_without_encapsulation(bed, tmp_path):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, HOST_GW)
    wait_peers_programmed(tb, HOST_GW)
    st = observed(n1, HOST_GW)
    assert st.device is None and st.routes == {plan.Route(str(n2.subnet()), str(n2.ip.ip), "eth0")}
    assert n1.mtu() == 1500
    cap = Capture(tb, str(tmp_path / "underlay.pcap"))
    try:
        assert icmp_echo(p1.netns, p2.ip) == p2.ip
        assert tcp_exchange(p1, p2) == str(p1.ip)
        assert udp_exchange(p1, p2, size=1500 - 28, df=True) == (str(p1.ip), 1472)
    finally:
        packets = cap.stop(until=lambda pk: inner_protocols(pk) == {"icmp", "tcp", "udp"})
    from scapy.all import IP, UDP

    assert inner_protocols(packets) == {"icmp", "tcp", "udp"}
    for pkt in packets:
        assert {pkt[IP].src, pkt[IP].dst} == {str(p1.ip), str(p2.ip)}, pkt.summary()
        assert not (pkt.haslayer(UDP) and pkt[UDP].dport == 8472)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_agent_keeps_flannels_iptables_chains(bed, backend):
    tb, url, store = bed
    store.put(FLANNEL_CONFIG, VXLAN)
    n1 = tb.add_node("n1", 1)
    tb.start_agent(n1, url, "--iptables", backend, resync=1.0)
    subnet = tb.wait_lease(n1)
    network = netconf.parse(VXLAN).network

    def saved() -> str:
        return netns.run_in(n1.netns, [f"iptables-{backend}-save"], capture_output=True, text=True, check=True).stdout

    def converged(want) -> bool:
        return masq.restore_text(want, masq.parse_save(saved())) is None

    want = masq.desired(network, subnet, ip_masq=True, forward=True)
    wait_for(lambda: converged(want), 10, what="FLANNEL-POSTRTG and FLANNEL-FWD")
    other = "legacy" if backend == "nft" else "nft"
    assert "FLANNEL" not in netns.run_in(n1.netns, [f"iptables-{other}-save"], capture_output=True, text=True).stdout
    # Flushed behind its back (in the node's namespace): the next resync (1 s) writes the chain again.
    # Legacy iptables-restore -w first waits for the machine-wide xtables lock, which other
    # namespaces' iptables users (other labs' kube-proxies) may hold: allow for that wait.
    netns.run_in(n1.netns, [f"iptables-{backend}", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG"], check=True)
    assert not converged(want)
    wait_for(lambda: converged(want), 1.0 + 3.0, interval=0.05, what="resync to restore FLANNEL-POSTRTG")
    # Restarted with --no-ip-masq: the masquerade chain and its jump go, the forward rules stay.
    tb.stop_agent(n1)
    tb.start_agent(n1, url, "--iptables", backend, "--no-ip-masq")
    want = masq.desired(network, subnet, ip_masq=False, forward=True)
    wait_for(lambda: converged(want), 10, what="FLANNEL-POSTRTG removed")
    text = saved()
    assert "FLANNEL-POSTRTG" not in text and "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD" in text
    wait_for(lambda: open(n1.subnet_file).read().endswith("FLANNEL_IPMASQ=false\n"), 5, what="subnet.env")
