"""The in-process API against the real kernel: what the lab wires its pods with."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import subprocess

import pytest

from cni import api, subnet_env
from cni.errors import CNIError
from cni.netlink import RtNetlink
from netlab import netns
from tests.integration.test_cni_support import Namespaces, sh, try_sh


@pytest.fixture
def nss():
    n = Namespaces()
    try:
        yield n
    finally:
        n.close()


def flannel_conf(tmp_path, ipmasq: bool = True) -> dict:
    (tmp_path / "flannel").mkdir(exist_ok=True)
    env = tmp_path / "flannel" / "subnet.env"
    env.write_text(subnet_env.render("10.244.0.0/16", "10.244.1.0/24", 1450, ipmasq))
    # The fabric's per-node conflist: kube-flannel's cni-conf.json plus subnetFile/dataDir.
    return {"cniVersion": "1.1.0", "name": "cbr0", "plugins": [
        {"type": "flannel", "subnetFile": str(env), "dataDir": str(tmp_path / "lib" / "flannel"),
         "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def caller_links() -> list[str]:
    nl = RtNetlink.open()
    try:
        return sorted(l.name for l in nl.links())
    finally:
        nl.close()


def test_flannel_conflist_wires_pods_that_talk(nss, tmp_path):
    node = nss.new("node")
    pods = [nss.new(f"p{i}") for i in range(2)]
    conf = flannel_conf(tmp_path)
    before = caller_links()
    results = [api.add(conf, container_id=f"ctr{i}", netns=netns.path(p), host_netns=node) for i, p in enumerate(pods)]
    assert caller_links() == before  # nothing in the caller's namespace

    r = results[0]
    assert r["cniVersion"] == "1.1.0"
    br, hv, cv = r["interfaces"]
    assert br["name"] == "cni0" and hv["name"].startswith("veth") and len(hv["name"]) == 12
    int(hv["name"][4:], 16)
    assert cv == {"name": "eth0", "mac": cv["mac"], "sandbox": netns.path(pods[0])}
    assert r["ips"] == [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2}]
    assert r["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
    assert results[1]["ips"][0]["address"] == "10.244.1.3/24"

    assert "inet 10.244.1.1/24 brd 10.244.1.255" in sh(node, "ip", "addr", "show", "cni0")
    assert "mtu 1450" in sh(node, "ip", "link", "show", "cni0")
    assert "hairpin on" in sh(node, "bridge", "-d", "link", "show", "dev", hv["name"])
    assert sh(node, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert sh(pods[0], "ip", "route").splitlines()[:2] == ["default via 10.244.1.1 dev eth0 ", "10.244.0.0/16 via 10.244.1.1 dev eth0 "]
    assert "mtu 1450" in sh(pods[0], "ip", "link", "show", "eth0")
    assert cv["mac"] in sh(pods[0], "ip", "link", "show", "eth0")
    # ipMasq = not FLANNEL_IPMASQ: flanneld masquerades, the bridge plugin adds no rule.
    assert "CNI-" not in sh(node, "iptables-save")
    sh(pods[0], "ping", "-c1", "-W2", "10.244.1.3")
    sh(pods[1], "ping", "-c1", "-W2", "10.244.1.1")

    nets = tmp_path / "lib" / "networks" / "cbr0"
    assert (nets / "10.244.1.2").read_bytes() == b"ctr0\r\neth0"
    assert sorted(os.listdir(tmp_path / "lib" / "flannel")) == ["ctr0", "ctr1"]

    for i, p in enumerate(pods):
        api.delete(conf, container_id=f"ctr{i}", netns=netns.path(p), host_netns=node)
        api.delete(conf, container_id=f"ctr{i}", netns=netns.path(p), host_netns=node)  # idempotent
    assert sorted(os.listdir(nets)) == ["last_reserved_ip.0", "lock"]
    assert os.listdir(tmp_path / "lib" / "flannel") == []
    assert sh(node, "ip", "-o", "link").count("veth") == 0
    assert "eth0" not in sh(pods[0], "ip", "-o", "link")
    # Unknown container, missing namespace: still success.
    api.delete(conf, container_id="never", netns="/run/netns/nltest-cni-missing", host_netns=node)
    assert caller_links() == before


def test_ipmasq_rules_follow_the_pod(nss, tmp_path):
    node, pod = nss.new("node"), nss.new("pod")
    conf = flannel_conf(tmp_path, ipmasq=False)  # flanneld does not masquerade: the bridge plugin must
    api.add(conf, container_id="m1", netns=netns.path(pod), host_netns=node)
    rules = sh(node, "iptables-save", "-t", "nat")
    assert '-A POSTROUTING -s 10.244.1.2/32 -m comment --comment "name: \\"cbr0\\" id: \\"m1\\"" -j CNI-' in rules
    assert "! -d 224.0.0.0/4" in rules and "-d 10.244.1.0/24" in rules
    api.delete(conf, container_id="m1", netns=netns.path(pod), host_netns=node)
    assert "CNI-" not in sh(node, "iptables-save", "-t", "nat")


def test_twenty_parallel_adds_never_share_an_address(nss, tmp_path):
    node = nss.new("node")
    pods = [nss.new(f"p{i}") for i in range(20)]
    conf = flannel_conf(tmp_path)
    api.add(conf, container_id="first", netns=netns.path(pods[0]), host_netns=node)  # the bridge exists
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(api.add, conf, container_id=f"c{i}", netns=netns.path(p), host_netns=node)
                for i, p in enumerate(pods[1:], 1)]
        results = [f.result() for f in futs]
    addrs = [r["ips"][0]["address"] for r in results] + ["10.244.1.2/24"]
    assert len(set(addrs)) == 20
    files = [f for f in os.listdir(tmp_path / "lib" / "networks" / "cbr0") if f[0].isdigit()]
    assert sorted(files) == sorted(a.split("/")[0] for a in addrs)


def test_failed_add_leaves_nothing_behind(nss, tmp_path):
    node, pod = nss.new("node"), nss.new("pod")
    conf = flannel_conf(tmp_path)
    # The pod already has an eth0: the ADD must fail after IPAM, and undo it.
    sh(pod, "ip", "link", "add", "eth0", "type", "bridge")
    with pytest.raises(CNIError, match="already exists"):
        api.add(conf, container_id="bad", netns=netns.path(pod), host_netns=node)
    assert [f for f in os.listdir(tmp_path / "lib" / "networks" / "cbr0") if f[0].isdigit()] == []
    assert "veth" not in sh(node, "ip", "-o", "link")
    assert os.listdir(tmp_path / "lib" / "flannel") == []
    # A namespace path that is not a namespace: refused before anything exists.
    with pytest.raises(CNIError) as e:
        api.add(conf, container_id="bad2", netns=str(tmp_path / "flannel" / "subnet.env"), host_netns=node)
    assert e.value.code == 4
    # No subnet.env yet: "try again later", nothing made.
    os.unlink(tmp_path / "flannel" / "subnet.env")
    with pytest.raises(CNIError) as e:
        api.add(conf, container_id="bad3", netns=netns.path(pod), host_netns=node)
    assert e.value.code == 11
    assert [f for f in os.listdir(tmp_path / "lib" / "networks" / "cbr0") if f[0].isdigit()] == []
