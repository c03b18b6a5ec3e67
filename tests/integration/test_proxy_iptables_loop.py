"""The netlab-proxy process in a node namespace: sync loop, bad input, restarts, conntrack, HTTP.

Runs `python -m proxy --spec DIR` inside node-a of the packet-flow fabric,
edits the directory as `kubectl apply` would edit the API, and checks real
packets, iptables-save, /healthz, /metrics and /status.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys

import pytest

from netlab import netns
from proxy import iptables_apply
from proxy.iptables_apply import IptablesBackend
from tests import helpers
from tests.flow_lab import Fabric, check_flow, connect, flow_fabric
from tests.unit.test_proxy_iptables import _mutate
from tests.packet_flows import FLOWS, OBJECTS, PROXY_NODE, TOPOLOGY, flow_state

WEB = next(f for f in FLOWS if f.name == "clusterip-several-endpoints")
WEB_UDP = next(f for f in FLOWS if f.name == "clusterip-udp")


def wait_until(cond, timeout: float = 15.0, what: str = "condition"):
    """tests.helpers.wait_until with this file's bound: 15 s (a process starts and syncs in it)."""
    return helpers.wait_until(cond, timeout, what)


def http_get(ns: str, port: int, path: str) -> tuple[int, str] | None:
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        return None
    finally:
        s.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


class Proxy:
    """One netlab-proxy process in the node namespace; stop() ends exactly that PID."""

    def __init__(self, node_ns: str, spec_dir: str, log: str) -> None:
        self.node_ns, self.spec_dir, self.log = node_ns, spec_dir, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        node = TOPOLOGY.node(PROXY_NODE)
        argv = [sys.executable, "-m", "proxy", "--spec", self.spec_dir, "--node", node.name,
                "--node-ip", node.ip, "--cluster-cidr", TOPOLOGY.cluster_cidr,
                "--min-sync-period", "100ms", "--sync-period", "30s"]
        with open(self.log, "ab") as out:
            self.proc = netns.popen_in(self.node_ns, argv, stdout=out, stderr=out, cwd=os.getcwd())
        wait_until(lambda: (r := http_get(self.node_ns, 10256, "/healthz")) and r[0] == 200, what="healthz 200")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def status(self) -> dict:
        r = http_get(self.node_ns, 10256, "/status")
        assert r and r[0] == 200
        return json.loads(r[1])

    def metrics(self) -> str:
        r = http_get(self.node_ns, 10249, "/metrics")
        assert r and r[0] == 200
        return r[1]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest.fixture
def lab(tmp_path):
    with flow_fabric() as (_f, where):
        spec = tmp_path / "spec"
        spec.mkdir()
        (spec / "flows.yaml").write_text(OBJECTS)
        proxy = Proxy(where[PROXY_NODE], str(spec), str(tmp_path / "proxy.log"))
        try:
            yield where, spec, proxy
        finally:
            proxy.kill()


def save(where) -> str:
    return netns.run_in(where[PROXY_NODE], ["iptables-nft-save", "-t", "nat"], capture_output=True, text=True).stdout


def set_endpoints(spec, service: str, keep: list[str]) -> None:
    """Edit one service's slice in the spec file to keep only some pods (by IP)."""
    text = (spec / "flows.yaml").read_text()
    docs = text.split("\n---\n")
    out = []
    for d in docs:
        if f"name: {service}-flows" in d:
            head, _, eps = d.partition("endpoints:")
            items = [e for e in eps.split("\n- ") if e.strip()]
            kept = [e for e in items if any(ip in e for ip in keep)]
            d = head + "endpoints:" + ("".join("\n- " + e.lstrip("- ").rstrip("\n") for e in kept) or " []") + "\n"
        out.append(d)
    (spec / "flows.yaml").write_text("\n---\n".join(out))


def test_loop_serves_health_metrics_and_syncs_changes(lab):
    where, spec, proxy = lab
    proxy.start()
    check_flow(where, WEB)
    m = proxy.metrics()
    assert metric(m, 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"}') > 0
    assert metric(m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
    assert metric(m, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") >= 1
    # One endpoint goes: a partial sync removes it, and only it.
    a1 = TOPOLOGY.pod("a1").ip
    set_endpoints(spec, "web", [a1])
    wait_until(lambda: TOPOLOGY.pod("a2").ip + ":8080" not in
               "".join(l for l in save(where).splitlines() if '"default/web -> ' in l), what="a2 gone from web")
    replies = [connect(where[WEB.source], WEB) for _ in range(20)]
    assert {r.pod for r in replies} == {"a1"}
    assert metric(proxy.metrics(), "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") >= 1


def test_bad_input_keeps_the_last_good_rules_and_is_reported(lab):
    where, spec, proxy = lab
    proxy.start()
    before = save(where)
    # An invalid change to a working Service, and a file that is not YAML at all.
    text = (spec / "flows.yaml").read_text()
    (spec / "flows.yaml").write_text(text.replace("clusterIP: 10.96.0.10\n  ports: [{port: 80,",
                                                  "clusterIP: 10.96.0.10\n  ports: [{port: 70000,"))
    (spec / "broken.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: [unclosed\n")
    def reported():
        st = proxy.status()
        return st if len(st["invalidObjects"]) == 2 else None

    st = wait_until(reported, what="errors reported")
    errors = "\n".join(st["invalidObjects"].values())
    assert "spec.ports[0].port: must be between 1 and 65535, inclusive, got 70000" in errors
    assert "broken.yaml:4: not valid YAML" in errors  # PyYAML marks the end of the unclosed flow
    assert metric(proxy.metrics(), "netlab_proxy_invalid_objects") == 2
    check_flow(where, WEB)  # still served by its last good version

    def rules(t: str) -> list[str]:
        return sorted(l for l in t.splitlines() if l.startswith("-A"))
    assert rules(save(where)) == rules(before)


def test_killed_proxy_leaves_rules_and_restart_keeps_connections(lab):
    where, _spec, proxy = lab
    proxy.start()
    s = netns.socket_in(where[WEB.source], socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((WEB.dest_ip, WEB.dest_port))
        greeting = s.recv(4096).decode()
        assert greeting.split()[0] in ("a1", "a2")
        proxy.kill()
        assert "KUBE-SERVICES" in save(where)  # rules stay, as kube-proxy leaves them
        check_flow(where, WEB)  # new connections still work without the process
        proxy.start()  # converges with a full sync over the existing rules
        s.sendall(b"still here")
        assert s.recv(4096) == b"still here"
    finally:
        s.close()
    check_flow(where, WEB)


def test_stale_udp_entries_are_flushed_when_an_endpoint_goes(lab):
    where, spec, proxy = lab
    proxy.start()
    ns = where[WEB_UDP.source]
    # Find a client socket whose conntrack entry points at a2.
    sock = None
    for _ in range(200):
        s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"x", (WEB_UDP.dest_ip, WEB_UDP.dest_port))
        if s.recv(4096).decode().split()[0] == "a2":
            sock = s
            break
        s.close()
    assert sock is not None
    try:
        a1 = TOPOLOGY.pod("a1").ip
        set_endpoints(spec, "web-udp", [a1])
        wait_until(lambda: metric(proxy.metrics(), "netlab_proxy_stale_udp_flushes_total") >= 1, what="flush")
        # a2 still runs its server: without the flush, the old entry would still lead there.
        sock.sendto(b"x", (WEB_UDP.dest_ip, WEB_UDP.dest_port))
        assert sock.recv(4096).decode().split()[0] == "a1"
    finally:
        sock.close()


def saved_tables(ns: str, variant: str) -> str:
    """iptables-save of a namespace, without its timestamp comments and counters."""
    out = netns.run_in(ns, [f"iptables-{variant}-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", l) for l in out.splitlines() if not l.startswith("#"))


@pytest.mark.parametrize("variant, fetch_all", [("nft", False), ("nft", True), ("legacy", False)])
def test_partial_syncs_leave_the_tables_a_full_sync_writes(variant, fetch_all, monkeypatch):
    """Random partial syncs in the kernel, then: a full resync changes nothing, and a fresh
    namespace given one full sync of the same state saves to the same tables.

    `fetch_all`: every iptables-nft transaction starts with `-S`, as big ones do at 10k
    services (iptables_apply._fetch_all_first), including the first into an empty namespace.
    """
    if fetch_all:
        monkeypatch.setattr(iptables_apply, "FETCH_ALL_LINES", 0)
    rng = random.Random(5)
    f = Fabric()
    try:
        partial_ns, full_ns = f.ns("partial"), f.ns("full")
        backend = IptablesBackend(partial_ns, variant)
        state = flow_state()
        backend.sync(state, None)
        spare: dict = {}
        for _ in range(20):
            new = _mutate(rng, state, spare)
            assert not backend.sync(new, new.changed_from(state)).full
            state = new
        after_partials = saved_tables(partial_ns, variant)
        assert backend.sync(state, None).full
        assert saved_tables(partial_ns, variant) == after_partials
        IptablesBackend(full_ns, variant).sync(state, None)
        assert saved_tables(full_ns, variant) == after_partials
    finally:
        f.close()
