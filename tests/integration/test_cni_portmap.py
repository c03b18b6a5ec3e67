"""portmap against the reference (Debian 12's containernetworking-plugins 1.1.1, /usr/lib/cni/portmap).

Each differential case runs the same chain (bridge -> portmap, the
reference's plugins on one side, netlab's on the other) in fresh node and
pod namespaces with the same container IDs, and compares `iptables-save
-t nat` and `ip6tables-save -t nat` of the node, in order (jump order and
the prepended POSTROUTING rule are part of the layout), after: an ADD, the
same portmap ADD again (idempotence), a second container's ADD, the first
container's DEL, and the second's. Plus route_localnet on cni0. Chain
names are the reference's (`CNI-DN-<sha512(network name + container id)>`),
so they compare as they are.

Known, explained differences (asserted as such below, not skipped):
- masqAll: 1.1.1 has no such field (its PortMapConf has no masqAll and the
  binary no such JSON key) and ignores it; netlab implements it as later
  references do: the hairpin mark rule matches every source, no 127.0.0.1
  rule. The test derives netlab's expected rules from the reference's.
- errors: the reference returns plain Go errors (code 999); netlab uses the
  spec's code 7 (invalid config) with the reference's message.
- CHECK: netlab checks as later references (chain, rules and jumps of each
  family the pod has; a missing chain fails with 1.1.1's message). 1.1.1
  fails every dual-stack pod: it looks for each address's rules in both
  iptables and ip6tables, wherever the chain exists.
- UDP conntrack: both delete the stale entries on ADD only, not on DEL
  (the reference's cmdDel does not call deletePortmapStaleConnections).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
import time

import pytest

from cni import libcni
from cni.plugins import portmap
from cni.runtime import Runtime
from netlab import netns
from tests.integration.test_cni_exec import REF, bindir, chain, two_nodes  # noqa: F401 (bindir: the fixture)
from tests.integration.test_cni_support import Namespaces, sh, try_sh

OURS = ("netlab-bridge", "netlab-host-local", "netlab-portmap")
THEIRS = ("bridge", "host-local", "portmap")


@pytest.fixture
def nss():
    n = Namespaces("nlpm")  # this suite's own prefix
    try:
        yield n
    finally:
        n.close()


def make_conf(types: tuple[str, str, str], data_dir: str, options: dict | None = None, *, v4: bool = True,
              v6: bool = False, ipmasq: bool = False) -> dict:
    c = chain(*types, data_dir)
    ranges = c["plugins"][0]["ipam"]["ranges"]
    if not v4:
        ranges.clear()
    if v6:
        ranges.append([{"subnet": "fd00:66::/64"}])
    if ipmasq:
        c["plugins"][0]["ipMasq"] = True
    c["plugins"][1].update(copy.deepcopy(options or {}))
    return c


def portmap_only(rt: Runtime, conf: dict, verb: str, cid: str, pod: str, prev: dict, rc: dict):
    """One portmap call with the chain's prevResult, as libcni builds it (the bridge not run again)."""
    plugin = libcni.build_one(conf["plugins"][1], conf["name"], conf["cniVersion"], prev, rc)
    return rt.invoker(cid, netns.path(pod))(verb, plugin)


COUNTERS = re.compile(r"\[\d+:\d+\]")


def nat(node: str, family: int) -> list[str]:
    text = sh(node, "ip6tables-save" if family == 6 else "iptables-save", "-t", "nat")
    return [COUNTERS.sub("[0:0]", l) for l in text.splitlines() if not l.startswith("#")]


def snapshot(node: str) -> dict:
    p = try_sh(node, "sysctl", "-n", "net.ipv4.conf.cni0.route_localnet")
    return {"v4": nat(node, 4), "v6": nat(node, 6), "route_localnet": p.stdout.strip() if p.returncode == 0 else None}


TCP2 = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"}]
MIXED = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
         {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.99.1"},
         {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "fd00:99::1"},
         {"hostPort": 9000, "containerPort": 90, "protocol": "tcp", "hostIP": "0.0.0.0"},
         {"hostPort": 9001, "containerPort": 91, "protocol": "tcp", "hostIP": "::"}]
KUBE_MARK = [["iptables", "-t", "nat", "-N", "KUBE-MARK-MASQ"],
             ["iptables", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", "0x4000/0x4000"]]

CASES = {
    "ipv4-basic": {"pms": TCP2},
    "udp": {"pms": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}, {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    # 20 TCP and 16 UDP ports: two multiport jumps each; "UDP" groups apart from "udp" and sorts first, as in 1.1.1.
    "more-than-15-ports": {"pms": [{"hostPort": 9000 + i, "containerPort": 80, "protocol": "tcp"} for i in range(20)]
                           + [{"hostPort": 7000 + i, "containerPort": 53, "protocol": "udp"} for i in range(16)]
                           + [{"hostPort": 6000, "containerPort": 53, "protocol": "UDP"},
                              {"hostPort": 9000, "containerPort": 81, "protocol": "tcp"}]},  # a port twice
    "host-ip": {"pms": MIXED},
    "snat-false": {"pms": TCP2, "options": {"snat": False}},
    "mark-masq-bit": {"pms": TCP2, "options": {"markMasqBit": 5}},
    "mark-masq-bit-31": {"pms": TCP2, "options": {"markMasqBit": 31}},
    "external-set-mark-chain": {"pms": TCP2, "options": {"externalSetMarkChain": "KUBE-MARK-MASQ"}, "setup": KUBE_MARK},
    "conditions-v4": {"pms": TCP2, "options": {"conditionsV4": ["!", "-d", "192.168.1.0/24", "-m", "comment", "--comment", "two words"]}},
    "bridge-ipmasq-first": {"pms": TCP2, "ipmasq": True},  # CNI-HOSTPORT-MASQ is prepended before the bridge's rule
    "ipv6-dual-stack": {"pms": MIXED, "v6": True, "options": {"conditionsV6": ["!", "-s", "fd00:1::/64"]}},
    "ipv6-only": {"pms": MIXED, "v4": False, "v6": True},
}


def run_side(nss: Namespaces, bindir: str, tmp_path, case: dict, who: str) -> dict:
    node, pod, pod2 = nss.new(who + "n"), nss.new(who + "p"), nss.new(who + "q")
    for argv in case.get("setup", []):
        sh(node, *argv)
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    conf = make_conf(OURS if who == "o" else THEIRS, str(tmp_path / who), case.get("options"),
                     v4=case.get("v4", True), v6=case.get("v6", False), ipmasq=case.get("ipmasq", False))
    rc = {"portMappings": case["pms"]}
    out = {}
    prev = rt.add(conf, "pmctr", netns.path(pod), runtime_config=rc)
    out["add"] = snapshot(node)
    portmap_only(rt, conf, "ADD", "pmctr", pod, prev, rc)
    out["add-again"] = snapshot(node)
    rt.add(conf, "pmctr2", netns.path(pod2), runtime_config={"portMappings": case["pms"][:1]})
    out["add-second"] = snapshot(node)
    rt.delete(conf, "pmctr", netns.path(pod), runtime_config=rc)
    out["del"] = snapshot(node)
    rt.delete(conf, "pmctr", netns.path(pod), runtime_config=rc)
    out["del-again"] = snapshot(node)
    rt.delete(conf, "pmctr2", netns.path(pod2), runtime_config={"portMappings": case["pms"][:1]})
    out["del-second"] = snapshot(node)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_rules_same_as_reference(name, nss, bindir, tmp_path):
    case = CASES[name]
    ref = run_side(nss, bindir, tmp_path, case, "r")
    ours = run_side(nss, bindir, tmp_path, case, "o")
    assert ref["add"]["v4" if case.get("v4", True) else "v6"] != ref["del-second"]["v4" if case.get("v4", True) else "v6"]
    for step in ref:
        assert ours[step] == ref[step], f"{name}: {step}"
    chains = {l.split()[0][1:] for l in ref["add"]["v4"] + ref["add"]["v6"] if l.startswith(":CNI-DN-")}
    assert chains == {portmap.dn_chain("pmnet", "pmctr")}  # the reference's name formula, and ours


def test_masq_all_is_the_later_references(nss, bindir, tmp_path):
    """1.1.1 ignores masqAll; netlab's rules are the reference's with every source marked (see the docstring)."""
    case = {"pms": TCP2, "options": {"masqAll": True}}
    ref = run_side(nss, bindir, tmp_path, case, "r")
    ours = run_side(nss, bindir, tmp_path, case, "o")

    def masq_all(lines: list[str]) -> list[str]:
        out = []
        for l in lines:
            if l.startswith("-A CNI-DN-") and l.endswith(" -j CNI-HOSTPORT-SETMARK"):
                if " -s 127.0.0.1/32 " in l:
                    continue
                l = re.sub(r" -s 10\.66\.1\.0/24 ", " ", l)
            out.append(l)
        return out

    assert sum(1 for l in ref["add"]["v4"] if "127.0.0.1/32" in l) == 2  # the reference did ignore it
    for step in ref:
        assert ours[step]["v4"] == masq_all(ref[step]["v4"]), step
        assert ours[step]["v6"] == ref[step]["v6"] and ours[step]["route_localnet"] == ref[step]["route_localnet"]


# -- errors: validated before anything is made --------------------------------


@pytest.mark.parametrize("options, msg", [
    ({"markMasqBit": 32}, "failed to parse config: MasqMarkBit must be between 0 and 31"),
    ({"markMasqBit": -1}, "failed to parse config: MasqMarkBit must be between 0 and 31"),
    ({"markMasqBit": 14, "externalSetMarkChain": "KUBE-MARK-MASQ"},
     "failed to parse config: Cannot specify externalSetMarkChain and markMasqBit"),
])
def test_invalid_options_code_7_nothing_left(options, msg, nss, bindir, tmp_path):
    for who, types in (("r", THEIRS), ("o", OURS)):
        node, pod = nss.new(who + "n"), nss.new(who + "p")
        rt = Runtime(cni_path=[bindir, REF], host_netns=node)
        good = make_conf(types, str(tmp_path / who), v6=True)
        prev = rt.add({**good, "plugins": good["plugins"][:1]}, "pmctr", netns.path(pod))  # the bridge alone
        before = snapshot(node)
        bad = make_conf(types, str(tmp_path / who), options, v6=True)
        for verb in ("ADD", "DEL", "CHECK"):
            with pytest.raises(Exception) as e:
                portmap_only(rt, bad, verb, "pmctr", pod, prev, {"portMappings": TCP2})
            # cmdCheck returns parseConfig's error without the prefix ADD and DEL give it.
            assert e.value.msg == (msg.removeprefix("failed to parse config: ") if verb == "CHECK" else msg)
            assert e.value.code == (7 if who == "o" else 999)  # the reference's plain Go error is 999
            assert snapshot(node) == before
        assert not [l for l in before["v4"] + before["v6"] if "CNI-HOSTPORT" in l or "CNI-DN" in l]


# Mappings netlab refuses before anything is made, and what the reference 1.1.1 does with them:
# "fails" in iptables after the shared chains were made, or "ignores" the mapping's rules.
REFUSED = [
    ({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}, 7, "fails"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "gre"}, 7, "fails"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "node1"}, 7, "ignores"),  # IPv4 pod: skipped as "IPv6"
    ({"hostPort": "80", "containerPort": 80, "protocol": "tcp"}, 6, "fails"),  # a JSON decoding error there too
]


def test_ours_refuses_what_iptables_would_fail_on_and_leaves_nothing(nss, bindir, tmp_path):
    for i, (pm, code, theirs) in enumerate(REFUSED):
        rnode, rpod = nss.new(f"rn{i}"), nss.new(f"rp{i}")
        rrt = Runtime(cni_path=[bindir, REF], host_netns=rnode)
        rconf = make_conf(THEIRS, str(tmp_path / f"r{i}"))
        rprev = rrt.add({**rconf, "plugins": rconf["plugins"][:1]}, "pmctr", netns.path(rpod))
        if theirs == "fails":
            with pytest.raises(Exception):
                portmap_only(rrt, rconf, "ADD", "pmctr", rpod, rprev, {"portMappings": [pm]})
        else:
            portmap_only(rrt, rconf, "ADD", "pmctr", rpod, rprev, {"portMappings": [pm]})
            assert not [l for l in nat(rnode, 4) if l.startswith("-A CNI-DN-")]
    node, pod = nss.new("n"), nss.new("p")
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    conf = make_conf(OURS, str(tmp_path / "o"), v6=True)
    prev = rt.add({**conf, "plugins": conf["plugins"][:1]}, "pmctr", netns.path(pod))
    before = snapshot(node)
    for pm, code, _theirs in REFUSED:
        with pytest.raises(Exception) as e:
            portmap_only(rt, conf, "ADD", "pmctr", pod, prev, {"portMappings": [pm]})
        assert e.value.code == code
        assert snapshot(node) == before
    # An externalSetMarkChain that does not exist: iptables refuses the transaction; the pod's chain is not left.
    ext = make_conf(OURS, str(tmp_path / "o"), {"externalSetMarkChain": "NO-SUCH-CHAIN"})
    with pytest.raises(Exception) as e:
        portmap_only(rt, ext, "ADD", "pmctr", pod, prev, {"portMappings": TCP2})
    after = snapshot(node)
    assert not [l for l in after["v4"] + after["v6"] if "CNI-DN-" in l], e.value


# -- CHECK ----------------------------------------------------------------------


def test_check(nss, bindir, tmp_path):
    rc = {"portMappings": MIXED}
    results = {}
    for who, types in (("r", THEIRS), ("o", OURS)):
        node, pod = nss.new(who + "n"), nss.new(who + "p")
        rt = Runtime(cni_path=[bindir, REF], host_netns=node)
        dual = make_conf(types, str(tmp_path / who), v6=True)
        prev = rt.add(dual, "pmctr", netns.path(pod), runtime_config=rc)
        got = {}

        def check(cid: str = "pmctr", conf: dict = dual) -> str:
            try:
                portmap_only(rt, conf, "CHECK", cid, pod, prev, rc)
                return "ok"
            except Exception as e:  # noqa: BLE001 - the CNI error is the answer
                return e.msg

        got["dual"] = check()
        v4_only = {**prev, "ips": [ip for ip in prev["ips"] if ":" not in ip["address"]]}
        plugin = libcni.build_one(dual["plugins"][1], dual["name"], dual["cniVersion"], v4_only, rc)
        try:
            rt.invoker("pmctr", netns.path(pod))("CHECK", plugin)
            got["v4"] = "ok"
        except Exception as e:  # noqa: BLE001
            got["v4"] = e.msg
        got["no-chain"] = check("other")  # a container whose chain does not exist
        ch = portmap.dn_chain("pmnet", "pmctr")
        dnat6 = next(l for l in nat(node, 6) if l.startswith(f"-A {ch} ") and "DNAT" in l)
        sh(node, "ip6tables", "-t", "nat", "-D", *dnat6[3:].split())
        got["v6-rule-gone"] = check()
        results[who] = got
    assert results["o"]["dual"] == "ok" and results["o"]["v4"] == "ok"
    assert results["o"]["no-chain"].startswith("could not check ipv4 dnat: chain CNI-DN-")
    assert results["o"]["v6-rule-gone"].startswith("could not check ipv6 dnat: rule ")
    # The reference 1.1.1, as the module docstring says: a dual-stack pod fails, even when CHECK is
    # given its IPv4 address alone (its IPv4 rules are looked for in ip6tables, where its chain
    # exists). A missing chain fails there as here, with the same message.
    assert results["r"]["dual"].startswith("could not check ipv6 dnat: rule [[-p tcp --dport 8080 -s 10.66.1.2/24")
    assert results["r"]["v4"].startswith("could not check ipv6 dnat: rule [[-p tcp --dport 8080 -s 10.66.1.2/24")
    assert results["r"]["no-chain"] == results["o"]["no-chain"]


# -- packets ----------------------------------------------------------------------

SERVER6 = r"""
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 80)); s.listen(8)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", 53))
print("ready", flush=True)
import threading
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto((sys.argv[1] + " " + peer[0].removeprefix("::ffff:")).encode(), peer)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode()); c.close()
"""


def tcp_fetch(ns: str, family: int, ip: str, port: int, timeout: float = 5.0) -> str:
    """The peer address the pod's server saw; retried while IPv6 addresses are still tentative (DAD)."""
    deadline = time.monotonic() + timeout
    while True:
        s = netns.socket_in(ns, socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(1)
            s.connect((ip, port))
            return s.recv(100).decode().removeprefix("::ffff:")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            s.close()


def udp_ask(ns: str, family: int, ip: str, port: int, sport: int, timeout: float = 1.0) -> str:
    s = netns.socket_in(ns, socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if family == 6 else "0.0.0.0", sport))
        s.settimeout(timeout)
        s.sendto(b"who", (ip, port))
        return s.recv(100).decode()
    finally:
        s.close()


def start_server(pod: str, name: str) -> subprocess.Popen:
    srv = netns.popen_in(pod, [sys.executable, "-c", SERVER6, name], stdout=subprocess.PIPE, text=True)
    assert srv.stdout.readline().strip() == "ready"
    return srv


def stop(srv: subprocess.Popen) -> None:
    srv.kill()
    srv.wait()
    srv.stdout.close()


def test_host_ports_reachable_ipv4_ipv6_tcp_udp(nss, bindir, tmp_path):
    n1, n2 = two_nodes(nss)
    for n, a in ((n1, "fd00:77::1/64"), (n2, "fd00:77::2/64")):
        sh(n, "ip", "-6", "addr", "add", a, "dev", "eth0", "nodad")
    pod = nss.new("pod")
    rt = Runtime(cni_path=[bindir, REF], host_netns=n1)
    conf = make_conf(OURS, str(tmp_path / "o"), v6=True)
    rc = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                           {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]}
    rt.add(conf, "pmctr", netns.path(pod), runtime_config=rc)
    srv = start_server(pod, "pod")
    try:
        assert tcp_fetch(n2, 4, "192.168.77.1", 8080) == "192.168.77.2"  # DNAT, the client's own address
        assert tcp_fetch(n2, 6, "fd00:77::1", 8080) == "fd00:77::2"
        assert tcp_fetch(pod, 6, "fd00:77::1", 8080) == "fd00:66::1"  # hairpin: masqueraded to the bridge
        assert tcp_fetch(n1, 4, "127.0.0.1", 8080) == "10.66.1.1"  # node-local, route_localnet
        assert udp_ask(n2, 4, "192.168.77.1", 5353, 40001) == "pod 192.168.77.2"
        assert udp_ask(n2, 6, "fd00:77::1", 5353, 40002) == "pod fd00:77::2"
    finally:
        stop(srv)
    rt.delete(conf, "pmctr", netns.path(pod), runtime_config=rc)
    with pytest.raises(OSError):
        tcp_fetch(n2, 6, "fd00:77::1", 8080, timeout=0)


def udp_entries(node: str, port: int) -> list[str]:
    p = try_sh(node, "conntrack", "-L", "-p", "udp", "--orig-port-dst", str(port))
    return [l for l in p.stdout.splitlines() if f"dport={port}" in l]


@pytest.mark.parametrize("who", ["r", "o"])
def test_stale_udp_conntrack_entry_flushed_on_add(who, nss, bindir, tmp_path):
    """A client keeps its UDP 5-tuple while the pod behind the host port is replaced."""
    n1, n2 = two_nodes(nss)
    rt = Runtime(cni_path=[bindir, REF], host_netns=n1)
    conf = make_conf(OURS if who == "o" else THEIRS, str(tmp_path / who))
    rc = {"portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]}
    old, new = nss.new("old"), nss.new("new")
    rt.add(conf, "pmold", netns.path(old), runtime_config=rc)
    srv = start_server(old, "old")
    try:
        assert udp_ask(n2, 4, "192.168.77.1", 5353, 40000) == "old 192.168.77.2"
    finally:
        stop(srv)
    rt.delete(conf, "pmold", netns.path(old), runtime_config=rc)
    stale = udp_entries(n1, 5353)
    assert len(stale) == 1 and "src=10.66.1.2 " in stale[0]  # DEL leaves it (both): replies come from the old pod
    rt.add(conf, "pmnew", netns.path(new), runtime_config=rc)
    assert udp_entries(n1, 5353) == []  # ADD deleted it
    srv = start_server(new, "new")
    try:
        assert udp_ask(n2, 4, "192.168.77.1", 5353, 40000) == "new 192.168.77.2"  # same 5-tuple, the new pod
    finally:
        stop(srv)
    entries = udp_entries(n1, 5353)
    assert len(entries) == 1 and "src=10.66.1.3 " in entries[0]
    rt.delete(conf, "pmnew", netns.path(new), runtime_config=rc)


# -- netlab's own guarantees ------------------------------------------------------


def fake_prev(i: int) -> dict:
    return {"cniVersion": "1.0.0", "ips": [{"address": f"10.66.1.{10 + i}/24"}, {"address": f"fd00:66::{10 + i:x}/64"}]}


def test_concurrent_adds_on_one_node_lose_nothing(nss, bindir, tmp_path):
    """Six exec'd ADDs at once in one node: each one's save -> restore holds the node's netns lock,
    so none declares (and so flushes) a shared chain another has just filled."""
    from concurrent.futures import ThreadPoolExecutor

    node, pod = nss.new("n"), nss.new("p")
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    conf = make_conf(OURS, str(tmp_path / "o"))

    def add(i: int) -> None:
        portmap_only(rt, conf, "ADD", f"ctr{i}", pod, fake_prev(i), {"portMappings": [
            {"hostPort": 8000 + i, "containerPort": 80, "protocol": "tcp"}]})

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(add, range(6)))
    for family in (4, 6):
        lines = nat(node, family)
        jumps = [l for l in lines if l.startswith("-A CNI-HOSTPORT-DNAT ")]
        assert sorted(j.split("--dports ")[1].split()[0] for j in jumps) == [str(8000 + i) for i in range(6)], family
        assert sum(1 for l in lines if l.startswith("-A PREROUTING ")) == 1
        assert sum(1 for l in lines if l.startswith("-A CNI-HOSTPORT-MASQ ")) == 1
        for i in range(6):
            assert f":{portmap.dn_chain('pmnet', f'ctr{i}')} - [0:0]" in lines


def test_repeated_add_rebuilds_the_chain_in_place(nss, bindir, tmp_path):
    """A second ADD with other ports: the pod's chain holds only the new rules and its jump stays
    where it was among the other pods' (the reference would keep the old rules beside the new)."""
    node, pod = nss.new("n"), nss.new("p")
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    conf = make_conf(OURS, str(tmp_path / "o"))
    for i in range(3):
        portmap_only(rt, conf, "ADD", f"ctr{i}", pod, fake_prev(i), {"portMappings": [
            {"hostPort": 8000 + i, "containerPort": 80, "protocol": "tcp"}]})
    portmap_only(rt, conf, "ADD", "ctr0", pod, fake_prev(0), {"portMappings": [
        {"hostPort": 9000, "containerPort": 90, "protocol": "udp"}, {"hostPort": 9001, "containerPort": 91, "protocol": "tcp"}]})
    lines = nat(node, 4)
    jumps = [l.split("--dports ")[1].split()[0] for l in lines if l.startswith("-A CNI-HOSTPORT-DNAT ")]
    assert jumps == ["9001", "9000", "8001", "8002"]  # tcp before udp, in the old jump's place
    ch = portmap.dn_chain("pmnet", "ctr0")
    assert [l.split(" --dport ")[1] for l in lines if l.startswith(f"-A {ch} ")] == [
        "9000 -j CNI-HOSTPORT-SETMARK", "9000 -j CNI-HOSTPORT-SETMARK", "9000 -j DNAT --to-destination 10.66.1.10:90",
        "9001 -j CNI-HOSTPORT-SETMARK", "9001 -j CNI-HOSTPORT-SETMARK", "9001 -j DNAT --to-destination 10.66.1.10:91"]


def test_missing_protocol_is_tcp(nss, bindir, tmp_path):
    """CONVENTIONS.md's portMappings default protocol; the reference 1.1.1 fails on it (iptables -p "")."""
    no_proto = [{"hostPort": 8080, "containerPort": 80}]
    ref = run_side(nss, bindir, tmp_path, {"pms": [dict(no_proto[0], protocol="tcp")]}, "r")
    ours = run_side(nss, bindir, tmp_path, {"pms": no_proto}, "o")
    assert ours == ref
    node, pod = nss.new("rx"), nss.new("px")
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    with pytest.raises(Exception):
        rt.add(make_conf(THEIRS, str(tmp_path / "rx")), "pmctr", netns.path(pod), runtime_config={"portMappings": no_proto})


def test_in_process_api_makes_the_same_rules_as_the_executable(nss, bindir, tmp_path):
    """The lab's path (cni.api, the node's namespace handed in as host_netns) and the exec'd one."""
    from cni import api

    rc = {"portMappings": MIXED}
    node, pod = nss.new("xn"), nss.new("xp")
    conf = make_conf(OURS, str(tmp_path / "x"), v6=True)
    Runtime(cni_path=[bindir, REF], host_netns=node).add(conf, "pmctr", netns.path(pod), runtime_config=rc)
    exec_rules = snapshot(node)
    inode, ipod = nss.new("in"), nss.new("ip")
    conf = make_conf(OURS, str(tmp_path / "i"), v6=True)
    prev = api.add(conf, container_id="pmctr", netns=netns.path(ipod), host_netns=inode, runtime_config=rc)
    assert snapshot(inode) == exec_rules
    api.check(conf, container_id="pmctr", netns=netns.path(ipod), prev_result=prev, host_netns=inode, runtime_config=rc)
    api.delete(conf, container_id="pmctr", netns=netns.path(ipod), host_netns=inode, runtime_config=rc)
    assert not [l for l in nat(inode, 4) + nat(inode, 6) if "CNI-DN-" in l]
    api.forget(inode)
