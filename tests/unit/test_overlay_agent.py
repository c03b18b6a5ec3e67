"""The agent loop without root: a fake kernel that applies diffs to an in-memory State."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from cni.overlay import lease as leases
from cni.overlay import plan
from cni.overlay.agent import Agent, AgentOptions
from netlab.store import FLANNEL_CONFIG, FLANNEL_SUBNETS, SqliteStore

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}


class FakeKernel:
    """Holds one node's overlay State; apply() mutates it as the real adapter would."""

    def __init__(self, ip: str = "192.168.56.11/24", mtu: int = 1500) -> None:
        self.ip, self.mtu = ip, mtu
        self.state = plan.State()
        self.applied: list[plan.Changes] = []

    def uplink(self, ifname: str):
        return (self.ip, self.mtu) if ifname == "eth0" else None

    def observe(self, conf, own_subnet):
        return self.state

    def apply(self, ch: plan.Changes) -> None:
        s = self.state
        device = None if ch.delete_device else s.device
        device = ch.create_device or ch.set_device or device
        fresh = ch.create_device is not None

        def upd(have, add, delete):
            base = frozenset() if fresh else have
            return (base - frozenset(delete)) | frozenset(add)

        self.state = plan.State(
            device,
            upd(s.addresses, ch.add_addresses, ch.del_addresses),
            upd(s.routes, ch.add_routes, ch.del_routes) if not fresh else frozenset(ch.add_routes),
            upd(s.neighbours, ch.add_neighbours, ch.del_neighbours),
            upd(s.fdb, ch.add_fdb, ch.del_fdb),
        )
        self.applied.append(ch)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "store.db"))
    s.put(FLANNEL_CONFIG, VXLAN)
    yield s
    s.close()


def run_agent(store, kernel, tmp_path, **opts):
    agent = Agent(AgentOptions(node="n1", subnet_file=str(tmp_path / "subnet.env"), poll=0.01, **opts),
                  store, kernel)
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    t.start()
    return agent, stop, t


def wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_agent_leases_writes_subnet_env_and_follows_peers(store, tmp_path):
    k = FakeKernel()
    agent, stop, t = run_agent(store, k, tmp_path)
    try:
        wait(lambda: k.state.device is not None)
        assert agent.status.lease.subnet == leases.IPv4Network("10.244.1.0/24")
        assert (tmp_path / "subnet.env").read_text().splitlines()[1:3] == ["FLANNEL_SUBNET=10.244.1.1/24",
                                                                          "FLANNEL_MTU=1450"]
        peer = leases.Lease(leases.IPv4Network("10.244.2.0/24"), leases.IPv4Address("192.168.56.12"), "vxlan", 1,
                            plan.vtep_mac("192.168.56.12", 1))
        store.put(peer.key, peer.to_json())
        wait(lambda: {r.dst for r in k.state.routes} == {"10.244.2.0/24"})
        store.delete(peer.key)
        wait(lambda: not k.state.routes and not k.state.fdb and not k.state.neighbours)
    finally:
        stop.set()
        t.join(5)


def test_agent_renews_its_lease_and_takes_it_back_when_lost(store, tmp_path):
    # Driven step by step: no timing, the renewal deadline is moved instead of waited for.
    agent = Agent(AgentOptions(node="n1", subnet_file=str(tmp_path / "subnet.env"), lease_ttl=3600), store,
                  FakeKernel())
    agent.conf = agent.wait_config(threading.Event())
    agent.node = agent.local_node()
    agent.acquire()
    agent.converge()
    key = agent.status.lease.key
    rev = store.get(key).mod_revision
    agent._renew_at = 0.0
    agent.step()
    assert agent.status.renewed == 1 and agent.status.acquired == 1
    assert store.get(key).mod_revision > rev and store.get(key).value == agent.status.lease.to_json()
    store.delete(key)  # deleted behind its back (or expired): the next step claims it again
    agent.step()
    assert agent.status.acquired == 2 and store.get(key).value == agent.status.lease.to_json()
    # Taken by another node meanwhile: renewal fails and the agent moves to a free subnet.
    store.put(key, dict(agent.status.lease.to_json(), PublicIP="192.168.56.99"))
    agent._rev = store.revision()  # as if that write had been seen already
    agent._renew_at = 0.0
    agent.step()
    assert agent.status.acquired == 3 and agent.status.lease.key != key
    assert store.get(agent.status.lease.key).value["PublicIP"] == "192.168.56.11"


def test_agent_restart_applies_nothing(store, tmp_path):
    k = FakeKernel()
    agent, stop, t = run_agent(store, k, tmp_path)
    wait(lambda: k.state.device is not None)
    stop.set()
    t.join(5)
    before = dataclasses.replace(k.state)
    k.applied.clear()
    agent2, stop2, t2 = run_agent(store, k, tmp_path)
    try:
        wait(lambda: agent2.status.converged_at > 0)
        assert k.applied == [] and k.state == before
        assert agent2.status.lease == agent.status.lease
    finally:
        stop2.set()
        t2.join(5)
    assert [kv.key for kv in store.list(FLANNEL_SUBNETS)[0]] == [agent.status.lease.key]


def test_agent_refuses_host_gw_behind_a_public_ip_not_on_the_uplink(store, tmp_path):
    """flannel's hostgw.New: a PublicIP other than the interface's address is a NAT host-gw cannot route to."""
    store.put(FLANNEL_CONFIG, {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
    agent = Agent(AgentOptions(node="n1", subnet_file=str(tmp_path / "subnet.env"), node_ip="203.0.113.7"), store,
                  FakeKernel())
    agent.conf = agent.wait_config(threading.Event())
    with pytest.raises(RuntimeError, match="not supported by host-gw backend"):
        agent.local_node()
    # vxlan takes it, as flannel's --public-ip: the VTEP's PublicIP, with the uplink's prefix.
    store.put(FLANNEL_CONFIG, VXLAN)
    agent.conf = agent.wait_config(threading.Event())
    assert str(agent.local_node().ip) == "203.0.113.7/24"
    agent.opts.node_ip = "192.168.56.11"  # the uplink's own address: host-gw is fine
    store.put(FLANNEL_CONFIG, {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
    agent.conf = agent.wait_config(threading.Event())
    assert str(agent.local_node().ip) == "192.168.56.11/24"
