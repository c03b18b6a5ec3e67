"""Nodes joining and leaving a running lab (`netlab node add/remove`, Node objects through apply/delete).

Real packets between pods on the new node and the old ones, and the
overlay's 1 s convergence, measured from the moment the lab reports the new
node ready (its lease held, its routes to every peer in place) and from the
moment a leaving node's lease is released.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import pytest

from cni.overlay import netconf
from cni.overlay.kernel import Kernel
from cni.overlay.lease import parse_leases
from cni.overlay.testbed import icmp_echo, wait_for
from netlab import daemons, lab, names, netns
from netlab.check import http_get, udp_ask
from netlab.errors import NetlabError
from netlab.store import FLANNEL_SUBNETS, NODES, object_key
from tests.integration.conftest import pod

NETLAB = [sys.executable, "-m", "netlab.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NETLAB, *args], capture_output=True, text=True, timeout=120)


def observed(node: dict, conf):
    with Kernel(node["netns"]) as k:
        return k.observe(conf, ipaddress.ip_network(node["podCIDR"]))


def knows(node: dict, conf, subnet: str, ip: str) -> bool:
    """Whether `node` has any overlay state for the peer with this subnet and node IP."""
    st = observed(node, conf)
    return (subnet in {r.dst for r in st.routes} or ip in {f.dst for f in st.fdb}
            or subnet.split("/")[0] in {n.ip for n in st.neighbours})


def routes_to(node: dict, conf, subnet: str) -> bool:
    st = observed(node, conf)
    if conf.backend.type == "host-gw":
        return subnet in {r.dst for r in st.routes}
    return (subnet in {r.dst for r in st.routes if r.dev == "flannel.1"}
            and subnet.split("/")[0] in {n.ip for n in st.neighbours} and len(st.fdb) == 2)


def within(deadline: float, cond, what: str):
    """`cond` must hold by `deadline` (monotonic): polled until then, checked at least once."""
    return wait_for(cond, max(0.0, deadline - time.monotonic()), interval=0.005, what=what)


def by_name(items: list[dict]) -> dict[str, dict]:
    return {i["name"]: i for i in items}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_node_joins_and_leaves_a_running_lab_within_a_second(labs, backend):
    name = labs.name()
    spec = f"nodes: 2\npodNetwork: {{Backend: {{Type: {backend}}}}}"
    labs.up(labs.lab_yaml(name, spec, pod("a", "node1") + pod("b", "node2")))
    conf = netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": backend}})

    res = lab.node_add(name, "node3", ["zone=c"])
    assert res.created and (str(res.node.ip), str(res.node.pod_cidr)) == ("192.168.56.13", "10.244.3.0/24")
    st = lab.status(name)
    nodes = by_name(st["nodes"])
    assert list(nodes) == ["node1", "node2", "node3"]
    assert nodes["node3"] == {"name": "node3", "netns": f"netlab.{name}.node3", "ip": "192.168.56.13",
                              "podCIDR": "10.244.3.0/24", "ready": True, "labels": {"zone": "c"}}
    # Every other node routes to the new node within 1 s of it being ready.
    deadline = res.ready_at + 1.0
    for peer in ("node1", "node2"):
        within(deadline, lambda peer=peer: routes_to(nodes[peer], conf, "10.244.3.0/24"), f"{peer} routing to node3")
    if backend == "vxlan":
        # Real packets within the same second: a pod on node1 reaches node3's VTEP address (10.244.3.0).
        a = by_name(st["pods"])["a"]
        within(deadline, lambda: _echo(a["netns"], "10.244.3.0"), "pod a reaching node3 over vxlan")
    # The node as Kubernetes sees it: Node object with its labels, podCIDR and InternalIP.
    store = lab.store_for(name)
    try:
        obj = store.get(object_key("Node", None, "node3")).value
    finally:
        store.close()
    assert obj["metadata"]["labels"]["zone"] == "c" and obj["spec"]["podCIDR"] == "10.244.3.0/24"
    assert {"type": "InternalIP", "address": "192.168.56.13"} in obj["status"]["addresses"]
    # The kubelet runs a pod bound to the new node; pods on node1 and node3 talk both ways, unmasqueraded.
    lab.apply(name, [labs.write(pod("c", "node3"))])
    pods = by_name(lab.status(name)["pods"])
    a, c = pods["a"], pods["c"]
    assert c["phase"] == "Running" and ipaddress.ip_address(c["ip"]) in ipaddress.ip_network("10.244.3.0/24")
    assert icmp_echo(a["netns"], ipaddress.ip_address(c["ip"])) == ipaddress.ip_address(c["ip"])
    assert icmp_echo(c["netns"], ipaddress.ip_address(a["ip"])) == ipaddress.ip_address(a["ip"])
    assert http_get(a["netns"], c["ip"], "/clientip").split(":")[0] == a["ip"]
    assert udp_ask(c["netns"], a["ip"], "clientip").split(":")[0] == c["ip"]

    # Removing a node with pods is refused; nothing changes.
    with pytest.raises(NetlabError, match=r"node node3 has 1 pod\(s\): default/c; .*--force"):
        lab.node_remove(name, "node3")
    assert routes_to(nodes["node1"], conf, "10.244.3.0/24") and netns.exists(c["netns"])
    flanneld = daemons.recorded_pid(name, "flanneld-node3")
    assert flanneld is not None
    res = lab.node_remove(name, "node3", force=True)
    assert res.pods == ["default/c"]
    # Every other node forgets it (route, neighbour, FDB entry) within 1 s of its lease's release.
    deadline = res.released_at + 1.0
    for peer in ("node1", "node2"):
        within(deadline, lambda peer=peer: not knows(nodes[peer], conf, "10.244.3.0/24", "192.168.56.13"),
               f"{peer} forgetting node3")
    store = lab.store_for(name)
    try:
        leases = parse_leases([(kv.key, kv.value) for kv in store.list(FLANNEL_SUBNETS)[0]])
        assert {str(s) for s in leases} == {"10.244.1.0/24", "10.244.2.0/24"}
        assert [kv.key for kv in store.list(NODES)[0]] == [f"{NODES}node1", f"{NODES}node2"]
        assert "default/c" not in {f"{kv.value['metadata']['namespace']}/{kv.value['metadata']['name']}"
                                   for kv in store.list("/registry/pods/")[0]}
    finally:
        store.close()
    # Its agents (ended by PID), namespaces, underlay port and files are gone; the others still talk.
    assert daemons.start_time(flanneld) is None
    assert not [n for n in netns.list_names() if n == f"netlab.{name}.node3" or n.startswith(f"netlab.{name}.node3.")]
    with netns.iproute(names.lab_netns(name)) as ipr:
        assert not ipr.link_lookup(ifname="node3")
    assert list(by_name(lab.status(name)["nodes"])) == ["node1", "node2"]
    b = by_name(lab.status(name)["pods"])["b"]
    assert http_get(a["netns"], b["ip"], "/clientip").split(":")[0] == a["ip"]


def _echo(ns: str, ip: str) -> bool:
    try:
        return icmp_echo(ns, ipaddress.ip_address(ip), timeout=0.2) == ipaddress.ip_address(ip)
    except (TimeoutError, OSError):
        return False


def test_node_cli_validates_first_and_is_idempotent(labs):
    name = labs.name()
    labs.up(labs.lab_yaml(name, "nodes: 1\nclients: 1\npodNetwork: {Network: 10.244.0.0/16, SubnetMax: 10.244.2.0}"))
    before = sorted(n for n in netns.list_names() if names.lab_of_netns(n) == name)
    for args, message in [
        (["Node_3"], "error: netlab node add: NAME: node name 'Node_3' is not a valid name"),
        (["ext"], "error: netlab node add: NAME: 'ext' is reserved for external clients"),
        (["node3", "--label", "zone"], "error: netlab node add: --label: 'zone' is not key=value"),
        (["node3", "--label", "zone=a b"], "error: netlab node add: --label zone: label value 'a b' is not valid"),
    ]:
        out = run_cli("node", "add", "-l", name, *args)
        assert out.returncode == 2 and out.stderr.startswith(message), out.stderr
    out = run_cli("node", "add", "-l", name, "node2", "--label", "zone=b")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"node node2 added to lab {name}: 192.168.56.12, podCIDR 10.244.2.0/24, ready in ")
    out = run_cli("node", "add", "-l", name, "node2", "--label", "zone=b")
    assert out.stdout.strip() == f"node node2 is already in lab {name} (192.168.56.12, podCIDR 10.244.2.0/24): nothing changed"
    # SubnetMax leaves two subnets: a third node is refused before anything is made.
    out = run_cli("node", "add", "-l", name, "node3")
    assert out.returncode == 2 and "NAME: lab " in out.stderr and "no room for node node3" in out.stderr, out.stderr
    assert not netns.exists(f"netlab.{name}.node3")
    # The table shows the joined node.
    table = run_cli("status", name).stdout
    assert "node2" in table and "192.168.56.12" in table and "10.244.2.0/24" in table
    assert json.loads(run_cli("status", name, "-o", "json").stdout)["nodes"][1]["name"] == "node2"
    # Removing: unknown node, then the node, then the last node (refused).
    out = run_cli("node", "remove", "-l", name, "node9")
    assert out.returncode == 1 and "has no node 'node9' (nodes: node1, node2)" in out.stderr
    out = run_cli("node", "remove", "-l", name, "node2")
    assert out.returncode == 0 and out.stdout.startswith(f"node node2 removed from lab {name} (192.168.56.12"), out.stderr
    out = run_cli("node", "remove", "-l", name, "node1")
    assert out.returncode == 1 and "node node1 is the last node" in out.stderr
    # The underlay gateway kept its own MAC while ports came and went (a bridge takes its ports' lowest
    # MAC otherwise, and the nodes' ARP entry for .1, their default route and etcd, would go stale).
    from netlab.fabric import bridge_mac

    with netns.iproute(names.lab_netns(name)) as ipr:
        br = ipr.get_links(ipr.link_lookup(ifname="underlay")[0])[0]
    assert br.get_attr("IFLA_ADDRESS") == bridge_mac(name)
    after = sorted(n for n in netns.list_names() if names.lab_of_netns(n) == name)
    assert after == before


def test_nodes_through_apply_and_delete_and_up_keeps_them(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2", pod("a", "node1"))
    labs.up(path)
    node3 = labs.write("apiVersion: v1\nkind: Node\nmetadata: {name: node3, labels: {zone: c}}\n" + pod("c", "node3"))
    # Validation first: a bad Node and a pod on a node no file adds get file:line errors, exit 2, nothing made.
    bad = labs.write("apiVersion: v1\nkind: Node\nmetadata: {name: node4}\nspec: {podCIDR: 10.244.9.0/24}\n"
                     + pod("d", "node5"))
    out = run_cli("apply", "-l", name, "-f", bad)
    assert out.returncode == 2, out.stderr
    assert f"{bad}:4: spec.podCIDR: spec.podCIDR cannot be set here" in out.stderr
    assert "pod default/d is on node 'node5', which the lab does not have" in out.stderr
    assert not netns.exists(f"netlab.{name}.node4")
    out = run_cli("apply", "-l", name, "-f", node3)
    assert out.returncode == 0, out.stderr
    pods = by_name(lab.status(name)["pods"])
    assert pods["c"]["node"] == "node3" and pods["c"]["phase"] == "Running"
    assert http_get(pods["a"]["netns"], pods["c"]["ip"], "/hostname") == "c"
    # A Node cannot be part of the files `up` builds from.
    out = run_cli("up", "-f", path, "-f", node3)
    assert out.returncode == 2 and "a Node document cannot be part of the lab's files" in out.stderr
    # delete -f of the same file: the pod first, then its (now empty) node.
    out = run_cli("delete", "-l", name, "-f", node3)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["pod default/c deleted", "node node3 deleted"]
    assert [n["name"] for n in lab.status(name)["nodes"]] == ["node1", "node2"]
    assert not netns.exists(f"netlab.{name}.node3")
    # A node joined by apply stays through a second `up` of the lab's file, which changes nothing.
    lab.apply(name, [labs.write("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\n")])
    out = run_cli("up", "-f", path)
    assert out.stdout.strip() == f"lab {name} is up to date: nothing changed", out.stdout + out.stderr
    assert [n["name"] for n in lab.status(name)["nodes"]] == ["node1", "node2", "node3"]
    # `node remove` of a file's node lasts until the next `up`, which brings it back.
    lab.node_remove(name, "node2")
    assert [n["name"] for n in lab.status(name)["nodes"]] == ["node1", "node3"]
    labs.up(path)
    st = lab.status(name)
    assert [(n["name"], n["ip"], n["podCIDR"]) for n in st["nodes"]] == [
        ("node1", "192.168.56.11", "10.244.1.0/24"), ("node2", "192.168.56.12", "10.244.2.0/24"),
        ("node3", "192.168.56.13", "10.244.3.0/24")]
