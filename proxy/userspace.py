"""userspace mode: kube-proxy's original data plane, a round-robin TCP/UDP proxy in the node.

Before iptables mode (Kubernetes 1.2), kube-proxy itself carried every
service byte: for each service port it listened on a random local port,
and iptables REDIRECTed the service IP there (nat chains
KUBE-PORTALS-CONTAINER from PREROUTING for pod traffic, KUBE-PORTALS-HOST
from OUTPUT for the node's own, KUBE-NODEPORT-CONTAINER/-HOST for
NodePorts). The proxy picked an endpoint round-robin (or by client IP for
ClientIP affinity) and opened its own connection to it, so the endpoint
always sees the node's address: client IPs are never preserved, one of the
reasons the mode was retired (removed in 1.26).

This backend runs the proxies as threads of the process that owns it
(netlab-proxy in the node, or a test), their sockets created inside the
node's namespace.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from netlab import netns
from proxy.backend import SyncError, SyncResult
from proxy.ipvs import categorize_endpoints
from proxy.model import Endpoint, ProxyState, ServicePort, ServicePortName

CHAINS = ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST", "KUBE-NODEPORT-CONTAINER", "KUBE-NODEPORT-HOST")
# (builtin chain, kube chain, comment) as the userspace proxier's iptablesInit.
JUMPS = (
    ("PREROUTING", "KUBE-PORTALS-CONTAINER", "handle ClusterIPs; NOTE: this must be before the NodePort rules"),
    ("OUTPUT", "KUBE-PORTALS-HOST", "handle ClusterIPs; NOTE: this must be before the NodePort rules"),
    ("PREROUTING", "KUBE-NODEPORT-CONTAINER",
     "handle service NodePorts; NOTE: this must be the last rule in the chain"),
    ("OUTPUT", "KUBE-NODEPORT-HOST", "handle service NodePorts; NOTE: this must be the last rule in the chain"),
)
UDP_IDLE_TIMEOUT = 30.0  # kube-proxy's --udp-timeout default (250ms there; longer is kinder to tests)


@dataclass
class LoadBalancer:
    """Round-robin over endpoints with optional ClientIP affinity (the userspace LoadBalancerRR)."""

    endpoints: list[tuple[str, int]] = field(default_factory=list)
    affinity_seconds: int = 0
    _next: int = 0
    _sticky: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, endpoints: list[tuple[str, int]], affinity_seconds: int) -> None:
        with self._lock:
            if endpoints != self.endpoints:
                self.endpoints = endpoints
                self._next = 0
                self._sticky = {k: v for k, v in self._sticky.items() if v[0] in endpoints}
            self.affinity_seconds = affinity_seconds

    def next_endpoint(self, client_ip: str) -> tuple[str, int] | None:
        with self._lock:
            if not self.endpoints:
                return None
            now = time.monotonic()
            if self.affinity_seconds:
                hit = self._sticky.get(client_ip)
                if hit and now - hit[1] < self.affinity_seconds:
                    self._sticky[client_ip] = (hit[0], now)
                    return hit[0]
            ep = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            if self.affinity_seconds:
                self._sticky[client_ip] = (ep, now)
            return ep


class ServiceProxy:
    """One service port's proxy socket and its serving thread."""

    def __init__(self, netns_name: str, protocol: str, lb: LoadBalancer) -> None:
        self.netns_name = netns_name
        self.protocol = protocol
        self.lb = lb
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        self.sock = netns.socket_in(netns_name, socket.AF_INET, kind)
        self.sock.bind(("0.0.0.0", 0))  # a random port, as the userspace proxier's
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        if protocol == "TCP":
            self.sock.listen(128)  # accept() blocks until a client or close()'s shutdown
        else:
            self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._tcp if protocol == "TCP" else self._udp, daemon=True,
                                       name=f"userspace-proxy-{self.port}")
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.protocol == "TCP":
            # Wakes the thread's blocking accept() (EINVAL): no thread polls on a timer, which
            # with one thread per service port (10k services) kept the machine's CPUs busy.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=2)
        self.sock.close()

    def _tcp(self) -> None:
        while not self.stop.is_set():
            try:
                client, (cip, _) = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._tcp_conn, args=(client, cip), daemon=True).start()

    def _tcp_conn(self, client: socket.socket, client_ip: str) -> None:
        with client:
            ep = self.lb.next_endpoint(client_ip)
            if ep is None:
                return  # no endpoints: the connection is closed, as the userspace proxier did
            up = netns.socket_in(self.netns_name, socket.AF_INET, socket.SOCK_STREAM)
            with up:
                up.settimeout(5)
                try:
                    up.connect(ep)
                except OSError:
                    return
                client.settimeout(None)
                up.settimeout(None)
                _splice(client, up, self.stop)

    def _udp(self) -> None:
        """Per client address, one upstream socket relaying replies back (the proxier's udpConnTrack)."""
        conns: dict[tuple[str, int], tuple[socket.socket, float]] = {}
        while not self.stop.is_set():
            socks = [self.sock] + [c for c, _ in conns.values()]
            try:
                ready = _readable(socks, 0.2)
            except OSError:
                break
            now = time.monotonic()
            for s in ready:
                if s is self.sock:
                    try:
                        data, client = self.sock.recvfrom(65535)
                    except OSError:
                        continue
                    entry = conns.get(client)
                    if entry is None:
                        ep = self.lb.next_endpoint(client[0])
                        if ep is None:
                            continue
                        up = netns.socket_in(self.netns_name, socket.AF_INET, socket.SOCK_DGRAM)
                        up.connect(ep)
                        entry = (up, now)
                    conns[client] = (entry[0], now)
                    with contextlib.suppress(OSError):
                        entry[0].send(data)
                else:
                    client = next(k for k, (c, _) in conns.items() if c is s)
                    with contextlib.suppress(OSError):
                        self.sock.sendto(s.recv(65535), client)
                    conns[client] = (s, now)
            for client, (c, seen) in list(conns.items()):
                if now - seen > UDP_IDLE_TIMEOUT:
                    c.close()
                    del conns[client]
        for c, _ in conns.values():
            c.close()


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets of `socks` ready to read (or closed), within `timeout` seconds.

    poll(2), not select(2): select takes no descriptor past 1023, and a proxy
    of a thousand service ports holds more than that.
    """
    by_fd = {s.fileno(): s for s in socks}
    p = select.poll()
    for fd in by_fd:
        p.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in p.poll(timeout * 1000) if fd in by_fd]


def _splice(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
    """Copy bytes both ways until both sides have closed (half-close passed on)."""
    peer = {a: b, b: a}
    reading = [a, b]
    while reading and not stop.is_set():
        ready = _readable(reading, 0.5)
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if data:
                try:
                    peer[s].sendall(data)
                except OSError:
                    return
            else:
                reading.remove(s)
                with contextlib.suppress(OSError):
                    peer[s].shutdown(socket.SHUT_WR)


def portal_rules(state: ProxyState, ports: dict[ServicePortName, int], host_ip: str) -> str:
    """iptables-restore --noflush text: REDIRECT each service IP:port to its proxy port."""
    lines = ["*nat"] + [f":{c} - [0:0]" for c in CHAINS]
    for spn in sorted(ports):
        svc = state.services[spn]
        p, port = svc.protocol.lower(), ports[spn]
        c = f'-m comment --comment "{spn}"'
        for ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips):
            m = f"-d {ip}/32 -p {p} {c} -m {p} --dport {svc.port}"
            lines.append(f"-A KUBE-PORTALS-CONTAINER {m} -j REDIRECT --to-ports {port}")
            lines.append(f"-A KUBE-PORTALS-HOST {m} -j DNAT --to-destination {host_ip}:{port}")
        if svc.node_port:
            m = f"-p {p} {c} -m {p} --dport {svc.node_port}"
            lines.append(f"-A KUBE-NODEPORT-CONTAINER {m} -j REDIRECT --to-ports {port}")
            lines.append(f"-A KUBE-NODEPORT-HOST {m} -j DNAT --to-destination {host_ip}:{port}")
    return "\n".join(lines + ["COMMIT"]) + "\n"


def _jump_lines(save: str, remove: bool) -> list[str]:
    have = [l for l in save.splitlines() if any(l.startswith(f"-A {b} ") and l.endswith(f"-j {k}") for b, k, _ in JUMPS)]
    if remove:
        return ["-D" + l[2:] for l in have]
    out = []
    for builtin, chain, comment in JUMPS:
        if not any(l.startswith(f"-A {builtin} ") and l.endswith(f"-j {chain}") for l in have):
            where = "-I" if "before" in comment else "-A"
            out.append(f'{where} {builtin} -m comment --comment "{comment}" -j {chain}')
    return out


class UserspaceBackend:
    """kube-proxy's userspace mode for one node namespace (implements proxy.backend.Backend)."""

    name = "userspace"

    def __init__(self, netns_name: str) -> None:
        self.netns_name = netns_name
        self.proxies: dict[ServicePortName, ServiceProxy] = {}
        self.balancers: dict[ServicePortName, LoadBalancer] = {}

    def _run(self, argv: list[str], text: str | None = None) -> str:
        p = netns.run_in(self.netns_name, argv, input=text, capture_output=True, text=True)
        if p.returncode != 0:
            raise SyncError(f"{' '.join(argv)} in {self.netns_name} failed: {p.stderr.strip()}")
        return p.stdout

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        wanted = {k: s for k, s in state.services.items() if s.cluster_ip and s.protocol in ("TCP", "UDP")}
        # A gone service's proxy socket is closed only after its portal rules are: kube-proxy's
        # userspace proxier closes the portal, then stops the proxy. The other order leaves the
        # REDIRECT pointing at a closed port while iptables-restore runs: ECONNREFUSED.
        retired = []
        for spn in list(self.proxies):
            if spn not in wanted or self.proxies[spn].protocol != wanted[spn].protocol:
                retired.append(self.proxies.pop(spn))
                self.balancers.pop(spn, None)
        try:
            return self._sync(state, changed, wanted)
        finally:
            for p in retired:
                p.close()

    def _sync(self, state: ProxyState, changed: set[ServicePortName] | None,
              wanted: dict[ServicePortName, ServicePort]) -> SyncResult:
        for spn, svc in wanted.items():
            lb = self.balancers.setdefault(spn, LoadBalancer())
            lb.update(_targets(svc, state.endpoints_of(spn)),
                      svc.sticky_max_age_seconds if svc.session_affinity_client_ip else 0)
            if spn not in self.proxies:
                self.proxies[spn] = ServiceProxy(self.netns_name, svc.protocol, lb)
        host_ip = state.node.node_ips[0] if state.node.node_ips else "127.0.0.1"
        save = self._run(["iptables-save", "-t", "nat"])
        text = portal_rules(state, {k: p.port for k, p in self.proxies.items()}, host_ip)
        jumps = _jump_lines(save, remove=False)
        text = text.replace("COMMIT\n", "\n".join(jumps + ["COMMIT"]) + "\n") if jumps else text
        self._run(["iptables-restore", "--noflush"], text)
        return SyncResult(full=changed is None, rules=text.count("\n-A "), chains=len(CHAINS),
                          details={"proxies": len(self.proxies)})

    def cleanup(self) -> None:
        for p in self.proxies.values():
            p.close()
        self.proxies.clear()
        self.balancers.clear()
        save = netns.run_in(self.netns_name, ["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        existing = [c for c in CHAINS if f":{c} " in save]
        body = _jump_lines(save, remove=True) + [f":{c} - [0:0]" for c in existing] + [f"-X {c}" for c in existing]
        if body:
            self._run(["iptables-restore", "--noflush"], "\n".join(["*nat"] + body + ["COMMIT"]) + "\n")


def _targets(svc: ServicePort, eps: tuple[Endpoint, ...]) -> list[tuple[str, int]]:
    # The userspace proxier knew no traffic policies: every usable endpoint serves.
    cluster, _ = categorize_endpoints(svc, eps)
    return [(e.ip, e.port) for e in cluster]


def make_backend(args):
    """netlab-proxy --mode userspace (proxy/cli.py's per-mode hook)."""
    from proxy.ipvs import own_netns

    return UserspaceBackend(own_netns(args))
