"""EtcdStore against a real etcd server (Debian's etcd-server) on the loopback of a test namespace."""

from __future__ import annotations

import threading
import time

import pytest

from netlab import netns
from netlab.store import Compacted, open_store
from netlab.store_etcd import EtcdServer, EtcdStore
from tests.helpers import lab_leaks, unique


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


def test_put_get_revisions(store):
    r1 = store.put("/a/1", {"x": 1})
    r2 = store.put("/a/1", {"x": 2})
    kv = store.get("/a/1")
    assert r2 == r1 + 1
    assert kv.value == {"x": 2} and kv.mod_revision == r2 and kv.create_revision == r1
    assert store.get("/a/nope") is None


def test_list_is_prefix_scoped_and_sorted(store):
    for k in ("/a/2", "/a/1", "/ab/1", "/b/1"):
        store.put(k, k)
    items, rev = store.list("/a/")
    assert [kv.key for kv in items] == ["/a/1", "/a/2"]
    assert rev == store.revision()


def test_create_is_exclusive_and_update_is_cas(store):
    assert store.create("/lease", {"n": 1}) is not None
    assert store.create("/lease", {"n": 2}) is None
    kv = store.get("/lease")
    assert store.update("/lease", {"n": 3}, expect_revision=kv.mod_revision - 1) is None
    assert store.update("/lease", {"n": 3}, expect_revision=kv.mod_revision) is not None
    assert store.get("/lease").value == {"n": 3}
    assert store.update("/missing", {"n": 1}, expect_revision=1) is None


def test_delete_missing_is_success(store):
    assert store.delete("/nope") is False
    store.put("/x", 1)
    assert store.delete("/x") is True
    assert store.get("/x") is None
    store.put("/p/1", 1)
    store.put("/p/2", 2)
    assert store.delete_prefix("/p/") == 2


def test_events_since_put_delete_and_last_value(store, server):
    start = store.revision()
    store.put("/w/a", 1)
    store.put("/w/b", 1)
    store.put("/other", 1)
    events, rev = store.events_since("/w/", start)
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/w/a", 1), ("PUT", "/w/b", 1)]
    store.put("/w/b", 2)
    store.delete("/w/a")
    events, rev2 = store.events_since("/w/", rev)
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/w/b", 2), ("DELETE", "/w/a", 1)]
    assert store.events_since("/w/", rev2) == ([], rev2)
    # A fresh client (no cached snapshot) reads the same history from etcd itself.
    other = EtcdStore(server.url)
    events, _ = other.events_since("/w/", rev)
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/w/b", 2), ("DELETE", "/w/a", 1)]
    other.close()


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
    other = open_store(server.url)
    stop = threading.Event()
    seen = []
    since = store.revision()

    def watcher():
        for ev in store.watch("/k/", since, stop, poll_interval=0.01):
            seen.append(ev.key)
            if len(seen) == 2:
                stop.set()

    t = threading.Thread(target=watcher)
    t.start()
    other.put("/k/1", 1)
    other.put("/k/2", 2)
    t.join(timeout=5)
    stop.set()
    other.close()
    assert sorted(seen) == ["/k/1", "/k/2"]


def test_compaction_is_reported(store, server):
    start = store.revision()
    for i in range(5):
        store.put("/c", i)
    store._call("/v3/kv/compaction", {"revision": store.revision(), "physical": True})
    fresh = EtcdStore(server.url)
    with pytest.raises(Compacted):
        fresh.events_since("/c", start)
    fresh.close()
