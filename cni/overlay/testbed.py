"""A minimal multi-node bed for the overlay's integration tests and benchmark.

It builds only what the overlay needs around it, in namespaces it names
itself (``<name>``, ``<name>.<node>``, ``<name>.<node>.<pod>``): an L2
bridge ``underlay`` in the bed's namespace, per node an ``eth0`` on it
(MTU 1500, ip_forward on) and a ``cni0`` bridge addressed from the node's
subnet.env, and pods wired to cni0 as flannel's CNI (bridge + host-local)
would: eth0 with the next address, the subnet's .1 as default gateway and
FLANNEL_MTU. Agents run as separate processes (``python -m cni.overlay``)
inside their node namespace, marked with NETLAB_LAB=<name> and ended by PID.

The lab fabric (netlab/fabric.py) builds the same shape for real labs;
this bed keeps the overlay's tests independent of it and small.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from netlab import netns

from .subnet_file import read_values

UNDERLAY = "192.168.56.0/24"
# <linux/in.h>, not exported by Python's socket module.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_MTU = 14


def wait_for(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; raise TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Pod:
    name: str
    netns: str
    ip: IPv4Address


@dataclass
class BedNode:
    name: str
    netns: str
    ip: IPv4Interface
    subnet_file: str
    agent: subprocess.Popen | None = None
    pods: dict[str, Pod] = field(default_factory=dict)
    log: str = ""

    def subnet(self) -> IPv4Network | None:
        value = read_values(self.subnet_file).get("subnet")
        return IPv4Network(value) if value else None

    def mtu(self) -> int:
        return int(read_values(self.subnet_file)["mtu"])


class Testbed:
    __test__ = False  # not a pytest class
    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.workdir = workdir
        self.nodes: dict[str, BedNode] = {}
        netns.create(name)
        with netns.iproute(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="underlay", kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname="underlay")[0], state="up")

    # -- nodes ------------------------------------------------------------------

    def add_node(self, name: str, index: int, mtu: int = 1500) -> BedNode:
        ns = f"{self.name}.{name}"
        ip = IPv4Interface(f"{IPv4Network(UNDERLAY).network_address + 10 + index}/24")
        _plug(self.name, "underlay", name, ns, ip, mtu)
        netns.write_sysctl(ns, "net.ipv4.ip_forward", 1)
        node = BedNode(name, ns, ip, os.path.join(self.workdir, name, "subnet.env"))
        self.nodes[name] = node
        return node

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        self.stop_agent(node)
        for pod in list(node.pods.values()):
            netns.remove(pod.netns)
        netns.remove(node.netns)

    # -- agents -----------------------------------------------------------------

    def start_agent(self, node: BedNode, store_url: str, *extra: str, resync: float = 5.0) -> subprocess.Popen:
        argv = [
            sys.executable, "-m", "cni.overlay", "--store", store_url, "--node", node.name,
            "--node-ip", str(node.ip.ip), "--iface", "eth0", "--subnet-file", node.subnet_file,
            "--resync", str(resync), *extra,
        ]
        env = dict(os.environ, NETLAB_LAB=self.name, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([_repo_root(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        node.log = os.path.join(self.workdir, f"{node.name}.agent.log")
        os.makedirs(self.workdir, exist_ok=True)
        with open(node.log, "ab") as log:
            node.agent = netns.popen_in(node.netns, argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return node.agent

    def stop_agent(self, node: BedNode, sig: int = signal.SIGTERM) -> None:
        proc, node.agent = node.agent, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_lease(self, node: BedNode, timeout: float = 10.0) -> IPv4Network:
        def ready():
            if node.agent is not None and node.agent.poll() is not None:
                raise RuntimeError(f"agent of {node.name} exited {node.agent.returncode}: {self.agent_log(node)}")
            return node.subnet()

        return wait_for(ready, timeout, what=f"{node.name}'s subnet.env")

    def agent_log(self, node: BedNode) -> str:
        try:
            with open(node.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # -- pods -------------------------------------------------------------------

    def ensure_cni0(self, node: BedNode) -> IPv4Interface:
        """cni0 as flannel's CNI makes it: the subnet's .1, from subnet.env."""
        subnet = self.wait_lease(node)
        gw = IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        with netns.iproute(node.netns) as ipr:
            if not ipr.link_lookup(ifname="cni0"):
                ipr.link("add", ifname="cni0", kind="bridge")
                idx = ipr.link_lookup(ifname="cni0")[0]
                ipr.addr("add", index=idx, address=str(gw.ip), prefixlen=gw.network.prefixlen)
                ipr.link("set", index=idx, state="up")
        return gw

    def add_pod(self, node: BedNode, name: str, mtu: int | None = None) -> Pod:
        gw = self.ensure_cni0(node)
        mtu = mtu or node.mtu()
        ip = gw.ip + 1 + len(node.pods)
        ns = f"{node.netns}.{name}"
        host_if = f"veth{len(node.pods)}{name}"[:15]
        _plug(node.netns, "cni0", host_if, ns, IPv4Interface(f"{ip}/{gw.network.prefixlen}"), mtu)
        with netns.iproute(ns) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gw.ip))
        pod = Pod(name, ns, ip)
        node.pods[name] = pod
        return pod

    # -- teardown ---------------------------------------------------------------

    def namespaces(self) -> list[str]:
        return [n for n in netns.list_names() if n == self.name or n.startswith(self.name + ".")]

    def destroy(self) -> None:
        for node in list(self.nodes.values()):
            with contextlib.suppress(Exception):
                self.stop_agent(node)
        for ns in sorted(self.namespaces(), key=len, reverse=True):
            netns.remove(ns)
        self.nodes.clear()


def _plug(parent: str, bridge: str, port: str, child: str, ip: IPv4Interface, mtu: int) -> None:
    """A new namespace `child` whose eth0 (`ip`, `mtu`) is a veth to `bridge` in `parent`."""
    netns.create(child)
    with netns.iproute(parent) as ipr:
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": netns.path(child)})
        idx = ipr.link_lookup(ifname=port)[0]
        ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0], mtu=mtu, state="up")
    with netns.iproute(child) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=eth0, mtu=mtu, state="up")
        ipr.addr("add", index=eth0, address=str(ip.ip), prefixlen=ip.network.prefixlen)


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- traffic helpers (plain sockets inside pod namespaces) ------------------------


def icmp_echo(src_ns: str, dst: IPv4Address, timeout: float = 2.0, ident: int = 0x4E4C) -> IPv4Address:
    """One ICMP echo from namespace `src_ns`; returns the address the reply came from."""
    s = netns.socket_in(src_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.settimeout(timeout)
        payload = b"netlab-overlay"
        header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
        csum = _checksum(header + payload)
        s.sendto(header[:2] + csum.to_bytes(2, "big") + header[4:] + payload, (str(dst), 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, addr = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:]
            if icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                return IPv4Address(addr[0])
        raise TimeoutError(f"no echo reply from {dst}")
    finally:
        s.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_exchange(src: Pod, dst: Pod, port: int = 8080, data: bytes = b"hello over the overlay") -> str:
    """Connect src → dst:port, send `data`; returns the peer address the server saw."""
    srv = netns.socket_in(dst.netns, socket.AF_INET, socket.SOCK_STREAM)
    cli = netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((str(dst.ip), port))
        srv.listen(1)
        srv.settimeout(3)
        cli.settimeout(3)
        cli.connect((str(dst.ip), port))
        conn, peer = srv.accept()
        with conn:
            conn.settimeout(3)
            cli.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            assert got == data, f"tcp payload mangled: {got!r}"
            conn.sendall(got)
            assert cli.recv(65536) == data
        return peer[0]
    finally:
        cli.close()
        srv.close()


def udp_exchange(src: Pod, dst: Pod, port: int = 5353, size: int = 64, df: bool = False,
                 timeout: float = 2.0) -> tuple[str, int]:
    """One UDP datagram of `size` payload bytes src → dst; returns (peer seen, bytes received)."""
    srv = netns.socket_in(dst.netns, socket.AF_INET, socket.SOCK_DGRAM)
    cli = netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        srv.bind((str(dst.ip), port))
        srv.settimeout(timeout)
        if df:
            cli.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        cli.connect((str(dst.ip), port))
        cli.send(b"x" * size)
        data, peer = srv.recvfrom(65536)
        return peer[0], len(data)
    finally:
        cli.close()
        srv.close()
