"""The embedded store: etcd v3 semantics over SQLite."""

import threading
import time

import pytest

from netlab.store import Compacted, SqliteStore, object_key


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


def test_put_get_revisions(store):
    r1 = store.put("/a/1", {"x": 1})
    r2 = store.put("/a/1", {"x": 2})
    kv = store.get("/a/1")
    assert r2 == r1 + 1
    assert kv.value == {"x": 2} and kv.mod_revision == r2 and kv.create_revision == r1


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


def test_delete_missing_is_success(store):
    assert store.delete("/nope") is False
    store.put("/x", 1)
    assert store.delete("/x") is True
    assert store.get("/x") is None


def test_events_replay_and_delete_carries_last_value(store):
    start = store.revision()
    store.put("/w/a", 1)
    store.put("/other", 1)
    store.delete("/w/a")
    events, _ = store.events_since("/w/", start)
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/w/a", 1), ("DELETE", "/w/a", 1)]


def test_ttl_expiry_becomes_delete_event(store):
    start = store.revision()
    store.put("/lease/x", {"ip": "1"}, ttl=0.05)
    assert store.get("/lease/x") is not None
    time.sleep(0.1)
    assert store.get("/lease/x") is None
    events, _ = store.events_since("/lease/", start)
    assert [e.type for e in events] == ["PUT", "DELETE"]


def test_watch_sees_writes_from_another_connection(store, tmp_path):
    other = SqliteStore(store.path)
    stop = threading.Event()
    seen = []

    def watcher():
        for ev in store.watch("/k/", store.revision(), stop, poll_interval=0.01):
            seen.append(ev.key)
            if len(seen) == 2:
                stop.set()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.05)
    other.put("/k/1", 1)
    other.put("/k/2", 2)
    t.join(timeout=5)
    stop.set()
    other.close()
    assert seen == ["/k/1", "/k/2"]


def test_compaction_is_reported(tmp_path):
    s = SqliteStore(str(tmp_path / "c.db"), keep_events=10)
    for i in range(1000):
        s.put("/c", i)
    with pytest.raises(Compacted):
        s.events_since("/", 5)
    s.close()


def test_object_keys_follow_the_api_server_layout():
    assert object_key("Pod", "default", "web-0") == "/registry/pods/default/web-0"
    assert object_key("Service", "default", "web") == "/registry/services/specs/default/web"
    assert object_key("Node", None, "node1") == "/registry/minions/node1"
