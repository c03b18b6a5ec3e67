"""The service packet-flow table, shared by every proxy mode's tests.

As kube-proxy's packetFlowTest: one table of cases (source, destination
ip:port, protocol, expected endpoints, masquerade yes/no), run
- by a rule walker over the generated ruleset (no root), and
- with real packets in real namespaces (root), where each case makes at
  least 20 connections and checks the set of endpoints reached and the
  client address each backend saw.

Pure: the topology, the Service/EndpointSlice objects, the cases, the
proxy state they make and the check of a walk; the real-packet harness is
tests/flow_lab.py. All flows enter the data plane at PROXY_NODE (the only
node whose rules matter for them); endpoints live on both nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from netlab.spec.source import load_text
from proxy.model import NodeContext, ProxyState, build_state, load_objects

TCP_PORT = 8080  # what every endpoint serves, as agnhost netexec's --http-port
UDP_PORT = 8081  # as agnhost netexec's --udp-port


@dataclass(frozen=True)
class Node:
    name: str
    ip: str  # on the underlay (eth0)
    pod_cidr: str
    gateway: str  # cni0's address, the pods' default gateway


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str
    serves: bool = True  # runs the TCP/UDP echo server


@dataclass(frozen=True)
class Topology:
    underlay: str
    cluster_cidr: str
    service_cidr: str
    lb_pool: str
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    external: dict[str, str] = field(default_factory=dict)  # client name -> underlay IP

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def source_ip(self, source: str) -> str:
        """A flow's source: a pod, an external client, or a node itself."""
        if source in self.external:
            return self.external[source]
        if any(n.name == source for n in self.nodes):
            return self.node(source).ip
        return self.pod(source).ip


TOPOLOGY = Topology(
    underlay="192.168.50.0/24",
    cluster_cidr="10.244.0.0/16",
    service_cidr="10.96.0.0/16",
    lb_pool="192.168.60.0/24",
    nodes=(
        Node("node-a", "192.168.50.2", "10.244.1.0/24", "10.244.1.1"),
        Node("node-b", "192.168.50.3", "10.244.2.0/24", "10.244.2.1"),
    ),
    pods=(
        Pod("client", "node-a", "10.244.1.10", serves=False),
        Pod("a1", "node-a", "10.244.1.2"),
        Pod("a2", "node-a", "10.244.1.3"),
        Pod("b1", "node-b", "10.244.2.2"),
    ),
    external={"ext": "192.168.50.100"},
)
PROXY_NODE = "node-a"

A1, A2, B1 = (f"{TOPOLOGY.pod(n).ip}:{TCP_PORT}" for n in ("a1", "a2", "b1"))
A1U, A2U = (f"{TOPOLOGY.pod(n).ip}:{UDP_PORT}" for n in ("a1", "a2"))
NODE_A = TOPOLOGY.node("node-a").ip


def _service(name: str, spec: str, status: str = "") -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
{spec}{status}"""


def _slice(service: str, pods: list[str], port: int = TCP_PORT, protocol: str = "TCP", port_name: str = "") -> str:
    eps = "".join(
        f"\n- addresses: [{TOPOLOGY.pod(p).ip}]\n  nodeName: {TOPOLOGY.pod(p).node}\n  conditions: {{ready: true}}"
        for p in pods
    )
    return f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-flows
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: "{port_name}", port: {port}, protocol: {protocol}}}]
endpoints:{eps if eps else " []"}
"""


# Services as kubectl would accept them, already admitted (clusterIP, nodePort, LB ingress set).
OBJECTS = "".join([
    _service("web", "  clusterIP: 10.96.0.10\n  ports: [{port: 80, targetPort: 8080}]\n"),
    _slice("web", ["a1", "a2"]),
    _service("web-udp", "  clusterIP: 10.96.0.11\n  ports: [{port: 53, protocol: UDP, targetPort: 8081}]\n"),
    _slice("web-udp", ["a1", "a2"], UDP_PORT, "UDP"),
    _service("empty", "  clusterIP: 10.96.0.20\n  ports: [{port: 80, targetPort: 8080}]\n"),
    _slice("empty", []),
    _service("sticky", "  clusterIP: 10.96.0.30\n  sessionAffinity: ClientIP\n  ports: [{port: 80, targetPort: 8080}]\n"),
    _slice("sticky", ["a1", "a2"]),
    _service("np", "  type: NodePort\n  clusterIP: 10.96.0.40\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n"),
    _slice("np", ["a1", "b1"]),
    _service("local", "  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.41\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]\n"),
    _slice("local", ["a1", "b1"]),
    _service("local-none", "  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.42\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]\n"),
    _slice("local-none", ["b1"]),
    _service("hairpin", "  clusterIP: 10.96.0.50\n  ports: [{port: 80, targetPort: 8080}]\n"),
    _slice("hairpin", ["a1"]),
    _service("lb", "  type: LoadBalancer\n  clusterIP: 10.96.0.60\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30090}]\n",
             "status:\n  loadBalancer:\n    ingress: [{ip: 192.168.60.10}]\n"),
    _slice("lb", ["a1", "b1"]),
    _service("remote", "  clusterIP: 10.96.0.70\n  ports: [{port: 80, targetPort: 8080}]\n"),
    _slice("remote", ["b1"]),
    # internalTrafficPolicy: Local (KEP-2086): in-cluster traffic to the ClusterIP only reaches this
    # node's endpoints; "external" traffic (the NodePort) is not affected by it.
    _service("itp-local", "  type: NodePort\n  internalTrafficPolicy: Local\n  clusterIP: 10.96.0.80\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30083}]\n"),
    _slice("itp-local", ["a1", "b1"]),
    _service("itp-local-none", "  type: NodePort\n  internalTrafficPolicy: Local\n  clusterIP: 10.96.0.81\n"
             "  ports: [{port: 80, targetPort: 8080, nodePort: 30084}]\n"),
    _slice("itp-local-none", ["b1"]),
])


@dataclass(frozen=True)
class Flow:
    """One case: a new connection's possible endpoints, and whether its source is rewritten."""

    name: str
    source: str  # a pod, an external client, or a node (see Topology.source_ip)
    dest: str  # "ip:port"
    protocol: str  # "TCP" / "UDP"
    endpoints: frozenset[str]  # "ip:port" a connection may reach; empty: refused or dropped
    masquerade: bool
    verdict: str = "ACCEPT"  # "REJECT" / "DROP" when nothing is reached
    affinity: bool = False  # one client sticks to one of `endpoints`

    @property
    def dest_ip(self) -> str:
        return self.dest.rsplit(":", 1)[0]

    @property
    def dest_port(self) -> int:
        return int(self.dest.rsplit(":", 1)[1])


FLOWS: tuple[Flow, ...] = (
    Flow("clusterip-several-endpoints", "client", "10.96.0.10:80", "TCP", frozenset({A1, A2}), False),
    Flow("clusterip-udp", "client", "10.96.0.11:53", "UDP", frozenset({A1U, A2U}), False),
    Flow("clusterip-no-endpoints", "client", "10.96.0.20:80", "TCP", frozenset(), False, verdict="REJECT"),
    Flow("session-affinity", "client", "10.96.0.30:80", "TCP", frozenset({A1, A2}), False, affinity=True),
    Flow("nodeport-from-external", "ext", f"{NODE_A}:30080", "TCP", frozenset({A1, B1}), True),
    Flow("nodeport-from-pod", "client", f"{NODE_A}:30080", "TCP", frozenset({A1, B1}), True),
    Flow("etp-local-with-local-endpoint", "ext", f"{NODE_A}:30081", "TCP", frozenset({A1}), False),
    Flow("etp-local-without-local-endpoint", "ext", f"{NODE_A}:30082", "TCP", frozenset(), False, verdict="DROP"),
    # Pod traffic to an external destination is subject to neither policy (kube-proxy's "short-circuit
    # pod traffic"): the pod reaches the remote endpoint, unmasqueraded, where outside traffic is dropped.
    Flow("etp-local-without-local-endpoint-from-pod", "client", f"{NODE_A}:30082", "TCP", frozenset({B1}), False),
    Flow("hairpin", "a1", "10.96.0.50:80", "TCP", frozenset({A1}), True),
    Flow("loadbalancer-ip", "ext", "192.168.60.10:80", "TCP", frozenset({A1, B1}), True),
    Flow("endpoint-on-another-node", "client", "10.96.0.70:80", "TCP", frozenset({B1}), False),
    Flow("clusterip-from-outside-pod-network", "ext", "10.96.0.10:80", "TCP", frozenset({A1, A2}), True),
    Flow("itp-local-with-local-endpoint", "client", "10.96.0.80:80", "TCP", frozenset({A1}), False),
    Flow("itp-local-nodeport-from-external", "ext", f"{NODE_A}:30083", "TCP", frozenset({A1, B1}), True),
    Flow("itp-local-without-local-endpoint-nodeport-from-external", "ext", f"{NODE_A}:30084", "TCP",
         frozenset({B1}), True),
)

# Cases on which kube-proxy's own modes disagree. The Flow is iptables' and nftables' (their
# proxier.go: "The internalTrafficPolicy is "Local" but there are no local endpoints. Traffic to
# the clusterIP will be dropped"); MODE_DIFFERENCES holds the other kernel modes' outcome. They
# are kept out of FLOWS so that a mode's flow test that does not know its differences (the IPVS
# one in the VM) cannot hold it to another mode's verdict.
ITP_LOCAL_NONE = Flow("itp-local-without-local-endpoint", "client", "10.96.0.81:80", "TCP", frozenset(), False,
                      verdict="DROP")
MODE_FLOWS: tuple[Flow, ...] = (ITP_LOCAL_NONE,)
MODE_DIFFERENCES: dict[str, dict[str, Flow]] = {
    # IPVS's syncEndpoint: with a Local policy and no local endpoint the virtual server gets the
    # cluster endpoints ("Allow access from local PODs even if no local endpoints exist",
    # kubernetes#97081), so a pod on this node reaches the remote endpoint, unmasqueraded.
    "ipvs": {ITP_LOCAL_NONE.name: replace(ITP_LOCAL_NONE, endpoints=frozenset({B1}), verdict="ACCEPT")},
}


def flow_for_mode(flow: Flow, mode: str) -> Flow:
    """`flow` as kube-proxy's `mode` ("iptables", "nftables", "ipvs") serves it."""
    return MODE_DIFFERENCES.get(mode, {}).get(flow.name, flow)


def node_context() -> NodeContext:
    """PROXY_NODE as its proxy sees itself (kube-proxy's --hostname-override, node IP, --cluster-cidr)."""
    node = TOPOLOGY.node(PROXY_NODE)
    return NodeContext(node_name=node.name, node_ips=(node.ip,), cluster_cidr=TOPOLOGY.cluster_cidr)


def flow_state(edit=None) -> ProxyState:
    """OBJECTS as PROXY_NODE's proxy state; `edit(services, slices)` may change the objects first."""
    services, slices = load_objects(load_text(OBJECTS, "flows.yaml"))
    if edit:
        edit(services, slices)
    return build_state(services, slices, node_context())


def local_addresses() -> list[str]:
    """PROXY_NODE's own addresses: what a rule walker treats as `fib daddr type local` / LOCAL."""
    node = TOPOLOGY.node(PROXY_NODE)
    return [node.ip, node.gateway]


def assert_walk(outcomes, flow: Flow) -> None:
    """A rule walker's outcomes for `flow` are the table's: verdict, endpoints, masquerade."""
    if flow.verdict != "ACCEPT":
        assert {o.verdict for o in outcomes} == {flow.verdict}, outcomes
        return
    assert {o.verdict for o in outcomes} == {"ACCEPT"}, outcomes
    assert {o.endpoint for o in outcomes} == set(flow.endpoints), outcomes
    assert {o.masquerade for o in outcomes} == {flow.masquerade}, outcomes
