"""userspace mode and the shared packet-flow table, with real packets.

The fabric, the objects and the per-flow checks are the other modes'
(tests/packet_flows.py and tests/flow_lab.py): every case
of the table runs here too. Where userspace mode cannot give what the table
says, `userspace_expectation` derives what kube-proxy's legacy userspace
proxier (pkg/proxy/userspace, the original mode, removed in Kubernetes
1.26) gave for the same case, and `test_the_differences_are_the_modes_own`
pins exactly which cases differ and in what, so none is silently dropped or
loosened.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from netlab import netns
from proxy.ipvs import categorize_endpoints
from proxy.model import ProxyState, ServicePort
from proxy.userspace import UserspaceBackend
from tests.flow_lab import CONNECTIONS, check_flow, flow_fabric, programmed
from tests.packet_flows import FLOWS, MODE_FLOWS, PROXY_NODE, TOPOLOGY, Flow, flow_state

ALL_FLOWS = FLOWS + MODE_FLOWS

CLOSED = "CLOSED"  # accepted by the proxy, then closed without a byte: no endpoint to connect to


def _service_for(flow: Flow) -> ServicePort:
    """The service port a flow's destination addresses (ClusterIP, LB IP or node IP + NodePort)."""
    node_ips = {n.ip for n in TOPOLOGY.nodes}
    for svc in flow_state().services.values():
        if svc.protocol != flow.protocol:
            continue
        if flow.dest_ip in node_ips and svc.node_port == flow.dest_port:
            return svc
        if flow.dest_ip in (svc.cluster_ip, *svc.load_balancer_ips, *svc.external_ips) and svc.port == flow.dest_port:
            return svc
    raise LookupError(f"no service for {flow.name} ({flow.dest})")


def userspace_expectation(flow: Flow) -> Flow:
    """The table's case as kube-proxy's userspace proxier served it.

    - masquerade is always yes: the portal REDIRECTs the client's connection
      to the proxy's own socket in the node, and the proxy opens a new one to
      the endpoint, so every endpoint sees a node address. That is the
      mode's nature (and why preserving client IPs needed iptables mode);
    - traffic policies are unknown to it (externalTrafficPolicy: Local came
      with iptables mode, internalTrafficPolicy with Kubernetes 1.21, when the
      userspace proxier was long deprecated), so every ready endpoint serves a
      NodePort or a ClusterIP, and none is dropped for want of a local one;
    - a service without endpoints keeps its portal and its proxy socket: the
      TCP connection is accepted, then closed ("couldn't find an endpoint"),
      where the other modes reject the SYN.
    Endpoint choice (round-robin) and ClientIP affinity are as in the table.
    """
    svc = _service_for(flow)
    cluster, _local = categorize_endpoints(svc, flow_state().endpoints_of(svc.name))
    every = frozenset(str(e) for e in cluster)
    if not every:
        return replace(flow, endpoints=frozenset(), masquerade=True, verdict=CLOSED)
    return replace(flow, endpoints=every, masquerade=True, verdict="ACCEPT")


def _changed(a: Flow, b: Flow) -> set[str]:
    return {f for f in ("endpoints", "masquerade", "verdict", "affinity") if getattr(a, f) != getattr(b, f)}


def test_the_differences_are_the_modes_own():
    """Which cases userspace mode serves differently from the table, and in what (nothing else)."""
    diffs = {f.name: _changed(f, userspace_expectation(f)) for f in ALL_FLOWS}
    assert {k: v for k, v in diffs.items() if v} == {
        # The proxy's own connection: the endpoint sees the node, not the client.
        "clusterip-several-endpoints": {"masquerade"},
        "clusterip-udp": {"masquerade"},
        "session-affinity": {"masquerade"},
        "etp-local-with-local-endpoint": {"masquerade", "endpoints"},  # and no traffic policy: b1 serves too
        "etp-local-without-local-endpoint": {"masquerade", "endpoints", "verdict"},  # b1 serves, nothing dropped
        "etp-local-without-local-endpoint-from-pod": {"masquerade"},
        "endpoint-on-another-node": {"masquerade"},
        "clusterip-no-endpoints": {"masquerade", "verdict"},  # accepted, then closed; not rejected
        "itp-local-with-local-endpoint": {"masquerade", "endpoints"},  # no internal policy: b1 serves too
        "itp-local-without-local-endpoint": {"masquerade", "endpoints", "verdict"},  # b1 serves, nothing dropped
    }
    # Cases the table already masquerades, and every endpoint set but the policy ones, are unchanged.
    assert all(not diffs[f.name] for f in ALL_FLOWS if f.masquerade)


def _connect_and_read(ns: str, flow: Flow) -> str:
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect((flow.dest_ip, flow.dest_port))
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            return "reset"
        return "closed" if data == b"" else f"data {data!r}"
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, socket.timeout):
        return "timeout"
    finally:
        s.close()


def check_closed(where: dict[str, str], flow: Flow) -> None:
    """Every connection is accepted (no refusal, no timeout) and ends without a byte."""
    with ThreadPoolExecutor(max_workers=10) as ex:
        outcomes = list(ex.map(lambda _: _connect_and_read(where[flow.source], flow), range(CONNECTIONS)))
    assert set(outcomes) <= {"closed", "reset"} and "closed" in outcomes, outcomes


@pytest.fixture(scope="module")
def userspace():
    with flow_fabric() as (_f, where), programmed(where, UserspaceBackend(where[PROXY_NODE])) as p:
        yield p


@pytest.mark.parametrize("flow", ALL_FLOWS, ids=[f.name for f in ALL_FLOWS])
def test_flow_with_real_packets(userspace, flow: Flow):
    where, _backend = userspace
    want = userspace_expectation(flow)
    if want.verdict == CLOSED:
        check_closed(where, want)
    else:
        check_flow(where, want)


def test_a_gone_services_proxy_closes_only_after_its_portal_is_gone(userspace):
    """No window in which the REDIRECT points at a closed port (ECONNREFUSED): portal first, then proxy.

    As kube-proxy's userspace proxier (closePortal, then stopProxy). Checked
    at the moment the rules are written: the gone service's socket still listens.
    """
    where, backend = userspace
    state = flow_state()
    web = next(k for k in state.services if k.name == "web")
    old = backend.proxies[web]
    open_at_restore: list[bool] = []
    run = backend._run

    def watching(argv, text=None):
        if argv[0] == "iptables-restore":
            open_at_restore.append(old.sock.fileno() != -1)
        return run(argv, text)

    backend._run = watching
    try:
        backend.sync(ProxyState(node=state.node, services={k: v for k, v in state.services.items() if k != web},
                                endpoints=state.endpoints), None)
    finally:
        backend._run = run
        backend.sync(state, None)
    assert open_at_restore == [True]
    assert old.sock.fileno() == -1 and web in backend.proxies and backend.proxies[web] is not old
    check_flow(where, userspace_expectation(FLOWS[0]))
