"""The packet-flow table with real packets: the harness every proxy mode's flow tests share.

A small fabric of our own (tests/packet_flows.TOPOLOGY): an underlay bridge,
two node namespaces with cni0 and host-gw routes between them, pod
namespaces running a tiny echo server that answers "<pod> <client ip:port>",
and an external client on the underlay with the load-balancer pool routed
via node-a (as a BGP router would). node-a gets the rules of the mode under
test (`programmed`); every case makes at least 20 connections and checks
the endpoints reached and the client address each backend saw (`check_flow`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from netlab import netns
from tests.helpers import unique
from tests.packet_flows import PROXY_NODE, TCP_PORT, TOPOLOGY, UDP_PORT, Flow, flow_state

CONNECTIONS = 20


def _link(ipr, name: str) -> int:
    return ipr.link_lookup(ifname=name)[0]


@dataclass
class Fabric:
    """Namespaces named nlpx-flow-<random>-*, all removed by close()."""

    prefix: str = field(default_factory=lambda: unique("nlpx-flow-"))
    namespaces: list[str] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def ns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        netns.create(name)
        self.namespaces.append(name)
        with netns.iproute(name) as ipr:
            ipr.link("set", index=_link(ipr, "lo"), state="up")
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        fd = os.open(netns.path(ns_b), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netns.iproute(ns_a) as ipr:
                ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": fd})
                ipr.link("set", index=_link(ipr, if_a), state="up")
        finally:
            os.close(fd)
        with netns.iproute(ns_b) as ipr:
            ipr.link("set", index=_link(ipr, if_b), state="up")

    @staticmethod
    def bridge(ns: str, name: str) -> None:
        with netns.iproute(ns) as ipr:
            ipr.link("add", ifname=name, kind="bridge")
            ipr.link("set", index=_link(ipr, name), state="up")

    @staticmethod
    def enslave(ns: str, ifname: str, bridge: str) -> None:
        with netns.iproute(ns) as ipr:
            ipr.link("set", index=_link(ipr, ifname), master=_link(ipr, bridge))

    @staticmethod
    def addr(ns: str, ifname: str, cidr: str) -> None:
        ip, plen = cidr.split("/")
        with netns.iproute(ns) as ipr:
            ipr.addr("add", index=_link(ipr, ifname), address=ip, prefixlen=int(plen))

    @staticmethod
    def route(ns: str, dst: str, gateway: str) -> None:
        with netns.iproute(ns) as ipr:
            ipr.route("add", dst=dst, gateway=gateway)

    def serve(self, ns: str, name: str) -> None:
        """The echo server: TCP says "<name> <peer>" then echoes; UDP answers "<name> <peer>"."""
        tcp = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", TCP_PORT))
        tcp.listen(128)
        tcp.settimeout(0.2)
        udp = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", UDP_PORT))
        udp.settimeout(0.2)
        self.sockets += [tcp, udp]

        def conn(c: socket.socket, peer) -> None:
            with c:
                c.settimeout(30)
                try:
                    c.sendall(f"{name} {peer[0]}:{peer[1]}\n".encode())
                    while not self.stop.is_set():
                        data = c.recv(4096)
                        if not data:
                            return
                        c.sendall(data)
                except OSError:
                    return

        def tcp_loop() -> None:
            while not self.stop.is_set():
                try:
                    c, peer = tcp.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return
                t = threading.Thread(target=conn, args=(c, peer), daemon=True)
                t.start()

        def udp_loop() -> None:
            while not self.stop.is_set():
                try:
                    _data, peer = udp.recvfrom(4096)
                    udp.sendto(f"{name} {peer[0]}:{peer[1]}".encode(), peer)
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return

        for fn in (tcp_loop, udp_loop):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for s in self.sockets:
            s.close()
        for t in self.threads:
            t.join(timeout=2)
        for ns in reversed(self.namespaces):
            netns.remove(ns)


def build_fabric() -> tuple[Fabric, dict[str, str]]:
    """TOPOLOGY as namespaces; returns the fabric and name -> netns for nodes, pods, clients."""
    f = Fabric()
    where: dict[str, str] = {}
    try:
        lab = f.ns("lab")
        f.bridge(lab, "underlay")
        netns.write_sysctl(lab, "net.bridge.bridge-nf-call-iptables", 0)
        plen = TOPOLOGY.underlay.split("/")[1]
        for node in TOPOLOGY.nodes:
            ns = where[node.name] = f.ns(node.name)
            f.veth(lab, node.name, ns, "eth0")
            f.enslave(lab, node.name, "underlay")
            f.addr(ns, "eth0", f"{node.ip}/{plen}")
            f.bridge(ns, "cni0")
            f.addr(ns, "cni0", f"{node.gateway}/{node.pod_cidr.split('/')[1]}")
            netns.write_sysctl(ns, "net.ipv4.ip_forward", 1)
            netns.write_sysctl(ns, "net.bridge.bridge-nf-call-iptables", 1)
            # REJECT answers with ICMP port-unreachable, which the kernel rate-limits per
            # destination (6 in a burst); 20 refused connections need every answer.
            netns.write_sysctl(ns, "net.ipv4.icmp_ratelimit", 0)
        gateway = str(next(ipaddress.ip_network(TOPOLOGY.underlay).hosts()))
        for node in TOPOLOGY.nodes:
            # A node's default route (its LAN gateway) also carries the service CIDR, so that
            # traffic to a service with no endpoints reaches FORWARD and its REJECT rule.
            f.route(where[node.name], "0.0.0.0/0", gateway)
        for node in TOPOLOGY.nodes:  # host-gw routes to the other nodes' pod subnets
            for other in TOPOLOGY.nodes:
                if other is not node:
                    f.route(where[node.name], other.pod_cidr, other.ip)
        for i, pod in enumerate(TOPOLOGY.pods):
            node = TOPOLOGY.node(pod.node)
            ns = where[pod.name] = f.ns(f"pod-{pod.name}")
            host_if = f"veth{i}{pod.name}"[:15]
            f.veth(where[node.name], host_if, ns, "eth0")
            f.enslave(where[node.name], host_if, "cni0")
            # hairpinMode, as the bridge CNI plugin sets it: a pod reaching itself through its
            # service leaves and re-enters by the same bridge port.
            netns.run_in(where[node.name], ["ip", "link", "set", host_if, "type", "bridge_slave", "hairpin", "on"],
                         check=True)
            f.addr(ns, "eth0", f"{pod.ip}/{node.pod_cidr.split('/')[1]}")
            f.route(ns, "0.0.0.0/0", node.gateway)
            if pod.serves:
                f.serve(ns, pod.name)
        for name, ip in TOPOLOGY.external.items():
            ns = where[name] = f.ns(f"ext-{name}")
            f.veth(lab, f"x{name}"[:15], ns, "eth0")
            f.enslave(lab, f"x{name}"[:15], "underlay")
            f.addr(ns, "eth0", f"{ip}/{plen}")
            # The LB pool is routed via a node, as a BGP peer (MetalLB BGP mode) would announce it.
            f.route(ns, TOPOLOGY.lb_pool, TOPOLOGY.node(PROXY_NODE).ip)
            # "a static route for your Service range, routing to any node" (proxier.go's comment
            # on masquerading off-cluster traffic to a service VIP).
            f.route(ns, TOPOLOGY.service_cidr, TOPOLOGY.node(PROXY_NODE).ip)
    except BaseException:
        f.close()
        raise
    return f, where


@dataclass
class Reply:
    pod: str | None = None
    client: str | None = None  # "ip:port" the backend saw
    error: str | None = None  # "refused", "timeout", other


def connect(ns: str, flow: Flow, timeout: float = 2.0) -> Reply:
    proto = socket.SOCK_STREAM if flow.protocol == "TCP" else socket.SOCK_DGRAM
    s = netns.socket_in(ns, socket.AF_INET, proto)
    s.settimeout(timeout)
    try:
        if flow.protocol == "TCP":
            s.connect((flow.dest_ip, flow.dest_port))
            data = s.recv(4096)
        else:
            s.sendto(b"hello", (flow.dest_ip, flow.dest_port))
            data = s.recv(4096)
        name, client = data.decode().split()
        return Reply(name, client)
    except ConnectionRefusedError:
        return Reply(error="refused")
    except (TimeoutError, socket.timeout):
        return Reply(error="timeout")
    except OSError as e:
        return Reply(error=str(e))
    finally:
        s.close()


def endpoint_of(pod: str, flow: Flow) -> str:
    return f"{TOPOLOGY.pod(pod).ip}:{TCP_PORT if flow.protocol == 'TCP' else UDP_PORT}"


def check_flow(where: dict[str, str], flow: Flow) -> None:
    """At least CONNECTIONS new connections; endpoints reached and client addresses seen."""
    src_ns = where[flow.source]
    src_ip = TOPOLOGY.source_ip(flow.source)
    timeout = 0.5 if flow.verdict == "DROP" else 2.0
    # ClientIP affinity is a promise about the connections *after* the first:
    # that one creates the record (iptables' `recent` entry, IPVS's
    # persistence template, the nft affinity set element) and the rest
    # follow it. Concurrent first SYNs can each miss the record on different
    # CPUs (IPVS's ip_vs_sched_persist looks up and creates the template
    # without a lock), and a real client opens one connection first too.
    first = [connect(src_ns, flow, timeout)] if flow.affinity else []
    with ThreadPoolExecutor(max_workers=10) as ex:
        replies = first + list(ex.map(lambda _: connect(src_ns, flow, timeout), range(CONNECTIONS)))
    if flow.verdict == "REJECT":
        assert {r.error for r in replies} == {"refused"}, replies
        return
    if flow.verdict == "DROP":
        assert {r.error for r in replies} == {"timeout"}, replies
        return
    assert all(r.error is None for r in replies), replies
    reached = {endpoint_of(r.pod, flow) for r in replies}
    if flow.affinity:
        assert len(reached) == 1 and reached <= flow.endpoints, reached
    else:
        assert reached == set(flow.endpoints), f"{flow.name}: reached {reached}"
    node = TOPOLOGY.node(PROXY_NODE)
    for r in replies:
        seen_ip = r.client.rsplit(":", 1)[0]
        if flow.masquerade:
            assert seen_ip in (node.ip, node.gateway) and seen_ip != src_ip, (flow.name, r)
        else:
            assert seen_ip == src_ip, (flow.name, r)


@contextlib.contextmanager
def flow_fabric() -> Iterator[tuple[Fabric, dict[str, str]]]:
    """TOPOLOGY as namespaces for the body (see build_fabric); after it, none of them is left."""
    f, where = build_fabric()
    try:
        yield f, where
    finally:
        f.close()
    assert not [n for n in netns.list_names() if n.startswith(f.prefix)]


@contextlib.contextmanager
def programmed(where: dict[str, str], backend) -> Iterator[tuple[dict[str, str], object]]:
    """`backend` (a proxy.backend.Backend for PROXY_NODE) holding the table's objects for the body.

    After it, the mode's rules are gone (its --cleanup), the backend closed
    if it holds a socket (IPVS's netlink), and PROXY_NODE's conntrack table
    flushed, so the next mode on the same fabric starts from nothing.
    """
    try:
        backend.sync(flow_state(), None)
        yield where, backend
    finally:
        backend.cleanup()
        if hasattr(backend, "close"):
            backend.close()
        netns.run_in(where[PROXY_NODE], ["conntrack", "-F"], capture_output=True)
