"""The kubelet: sandboxes made concurrently, statuses in batches, restarts, replaced pods."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess

import pytest

from netlab import daemons, kubelet, lab, names, netns
from netlab.store import PODS
from tests.helpers import wait_until
from tests.integration.conftest import LabFactory, pod


@pytest.fixture
def labs(tmp_path):
    f = LabFactory(tmp_path, "nlc")
    yield f
    f.teardown()


def reservations(name: str, node: str) -> dict[str, str]:
    """host-local's files of the node's network: address -> container ID."""
    d = os.path.join(names.cni_data_dir(name, node), "networks", "cbr0")
    out = {}
    for fn in os.listdir(d) if os.path.isdir(d) else []:
        if fn[0].isdigit():
            with open(os.path.join(d, fn), "rb") as f:
                out[fn] = f.read().decode().split("\r\n")[0]
    return out


def sandbox_ids(name: str) -> dict[str, str]:
    store = lab.store_for(name)
    try:
        return {kv.value["metadata"]["name"]: kubelet.sandbox_id("default", kv.value["metadata"]["name"],
                                                                  kv.value["metadata"]["uid"])
                for kv in store.list(PODS)[0]}
    finally:
        store.close()


def ip_json(ns: str, *args: str) -> list:
    return json.loads(netns.run_in(ns, ["ip", "-j", *args], capture_output=True, text=True, check=True).stdout)


def test_many_pods_are_wired_alike_and_deleted_cleanly(labs):
    name = labs.name()
    pods = "".join(pod(f"p{n}-{i}", f"node{n}") for n in (1, 2) for i in range(30))
    path = labs.lab_yaml(name, "nodes: 2", pods)
    labs.up(path, timeout=120)
    st = lab.status(name)
    assert {p["phase"] for p in st["pods"]} == {"Running"} and len(st["pods"]) == 60
    ips = [p["ip"] for p in st["pods"]]
    assert len(set(ips)) == 60
    ids = sandbox_ids(name)
    for node in st["nodes"]:
        mine = [p for p in st["pods"] if p["node"] == node["name"]]
        cidr = ipaddress.ip_network(node["podCIDR"])
        gw = str(cidr.network_address + 1)
        assert all(ipaddress.ip_address(p["ip"]) in cidr for p in mine)
        # host-local's files: exactly one reservation per pod, by its sandbox ID.
        assert reservations(name, node["name"]) == {p["ip"]: ids[p["name"]] for p in mine}
        # Every veth on cni0 with hairpin on, one per pod.
        ports = [l for l in ip_json(node["netns"], "-d", "link", "show", "type", "veth")
                 if l.get("master") == "cni0"]
        assert len(ports) == len(mine)
        assert all(l["linkinfo"]["info_slave_data"]["hairpin"] for l in ports)
        for p in mine[:5]:
            eth0 = ip_json(p["netns"], "addr", "show", "dev", "eth0")[0]
            assert eth0["operstate"] == "UP" and eth0["mtu"] == 1450
            assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [(p["ip"], cidr.prefixlen)]
            routes = {(r["dst"], r.get("gateway")) for r in ip_json(p["netns"], "route")}
            assert routes >= {("default", gw), ("10.244.0.0/16", gw)}
            lo = ip_json(p["netns"], "link", "show", "dev", "lo")[0]
            assert "UP" in lo["flags"]
            # One TX and one RX queue in use, as the reference plugin's veth.
            queues = subprocess.run(["ip", "netns", "exec", p["netns"], "ls", "/sys/class/net/eth0/queues"],
                                    capture_output=True, text=True, check=True).stdout.split()
            assert queues == ["rx-0", "tx-0"]
    # Deleting half the pods (concurrent CNI DELs) releases exactly theirs.
    gone = [p for p in st["pods"] if int(p["name"].split("-")[1]) % 2]
    doomed = labs.write("".join(pod(p["name"], p["node"]) for p in gone))
    lab.delete(name, [doomed])
    wait_until(lambda: not any(netns.exists(p["netns"]) for p in gone), timeout=60, what="deleted pods' namespaces")
    wait_until(lambda: sum(len(reservations(name, n)) for n in ("node1", "node2")) == 30, timeout=30,
               what="reservations of deleted pods released")
    st2 = lab.status(name)
    assert {p["name"] for p in st2["pods"]} == {p["name"] for p in st["pods"]} - {p["name"] for p in gone}
    assert {p["phase"] for p in st2["pods"]} == {"Running"}
    journal = kubelet.Journal(os.path.join(names.lab_dir(name), "pods"))
    assert {e["key"] for e in journal.read()} == {f"default/{p['name']}" for p in st2["pods"]}
    journal.close()


def test_a_restarted_kubelet_rebuilds_every_sandbox(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2", "".join(pod(f"r{i}", f"node{i % 2 + 1}") for i in range(4)))
    labs.up(path)
    before = {p["name"]: p["ip"] for p in lab.status(name)["pods"]}
    pid = daemons.recorded_pid(name, "labd")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemons.alive(name, "labd"), what="labd to die")
    assert all(netns.exists(p["netns"]) for p in lab.status(name)["pods"])  # left behind by the dead kubelet
    labs.up(path)  # starts labd again: its kubelet removes the old sandboxes and makes new ones

    def rebuilt():
        st = lab.status(name)
        return all(p["phase"] == "Running" and p["ip"] and p["ip"] != before[p["name"]] for p in st["pods"]) and st

    st = wait_until(rebuilt, timeout=30, what="pods rebuilt with new addresses (round robin)")
    ids = sandbox_ids(name)
    for node in ("node1", "node2"):
        assert reservations(name, node) == {p["ip"]: ids[p["name"]] for p in st["pods"] if p["node"] == node}
    for p in st["pods"]:
        eth0 = ip_json(p["netns"], "addr", "show", "dev", "eth0")[0]
        assert p["ip"] in [a["local"] for a in eth0["addr_info"]]


def test_a_replaced_pod_gets_a_new_sandbox_and_its_status(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 1", pod("web", "node1", labels="{app: a}"))
    labs.up(path)
    first = lab.status(name)["pods"][0]
    old_id = sandbox_ids(name)["web"]
    # Other labels: `apply` replaces the Pod (a new uid), as kubectl replace --force.
    lab.apply(name, [labs.write(pod("web", "node1", labels="{app: b}"))], wait=30)
    new_id = sandbox_ids(name)["web"]
    assert new_id != old_id

    def rewired():
        st = lab.status(name)["pods"][0]
        return st["phase"] == "Running" and reservations(name, "node1") == {st["ip"]: new_id} and st

    st = wait_until(rewired, timeout=30, what="the new incarnation's sandbox")
    assert st["ip"] != first["ip"]
    eth0 = ip_json(st["netns"], "addr", "show", "dev", "eth0")[0]
    assert st["ip"] in [a["local"] for a in eth0["addr_info"]]
