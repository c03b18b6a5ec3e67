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
    name = unique("nlov-")  # this suite's prefix; 11 characters, so "<name>.<node>.<pod>" stay short
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
    """tcpdump on one interface of one of the bed's namespaces, read back with scapy.

    By default the underlay bridge in the bed's namespace, where encapsulated
    node-to-node traffic is seen; `vxlan_port` is the UDP port scapy decodes
    as VXLAN (the Backend.Port under test).
    """

    def __init__(self, tb: Testbed, path: str, namespace: str | None = None, iface: str = "underlay",
                 bpf: str = "ip and not igmp", vxlan_port: int = 8472) -> None:
        self.path = path
        self.err = path + ".err"
        self.vxlan_port = vxlan_port
        with open(self.err, "wb") as err:
            self.proc = netns.popen_in(
                namespace or tb.name, ["tcpdump", "-n", "-i", iface, "-U", "--immediate-mode", "-w", path, bpf],
                stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, NETLAB_LAB=tb.name),
            )
        wait_for(lambda: b"listening on" in open(self.err, "rb").read(), 10, what="tcpdump to listen")

    def read(self) -> list:
        from scapy.all import UDP, VXLAN, bind_layers, rdpcap

        bind_layers(UDP, VXLAN, dport=self.vxlan_port)
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


def ip_link(node, ifname: str) -> str:
    """`ip -d link show` in the node's namespace: the device as an operator reads it on a flannel node."""
    return netns.run_in(node.netns, ["ip", "-d", "link", "show", ifname], capture_output=True, text=True,
                        check=True).stdout


def inner_ip(pkt):
    """The pod-level IP header: inside VXLAN when encapsulated, else the outer one."""
    from scapy.all import IP, VXLAN

    return pkt[VXLAN][IP] if pkt.haslayer(VXLAN) else pkt[IP]


def inner_protocols(packets) -> set[str]:
    from scapy.all import ICMP, TCP, UDP

    names = {ICMP: "icmp", TCP: "tcp", UDP: "udp"}
    return {names[type(inner_ip(p).payload)] for p in packets if type(inner_ip(p).payload) in names}


def pod_traffic_on_the_underlay(tb: Testbed, p1, p2, path: str, vxlan_port: int = 8472,
                                udp_size: int = 64, udp_df: bool = False) -> list:
    """ICMP echo, a TCP exchange and a UDP datagram p1 → p2, captured on the underlay bridge."""
    cap = Capture(tb, path, vxlan_port=vxlan_port)
    try:
        assert icmp_echo(p1.netns, p2.ip) == p2.ip
        assert tcp_exchange(p1, p2) == str(p1.ip)  # no NAT between pods
        assert udp_exchange(p1, p2, size=udp_size, df=udp_df) == (str(p1.ip), udp_size)
    finally:
        packets = cap.stop(until=lambda pk: inner_protocols(pk) == {"icmp", "tcp", "udp"})
    assert inner_protocols(packets) == {"icmp", "tcp", "udp"}
    return packets


def assert_encapsulated(packets: list, nodes: list, pods: list, port: int, vni: int) -> None:
    """Every packet is VXLAN (UDP `port`, `vni`) between node IPs, carrying pod-to-pod traffic."""
    from scapy.all import IP, UDP, VXLAN as VX

    for pkt in packets:
        outer = pkt[IP]
        assert {outer.src, outer.dst} == {str(n.ip.ip) for n in nodes}, f"outer must be node IPs: {pkt.summary()}"
        assert outer.haslayer(UDP) and outer[UDP].dport == port, pkt.summary()
        assert pkt.haslayer(VX) and pkt[VX].vni == vni, pkt.summary()
        assert {inner_ip(pkt).src, inner_ip(pkt).dst} == {str(p.ip) for p in pods}, pkt.summary()


def assert_in_the_clear(packets: list, pods: list) -> None:
    """Every packet is plain pod-to-pod IP on the underlay: no VXLAN on either port."""
    from scapy.all import IP, UDP, VXLAN as VX

    for pkt in packets:
        assert {pkt[IP].src, pkt[IP].dst} == {str(p.ip) for p in pods}, pkt.summary()
        assert not pkt.haslayer(VX) and not (pkt.haslayer(UDP) and pkt[UDP].dport in (8472, 4789)), pkt.summary()


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
    packets = pod_traffic_on_the_underlay(tb, p1, p2, str(tmp_path / "underlay.pcap"))
    assert_encapsulated(packets, [n1, n2], [p1, p2], port=8472, vni=1)
    assert observed(n1, VXLAN).device.mtu == 1450 and n1.mtu() == 1450


def test_vxlan_device_as_flanneld_leaves_it(bed):
    """flannel.1's settings, read back as `ip -d link` prints them, against what flanneld leaves.

    flannel's device.go creates it through vishvananda/netlink with VxlanId,
    VtepDevIndex (dev eth0), SrcAddr (local = node IP), Port (0: the
    kernel's 8472), Learning and GBP from the net-conf (both false by
    default) and nothing else: the kernel's defaults for the rest (srcport
    0 0, ttl auto, ageing 300, udpcsum on, addrgenmode eui64), then sets
    accept_ra 0. The VTEP MAC published in the lease is the device's.
    """
    tb, url, store = bed
    (n1, n2), _pods = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    for node in (n1, n2):
        text = ip_link(node, "flannel.1")
        assert f"vxlan id 1 local {node.ip.ip} dev eth0 srcport 0 0 dstport 8472 nolearning ttl auto ageing 300 " \
               "udpcsum noudp6zerocsumtx noudp6zerocsumrx " in text, text
        assert " gbp " not in text and " l2miss" not in text and " proxy " not in text, text
        assert " mtu 1450 " in text and "addrgenmode eui64" in text, text
        assert netns.run_in(node.netns, ["sysctl", "-n", "net.ipv6.conf.flannel/1.accept_ra"],
                            capture_output=True, text=True, check=True).stdout.strip() == "0"
        lease = next(kv.value for kv in store.list(leases.FLANNEL_SUBNETS)[0] if kv.value["PublicIP"] == str(node.ip.ip))
        assert lease["BackendType"] == "vxlan" and lease["BackendData"]["VNI"] == 1
        assert f"link/ether {lease['BackendData']['VtepMAC']} " in text, (lease, text)
        addr = netns.run_in(node.netns, ["ip", "-4", "-o", "addr", "show", "dev", "flannel.1"],
                            capture_output=True, text=True, check=True).stdout
        assert f"inet {node.subnet().network_address}/32 " in addr, addr


def test_vxlan_vni_and_port_in_kernel_and_on_the_wire(bed, tmp_path):
    """Backend.VNI 4096 and Backend.Port 4789 (the IANA port): the device, and the packets on the underlay."""
    tb, url, store = bed
    conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789}}
    (n1, n2), (p1, p2) = start(tb, url, store, conf)
    wait_peers_programmed(tb, conf)
    for node in (n1, n2):
        dev = observed(node, conf).device  # read back through pyroute2 (IFLA_VXLAN_ID, IFLA_VXLAN_PORT)
        assert (dev.name, dev.vni, dev.port, dev.learning, dev.mtu) == ("flannel.4096", 4096, 4789, False, 1450)
        text = ip_link(node, "flannel.4096")
        assert f"vxlan id 4096 local {node.ip.ip} dev eth0 srcport 0 0 dstport 4789 nolearning " in text, text
        with netns.iproute(node.netns) as ipr:
            assert not ipr.link_lookup(ifname="flannel.1")  # no default device beside it
        routes = netns.run_in(node.netns, ["ip", "route"], capture_output=True, text=True, check=True).stdout
        peer = next(n for n in (n1, n2) if n is not node)
        assert f"{peer.subnet()} via {peer.subnet().network_address} dev flannel.4096 onlink" in routes, routes
    packets = pod_traffic_on_the_underlay(tb, p1, p2, str(tmp_path / "underlay.pcap"), vxlan_port=4789)
    assert_encapsulated(packets, [n1, n2], [p1, p2], port=4789, vni=4096)
    from scapy.all import UDP

    assert not any(pkt.haslayer(UDP) and pkt[UDP].dport == 8472 for pkt in packets)


def test_vxlan_gbp_and_learning_keys_reach_the_kernel(bed, tmp_path):
    """Backend.GBP and Backend.Learning, which flanneld reads too: `gbp` and `learning` on flannel.1."""
    tb, url, store = bed
    conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": True, "Learning": True}}
    (n1, n2), (p1, p2) = start(tb, url, store, conf)
    wait_peers_programmed(tb, conf)
    for node in (n1, n2):
        dev = observed(node, conf).device  # read back as the agent reads it, so a resync keeps it
        assert (dev.gbp, dev.learning) == (True, True), dev
        text = ip_link(node, "flannel.1")
        assert f"vxlan id 1 local {node.ip.ip} dev eth0 srcport 0 0 dstport 8472 ttl auto ageing 300 " in text, text
        assert " nolearning " not in text and " gbp " in text, text
    # The kernel carries the skb mark as the GBP policy ID (and sets the G flag) only for marked
    # packets: mark what node1 forwards, as a policy agent would, and leave node2 unmarked.
    netns.run_in(n1.netns, ["iptables-nft", "-w", "-t", "mangle", "-A", "FORWARD", "-j", "MARK", "--set-mark", "7"],
                 check=True, capture_output=True)
    packets = pod_traffic_on_the_underlay(tb, p1, p2, str(tmp_path / "underlay.pcap"))
    assert_encapsulated(packets, [n1, n2], [p1, p2], port=8472, vni=1)
    from scapy.all import IP, VXLAN as VX

    gbp = {(pkt[IP].src, bool(pkt[VX].flags.G), pkt[VX].gpid if pkt[VX].flags.G else None) for pkt in packets}
    assert gbp == {(str(n1.ip.ip), True, 7), (str(n2.ip.ip), False, None)}, gbp


def test_vxlan_direct_routing_on_the_same_underlay_subnet(bed, tmp_path):
    """DirectRouting: peers on the node's own underlay subnet get a plain route via their node IP.

    flannel's vxlan_network.go adds `<subnet> via <PublicIP>` instead of the
    flannel.1 onlink route, neighbour and FDB entry when ip.DirectRouting
    says the PublicIP is directly connected, so that traffic is not
    encapsulated; flannel.1 itself is still made (peers elsewhere need it).
    """
    tb, url, store = bed
    conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}
    (n1, n2), (p1, p2) = start(tb, url, store, conf)
    wait_peers_programmed(tb, conf)
    for node in (n1, n2):
        peer = next(n for n in (n1, n2) if n is not node)
        st = observed(node, conf)
        assert st.routes == {plan.Route(str(peer.subnet()), str(peer.ip.ip), "eth0")}, st.routes
        assert not st.neighbours and not st.fdb, st
        assert st.device.name == "flannel.1" and st.device.mtu == 1450 and node.mtu() == 1450
        routes = netns.run_in(node.netns, ["ip", "route", "show", str(peer.subnet())],
                              capture_output=True, text=True, check=True).stdout
        assert routes.split() == [str(peer.subnet()), "via", str(peer.ip.ip), "dev", "eth0"], routes
    packets = pod_traffic_on_the_underlay(tb, p1, p2, str(tmp_path / "underlay.pcap"),
                                          udp_size=1450 - 28, udp_df=True)
    assert_in_the_clear(packets, [p1, p2])


def frag_needed_at_the_boundary(tb: Testbed, node, dst, mtu: int, tmp_path) -> None:
    """A sender on `node` whose link allows 1500 sends an (mtu + 1)-byte IP packet with DF to `dst`.

    Like a hostNetwork-ish pod on a 1500 bridge port: node's forwarding path
    (cni0 → flannel.<VNI>, MTU `mtu`) must answer with ICMP type 3 code 4
    (fragmentation needed) carrying next-hop MTU `mtu`, which the capture on
    the sender's eth0 shows arriving, and which the sender's kernel learns as
    its path MTU: no black hole. An `mtu`-byte packet from the same sender crosses.
    """
    from scapy.all import ICMP, IP, IPerror

    sender = tb.add_pod(node, "big", mtu=1500)
    cap = Capture(tb, str(tmp_path / "sender.pcap"), namespace=sender.netns, iface="eth0", bpf="icmp")
    s = netns.socket_in(sender.netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.connect((str(dst.ip), 9))
        assert s.getsockopt(socket.IPPROTO_IP, IP_MTU) == 1500
        s.send(b"x" * (mtu + 1 - 28))  # IP 20 + UDP 8
        # The kernel learns the path MTU only from the router's ICMP frag-needed.
        wait_for(lambda: s.getsockopt(socket.IPPROTO_IP, IP_MTU) == mtu, 3, what=f"PMTU {mtu} from ICMP")
        with pytest.raises(OSError) as e:
            s.send(b"x" * (mtu + 1 - 28))
        assert e.value.errno == 90  # EMSGSIZE: the sender now knows
    finally:
        s.close()
        is_frag_needed = lambda p: p.haslayer(ICMP) and (p[ICMP].type, p[ICMP].code) == (3, 4)
        packets = cap.stop(until=lambda pk: any(is_frag_needed(p) for p in pk))
    errors = [p for p in packets if is_frag_needed(p)]
    assert len(errors) == 1, [p.summary() for p in packets]
    icmp, = errors
    gateway = str(node.subnet().network_address + 1)  # cni0, the pod's default gateway
    assert (icmp[IP].src, icmp[IP].dst) == (gateway, str(sender.ip)), icmp.summary()
    assert icmp[ICMP].nexthopmtu == mtu, icmp.show(dump=True)
    quoted = icmp[IPerror]  # the offending packet's header, as the router saw it
    assert (quoted.src, quoted.dst, quoted.len, quoted.flags.DF) == (str(sender.ip), str(dst.ip), mtu + 1, True)
    # One byte less crosses from the same 1500-byte sender: the boundary is exactly `mtu`.
    assert udp_exchange(sender, dst, size=mtu - 28, df=True) == (str(sender.ip), mtu - 28)


def test_vxlan_mtu_end_to_end(bed, tmp_path):
    tb, url, store = bed
    (n1, n2), (p1, p2) = start(tb, url, store, VXLAN)
    wait_peers_programmed(tb, VXLAN)
    # 1450-byte IP packet (1422 bytes of UDP payload) with DF: fits flannel.1 and, encapsulated, eth0.
    assert udp_exchange(p1, p2, size=1450 - 28, df=True) == (str(p1.ip), 1422)
    frag_needed_at_the_boundary(tb, n1, p2, 1450, tmp_path)


def test_vxlan_backend_mtu_sets_the_boundary(bed, tmp_path):
    """Backend.MTU 1400 on a 1500 underlay: flannel.1 and FLANNEL_MTU 1350, and 1350 is the real boundary."""
    tb, url, store = bed
    conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1400}}
    (n1, n2), (p1, p2) = start(tb, url, store, conf)
    wait_peers_programmed(tb, conf)
    for node in (n1, n2):
        assert observed(node, conf).device.mtu == 1350 and node.mtu() == 1350
        assert " mtu 1350 " in ip_link(node, "flannel.1")
        assert " mtu 1500 " in ip_link(node, "eth0")  # the underlay itself is untouched
    with netns.iproute(p1.netns) as ipr:
        assert ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get("mtu") == 1350  # pods get FLANNEL_MTU
    assert udp_exchange(p1, p2, size=1350 - 28, df=True) == (str(p1.ip), 1322)
    frag_needed_at_the_boundary(tb, n1, p2, 1350, tmp_path)


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
    packets = pod_traffic_on_the_underlay(tb, p1, p2, str(tmp_path / "underlay.pcap"),
                                          udp_size=1500 - 28, udp_df=True)
    assert_in_the_clear(packets, [p1, p2])


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
