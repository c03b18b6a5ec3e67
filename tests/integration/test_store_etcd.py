"""EtcdStore against a real etcd server (Debian's etcd-server) on the loopback of a test namespace:
the shared store contract (tests/store_contract.py) plus etcd's own leases and compaction."""

from __future__ import annotations

import time

import pytest

from netlab import netns
from netlab.store import Compacted, open_store
from netlab.store_etcd import EtcdServer, EtcdStore
from tests.helpers import lab_leaks, unique
from tests.store_contract import *  # noqa: F403  (the contract's tests, collected here)
from tests.store_contract import check_watch_sees_writes_from


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    name = unique("nltest-ovl-")
    netns.create(name)
    srv = None
    try:
        srv = EtcdServer.start(name, str(tmp_path_factory.mktemp("etcd")), env={"NETLAB_LAB": name})
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        netns.remove(name)
        assert not lab_leaks(name) and not netns.exists(name)


@pytest.fixture
def store(server):
    s = open_store(server.url)
    assert isinstance(s, EtcdStore)
    s.delete_prefix("/")
    yield s
    s.close()


def test_a_fresh_client_reads_history_from_etcd(store, server):
    """No cached snapshot: what changed since a revision comes from etcd itself."""
    store.put("/w/a", 1)
    store.put("/w/b", 1)
    since = store.revision()
    store.put("/w/b", 2)
    store.delete("/w/a")
    other = EtcdStore(server.url)
    try:
        events, _ = other.events_since("/w/", since)
    finally:
        other.close()
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/w/b", 2), ("DELETE", "/w/a", 1)]


def test_ttl_is_an_etcd_lease(store):
    put_rev = store.put("/lease/x", {"ip": "1"}, ttl=1)
    assert store.get("/lease/x") is not None
    deadline = time.monotonic() + 15  # etcd rounds short TTLs up to its minimum (~2 s)
    while store.get("/lease/x") is not None:
        assert time.monotonic() < deadline, "etcd never expired the lease"
        time.sleep(0.1)
    events, _ = store.events_since("/lease/", put_rev)
    assert [(e.type, e.key, e.value) for e in events] == [("DELETE", "/lease/x", {"ip": "1"})]
    assert store.create("/lease/y", 1, ttl=30) is not None


def test_watch_sees_writes_from_another_connection(store, server):
    check_watch_sees_writes_from(store, lambda: open_store(server.url))


def test_compaction_is_reported(store, server):
    start = store.revision()
    for i in range(5):
        store.put("/c", i)
    store._call("/v3/kv/compaction", {"revision": store.revision(), "physical": True})
    fresh = EtcdStore(server.url)
    with pytest.raises(Compacted):
        fresh.events_since("/c", start)
    fresh.close()
