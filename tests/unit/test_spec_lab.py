"""Lab and Pod validation: every bad input gets file:line, field and a fix."""

import ipaddress
import textwrap

import pytest

from netlab.errors import SpecError, SpecErrors
from netlab.plan import plan_lab
from netlab.spec.source import load_text
from netlab.spec.topology import load_topology

LAB = """\
apiVersion: netlab/v1alpha1
kind: Lab
metadata: {name: t}
spec:
"""


def write(tmp_path, text, name="lab.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def errors_of(tmp_path, text) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises((SpecError, SpecErrors)) as e:
        load_topology([path])
    errs = e.value.errors if isinstance(e.value, SpecErrors) else [e.value]
    return [str(x).replace(path, "lab.yaml") for x in errs]


def test_minimal_lab_gets_every_default(tmp_path):
    topo = load_topology([write(tmp_path, "apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: mini}\n")])
    lab = topo.lab
    assert [n.name for n in lab.nodes] == ["node1", "node2"]
    assert lab.pod_network.network == ipaddress.IPv4Network("10.244.0.0/16")
    assert str(lab.pod_network.subnet_min) == "10.244.1.0" and str(lab.pod_network.subnet_max) == "10.244.255.0"
    assert lab.pod_network.backend.type == "vxlan" and lab.pod_network.backend.vni == 1
    assert lab.pod_network.backend.port == 8472
    assert lab.proxy_mode == "iptables" and str(lab.service_cidr) == "10.96.0.0/12"
    assert str(lab.load_balancer_pool) == "192.168.56.240/28"


def test_plan_numbers_nodes_and_subnets_in_order(tmp_path):
    topo = load_topology([write(tmp_path, LAB + "  nodes: 3\n  clients: 2\n")])
    plan = plan_lab(topo.lab)
    assert [(n.name, str(n.ip), str(n.pod_cidr)) for n in plan.nodes] == [
        ("node1", "192.168.56.11", "10.244.1.0/24"),
        ("node2", "192.168.56.12", "10.244.2.0/24"),
        ("node3", "192.168.56.13", "10.244.3.0/24"),
    ]
    assert [n.netns for n in plan.nodes][0] == "netlab.t.node1"
    assert [str(c.ip) for c in plan.clients] == ["192.168.56.239", "192.168.56.238"]
    assert plan.pod_mtu == 1450
    assert str(plan.nodes[0].gateway) == "10.244.1.1"


def test_host_gw_keeps_the_underlay_mtu(tmp_path):
    topo = load_topology([write(tmp_path, LAB + "  podNetwork: {Backend: {Type: host-gw}}\n")])
    assert plan_lab(topo.lab).pod_mtu == 1500


def test_pods_spread_over_nodes_and_files_combine(tmp_path):
    lab = write(tmp_path, LAB + "  nodes: 2\n", "lab.yaml")
    pods = write(tmp_path, "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec: {{containers: [{{name: c}}]}}\n" for i in range(5)
    ), "pods.yaml")
    topo = load_topology([lab, pods])
    nodes = [p.node for p in topo.pods]
    assert nodes.count("node1") == 3 and nodes.count("node2") == 2


def test_net_conf_is_flannels(tmp_path):
    topo = load_topology([write(tmp_path, LAB + "  podNetwork: {Network: 10.10.0.0/16, SubnetLen: 25, "
                                              "Backend: {Type: vxlan, VNI: 4, Port: 4789, DirectRouting: true}}\n")])
    assert topo.lab.pod_network.to_json() == {
        "Network": "10.10.0.0/16", "SubnetLen": 25, "SubnetMin": "10.10.0.128", "SubnetMax": "10.10.255.128",
        "Backend": {"Type": "vxlan", "VNI": 4, "Port": 4789, "DirectRouting": True},
    }


BAD = [
    (LAB + "  nodez: 2\n", "lab.yaml:5: spec.nodez: unknown field 'nodez' in the Lab spec (did you mean 'nodes'?)"),
    (LAB + "  nodes: [{name: Node_1}]\n", "lab.yaml:5: spec.nodes[0].name: node name 'Node_1' is not a valid name"),
    (LAB + "  nodes: [{name: averyveryverylongnode}]\n",
     "lab.yaml:5: spec.nodes[0].name: node name 'averyveryverylongnode' is 21 characters, more than 15 (shorten it)"),
    (LAB + "  nodes: [a, a]\n", "lab.yaml:5: spec.nodes[1].name: duplicate node name 'a' (give every node its own name)"),
    (LAB + "  serviceCIDR: 10.244.0.0/12\n", "lab.yaml:5: spec.serviceCIDR: '10.244.0.0/12' is not a valid IPv4 network: 10.244.0.0/12 has host bits set (did you mean 10.240.0.0/12?)"),
    (LAB + "  serviceCIDR: 10.240.0.0/12\n",
     "lab.yaml:5: spec.serviceCIDR: serviceCIDR 10.240.0.0/12 overlaps podNetwork.Network 10.244.0.0/16"),
    (LAB + "  underlayCIDR: 10.96.0.0/24\n",
     "lab.yaml:5: spec.underlayCIDR: underlayCIDR 10.96.0.0/24 overlaps serviceCIDR 10.96.0.0/12"),
    (LAB + "  nodes: 5\n  podNetwork: {Network: 10.244.0.0/22, SubnetLen: 24}\n",
     "lab.yaml:5: spec.nodes: 5 nodes need 5 pod subnets, but 10.244.0.0/22 with SubnetLen 24 has only 3"),
    (LAB + "  podNetwork: {Network: 10.244.0.0/16, SubnetLen: 16}\n",
     "lab.yaml:5: spec.podNetwork.SubnetLen: SubnetLen 16 must be longer than the Network's /16"),
    (LAB + "  podNetwork: {Backend: {Type: udp}}\n",
     "lab.yaml:5: spec.podNetwork.Backend.Type: unknown backend 'udp' (use one of: vxlan, host-gw)"),
    (LAB + "  proxyMode: ebpf\n",
     "lab.yaml:5: spec.proxyMode: unknown proxy mode 'ebpf' (use one of: iptables, ipvs, nftables, userspace)"),
    (LAB + "  underlayCIDR: 192.168.56.0/29\n", "lab.yaml:5: spec.underlayCIDR: 192.168.56.0/29 has no room for 2 nodes"),
    # podNetwork goes through the overlay's own parser (cni.overlay.netconf), keeping file:line.
    (LAB + "  podNetwork:\n    Network: 10.244.0.0/16\n    SubnetLenght: 24\n",
     "lab.yaml:7: spec.podNetwork.SubnetLenght: unknown key 'SubnetLenght' (did you mean 'SubnetLen'?)"),
    (LAB + "  podNetwork:\n    Backend:\n      Type: vxlan\n      VNI: 0\n",
     "lab.yaml:8: spec.podNetwork.Backend.VNI: 0 is out of range"),
    (LAB + "  podNetwork: {Backend: {Type: host-gw, VNI: 2}}\n",
     "lab.yaml:5: spec.podNetwork.Backend.VNI: unknown key 'VNI' (the host-gw backend takes Type)"),
    (LAB + "  podNetwork: {Network: 10.244.0.0/16, SubnetMin: 10.245.0.0}\n",
     "lab.yaml:5: spec.podNetwork.SubnetMin: 10.245.0.0 is outside Network 10.244.0.0/16"),
    (LAB + "  podNetwork: [10.244.0.0/16]\n", "lab.yaml:5: spec.podNetwork: must be a JSON object with flannel's keys"),
    (LAB + "  iptablesBackend: xtables\n",
     "lab.yaml:5: spec.iptablesBackend: unknown iptables backend 'xtables' (use one of: nft, legacy"),
    (LAB + "  proxyMode: ipvs\n  ipvsScheduler: fifo\n",
     "lab.yaml:6: spec.ipvsScheduler: unknown IPVS scheduler 'fifo' (use one of: rr, wrr, lc, wlc"),
    (LAB + "  ipvsScheduler: wrr\n",
     "lab.yaml:5: spec.ipvsScheduler: ipvsScheduler only applies to proxyMode ipvs, not 'iptables'"),
    (LAB + "  ipMasq: yes please\n", "lab.yaml:5: spec.ipMasq: must be true or false, not 'yes please'"),
    ("apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: Bad.Name}\n",
     "lab.yaml:3: metadata.name: lab name 'Bad.Name' is not a valid name"),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node9}\n",
     "lab.yaml:7: spec.nodeName: pod default/p is on node 'node9', which the lab does not have (use one of: node1)"),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
     "lab.yaml:11: metadata.name: duplicate Pod default/p (also at lab.yaml:7)"),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, comand: [sh]}]}\n",
     "lab.yaml:10: spec.containers[0].comand: unknown field 'comand' in a container (did you mean 'command'?)"),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, command: sleep 1}]}\n",
     'lab.yaml:10: spec.containers[0].command: must be a list of strings (write it as a list: ["sleep", "1"])'),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {restartPolicy: Sometimes}\n",
     "lab.yaml:10: spec.restartPolicy: unknown restartPolicy 'Sometimes'"),
    (LAB + "  nodes: 1\n---\napiVersion: v1\nkind: Gadget\nmetadata: {name: p}\n",
     "lab.yaml:8: kind: unknown kind 'Gadget'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "lab.yaml: no Lab document found"),
    (LAB + "  nodes: 1\n---\n" + LAB, "lab.yaml:8: kind: a second Lab document (the first is at lab.yaml:1)"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1].split(": ")[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_names_file_line_field(tmp_path, text, expected):
    errs = errors_of(tmp_path, text)
    assert any(e.startswith(expected) for e in errs), errs


def test_node_daemon_options_default_and_validate(tmp_path):
    lab = load_topology([write(tmp_path, LAB + "  nodes: 1\n")]).lab
    assert (lab.ip_masq, lab.iptables_backend, lab.ipvs_scheduler) == (True, "nft", None)
    assert lab.to_dict()["ipMasq"] is True and lab.to_dict()["iptablesBackend"] == "nft"
    assert "ipvsScheduler" not in lab.to_dict()
    lab = load_topology([write(tmp_path, LAB + "  proxyMode: ipvs\n  ipvsScheduler: sh\n  iptablesBackend: legacy\n"
                                              "  ipMasq: false\n")]).lab
    assert (lab.ip_masq, lab.iptables_backend, lab.ipvs_scheduler) == (False, "legacy", "sh")
    # Every IPVS scheduler kube-proxy's --ipvs-scheduler takes is accepted.
    for sched in ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq"):
        assert load_topology([write(tmp_path, LAB + f"  proxyMode: ipvs\n  ipvsScheduler: {sched}\n")]).lab.ipvs_scheduler == sched


def test_ipvs_schedulers_are_the_proxys_own(tmp_path, monkeypatch):
    """One list: the lab accepts what netlab-proxy --ipvs-scheduler accepts (proxy.model.IPVS_SCHEDULERS)."""
    from proxy import model

    errs = errors_of(tmp_path, LAB + "  proxyMode: ipvs\n  ipvsScheduler: fifo\n")
    assert any(e.endswith(f"(use one of: {', '.join(model.IPVS_SCHEDULERS)})") for e in errs), errs
    monkeypatch.setattr(model, "IPVS_SCHEDULERS", ("rr", "fifo"))
    assert load_topology([write(tmp_path, LAB + "  proxyMode: ipvs\n  ipvsScheduler: fifo\n")]).lab.ipvs_scheduler == "fifo"


def test_pod_network_defaults_fill_partial_net_conf(tmp_path):
    lab = load_topology([write(tmp_path, LAB + "  podNetwork: {Backend: {VNI: 7}}\n")]).lab
    assert lab.pod_network.backend.type == "vxlan" and lab.pod_network.backend.device == "flannel.7"
    lab = load_topology([write(tmp_path, LAB + "  nodes: 1\n  podNetwork: {Network: 10.8.0.0/24}\n")]).lab
    assert lab.pod_network.subnet_len == 25  # flannel's default for a /24 network


def test_exhausted_node_subnet(tmp_path):
    pods = "".join(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec: {{nodeName: node1}}\n" for i in range(6))
    errs = errors_of(tmp_path, LAB + "  nodes: 1\n  podNetwork: {Network: 10.244.0.0/16, SubnetLen: 29}\n" + pods)
    assert any("node node1 is full: its /29 pod subnet holds 5 pods" in e for e in errs), errs


def test_all_errors_of_a_document_are_reported_together(tmp_path):
    errs = errors_of(tmp_path, LAB + "  nodez: 2\n  proxyMode: ebpf\n")
    assert len(errs) == 2


def test_load_text_lab_round_trip():
    from netlab.spec.lab import parse_lab

    lab = parse_lab(load_text(LAB + "  nodes: 1\n", "x.yaml")[0])
    again = parse_lab(load_text(
        "apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: t}\nspec: " + __import__("json").dumps(
            {k: v for k, v in lab.to_dict().items() if k != "name"}), "y.yaml")[0])
    assert again.to_dict() == lab.to_dict()
