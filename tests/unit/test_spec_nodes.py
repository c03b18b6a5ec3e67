"""Nodes joining and leaving, the pure half: Node validation, slots, the joined plan, daemon flags."""

from __future__ import annotations

import textwrap

import pytest

from netlab import lab as labmod
from netlab.errors import SpecError, SpecErrors
from netlab.plan import LabFull, assign_slots, node_slots, plan_lab
from netlab.spec.lab import NodeSpec, node_from_args, parse_node
from netlab.spec.source import load_text
from netlab.spec.topology import load_topology, parse_objects

LAB = "apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: t}\nspec:\n"


def lab_of(tmp_path, spec: str):
    p = tmp_path / "lab.yaml"
    p.write_text(LAB + textwrap.indent(textwrap.dedent(spec), "  "))
    return load_topology([str(p)]).lab


def node_errors(text: str) -> list[str]:
    with pytest.raises((SpecError, SpecErrors)) as e:
        parse_node(load_text(text, "node.yaml")[0])
    errs = e.value.errors if isinstance(e.value, SpecErrors) else [e.value]
    return [str(x) for x in errs]


def test_node_document():
    n = parse_node(load_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: node3\n  labels: {zone: c}\n", "n.yaml")[0])
    assert n == NodeSpec("node3", {"zone": "c"})
    assert node_errors("apiVersion: v1\nkind: Node\nmetadata: {name: Node3}\n") == [
        "node.yaml:3: metadata.name: node name 'Node3' is not a valid name "
        "(use lower-case letters, digits and '-', starting and ending with a letter or digit)"]
    assert node_errors("apiVersion: v1\nkind: Node\nmetadata: {}\n") == [
        "node.yaml:3: metadata: a node needs a name (add metadata: {name: node3})"]
    assert node_errors("apiVersion: v2\nkind: Node\nmetadata: {name: n, labelz: {}}\nspec:\n  podCIDR: 10.244.7.0/24\n") == [
        "node.yaml:1: apiVersion: a Node's apiVersion is 'v1', not 'v2'",
        "node.yaml:3: metadata.labelz: unknown field 'labelz' in metadata (did you mean 'labels'?)",
        "node.yaml:5: spec.podCIDR: spec.podCIDR cannot be set here "
        "(netlab assigns a node's podCIDR and address; give only metadata.name and labels)"]


def test_node_documents_are_objects_for_apply_not_for_up(tmp_path):
    docs = load_text("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\n", "n.yaml")
    pods, objects, errors = parse_objects(docs)
    assert not pods and not errors
    assert [(o.kind, o.name, o.body) for o in objects] == [
        ("Node", "node3", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node3", "labels": {}}})]
    p = tmp_path / "lab.yaml"
    p.write_text(LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node3}\n")
    with pytest.raises(SpecError, match=r"lab.yaml:8: kind: a Node document cannot be part of the lab's files"):
        load_topology([str(p)])


def test_node_from_command_line_names_the_argument():
    assert node_from_args("node3", ["zone=a", "rack=r1"]) == NodeSpec("node3", {"zone": "a", "rack": "r1"})
    with pytest.raises(SpecError) as e:
        node_from_args("node3", ["zone=a", "zone=b"])
    assert str(e.value) == "netlab node add: --label: label 'zone' is given twice (give each label once)"
    with pytest.raises(SpecError) as e:
        node_from_args("nodenamewaytoolong", [])
    assert str(e.value) == ("netlab node add: NAME: node name 'nodenamewaytoolong' is 18 characters, "
                            "more than 15 (shorten it)")


def test_slots_keep_addresses_and_reuse_the_lowest_free(tmp_path):
    lab = lab_of(tmp_path, "nodes: [a, b, c]\n")
    assert assign_slots(lab) == {"a": 0, "b": 1, "c": 2}
    # b left (slot 1 free); d joins: it takes slot 1, c keeps 2.
    lab2 = lab.__class__(**{**lab.__dict__, "nodes": (NodeSpec("a"), NodeSpec("c"), NodeSpec("d"))})
    plan = plan_lab(lab2, {"a": 0, "c": 2})
    assert [(n.name, str(n.ip), str(n.pod_cidr), n.slot) for n in plan.nodes] == [
        ("a", "192.168.56.11", "10.244.1.0/24", 0),
        ("d", "192.168.56.12", "10.244.2.0/24", 1),
        ("c", "192.168.56.13", "10.244.3.0/24", 2),
    ]
    assert str(plan.gateway) == "192.168.56.1"


def test_capacity_counts_subnets_and_underlay_hosts(tmp_path):
    assert node_slots(lab_of(tmp_path, "nodes: 1\npodNetwork: {Network: 10.244.0.0/16, SubnetMax: 10.244.3.0}\n")) == 3
    # /26 underlay: pool 192.168.56.48/28, 2 clients at .47 and .46, nodes .11 .. .45.
    lab = lab_of(tmp_path, "nodes: 1\nclients: 2\nunderlayCIDR: 192.168.56.0/26\n")
    assert node_slots(lab) == 35
    full = lab.__class__(**{**lab.__dict__, "nodes": tuple(NodeSpec(f"n{i}") for i in range(36))})
    with pytest.raises(LabFull, match="lab t has no room for node n35: all 35 node slots are taken"):
        plan_lab(full)


def test_plan_join_is_pure_and_refuses_a_full_lab_at_the_document(tmp_path):
    base = plan_lab(lab_of(tmp_path, "nodes: 2\npodNetwork: {Network: 10.244.0.0/16, SubnetMax: 10.244.3.0}\n"))
    plan = labmod.plan_join(base, [(NodeSpec("node3", {"zone": "c"}), "netlab node add")])
    assert [(n.name, n.slot, n.labels) for n in plan.nodes] == [("node1", 0, {}), ("node2", 1, {}),
                                                               ("node3", 2, {"zone": "c"})]
    relabeled = labmod.plan_join(plan, [(NodeSpec("node1", {"zone": "a"}), "netlab node add")])
    assert relabeled.node("node1").labels == {"zone": "a"} and relabeled.slots == plan.slots
    with pytest.raises(SpecError) as e:
        labmod.plan_join(plan, [(NodeSpec("node4"), "netlab node add")])
    assert str(e.value).startswith("netlab node add: NAME: lab t has no room for node node4")
    doc = load_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: node4\n", "n.yaml")[0]
    with pytest.raises(SpecError) as e:
        labmod.plan_join(plan, [(NodeSpec("node4"), doc)])
    assert str(e.value).startswith("n.yaml:4: metadata.name: lab t has no room for node node4")


def test_up_keeps_joined_nodes_and_brings_back_removed_file_nodes(tmp_path):
    lab = lab_of(tmp_path, "nodes: 3\n")
    record = {"spec": lab.to_dict(), "nodes": [{"name": "node1", "labels": {}, "slot": 0},
                                               {"name": "extra", "labels": {"zone": "x"}, "slot": 1}]}
    plan = labmod._plan_up(lab, record)
    assert [(n.name, n.slot) for n in plan.nodes] == [("node1", 0), ("extra", 1), ("node2", 2), ("node3", 3)]
    assert labmod._plan_up(lab, None).slots == {"node1": 0, "node2": 1, "node3": 2}
    # A record from before membership was kept: the file's nodes, in order.
    assert labmod.members({"spec": lab.to_dict()}) == [
        {"name": "node1", "labels": {}, "slot": 0}, {"name": "node2", "labels": {}, "slot": 1},
        {"name": "node3", "labels": {}, "slot": 2}]


def test_node_daemons_get_the_labs_options(tmp_path):
    plan = plan_lab(lab_of(tmp_path, "nodes: 1\n"))
    (_, flanneld), (_, proxy) = labmod.node_daemons(plan, plan.nodes[0])
    assert flanneld[-3:] == ["--ip-masq", "--iptables", "nft"]
    assert proxy[-2:] == ["--iptables", "nft"] and "--ipvs-scheduler" not in proxy
    # The Lab's serviceCIDR (kube-apiserver's --service-cluster-ip-range): nftables mode drops
    # traffic to its unallocated addresses, as kube-proxy does from the ServiceCIDR objects.
    assert proxy[proxy.index("--service-cluster-ip-range") + 1] == "10.96.0.0/12"
    plan = plan_lab(lab_of(tmp_path, "nodes: 1\nproxyMode: ipvs\nipvsScheduler: wlc\niptablesBackend: legacy\n"
                                     "ipMasq: false\n"))
    (_, flanneld), (_, proxy) = labmod.node_daemons(plan, plan.nodes[0])
    assert flanneld[-3:] == ["--no-ip-masq", "--iptables", "legacy"]
    assert proxy[proxy.index("--mode"):] == ["--mode", "ipvs", "--iptables", "legacy", "--ipvs-scheduler", "wlc"]
