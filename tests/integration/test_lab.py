"""The lab fabric against the real kernel: namespaces, links, pods, packets, ownership."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netlab import daemons, lab, names, netns, statedir
from netlab.check import http_get, udp_ask
from tests.helpers import lab_leaks, wait_until
from tests.integration.conftest import pod

NETLAB = [sys.executable, "-m", "netlab.cli"]


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*NETLAB, *args], capture_output=True, text=True, timeout=120, **kw)


def pods_by_name(st: dict) -> dict[str, dict]:
    return {p["name"]: p for p in st["pods"]}


def test_up_builds_nodes_pods_and_serves(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2", pod("a", "node1") + pod("b", "node1") + pod("c", "node2"))
    res = labs.up(path)
    assert res.created and res.pods == 3
    st = lab.status(name)

    # Nodes: eth0 on the underlay with the node IP, and a Kubernetes node's sysctls.
    for n in st["nodes"]:
        with netns.iproute(n["netns"]) as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=eth0, family=2)]
        assert addrs == [n["ip"]]
        assert netns.read_sysctl(n["netns"], "net.ipv4.ip_forward") == "1"
        assert netns.read_sysctl(n["netns"], "net.bridge.bridge-nf-call-iptables") == "1"
    # The underlay bridge is in the lab's namespace, with one port per node.
    with netns.iproute(names.lab_netns(name)) as ipr:
        br = ipr.link_lookup(ifname="underlay")[0]
        ports = {l.get_attr("IFLA_IFNAME") for l in ipr.get_links() if l.get_attr("IFLA_MASTER") == br}
    assert ports == {"node1", "node2"}

    pods = pods_by_name(st)
    assert {p["phase"] for p in pods.values()} == {"Running"}
    a, b, c = pods["a"], pods["b"], pods["c"]
    node1 = next(n for n in st["nodes"] if n["name"] == "node1")
    import ipaddress

    assert ipaddress.ip_address(a["ip"]) in ipaddress.ip_network(node1["podCIDR"])
    # Pods: lo and eth0 only, eth0 holds the pod IP, default route via cni0's gateway.
    with netns.iproute(a["netns"]) as ipr:
        assert sorted(l.get_attr("IFLA_IFNAME") for l in ipr.get_links()) == ["eth0", "lo"]
        gw = [r.get_attr("RTA_GATEWAY") for r in ipr.get_routes(family=2) if r["dst_len"] == 0]
    assert gw == [str(ipaddress.ip_network(node1["podCIDR"])[1])]

    # Same-node TCP and UDP, answered by the built-in server with the real client address.
    assert http_get(a["netns"], b["ip"], "/hostname") == "b"
    assert http_get(a["netns"], b["ip"], "/clientip").split(":")[0] == a["ip"]
    assert http_get(a["netns"], b["ip"], "/echo?msg=hello") == "hello"
    assert udp_ask(a["netns"], b["ip"], "hostname") == "b"
    assert udp_ask(a["netns"], b["ip"], "clientip").split(":")[0] == a["ip"]
    # Node to its pod: the node reaches its pods over cni0 directly.
    assert http_get(node1["netns"], a["ip"], "/clientip").split(":")[0] == str(ipaddress.ip_network(node1["podCIDR"])[1])


def test_pod_reaches_its_node(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 1", pod("a"))
    labs.up(path)
    st = lab.status(name)
    node, a = st["nodes"][0], st["pods"][0]
    # A netexec in the node's namespace stands for a host-network server.
    srv = daemons.spawn(name, "node-netexec", node["netns"],
                        daemons.python_argv("netlab.netexec", "--netns", node["netns"], "--hostname", "node1"))
    try:
        wait_until(lambda: _answers(a["netns"], node["ip"]), what="node netexec")
        assert http_get(a["netns"], node["ip"], "/hostname") == "node1"
        assert http_get(a["netns"], node["ip"], "/clientip").split(":")[0] == a["ip"]
        assert udp_ask(a["netns"], node["ip"], "clientip").split(":")[0] == a["ip"]
    finally:
        daemons.terminate([srv])


def _answers(ns: str, ip: str) -> bool:
    try:
        http_get(ns, ip, "/hostname", timeout=0.5)
        return True
    except OSError:
        return False


def test_second_up_changes_nothing_and_says_so(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2\nclients: 1", pod("a") + pod("b"))
    labs.up(path)
    before = {n: netns.inode(n) for n in netns.list_names() if names.lab_of_netns(n) == name}
    pid = daemons.recorded_pid(name, lab.LABD)
    out = run_cli("up", "-f", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lab {name} is up to date: nothing changed"
    after = {n: netns.inode(n) for n in netns.list_names() if names.lab_of_netns(n) == name}
    assert before == after
    assert daemons.recorded_pid(name, lab.LABD) == pid


def test_a_second_up_repairs_what_was_changed_under_it(labs):
    """Upsert (principle 2): what is wrong in the fabric is put right and said, the rest is kept."""
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2", pod("a"))
    labs.up(path)
    node1, lab_ns = names.node_netns(name, "node1"), names.lab_netns(name)

    def ip(ns: str, *args: str) -> str:
        return netns.run_in(ns, ["ip", *args], capture_output=True, text=True, check=True).stdout

    ip(node1, "route", "del", "default")
    ip(node1, "addr", "flush", "dev", "eth0")
    ip(node1, "addr", "add", "192.168.56.77/24", "dev", "eth0")
    ip(node1, "link", "set", "eth0", "down")
    ip(lab_ns, "link", "set", "underlay", "mtu", "1400")
    ip(lab_ns, "link", "set", "node2", "nomaster")  # node2's underlay port
    res = lab.up([path])
    assert not res.created
    for change in ("bridge underlay mtu", "node1: eth0 up", "node1: eth0: 192.168.56.11/24",
                   "node1: default via 192.168.56.1", "node2: node2 on underlay"):
        assert change in res.changes, res.changes
    assert "192.168.56.77" not in ip(node1, "-4", "addr", "show", "dev", "eth0")
    assert ip(node1, "route", "show", "default").startswith("default via 192.168.56.1 dev eth0 proto static")
    assert "master underlay" in ip(lab_ns, "link", "show", "node2") and " mtu 1500 " in ip(lab_ns, "link", "show", "underlay")
    assert lab.up([path]).changes == []  # and now nothing is left to repair
    st = pods_by_name(lab.status(name))
    assert http_get(names.node_netns(name, "node2"), st["a"]["ip"], "/hostname") == "a"  # node2 -> node1 over the underlay


def test_node_agents_are_forks_of_one_zygote_that_look_started_alone(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 2", pod("a"))
    labs.up(path)
    agents = {d: daemons.recorded_pid(name, d) for d in ("flanneld-node1", "kube-proxy-node1", "flanneld-node2",
                                                          "kube-proxy-node2")}
    parents = set()
    for d, pid in agents.items():
        node = d.rsplit("-", 1)[1]
        with open(f"/proc/{pid}/cmdline") as f:
            argv = [a for a in f.read().split("\0") if a]
        assert argv[:3] == [sys.executable, "-m", "cni.overlay" if d.startswith("flanneld") else "proxy"], argv
        assert argv[argv.index("--node") + 1] == node
        assert os.readlink(f"/proc/{pid}/ns/net") == f"net:[{netns.inode(names.node_netns(name, node))}]"
        assert os.getsid(pid) == pid
        with open(f"/proc/{pid}/stat") as f:
            parents.add(int(f.read().rsplit(")", 1)[1].split()[1]))
        assert pid in daemons.lab_processes(name)
    (zygote,) = parents  # one parent for all four, itself the lab's, which reaps what ends
    with open(f"/proc/{zygote}/cmdline") as f:
        assert "netlab.zygote" in f.read().split("\0")
    assert zygote in daemons.lab_processes(name)
    with open(os.path.join(daemons.log_dir(name), "flanneld-node2.log")) as f:
        assert "lease 10.244.2.0/24" in f.read()
    # An agent that dies is gone at once (reaped), and the next `up` starts it again, alone.
    os.kill(agents["flanneld-node2"], signal.SIGKILL)
    wait_until(lambda: daemons.start_time(agents["flanneld-node2"]) is None, what="flanneld-node2 reaped")

    def zygote_log() -> str:
        with open(os.path.join(daemons.log_dir(name), "zygote.log")) as f:
            return f.read()

    # The zygote writes its line right after wait() returns, which is when /proc forgets the pid.
    ended = f"flanneld-node2 (pid {agents['flanneld-node2']}) ended: signal 9"
    wait_until(lambda: ended in zygote_log(), timeout=5, what=f"{ended!r} in zygote.log")
    res = labs.up(path)
    assert res.changes == ["daemon flanneld-node2"]
    assert daemons.alive(name, "flanneld-node2") and daemons.recorded_pid(name, "kube-proxy-node1") == agents["kube-proxy-node1"]
    st = lab.status(name)
    assert all(n["ready"] for n in st["nodes"])


def test_up_adds_and_prunes_pods(labs):
    name = labs.name()
    labs.up(labs.lab_yaml(name, "nodes: 1", pod("a") + pod("b")))
    old_b = pods_by_name(lab.status(name))["b"]["netns"]
    labs.up(labs.lab_yaml(name, "nodes: 1", pod("a") + pod("c")))
    st = pods_by_name(lab.status(name))
    assert set(st) == {"a", "c"}
    wait_until(lambda: not netns.exists(old_b), what="pod b's namespace removed")


def test_down_after_kill_9_of_up_midway(labs, tmp_path):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 3", "".join(pod(f"p{i}") for i in range(60)))
    proc = subprocess.Popen([*NETLAB, "up", "-f", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Midway: the fabric exists and some, but not all, pods have a sandbox.
        wait_until(lambda: sum(1 for n in netns.list_names() if n.startswith(f"netlab.{name}.node1.")) >= 3,
                   timeout=60, what="some pod sandboxes")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lab_leaks(name), "the interrupted up should have left a half-built lab to clean"
    out = run_cli("down", name)
    assert out.returncode == 0, out.stderr
    # The lab daemon was still building; down must have ended it and everything it made.
    assert lab_leaks(name) == []


def test_two_labs_side_by_side(labs):
    one, two = labs.name(), labs.name()
    labs.up(labs.lab_yaml(one, "nodes: 1", pod("a") + pod("b")))
    labs.up(labs.lab_yaml(two, "nodes: 1", pod("a") + pod("b")))
    # Each lab's state in memory (/run's tmpfs, or the lab's own where /run is on disk).
    assert all(statedir.in_memory(names.lab_dir(n)) for n in (one, two))
    lab.down(one)
    assert lab_leaks(one) == []
    st = pods_by_name(lab.status(two))
    assert http_get(st["a"]["netns"], st["b"]["ip"], "/hostname") == "b"


def test_concurrent_up_is_refused(labs):
    name = labs.name()
    path = labs.lab_yaml(name, "nodes: 1")
    os.makedirs(names.lab_dir(name), exist_ok=True)
    fd = os.open(os.path.join(names.lab_dir(name), "lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = run_cli("up", "-f", path)
    finally:
        os.close(fd)
    assert out.returncode == 1
    assert f"lab {name!r} is busy" in out.stderr
    assert not any(names.lab_of_netns(n) == name for n in netns.list_names())


BAD_INPUTS = [
    ("nodez: 2", "spec.nodez: unknown field 'nodez'"),
    ("nodes: [{name: UPPER}]", "spec.nodes[0].name: node name 'UPPER' is not a valid name"),
    ("nodes: [{name: nodenamewaytoolong}]", "more than 15"),
    ("nodes: [a, a]", "duplicate node name 'a'"),
    ("serviceCIDR: 10.244.0.0/16", "overlaps podNetwork.Network"),
    ("nodes: 3\npodNetwork: {Network: 10.244.0.0/23, SubnetLen: 24}", "has only 1 between SubnetMin and SubnetMax"),
]


@pytest.mark.parametrize("spec,message", BAD_INPUTS)
def test_bad_input_exits_2_and_creates_nothing(labs, spec, message):
    name = labs.name()
    path = labs.lab_yaml(name, spec)
    out = run_cli("up", "-f", path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and f"{path}:" in out.stderr
    assert lab_leaks(name) == []  # no namespace, process or state dir of this lab


def test_bad_pod_inputs_exit_2(labs):
    name = labs.name()
    cases = [
        (pod("a", "node7"), "which the lab does not have"),
        (pod("a") + pod("a"), "duplicate Pod default/a"),
        (pod("Bad_Name"), "pod name 'Bad_Name' is not valid"),
    ]
    for pods, message in cases:
        path = labs.lab_yaml(name, "nodes: 1", pods)
        out = run_cli("up", "-f", path)
        assert out.returncode == 2 and message in out.stderr, (message, out.stderr)
    full = "nodes: 1\npodNetwork: {Network: 10.244.0.0/16, SubnetLen: 29}"
    out = run_cli("up", "-f", labs.lab_yaml(name, full, "".join(pod(f"p{i}") for i in range(6))))
    assert out.returncode == 2 and "node node1 is full" in out.stderr
    assert lab_leaks(name) == []


def test_without_root_one_line_and_exit_1(labs):
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *NETLAB, "status"],
                         capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["netlab: netlab needs root to create and enter network namespaces: run it with sudo"]


def test_status_json_contract_exec_and_graph(labs):
    name = labs.name()
    labs.up(labs.lab_yaml(name, "nodes: 2\nclients: 1", pod("web-0", "node1") + pod("web-1", "node2")))
    out = run_cli("status", name, "-o", "json")
    st = json.loads(out.stdout)
    assert st["lab"] == name and st["services"] == []
    assert set(st["nodes"][0]) >= {"name", "netns", "ip", "podCIDR"}
    assert set(st["pods"][0]) >= {"namespace", "name", "node", "netns", "ip", "phase"}
    # Every netns works with `ip netns exec`.
    for item in st["nodes"] + st["pods"]:
        r = subprocess.run(["ip", "netns", "exec", item["netns"], "ip", "-o", "-4", "addr", "show", "eth0"],
                           capture_output=True, text=True)
        assert item["ip"] in r.stdout
    r = run_cli("exec", "-l", name, "default/web-1", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert r.returncode == 0 and pods_by_name(st)["web-1"]["ip"] in r.stdout
    for fmt, marker in (("table", "web-0"), ("wide", f"netlab.{name}.node1.default.web-0"), ("yaml", "podCIDR:")):
        r = run_cli("status", name, "-o", fmt)
        assert r.returncode == 0 and marker in r.stdout, r.stdout
    dot = run_cli("graph", name).stdout
    assert dot.startswith(f'graph "{name}"') and "default/web-0" in dot
    assert subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True).returncode == 0
    mer = run_cli("graph", name, "-o", "mermaid").stdout
    assert mer.startswith("flowchart TB") and "client client1" in mer


def test_restart_policies(labs):
    name = labs.name()
    pods = """
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: crash}
    spec:
      restartPolicy: Always
      containers: [{name: c, command: [sh, -c, "exit 3"]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: once}
    spec:
      restartPolicy: Never
      containers: [{name: c, command: [sh, -c, "exit 4"]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: job}
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, command: [sh, -c, "echo done"]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: sleeper}
    spec:
      containers: [{name: c, command: [sleep, "600"]}]
    """
    labs.up(labs.lab_yaml(name, "nodes: 1", pods))

    def phases():
        return {p["name"]: (p["phase"], p["restarts"]) for p in lab.status(name)["pods"]}

    wait_until(lambda: phases()["crash"][1] >= 2, timeout=15, what="crash to restart twice")
    wait_until(lambda: phases()["once"][0] == "Failed", what="Never pod to fail")
    wait_until(lambda: phases()["job"][0] == "Succeeded", what="OnFailure pod to succeed")
    assert phases()["sleeper"] == ("Running", 0)
    assert phases()["once"][1] == 0 and phases()["job"][1] == 0
    log = os.path.join(names.lab_dir(name), "logs", "pods", "default_job_c.log")
    assert open(log).read() == "done\n"


def _bystander(marker: str) -> subprocess.Popen:
    """A process marked NETLAB_LAB=<marker> with no lab behind it: a test bed's agent, another run's daemon."""
    return subprocess.Popen(["sleep", "120"], env={**os.environ, daemons.ENV_LAB: marker})


@pytest.mark.skipif(not (os.environ.get("CI") or os.environ.get("NETLAB_TEST_CLEANUP_ALL") == "1"),
                    reason="`netlab cleanup` without a lab removes every lab on this machine, other users' too:"
                           " runs in CI (CI=true, a machine of its own) or with NETLAB_TEST_CLEANUP_ALL=1")
def test_cleanup_removes_every_lab_and_nothing_else(labs):
    # Not to be run while others use this machine: it removes every lab here, theirs too.
    one, two = labs.name(), labs.name()
    labs.up(labs.lab_yaml(one, "nodes: 1", pod("a")))
    labs.up(labs.lab_yaml(two, "nodes: 1"))
    foreign = f"nltest-foreign-{one}"
    netns.create(foreign)
    bystander = _bystander(f"{one}-bed")
    try:
        out = run_cli("cleanup")
        assert out.returncode == 0, out.stderr
        assert lab_leaks(one) == [] and lab_leaks(two) == []
        assert netns.exists(foreign)
        assert bystander.poll() is None  # marked, but no lab of that name is here: not cleanup's
    finally:
        bystander.kill()
        bystander.wait()
        netns.remove(foreign)


def test_cleanup_of_one_lab_leaves_the_others(labs):
    one, two = labs.name(), labs.name()
    labs.up(labs.lab_yaml(one, "nodes: 1", pod("a")))
    labs.up(labs.lab_yaml(two, "nodes: 1", pod("a") + pod("b")))
    bystander = _bystander(f"{one}-bed")
    try:
        out = run_cli("cleanup", one)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{one}: removed ") and two not in out.stdout
        assert lab_leaks(one) == []
        assert bystander.poll() is None
        st = pods_by_name(lab.status(two))
        assert http_get(st["a"]["netns"], st["b"]["ip"], "/hostname") == "b"
        assert all(daemons.alive(two, d) for d in (lab.LABD, "flanneld-node1", "kube-proxy-node1"))
        out = run_cli("cleanup", one)
        assert out.returncode == 0 and out.stdout.strip() == "nothing to clean up"
    finally:
        bystander.kill()
        bystander.wait()


def test_two_real_ups_of_one_lab_race_and_one_is_refused(labs):
    """Two `netlab up` processes of the same lab at once: the second is refused, the first builds."""
    name = labs.name()
    pods = "".join(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\n" for i in range(30))
    path = labs.lab_yaml(name, "nodes: 2", pods)
    first = subprocess.Popen([*NETLAB, "up", "-f", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(names.lab_dir(name), "lock")

        def first_holds_the_lock() -> bool:
            # Read from /proc/locks, never by trying the lock (a probe holding it for a moment
            # could be what refuses the first up).
            if not os.path.exists(lock):
                return False
            ino = os.stat(lock).st_ino
            with open("/proc/locks") as f:
                return any(l.split()[1] == "FLOCK" and l.split()[4] == str(first.pid)
                           and l.split()[5].rsplit(":", 1)[1] == str(ino) for l in f)

        wait_until(first_holds_the_lock, timeout=30, what="the first up to take the lab's lock")
        second = run_cli("up", "-f", path)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"lab {name!r} is busy" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, out + err
    st = lab.status(name)
    assert len(st["pods"]) == 30 and {p["phase"] for p in st["pods"]} == {"Running"}


def test_exec_in_a_node_and_containers_run_in_their_pods_namespace(labs):
    name = labs.name()
    pods = """
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: where}
    spec:
      nodeName: node1
      containers: [{name: c, command: [sh, -c, "readlink /proc/self/ns/net; exec sleep 600"]}]
    """
    labs.up(labs.lab_yaml(name, "nodes: 1", pods))
    st = lab.status(name)
    node = st["nodes"][0]
    r = run_cli("exec", "-l", name, "node1", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert r.returncode == 0 and f" {node['ip']}/" in r.stdout, r.stdout + r.stderr
    pod = pods_by_name(st)["where"]
    want = f"net:[{os.stat(os.path.join('/run/netns', pod['netns'])).st_ino}]"
    log = os.path.join(names.lab_dir(name), "logs", "pods", "default_where_c.log")
    wait_until(lambda: os.path.exists(log) and "net:[" in open(log).read(), what="the container's first line")
    assert open(log).read().split()[0] == want  # the pod's namespace, not the node's nor the host's
    assert want != f"net:[{os.stat(os.path.join('/run/netns', node['netns'])).st_ino}]"
