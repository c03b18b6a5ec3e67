"""userspace mode against the real kernel: REDIRECT portals to a round-robin proxy in the node.

The mode's packet-flow differences from the table the other modes share
are the mode's own, as kube-proxy's userspace proxier had them: the proxy
opens its own connection, so every endpoint sees the node's address
(always "masqueraded"), and traffic policies are not known to it.
"""

from __future__ import annotations

import pytest

from netlab import netns
from proxy.userspace import UserspaceBackend
from tests.helpers import unique
from tests.vm.minilab import CLUSTER_IP, NODE_IP, NODE_PORT, POD_GW, UDP_CLUSTER_IP, MiniLab, mini_state

BOTH = {"web-0", "web-1"}


@pytest.fixture(scope="module")
def lab():
    lab = MiniLab(unique("nltest-pm-"))
    backend = None
    try:
        lab.up(["web-0", "web-1", "client"])
        backend = UserspaceBackend(lab.node)
        backend.sync(mini_state(lab), None)
        yield lab, backend
    finally:
        if backend is not None:
            backend.cleanup()
        lab.down()
    assert not [n for n in netns.list_names() if n.startswith(lab.prefix)]


@pytest.mark.parametrize(
    "source,ip,port,proto",
    [
        ("client", CLUSTER_IP, 80, "TCP"),
        ("client", UDP_CLUSTER_IP, 53, "UDP"),
        ("node", CLUSTER_IP, 80, "TCP"),
        ("ext", NODE_IP, NODE_PORT, "TCP"),
        ("web-0", CLUSTER_IP, 80, "TCP"),  # hairpin needs nothing special: the proxy reconnects
    ],
)
def test_round_robin_through_the_proxy(lab, source, ip, port, proto):
    lab_, _backend = lab
    src = {"node": lab_.node, "ext": lab_.ext}.get(source) or lab_.pod_ns(source)
    got = lab_.reach(src, ip, port, proto, tries=6)
    assert set(got) == BOTH, got  # round-robin: 6 connections alternate over both
    assert all(seen == {POD_GW} for seen in got.values()), got  # the proxy's own connection


def test_endpoint_change_and_portals(lab):
    lab_, backend = lab
    one = mini_state(lab_, endpoints=("web-1",))
    backend.sync(one, set(one.services))
    try:
        assert set(lab_.reach(lab_.pod_ns("client"), CLUSTER_IP, 80, tries=4)) == {"web-1"}
        save = netns.run_in(lab_.node, ["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        port = next(p.port for k, p in backend.proxies.items() if k.name == "web")
        assert f"-A KUBE-PORTALS-CONTAINER -d {CLUSTER_IP}/32 -p tcp -m comment --comment \"default/web\" " \
               f"-m tcp --dport 80 -j REDIRECT --to-ports {port}" in save
        assert "-j KUBE-PORTALS-CONTAINER" in save and "-j KUBE-NODEPORT-HOST" in save
    finally:
        backend.sync(mini_state(lab_), None)


def test_a_service_port_costs_one_descriptor_and_no_thread(lab):
    """One reactor waits on every proxy socket: no thread per port blocked in accept(2),
    which reserves the next connection's descriptor while it sleeps (at 10k ports, twice
    the descriptors: the bench ran out at RLIMIT_NOFILE 20,000)."""
    import os
    import threading

    from proxy.userspace import LoadBalancer, Reactor, ServiceProxy

    lab_, _backend = lab
    reactor = Reactor()
    proxies = []
    try:
        fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
        proxies = [ServiceProxy(reactor, lab_.node, proto, LoadBalancer()) for proto in ("TCP", "UDP") * 150]
        assert len(os.listdir("/proc/self/fd")) - fds == 300
        assert threading.active_count() == threads
    finally:
        for p in proxies:
            p.close()
        reactor.close()
    assert not reactor.thread.is_alive()


def test_cleanup_removes_portals_and_proxies():
    lab = MiniLab(unique("nltest-pm-"))
    try:
        lab.up(["web-0", "client"])
        b = UserspaceBackend(lab.node)
        b.sync(mini_state(lab, endpoints=("web-0",)), None)
        assert lab.request(lab.pod_ns("client"), CLUSTER_IP, 80) is not None
        b.cleanup()
        save = netns.run_in(lab.node, ["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert "KUBE-" not in save and not b.proxies
        assert lab.request(lab.pod_ns("client"), CLUSTER_IP, 80, timeout=0.5) is None
    finally:
        lab.down()

