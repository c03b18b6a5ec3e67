"""A minimal node with pods, in namespaces, for the proxy-mode tests (here and in the VM).

Why not the lab fabric: the proxy modes need one node, a cni0 bridge, a few
pods that answer, and an outside client, nothing more. This fixture builds
exactly that with netlink calls from one process (no fork, no `ip`), so it
is cheap enough to run inside the QEMU guest where Python is ~20x slower.

    node   nltest-pm-<id>-node   eth0 192.168.77.1/24 (to ext), cni0 10.244.1.1/24
    pods   nltest-pm-<id>-<pod>  eth0 10.244.1.N/24, default via 10.244.1.1
    ext    nltest-pm-<id>-ext    eth0 192.168.77.2/24, default via 192.168.77.1

Every pod runs an echo server (a thread in this process, its socket created
inside the pod's namespace) that answers "<pod> <peer-ip>" on TCP and UDP,
so a test sees which endpoint it reached and with which source address.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from netlab import netns

NODE_IP = "192.168.77.1"
EXT_IP = "192.168.77.2"
POD_GW = "10.244.1.1"
POD_CIDR = "10.244.0.0/16"


@dataclass
class MiniLab:
    prefix: str  # "nltest-pm-<id>"
    pods: dict[str, str] = field(default_factory=dict)  # pod -> ip
    _servers: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    @property
    def ext(self) -> str:
        return f"{self.prefix}-ext"

    def pod_ns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    def namespaces(self) -> list[str]:
        return [self.node, self.ext] + [self.pod_ns(p) for p in self.pods]

    # -- building -------------------------------------------------------------------------

    def up(self, pods: list[str]) -> None:
        netns.create(self.node)
        netns.create(self.ext)
        with netns.iproute(self.node) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="cni0", kind="bridge")
            br = ipr.link_lookup(ifname="cni0")[0]
            ipr.addr("add", index=br, address=POD_GW, prefixlen=24)
            ipr.link("set", index=br, state="up")
            ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "ext0", "net_ns_fd": netns.path(self.ext)})
            e = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=e, address=NODE_IP, prefixlen=24)
            ipr.link("set", index=e, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=EXT_IP)  # a node has a default route
        netns.write_sysctl(self.node, "net.ipv4.ip_forward", 1)
        try:
            # br_netfilter: bridged pod-to-pod packets see iptables and IPVS, as kube-proxy requires.
            netns.write_sysctl(self.node, "net.bridge.bridge-nf-call-iptables", 1)
        except FileNotFoundError:
            raise RuntimeError(
                "net.bridge.bridge-nf-call-iptables is missing: load br_netfilter (modprobe br_netfilter), "
                "as a Kubernetes node does"
            ) from None
        self._wire(self.ext, "ext0", EXT_IP, NODE_IP)
        for i, pod in enumerate(pods):
            ip = f"10.244.1.{10 + i}"
            self.pods[pod] = ip
            netns.create(self.pod_ns(pod))
            host = f"veth{i}{self.prefix[-4:]}"[:15]
            with netns.iproute(self.node) as ipr:
                ipr.link("add", ifname=host, kind="veth",
                         peer={"ifname": "podeth0", "net_ns_fd": netns.path(self.pod_ns(pod))})
                h = ipr.link_lookup(ifname=host)[0]
                ipr.link("set", index=h, master=ipr.link_lookup(ifname="cni0")[0], state="up")
                ipr.brport("set", index=h, mode=1)  # hairpin, as the bridge CNI plugin's hairpinMode
            self._wire(self.pod_ns(pod), "podeth0", ip, POD_GW)
            self._serve(pod)

    @staticmethod
    def _wire(ns: str, ifname: str, ip: str, gw: str) -> None:
        with netns.iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=ip, prefixlen=24)
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=gw)

    def _serve(self, pod: str, port: int = 8080) -> None:
        tcp = netns.socket_in(self.pod_ns(pod), socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", port))
        tcp.listen(64)
        tcp.settimeout(0.2)
        udp = netns.socket_in(self.pod_ns(pod), socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", port))
        udp.settimeout(0.2)
        self._servers += [tcp, udp]

        def tcp_loop() -> None:
            while not self._stop.is_set():
                try:
                    c, (peer, _) = tcp.accept()
                except (TimeoutError, OSError):
                    continue
                with c:
                    with contextlib.suppress(OSError):
                        c.sendall(f"{pod} {peer}".encode())

        def udp_loop() -> None:
            while not self._stop.is_set():
                try:
                    _, (peer, pport) = udp.recvfrom(512)
                except (TimeoutError, OSError):
                    continue
                with contextlib.suppress(OSError):
                    udp.sendto(f"{pod} {peer}".encode(), (peer, pport))

        for fn in (tcp_loop, udp_loop):
            t = threading.Thread(target=fn, daemon=True, name=f"minilab-{pod}-{fn.__name__}")
            t.start()
            self._threads.append(t)

    def down(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for s in self._servers:
            s.close()
        for ns in self.namespaces():
            netns.remove(ns)

    # -- probing -------------------------------------------------------------------------

    def request(self, src_ns: str, ip: str, port: int, proto: str = "TCP", timeout: float = 2.0) -> tuple[str, str] | None:
        """(endpoint pod, source ip it saw) for one connection from `src_ns`, None if nothing answered."""
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        s = netns.socket_in(src_ns, socket.AF_INET, kind)
        s.settimeout(timeout)
        try:
            if proto == "TCP":
                s.connect((ip, port))
                data = s.recv(512)
            else:
                s.sendto(b"?", (ip, port))
                data, _ = s.recvfrom(512)
        except OSError:
            return None
        finally:
            s.close()
        pod, _, seen = data.decode().partition(" ")
        return pod, seen

    def reach(self, src_ns: str, ip: str, port: int, proto: str = "TCP", tries: int = 12) -> dict[str, set[str]]:
        """Endpoint pod -> source addresses seen, over `tries` connections (one per source port)."""
        out: dict[str, set[str]] = {}
        for _ in range(tries):
            r = self.request(src_ns, ip, port, proto, timeout=1.0)
            if r is not None:
                out.setdefault(r[0], set()).add(r[1])
        return out


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    """Poll `pred` until it returns a truthy value (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def in_vm() -> bool:
    return os.environ.get("NETLAB_IN_VM") == "1"


# -- the services every proxy mode serves in the minilab, and the flows they must give ----------

CLUSTER_IP = "10.96.0.10"
UDP_CLUSTER_IP = "10.96.0.53"
NODE_PORT = 30080
SERVICE_CIDR = "10.96.0.0/16"


def mini_state(lab: MiniLab, endpoints: tuple[str, ...] = ("web-0", "web-1")):
    """ProxyState: web (TCP 80 -> 8080, NodePort 30080) and dns (UDP 53 -> 8080), on `endpoints`."""
    from proxy.model import Endpoint, NodeContext, ProxyState, ServicePort, ServicePortName

    web = ServicePortName("default", "web", "", "TCP")
    dns = ServicePortName("default", "dns", "", "UDP")
    eps = tuple(Endpoint(lab.pods[p], 8080, node_name="node", is_local=True) for p in endpoints)
    return ProxyState(
        node=NodeContext(node_name="node", node_ips=(NODE_IP, POD_GW), cluster_cidr=POD_CIDR),
        services={
            web: ServicePort(web, type="NodePort", cluster_ip=CLUSTER_IP, port=80, target_port=8080,
                             node_port=NODE_PORT, protocol="TCP"),
            dns: ServicePort(dns, cluster_ip=UDP_CLUSTER_IP, port=53, target_port=8080, protocol="UDP"),
        },
        endpoints={web: eps, dns: eps},
    )
