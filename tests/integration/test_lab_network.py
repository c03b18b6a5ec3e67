"""What a lab's nodes do with traffic as real nodes do: flanneld's masquerade, a default route, REJECT answered.

Real packets from pods to an external client on the underlay (which sees
the node's address unless the pod network is not masqueraded), between pods
on two nodes (which keep their addresses), and to a Service without
endpoints (refused, not unreachable).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
import time

import pytest

from cni.overlay.testbed import Pod, tcp_exchange
from netlab import lab, names, netns
from netlab import store as st
from netlab.check import http_get
from tests.helpers import wait_until
from tests.integration.conftest import pod

PODS = pod("a", "node1") + pod("b", "node2")


def save(ns: str, backend: str) -> str:
    return netns.run_in(ns, [f"iptables-{backend}-save"], capture_output=True, text=True, check=True).stdout


def as_pod(item: dict) -> Pod:
    return Pod(item["name"], item["netns"], ipaddress.ip_address(item["ip"]))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_flanneld_masquerades_pod_traffic_leaving_the_pod_network(labs, backend):
    name = labs.name()
    labs.up(labs.lab_yaml(name, f"nodes: 2\nclients: [{{name: ext}}]\niptablesBackend: {backend}", PODS))
    status = lab.status(name)
    nodes = {n["name"]: n for n in status["nodes"]}
    pods = {p["name"]: as_pod(p) for p in status["pods"]}
    other = "legacy" if backend == "nft" else "nft"
    for n in nodes.values():
        # flanneld's chains, in the node's iptables backend (the one its kube-proxy uses too), and only there.
        wait_until(lambda n=n: "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
                   in save(n["netns"], backend), what=f"FLANNEL-POSTRTG on {n['name']}")
        text = save(n["netns"], backend)
        assert (f"-A FLANNEL-POSTRTG -s {n['podCIDR']} -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN"
                in text)
        assert ("-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" "
                "-j MASQUERADE --random-fully") in text
        assert "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD" in text
        assert "KUBE-SERVICES" in text  # kube-proxy writes to the same backend
        assert "FLANNEL" not in save(n["netns"], other)
    client = next(c for c in status["clients"] if c["name"] == "ext")
    ext = Pod("ext", client["netns"], ipaddress.ip_address(client["ip"]))
    # A pod reaching the external client is seen with its node's address (and gets the answer back) ...
    assert tcp_exchange(pods["a"], ext, port=9000) == nodes["node1"]["ip"]
    assert tcp_exchange(pods["b"], ext, port=9000) == nodes["node2"]["ip"]
    # ... while pod to pod across nodes keeps the pod's own address.
    assert tcp_exchange(pods["a"], pods["b"], port=9001) == str(pods["a"].ip)
    assert http_get(pods["b"].netns, str(pods["a"].ip), "/clientip").split(":")[0] == str(pods["b"].ip)


def test_without_ip_masq_flannel_leaves_masquerading_to_the_cni_plugin(labs):
    """ipMasq: false, flanneld --ip-masq=false: FLANNEL_IPMASQ=false, and the CNI plugin masquerades instead."""
    name = labs.name()
    labs.up(labs.lab_yaml(name, "nodes: 2\nclients: [{name: ext}]\nipMasq: false", PODS))
    status = lab.status(name)
    nodes = {n["name"]: n for n in status["nodes"]}
    pods = {p["name"]: as_pod(p) for p in status["pods"]}
    node1 = nodes["node1"]
    wait_until(lambda: "FLANNEL-FWD" in save(node1["netns"], "nft"), what="flanneld's forward rules")
    assert "FLANNEL-POSTRTG" not in save(node1["netns"], "nft")
    with open(names.subnet_env_path(name, "node1")) as f:
        assert "FLANNEL_IPMASQ=false\n" in f.read()
    # subnet.env says flanneld does not masquerade: the flannel CNI plugin has the bridge plugin do it per pod.
    assert "-j MASQUERADE" in "\n".join(l for l in save(node1["netns"], "nft").splitlines() if l.startswith("-A CNI-"))
    client = next(c for c in status["clients"] if c["name"] == "ext")
    ext = Pod("ext", client["netns"], ipaddress.ip_address(client["ip"]))
    assert tcp_exchange(pods["a"], ext, port=9000) == node1["ip"]
    # As on a flannel cluster without --ip-masq: the bridge plugin exempts only the node's own pod
    # subnet, so a pod on another node sees node1's flannel.1 address (why kube-flannel runs --ip-masq).
    assert tcp_exchange(pods["a"], pods["b"], port=9001) == "10.244.1.0"


NO_ENDPOINTS = """---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 8080}]
"""


def connect_errno(ns: str, ip: str, port: int) -> int:
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        return s.connect_ex((ip, port))
    except socket.timeout:
        return errno.ETIMEDOUT
    finally:
        s.close()


def test_service_without_endpoints_is_refused_not_unreachable(labs):
    name = labs.name()
    labs.up(labs.lab_yaml(name, "nodes: 2", pod("a", "node1") + NO_ENDPOINTS))
    status = lab.status(name)
    node1 = status["nodes"][0]
    # A node's default route goes to the underlay's gateway (the lab namespace's bridge address).
    out = subprocess.run(["ip", "netns", "exec", node1["netns"], "ip", "route", "show", "default"],
                         capture_output=True, text=True).stdout
    assert out.startswith("default via 192.168.56.1 dev eth0"), out
    with netns.iproute(names.lab_netns(name)) as ipr:
        br = ipr.link_lookup(ifname="underlay")[0]
        assert [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=br, family=2)] == [
            ("192.168.56.1", 24)]
    assert netns.read_sysctl(node1["netns"], "net.ipv4.icmp_ratelimit") == "0"
    store = lab.store_for(name)
    try:
        ip = store.get(st.object_key("Service", "default", "nothing")).value["spec"]["clusterIP"]
    finally:
        store.close()
    a = status["pods"][0]
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until kube-proxy's first sync has written the REJECT
        seen.append(connect_errno(a["netns"], ip, 80))
        if seen[-1] == errno.ECONNREFUSED:
            break
        time.sleep(0.1)
    assert seen[-1] == errno.ECONNREFUSED, [errno.errorcode.get(e, e) for e in seen[-3:]]
    # Every connection is answered (no ICMP rate limit turning refusals into timeouts).
    assert [connect_errno(a["netns"], ip, 80) for _ in range(20)] == [errno.ECONNREFUSED] * 20
