"""Status views are pure functions of the status dict: the node table's READY and LABELS columns."""

from rich.console import Console

from netlab.render import labels, status_tables, to_dot

STATUS = {
    "apiVersion": "netlab/v1alpha1", "lab": "demo", "netns": "netlab.demo", "proxyMode": "iptables",
    "backend": "vxlan", "store": {"type": "etcd", "managed": True, "endpoints": ["http://192.168.56.1:2379"]},
    "nodes": [
        {"name": "node1", "netns": "netlab.demo.node1", "ip": "192.168.56.11", "podCIDR": "10.244.1.0/24",
         "ready": True, "labels": {}},
        {"name": "node3", "netns": "netlab.demo.node3", "ip": "192.168.56.13", "podCIDR": "10.244.3.0/24",
         "ready": False, "labels": {"zone": "c", "disk": "ssd"}},
    ],
    "pods": [{"namespace": "default", "name": "a", "node": "node1", "netns": "netlab.demo.node1.default.a",
              "ip": "10.244.1.2", "phase": "Running", "restarts": 0, "labels": {"app": "web"}}],
    "services": [], "clients": [],
}


def text(st, wide=False) -> list[str]:
    console = Console(record=True, width=250, color_system=None)
    for t in status_tables(st, wide=wide):
        console.print(t)
    return console.export_text().splitlines()


def row(lines: list[str], first: str) -> list[str]:
    line = next(l for l in lines if l.startswith("│ " + first + " "))
    return [c.strip() for c in line.strip("│").split("│")]


def test_node_table_shows_ready_and_labels():
    lines = text(STATUS)
    assert lines[0].startswith("lab demo  (backend vxlan, proxy iptables, store etcd)")
    assert [c.strip() for c in lines[2].strip("┃").split("┃")] == ["NODE", "READY", "IP", "POD CIDR", "PODS", "LABELS"]
    assert row(lines, "node1") == ["node1", "yes", "192.168.56.11", "10.244.1.0/24", "1", "-"]
    assert row(lines, "node3") == ["node3", "no", "192.168.56.13", "10.244.3.0/24", "0", "disk=ssd,zone=c"]


def test_wide_adds_the_namespaces():
    lines = text(STATUS, wide=True)
    assert row(lines, "node3") == ["node3", "no", "192.168.56.13", "10.244.3.0/24", "0", "disk=ssd,zone=c",
                                   "netlab.demo.node3"]
    assert row(lines, "default")[-2:] == ["app=web", "netlab.demo.node1.default.a"]


def test_a_status_without_the_new_fields_still_renders():
    old = dict(STATUS, nodes=[{k: v for k, v in n.items() if k not in ("labels", "ready")} for n in STATUS["nodes"]])
    del old["store"]
    lines = text(old)
    assert "store embedded" in lines[0]
    assert row(lines, "node3")[1:2] == ["no"] and row(lines, "node3")[-1] == "-"
    assert "node3" in to_dot(old)


def test_labels_as_kubectl_shows_them():
    assert labels({}) == "-" and labels({"b": "2", "a": "1"}) == "a=1,b=2"
