"""Labs on etcd (spec.store): netlab's own etcd in the lab namespace, and an etcd the user runs.

Real packets between pods on an etcd-backed lab; a node joining and leaving
within the overlay's 1 s, with its lease read from etcd itself (etcdctl, not
netlab's client); `down` leaving nothing, and on a user's etcd removing
only the lab's keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni.overlay import netconf
from netlab import daemons, lab, names, netns
from netlab.check import http_get, udp_ask
from netlab.errors import NetlabError, SpecError
from netlab.store import open_store
from tests.helpers import assert_no_leaks, lab_leaks
from tests.integration.conftest import LabFactory, pod
from tests.integration.test_nodes import _echo, by_name, knows, routes_to, within
from tests.integration.test_store_etcd import running_etcd

NETLAB = [sys.executable, "-m", "netlab.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NETLAB, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def labs(tmp_path):
    f = LabFactory(tmp_path, "nlf")
    yield f
    f.teardown()


@pytest.fixture
def user_etcd(tmp_path):
    """An etcd the user runs: Debian's etcd on the loopback of its own namespace (not a lab's)."""
    with running_etcd("nlf-etcd-", str(tmp_path / "etcd"), port=23790) as srv:
        yield srv


def etcdctl(ns: str, endpoint: str, *args: str) -> str:
    """etcd itself, through its own client (ETCDCTL_API=3), not netlab's."""
    p = netns.run_in(ns, ["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True,
                     env=dict(os.environ, ETCDCTL_API="3"), timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def lab_etcd(name: str, *args: str) -> str:
    return etcdctl(names.lab_netns(name), "http://127.0.0.1:2379", *args)


def subnet_keys(name: str) -> list[str]:
    return [k for k in lab_etcd(name, "get", "--prefix", "--keys-only", "/coreos.com/network/subnets/").split() if k]


def test_lab_on_its_own_etcd_nodes_join_and_leave_and_down_leaves_nothing(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2\nstore: {type: etcd}", pod("a", "node1") + pod("b", "node2"))
    labs.up(path)
    record = lab.read_lab(name)
    assert record["store"] == {"type": "etcd", "url": f"etcd://192.168.56.1:2379?netns=netlab.{name}",
                               "daemonUrl": "etcd://192.168.56.1:2379", "managed": True,
                               "dataDir": f"/run/netlab/{name}/etcd"}
    # etcd runs in the lab namespace as a lab daemon (marked, its PID recorded), its data in the state dir.
    etcd_pid = daemons.recorded_pid(name, "etcd")
    assert etcd_pid is not None and os.readlink(f"/proc/{etcd_pid}/ns/net") == \
        f"net:[{netns.inode(names.lab_netns(name))}]"
    assert os.path.isdir(f"/run/netlab/{name}/etcd/data/member")
    # Every daemon uses it: labd, each flanneld and kube-proxy.
    for d in ("labd", "flanneld-node1", "flanneld-node2", "kube-proxy-node1", "kube-proxy-node2"):
        argv = open(f"/proc/{daemons.recorded_pid(name, d)}/cmdline").read().split("\0")
        assert argv[argv.index("--store") + 1] == "etcd://192.168.56.1:2379", (d, argv)
    # flannel's own schema in etcd itself: the config, and one lease per node with a TTL.
    conf = json.loads(lab_etcd(name, "get", "--print-value-only", "/coreos.com/network/config"))
    assert conf["Network"] == "10.244.0.0/16" and conf["Backend"]["Type"] == "vxlan"
    assert subnet_keys(name) == ["/coreos.com/network/subnets/10.244.1.0-24", "/coreos.com/network/subnets/10.244.2.0-24"]
    lease = json.loads(lab_etcd(name, "get", "-w", "json", "/coreos.com/network/subnets/10.244.1.0-24"))["kvs"][0]
    ttl = json.loads(lab_etcd(name, "lease", "timetolive", format(lease["lease"], "x"), "-w", "json"))
    assert 86000 < ttl["ttl"] <= 86400
    # Pods on both nodes reach each other: `netlab check` (every pair, TCP and UDP) through the CLI.
    st = lab.status(name)
    assert st["store"] == {"type": "etcd", "managed": True, "endpoints": ["http://192.168.56.1:2379"],
                           "netns": f"netlab.{name}"}
    assert [(n["name"], n["ready"]) for n in st["nodes"]] == [("node1", True), ("node2", True)]
    out = run_cli("check", name)
    assert out.returncode == 0 and out.stdout.count(" ok ") == 6, out.stdout + out.stderr

    # A node joins: every peer routes to it, and a pod reaches it, within 1 s of it being ready.
    conf = netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
    res = lab.node_add(name, "node3", ["zone=c"])
    nodes = by_name(lab.status(name)["nodes"])
    deadline = res.ready_at + 1.0
    for peer in ("node1", "node2"):
        within(deadline, lambda peer=peer: routes_to(nodes[peer], conf, "10.244.3.0/24"), f"{peer} routing to node3")
    a = by_name(st["pods"])["a"]
    within(deadline, lambda: _echo(a["netns"], "10.244.3.0"), "pod a reaching node3 over vxlan")
    assert nodes["node3"]["ready"] and nodes["node3"]["labels"] == {"zone": "c"}
    assert "/coreos.com/network/subnets/10.244.3.0-24" in subnet_keys(name)
    lab.apply(name, [labs.write(pod("c", "node3"))])
    c = by_name(lab.status(name)["pods"])["c"]
    assert http_get(a["netns"], c["ip"], "/clientip").split(":")[0] == a["ip"]
    assert udp_ask(c["netns"], a["ip"], "clientip").split(":")[0] == c["ip"]

    # It leaves: every peer forgets it within 1 s of its lease's release, and etcd no longer has the lease.
    res = lab.node_remove(name, "node3", force=True)
    deadline = res.released_at + 1.0
    for peer in ("node1", "node2"):
        within(deadline, lambda peer=peer: not knows(nodes[peer], conf, "10.244.3.0/24", "192.168.56.13"),
               f"{peer} forgetting node3")
    assert subnet_keys(name) == ["/coreos.com/network/subnets/10.244.1.0-24", "/coreos.com/network/subnets/10.244.2.0-24"]
    assert lab_etcd(name, "get", "/registry/minions/node3").strip() == ""
    assert [n["name"] for n in lab.status(name)["nodes"]] == ["node1", "node2"]

    # A second `up` changes nothing (etcd is running and right); `down` stops etcd by PID and leaves nothing.
    out = run_cli("up", "-f", path)
    assert out.stdout.strip() == f"lab {name} is up to date: nothing changed", out.stdout + out.stderr
    assert daemons.recorded_pid(name, "etcd") == etcd_pid
    out = run_cli("down", name)
    assert out.returncode == 0 and f"etcd (pid {etcd_pid}) and its data" in out.stdout, out.stdout + out.stderr
    daemons.reap()  # etcd was this process's child (labs.up ran here): collect it
    assert daemons.start_time(etcd_pid) is None
    assert not os.path.exists(f"/run/netlab/{name}")
    assert_no_leaks(name)


def test_lab_restarts_its_etcd_and_keeps_the_data(labs):
    """etcd killed under a running lab: a second `up` starts it again on the same data, the lease intact."""
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 1\nstore: {type: etcd}", pod("a", "node1"))
    labs.up(path)
    before = lab_etcd(name, "get", "/coreos.com/network/subnets/10.244.1.0-24")
    daemons.stop(name, "etcd")
    with pytest.raises(NetlabError, match="unreachable"):
        lab.status(name)
    res = labs.up(path)
    assert res.changes == ["daemon etcd (data /run/netlab/%s/etcd)" % name]
    assert lab_etcd(name, "get", "/coreos.com/network/subnets/10.244.1.0-24") == before
    assert by_name(lab.status(name)["pods"])["a"]["phase"] == "Running"


def test_lab_on_a_users_etcd_takes_only_its_keys(labs, user_etcd):
    name = labs.name()
    ep = "http://127.0.0.1:23790"
    ns = user_etcd.netns_name
    # What was in the user's etcd before the lab: flannel's config (the same network) and another
    # flanneld's lease, and a key of its own. The lab uses the config and leaves all three.
    theirs = open_store(user_etcd.url)
    try:
        theirs.put("/coreos.com/network/config", {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0",
                                                  "SubnetMax": "10.244.255.0",
                                                  "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}})
        theirs.put("/coreos.com/network/subnets/10.244.99.0-24",
                   {"PublicIP": "198.51.100.9", "PublicIPv6": None, "BackendType": "vxlan",
                    "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:99"}})
        theirs.put("/users/own", {"x": 1})
        before = sorted(kv.key for kv in theirs.list("/")[0])
        spec = f"nodes: 2\nstore: {{type: etcd, endpoints: [{ep}], netns: {ns}}}"
        labs.up(labs.lab_yaml(name, spec, pod("a", "node1") + pod("b", "node2")))
        assert daemons.recorded_pid(name, "etcd") is None  # netlab runs no etcd of its own
        for d in ("labd", "flanneld-node1", "kube-proxy-node2"):
            argv = open(f"/proc/{daemons.recorded_pid(name, d)}/cmdline").read().split("\0")
            assert argv[argv.index("--store") + 1] == f"etcd://127.0.0.1:23790?netns={ns}"
        keys = etcdctl(ns, ep, "get", "--prefix", "--keys-only", "/").split()
        assert {"/coreos.com/network/subnets/10.244.1.0-24", "/coreos.com/network/subnets/10.244.2.0-24",
                f"/registry/netlab.io/labs/{name}", "/registry/minions/node1", "/registry/pods/default/a"} <= set(keys)
        st = lab.status(name)
        assert st["store"] == {"type": "etcd", "managed": False, "endpoints": [ep], "netns": ns}
        pods = by_name(st["pods"])
        assert http_get(pods["a"]["netns"], pods["b"]["ip"], "/hostname") == "b"

        # A second lab on the same etcd is refused before anything is made: one lab per etcd.
        other = labs.name()
        out = run_cli("up", "-f", labs.lab_yaml(other, spec))
        assert out.returncode == 2 and f"spec.store.endpoints: etcd at {ep} holds lab {name!r}" in out.stderr, out.stderr
        assert not lab_leaks(other)

        out = run_cli("down", name)
        assert out.returncode == 0 and " key(s) in etcd" in out.stdout, out.stdout + out.stderr
        assert sorted(kv.key for kv in theirs.list("/")[0]) == before
    finally:
        theirs.close()
    assert_no_leaks(name)


def test_a_users_etcd_holding_another_cluster_is_refused_and_an_unreachable_one_is_reported(labs, user_etcd, tmp_path):
    ep = "http://127.0.0.1:23790"
    ns = user_etcd.netns_name
    spec = f"nodes: 1\nstore: {{type: etcd, endpoints: [{ep}], netns: {ns}}}"
    with open_store(user_etcd.url) as theirs:
        theirs.put("/coreos.com/network/config", {"Network": "10.50.0.0/16", "Backend": {"Type": "vxlan"}})
        name = labs.name()
        with pytest.raises(SpecError, match=r"spec.store.endpoints: etcd at .* holds another flannel network"):
            lab.up([labs.lab_yaml(name, spec)])
        theirs.delete("/coreos.com/network/config")
        theirs.put("/registry/pods/kube-system/coredns", {"metadata": {"name": "coredns"}})
        with pytest.raises(SpecError, match=r"holds 1 Kubernetes object\(s\) of another cluster"):
            lab.up([labs.lab_yaml(name, spec)])
        theirs.delete("/registry/pods/kube-system/coredns")
        assert not lab_leaks(name)
        # A namespace that is not there: exit 2, file:line.
        path = labs.lab_yaml(name, f"nodes: 1\nstore: {{type: etcd, endpoints: [{ep}], netns: nlf-nowhere}}")
        out = run_cli("up", "-f", path)
        assert out.returncode == 2 and f"{path}:6: spec.store.netns: there is no network namespace 'nlf-nowhere'" \
            in out.stderr, out.stderr
        # The etcd goes away under a running lab: `down` still removes everything on this machine and
        # says which keys stay in etcd (exit 1).
        labs.up(labs.lab_yaml(name, spec, pod("a", "node1")))
    user_etcd.proc.terminate()
    user_etcd.proc.wait(timeout=10)
    out = run_cli("down", name)
    assert out.returncode == 1 and "but not the lab's keys in the etcd" in out.stderr, out.stderr
    assert "/coreos.com/network/subnets/10.244.1.0-24" in out.stderr
    assert_no_leaks(name)
