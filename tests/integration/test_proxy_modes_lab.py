"""Every proxy mode in a whole lab, driven through the command line as a user drives it.

For each `proxyMode` (iptables, nftables, userspace; ipvs where the kernel
has it, else a skip with the reason): `netlab up` a two-node lab (web pods
on both nodes, a client pod, an external client), then

- `netlab apply -f` a NodePort Service: its ClusterIP answers from the client
  pod, both endpoints are reached over 20 connections, and each saw the
  client address the packet-flow table (tests/packet_flows.py) says the mode
  gives; the NodePort answers the external client (`netlab exec ext ...`),
  masqueraded; kube-proxy's /healthz (10256) and /metrics (10249) answer in
  a node;
- `netlab apply -f` a selectorless Service with a hand-written EndpointSlice
  (one endpoint): only that endpoint is reached;
- `netlab apply -f` an invalid Service and an invalid EndpointSlice: exit 2,
  an error naming file:line and the field, and nothing changed (the store's
  objects are as they were and the Service still serves);
- `netlab delete -f` both Services: their ClusterIPs stop answering.

One lab per mode, every step in one test (a lab up is the expensive part).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from netlab import lab, names, netns
from netlab import store as st
from netlab.check import http_get
from tests.helpers import unique, wait_until
from tests.integration.conftest import LabFactory, pod
from tests.integration.test_proxy_userspace_flows import userspace_expectation
from tests.packet_flows import FLOWS, flow_for_mode

NETLAB = [sys.executable, "-m", "netlab.cli"]
CONNECTIONS = 20
NODE_PORT = 30080
MODES = ["iptables", "nftables", "userspace", "ipvs"]



def table_masquerade(flow_name: str, mode: str) -> bool:
    """Whether the shared packet-flow table has `mode` masquerade this case (the backend sees a node address)."""
    flow = next(f for f in FLOWS if f.name == flow_name)
    return userspace_expectation(flow).masquerade if mode == "userspace" else flow_for_mode(flow, mode).masquerade


WEB = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: %d}]
""" % NODE_PORT

MANUAL = """\
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {kubernetes.io/service-name: manual}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints:
- addresses: [%s]
  conditions: {ready: true}
"""

# WEB made invalid twice: line 7 holds a port out of range, line 8 an unknown field (a typo).
BAD_SERVICE = WEB.replace("port: 80,", "port: 70000,") + "  sessionAfinity: ClientIP\n"

# MANUAL's EndpointSlice with an address no IPv4 can be (line 9).
BAD_SLICE = MANUAL.split("---\n")[1] % "10.244.300.7"

# A client's request loop, run in the external client's namespace by `netlab exec`: n connections
# for /hostname, then n for /clientip, one line "<path> <answer>" each.
CLIENT_LOOP = textwrap.dedent("""\
    import socket, sys
    ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for path in ["/hostname"] * n + ["/clientip"] * n:
        s = socket.create_connection((ip, port), timeout=2)
        s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        print(path, data.partition(b"\\r\\n\\r\\n")[2].decode().strip())
""")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NETLAB, *args], capture_output=True, text=True, timeout=120)


def ipvs_skip_reason() -> str | None:
    """Why an IPVS lab cannot run on this kernel (None: it can), asked in a namespace of our own."""
    from proxy.ipvs_kernel import ipvs_unavailable_reason

    ns = unique("nlpm2-ipvs-")
    netns.create(ns, lo_up=True)
    try:
        return ipvs_unavailable_reason(ns)
    finally:
        netns.remove(ns)


@pytest.fixture
def mode_labs(tmp_path):
    f = LabFactory(tmp_path, "nlpm2-")
    yield f
    f.teardown()


def node_addresses(ns: str) -> set[str]:
    with netns.iproute(ns) as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}


def objects(store) -> dict[str, tuple[int, object]]:
    """Every Service and EndpointSlice in the store: key -> (mod revision, value)."""
    out = {}
    for prefix in (st.SERVICES, st.ENDPOINTSLICES):
        for kv in store.list(prefix)[0]:
            out[kv.key] = (kv.mod_revision, kv.value)
    return out


def hostnames(ns: str, ip: str, n: int = CONNECTIONS) -> list[str]:
    """Who answered each of n connections from namespace `ns` to ip:80."""
    return [http_get(ns, ip, "/hostname", port=80) for _ in range(n)]


def client_ips(ns: str, ip: str, n: int = CONNECTIONS) -> set[str]:
    """The client addresses the backends saw over n connections (their own loop: userspace's round
    robin would send every other connection of an interleaved /hostname, /clientip loop to one backend)."""
    return {http_get(ns, ip, "/clientip", port=80).rsplit(":", 1)[0] for _ in range(n)}


def poll(cond, what: str, timeout: float = 30.0):
    """wait_until, where a connection error (an endpoint not there yet) counts as "not yet"."""
    def attempt():
        try:
            return cond()
        except OSError:
            return None

    return wait_until(attempt, timeout=timeout, what=what)


def cluster_ip(store, name: str) -> str:
    kv = wait_until(lambda: store.get(st.object_key("Service", "default", name)), what=f"Service {name} stored")
    return kv.value["spec"]["clusterIP"]


def no_answer(ns: str, ip: str) -> str | None:
    """How a connection to ip:80 fails: "refused", "timeout" or the error (None: it was answered)."""
    try:
        http_get(ns, ip, "/hostname", port=80, timeout=0.5)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return repr(e)
    return None


@pytest.mark.parametrize("mode", MODES)
def test_services_through_the_cli(mode_labs: LabFactory, mode: str):
    if mode == "ipvs" and (reason := ipvs_skip_reason()):
        if os.environ.get("NETLAB_REQUIRE_IPVS") == "1":
            pytest.fail(f"IPVS required here but: {reason}")
        pytest.skip(reason + " (IPVS runs in the stock-kernel VM: tests/vm/runner.py)")
    name = mode_labs.name()
    path = mode_labs.lab_yaml(
        name, f"nodes: 2\nproxyMode: {mode}\nclients: [{{name: ext}}]",
        pod("web-1", "node1") + pod("web-2", "node2") + pod("client", "node1", labels="{app: client}"),
    )
    up = run_cli("up", "-f", path)
    assert up.returncode == 0, up.stderr
    status = lab.status(name)
    pods = {p["name"]: p for p in status["pods"]}
    client_ns = pods["client"]["netns"]
    node1_ns = names.node_netns(name, "node1")
    node1_addrs = node_addresses(node1_ns)
    store = lab.store_for(name)
    try:
        # apply -f: a NodePort Service; the EndpointSlice controller derives its slice from the pods.
        web_file = mode_labs.write(WEB, "web.yaml")
        r = run_cli("apply", "-l", name, "-f", web_file)
        assert r.returncode == 0 and "service default/web configured" in r.stdout, (r.stdout, r.stderr)
        web_ip = cluster_ip(store, "web")
        poll(lambda: set(hostnames(client_ns, web_ip, 6)) == {"web-1", "web-2"},
             what=f"both endpoints of web via its ClusterIP ({mode})")
        assert set(hostnames(client_ns, web_ip)) == {"web-1", "web-2"}
        seen = client_ips(client_ns, web_ip)
        # The table's ClusterIP case from a pod on the node with an endpoint and one on the other node.
        if table_masquerade("clusterip-several-endpoints", mode) or table_masquerade("endpoint-on-another-node", mode):
            assert seen <= node1_addrs and pods["client"]["ip"] not in seen, seen
        else:
            assert seen == {pods["client"]["ip"]}

        # The NodePort from the external client, as a user runs it: `netlab exec ext ...`.
        r = run_cli("exec", "-l", name, "ext", "--", sys.executable, "-c", CLIENT_LOOP,
                    _node_ip(node1_ns), str(NODE_PORT), str(CONNECTIONS))
        assert r.returncode == 0, r.stderr
        lines = [l.split() for l in r.stdout.splitlines()]
        assert len(lines) == 2 * CONNECTIONS, r.stdout
        assert {a for p, a in lines if p == "/hostname"} == {"web-1", "web-2"}, r.stdout
        ext_ip = next(c["ip"] for c in status["clients"] if c["name"] == "ext")
        ext_seen = {a.rsplit(":", 1)[0] for p, a in lines if p == "/clientip"}
        if table_masquerade("nodeport-from-external", mode):
            assert ext_ip not in ext_seen and ext_seen <= node1_addrs, ext_seen
        else:
            assert ext_seen == {ext_ip}

        # kube-proxy's own endpoints in the node.
        health = http_get(node1_ns, "127.0.0.1", "/healthz", port=10256)
        assert '"lastUpdated"' in health
        metrics = http_get(node1_ns, "127.0.0.1", "/metrics", port=10249)
        assert "kubeproxy_sync_proxy_rules_duration_seconds" in metrics

        # apply -f: a selectorless Service and its hand-written EndpointSlice (web-2 only).
        manual_file = mode_labs.write(MANUAL % pods["web-2"]["ip"], "manual.yaml")
        r = run_cli("apply", "-l", name, "-f", manual_file)
        assert r.returncode == 0, r.stderr
        assert "service default/manual configured" in r.stdout and "endpointslice default/manual-1" in r.stdout
        manual_ip = cluster_ip(store, "manual")
        poll(lambda: set(hostnames(client_ns, manual_ip, 2)) == {"web-2"}, what="manual answers")
        assert set(hostnames(client_ns, manual_ip)) == {"web-2"}

        # Invalid input: rejected before anything is stored, with file:line and the field named.
        before = objects(store)
        bad_svc = mode_labs.write(BAD_SERVICE, "bad-service.yaml")
        r = run_cli("apply", "-l", name, "-f", bad_svc)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"{bad_svc}:7: spec.ports[0].port: must be between 1 and 65535" in r.stderr, r.stderr
        assert f'{bad_svc}:8: spec.sessionAfinity: unknown field "spec.sessionAfinity"' in r.stderr, r.stderr
        bad_slice = mode_labs.write(BAD_SLICE, "bad-slice.yaml")
        r = run_cli("apply", "-l", name, "-f", bad_slice)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"{bad_slice}:9: endpoints[0].addresses[0]:" in r.stderr, r.stderr
        assert objects(store) == before
        assert set(hostnames(client_ns, web_ip)) == {"web-1", "web-2"}
        assert set(hostnames(client_ns, manual_ip)) == {"web-2"}

        # delete -f: the ClusterIPs stop answering. With its Service gone an address is nobody's:
        # no rule of any mode matches it (REJECT is for a Service without endpoints), the node routes
        # it like any other (here: to an underlay gateway that forwards nothing), and the client's
        # SYN goes unanswered. A refusal would be a rule left behind (or userspace's proxy closed
        # before its portal was removed).
        r = run_cli("delete", "-l", name, "-f", web_file, "-f", manual_file)
        assert r.returncode == 0, r.stderr
        assert "service default/web deleted" in r.stdout and "endpointslice default/manual-1 deleted" in r.stdout
        # Wait for the end state, then hold it: a sync in progress (the two deletions may land in
        # separate syncs; IPVS passes through ipset, iptables, addresses, then the IPVS table, seconds
        # apart in the TCG guest) can refuse for a moment before the address is gone.
        for ip in (web_ip, manual_ip):
            wait_until(lambda: no_answer(client_ns, ip) == "timeout", timeout=30,
                       what=f"{ip} no longer answers ({mode})")
        assert {no_answer(client_ns, ip) for ip in (web_ip, manual_ip) for _ in range(5)} == {"timeout"}
        wait_until(lambda: not store.list(st.ENDPOINTSLICES)[0], what="the derived EndpointSlice removed")
    finally:
        store.close()


def _node_ip(ns: str) -> str:
    with netns.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=names.NODE_UPLINK)[0]
        return next(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=idx))
