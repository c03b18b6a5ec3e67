"""userspace mode's pure parts: round-robin with ClientIP affinity, and the portal rules."""

from __future__ import annotations

from proxy.model import NodeContext, ProxyState, ServicePort, ServicePortName
from proxy.userspace import LoadBalancer, portal_rules


def test_round_robin_and_affinity():
    lb = LoadBalancer()
    lb.update([("10.0.0.1", 80), ("10.0.0.2", 80)], 0)
    assert [lb.next_endpoint("c")[0] for _ in range(4)] == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    lb.update([("10.0.0.1", 80), ("10.0.0.2", 80)], 60)
    first = lb.next_endpoint("c")
    assert all(lb.next_endpoint("c") == first for _ in range(5))
    assert lb.next_endpoint("other") != first  # a new client takes the next one
    lb.update([], 0)
    assert lb.next_endpoint("c") is None


def test_portal_rules_redirect_service_ips_and_node_ports():
    n = ServicePortName("default", "web", "http", "TCP")
    state = ProxyState(node=NodeContext(node_ips=("192.168.1.2",)),
                       services={n: ServicePort(n, type="NodePort", cluster_ip="10.96.0.10", port=80,
                                                node_port=30080, external_ips=("203.0.113.5",))})
    text = portal_rules(state, {n: 40000}, "192.168.1.2")
    assert ('-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" '
            "-m tcp --dport 80 -j REDIRECT --to-ports 40000") in text
    assert "-A KUBE-PORTALS-HOST -d 203.0.113.5/32 -p tcp" in text
    assert "-j DNAT --to-destination 192.168.1.2:40000" in text
    assert ('-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 '
            "-j REDIRECT --to-ports 40000") in text


def test_readable_takes_descriptors_past_1023():
    """A proxy of a thousand service ports holds descriptors select(2) cannot take."""
    import os
    import resource
    import socket

    from proxy.userspace import _readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 2048), hard), hard))
    a, b = socket.socketpair()
    try:
        fd = os.dup2(a.fileno(), 1500)
        high = socket.socket(fileno=fd)
        try:
            assert _readable([high], 0.05) == []
            b.send(b"x")
            assert _readable([high], 1) == [high]
        finally:
            high.close()
    finally:
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_failing_socket_callback_leaves_the_reactor_serving():
    """One socket's error (say EMFILE while opening a UDP flow's upstream) must not end the
    thread that serves every other proxy."""
    import selectors
    import socket
    import threading

    from proxy.userspace import Reactor

    r = Reactor()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    raised, served = threading.Event(), threading.Event()

    def bad(sock):
        sock.recv(16)
        raised.set()
        raise OSError(24, "Too many open files")

    def good(sock):
        sock.recv(16)
        served.set()

    try:
        r.call(lambda: r.sel.register(a, selectors.EVENT_READ, bad))
        r.call(lambda: r.sel.register(c, selectors.EVENT_READ, good))
        b.send(b"x")
        assert raised.wait(5)
        d.send(b"y")
        assert served.wait(5) and r.thread.is_alive()
    finally:
        r.close()
        for s in (a, b, c, d):
            s.close()
    assert not r.thread.is_alive()
