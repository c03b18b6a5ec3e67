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

This backend runs the proxies in the process that owns it (netlab-proxy
in the node, or a test): one reactor thread waits on every proxy socket,
each proxied TCP connection has a thread, and the sockets are created
inside the node's namespace.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
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


class Reactor:
    """One thread waiting on every proxy socket (epoll): what Go's netpoller was to the
    userspace proxier's goroutine per port.

    Not a thread per port blocked in accept(2): accept4 reserves the new
    connection's descriptor before it sleeps, so each such thread held a
    descriptor besides its socket's. 10k TCP service ports took 20k
    descriptors, and the bench's 10k-service run failed at 9,997 proxies
    under RLIMIT_NOFILE 20,000. Here a listening socket costs one
    descriptor; a proxied TCP connection gets a thread of its own for its
    splice (the connection's own sockets); UDP is relayed here.

    Registrations and closes run in this thread (`call`), so the selector
    is never changed under a select() in progress.
    """

    SWEEP_EVERY = 1.0  # seconds between checks for idle UDP flows

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: collections.deque[tuple[Callable[[], None], threading.Event, list]] = collections.deque()
        self._stopped = False
        self.sweepers: set[ServiceProxy] = set()
        self.thread = threading.Thread(target=self._run, daemon=True, name="userspace-proxy-reactor")
        self.thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the reactor's thread and wait for it; its exception is raised here."""
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            fn()  # in the loop already, or no loop left to race with
            return
        done, err = threading.Event(), []
        self._calls.append((fn, done, err))
        self._wake_w.send(b"\0")
        done.wait()
        if err:
            raise err[0]

    def close(self) -> None:
        def stop() -> None:
            self._stopped = True

        if self.thread.is_alive():
            self.call(stop)
            self.thread.join()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.SWEEP_EVERY
        while not self._stopped:
            for key, _ in self.sel.select(self.SWEEP_EVERY):
                if key.data is None:
                    self._run_calls()
                    continue
                try:
                    key.data(key.fileobj)
                except Exception as e:  # one socket's trouble (EMFILE on a new flow, say) ends no proxy
                    print(f"netlab userspace proxy: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            now = time.monotonic()
            if now >= next_sweep:
                for proxy in list(self.sweepers):
                    proxy.sweep(now)
                next_sweep = now + self.SWEEP_EVERY

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while self._calls:
            fn, done, err = self._calls.popleft()
            try:
                fn()
            except Exception as e:  # handed to the caller
                err.append(e)
            done.set()


class ServiceProxy:
    """One service port's proxy socket, served by the backend's reactor."""

    def __init__(self, reactor: Reactor, netns_name: str, protocol: str, lb: LoadBalancer) -> None:
        self.reactor = reactor
        self.netns_name = netns_name
        self.protocol = protocol
        self.lb = lb
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        self.sock = netns.socket_in(netns_name, socket.AF_INET, kind)
        self.sock.bind(("0.0.0.0", 0))  # a random port, as the userspace proxier's
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()  # ends this proxy's TCP splices
        # UDP: client address -> (its upstream socket, last seen); the proxier's udpConnTrack.
        self.flows: dict[tuple[str, int], tuple[socket.socket, float]] = {}
        if protocol == "TCP":
            self.sock.listen(128)
        self.sock.setblocking(False)
        try:
            reactor.call(self._register)
        except BaseException:
            self.sock.close()
            raise

    def _register(self) -> None:
        on_ready = self._accept if self.protocol == "TCP" else self._from_client
        self.reactor.sel.register(self.sock, selectors.EVENT_READ, on_ready)
        if self.protocol == "UDP":
            self.reactor.sweepers.add(self)

    def close(self) -> None:
        self.stop.set()
        self.reactor.call(self._close)

    def _close(self) -> None:
        self.reactor.sweepers.discard(self)
        for s in [self.sock] + [up for up, _ in self.flows.values()]:
            with contextlib.suppress(KeyError, ValueError):
                self.reactor.sel.unregister(s)
            s.close()
        self.flows.clear()

    # -- TCP ---------------------------------------------------------------------------------

    def _accept(self, _sock: socket.socket) -> None:
        while True:  # every connection queued now, then back to the reactor
            try:
                client, (cip, _) = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: the connection stays queued, retried on the next wake
                return
            client.setblocking(True)
            threading.Thread(target=self._tcp_conn, args=(client, cip), daemon=True,
                             name=f"userspace-proxy-{self.port}-conn").start()

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

    # -- UDP ---------------------------------------------------------------------------------

    def _from_client(self, _sock: socket.socket) -> None:
        now = time.monotonic()
        while True:
            try:
                data, client = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            entry = self.flows.get(client)
            if entry is None:
                ep = self.lb.next_endpoint(client[0])
                if ep is None:
                    continue
                up = netns.socket_in(self.netns_name, socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    up.connect(ep)
                    up.setblocking(False)
                    self.reactor.sel.register(up, selectors.EVENT_READ, functools.partial(self._from_endpoint, client))
                except OSError:
                    up.close()
                    continue
                entry = (up, now)
            self.flows[client] = (entry[0], now)
            with contextlib.suppress(OSError):
                entry[0].send(data)

    def _from_endpoint(self, client: tuple[str, int], up: socket.socket) -> None:
        while True:
            try:
                data = up.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error: the flow lives on until idle
                return
            with contextlib.suppress(OSError):
                self.sock.sendto(data, client)
            self.flows[client] = (up, time.monotonic())

    def sweep(self, now: float) -> None:
        """Forget flows idle longer than UDP_IDLE_TIMEOUT (the proxier's udpIdleTimeout)."""
        for client, (up, seen) in list(self.flows.items()):
            if now - seen > UDP_IDLE_TIMEOUT:
                self.reactor.sel.unregister(up)
                up.close()
                del self.flows[client]


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
        self.reactor: Reactor | None = None  # started by the first proxy, stopped by cleanup()

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
                if self.reactor is None:
                    self.reactor = Reactor()
                self.proxies[spn] = ServiceProxy(self.reactor, self.netns_name, svc.protocol, lb)
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
        if self.reactor is not None:
            self.reactor.close()
            self.reactor = None
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
