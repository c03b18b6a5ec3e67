"""The embedded store: etcd v3 semantics over SQLite (the shared contract plus its own TTL and compaction)."""

import time

import pytest

from netlab.store import Compacted, SqliteStore, object_key
from tests.store_contract import *  # noqa: F403  (the contract's tests, collected here)
from tests.store_contract import check_watch_sees_writes_from


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


def test_ttl_expiry_becomes_delete_event(store):
    start = store.revision()
    store.put("/lease/x", {"ip": "1"}, ttl=0.05)
    assert store.get("/lease/x") is not None
    time.sleep(0.1)
    assert store.get("/lease/x") is None
    events, _ = store.events_since("/lease/", start)
    assert [e.type for e in events] == ["PUT", "DELETE"]


def test_watch_sees_writes_from_another_connection(store):
    check_watch_sees_writes_from(store, lambda: SqliteStore(store.path))


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
