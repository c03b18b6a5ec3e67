"""The executables as a runtime sees them: env, stdin, stdout, CNI_PATH lookup, chains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from cni import subnet_env
from cni.runtime import Runtime
from netlab import netns
from tests.integration.test_cni_support import REF, Namespaces, bindir, nss_fixture, sh  # noqa: F401 (bindir: a fixture)


SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode()); c.close()
"""


nss = nss_fixture()


def chain(bridge_type: str, ipam_type: str, portmap_type: str, data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "pmnet", "plugins": [
        {"type": bridge_type, "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
         "ipam": {"type": ipam_type, "dataDir": data_dir, "ranges": [[{"subnet": "10.66.1.0/24"}]]}},
        {"type": portmap_type, "capabilities": {"portMappings": True}}]}


def fetch(ns: str, ip: str, port: int) -> str:
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3)
        s.connect((ip, port))
        return s.recv(100).decode()
    finally:
        s.close()


def two_nodes(nss: Namespaces) -> tuple[str, str]:
    n1, n2 = nss.new("n1"), nss.new("n2")
    sh(n1, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", netns.path(n2))
    sh(n1, "ip", "addr", "add", "192.168.77.1/24", "dev", "eth0")
    sh(n2, "ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
    for n in (n1, n2):
        sh(n, "ip", "link", "set", "eth0", "up")
        sh(n, "ip", "link", "set", "lo", "up")
    return n1, n2


def test_bridge_portmap_chain_reachable_from_another_node(nss, bindir, tmp_path):
    n1, n2 = two_nodes(nss)
    pod = nss.new("pod")
    rt = Runtime(cni_path=[bindir, REF], host_netns=n1)
    conf = chain("netlab-bridge", "netlab-host-local", "netlab-portmap", str(tmp_path / "ours"))
    rc = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    result = rt.add(conf, "pmctr", netns.path(pod), runtime_config=rc)
    assert result["ips"][0]["address"] == "10.66.1.2/24"
    srv = netns.popen_in(pod, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        assert fetch(n2, "192.168.77.1", 8080) == "192.168.77.2"  # DNAT, no masquerade from outside
        assert fetch(pod, "192.168.77.1", 8080) == "10.66.1.1"  # hairpin: masqueraded to the bridge
        assert fetch(n1, "127.0.0.1", 8080) == "10.66.1.1"  # node-local via route_localnet
    finally:
        srv.kill()
        srv.wait()
    rt.delete(conf, "pmctr", netns.path(pod), runtime_config=rc)
    nat = sh(n1, "iptables-save", "-t", "nat")
    assert "CNI-DN-" not in nat and "CNI-HOSTPORT-DNAT" in nat
    with pytest.raises(OSError):
        fetch(n2, "192.168.77.1", 8080)


def test_portmap_rules_match_the_reference(nss, bindir, tmp_path):
    rc = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                           # Without "protocol" the reference 1.1.1 fails (iptables -p ""); netlab
                           # defaults to tcp as the spec's portMappings convention says. Both given here.
                           {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"},
                           {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.99.1"}]}
    out = {}
    for who, types in (("ref", ("bridge", "host-local", "portmap")),
                       ("ours", ("netlab-bridge", "netlab-host-local", "netlab-portmap"))):
        node, pod = nss.new(who + "n"), nss.new(who + "p")
        rt = Runtime(cni_path=[bindir, REF], host_netns=node)
        conf = chain(*types, str(tmp_path / who))
        rt.add(conf, "pmctr", netns.path(pod), runtime_config=rc)
        # In order: 1.1.1 sorts the protocols of a mapping, so its rule order is deterministic.
        rules = [l for l in sh(node, "iptables-save", "-t", "nat").splitlines() if not l.startswith("#")]
        out[who] = (rules, sh(node, "sysctl", "-n", "net.ipv4.conf.cni0.route_localnet"))
        rt.delete(conf, "pmctr", netns.path(pod), runtime_config=rc)
        out[who + "-del"] = [l for l in sh(node, "iptables-save", "-t", "nat").splitlines() if not l.startswith("#")]
    assert out["ours"] == out["ref"]
    assert out["ours-del"] == out["ref-del"]


# flannel has no differential test: Debian's containernetworking-plugins does not ship
# flannel's CNI plugin (it lives in flannel-io/cni-plugin), so there is no reference binary
# here. The delegate config netlab-flannel builds is checked field for field against what
# flannel's own source builds in tests/unit/test_cni_flannel.py; this test covers the exec path.
def test_flannel_exec_finds_its_delegates_on_cni_path(nss, bindir, tmp_path):
    node, pod = nss.new("node"), nss.new("pod")
    env = tmp_path / "subnet.env"
    env.write_text(subnet_env.render("10.244.0.0/16", "10.244.3.0/24", 1450, True))
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "plugins": [
        {"type": "netlab-flannel", "subnetFile": str(env), "dataDir": str(tmp_path / "lib" / "flannel"),
         "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "netlab-portmap", "capabilities": {"portMappings": True}}]}
    r = Runtime(cni_path=[bindir], host_netns=node).add(conf, "fl1", netns.path(pod))
    assert r["ips"] == [{"address": "10.244.3.2/24", "gateway": "10.244.3.1", "interface": 2}]
    assert os.path.exists(tmp_path / "lib" / "networks" / "cbr0" / "10.244.3.2")
    # Without our bridge on CNI_PATH, flannel cannot find its delegate: a config error, nothing left.
    pod2 = nss.new("pod2")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    os.symlink(os.path.join(bindir, "netlab-flannel"), lonely / "netlab-flannel")
    rt2 = Runtime(cni_path=[str(lonely)], host_netns=node)
    plugin = dict(conf["plugins"][0], name="cbr0", cniVersion="1.1.0")
    res = rt2.exec_raw(str(lonely / "netlab-flannel"), rt2.env("ADD", "fl2", netns.path(pod2), "eth0"), json.dumps(plugin).encode())
    assert res.code == 1 and json.loads(res.stdout)["code"] == 7 and "netlab-bridge" in res.stdout
    assert not os.path.exists(tmp_path / "lib" / "flannel" / "fl2")
    Runtime(cni_path=[bindir], host_netns=node).delete(conf, "fl1", netns.path(pod))
    assert [f for f in os.listdir(tmp_path / "lib" / "networks" / "cbr0") if f[0].isdigit()] == []


def test_version_check_gc_status(nss, bindir, tmp_path):
    node, pod = nss.new("node"), nss.new("pod")
    rt = Runtime(cni_path=[bindir], host_netns=node)
    exe = os.path.join(bindir, "netlab-bridge")
    v = rt.exec_raw(exe, rt.env("VERSION"), b'{"cniVersion":"1.1.0"}')
    assert v.code == 0 and json.loads(v.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    conf = {"cniVersion": "1.1.0", "name": "vnet", "plugins": [
        {"type": "netlab-bridge", "isGateway": True,
         "ipam": {"type": "netlab-host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.67.0.0/24"}]]}}]}
    r = rt.add(conf, "keep", netns.path(pod))
    rt.check(conf, "keep", netns.path(pod), r)
    pod2 = nss.new("pod2")
    rt.add(conf, "stale", netns.path(pod2))
    rt.gc(conf, [{"containerID": "keep", "ifname": "eth0"}])
    assert sorted(f for f in os.listdir(tmp_path / "vnet") if f[0].isdigit()) == ["10.67.0.2"]
    st = rt.exec_raw(exe, rt.env("STATUS"), json.dumps(dict(conf["plugins"][0], name="vnet", cniVersion="1.1.0")).encode())
    assert st.code == 0 and st.stdout == ""
    old = rt.exec_raw(exe, rt.env("GC"), json.dumps(dict(conf["plugins"][0], name="vnet", cniVersion="1.0.0")).encode())
    assert old.code == 1 and json.loads(old.stdout)["code"] == 1
