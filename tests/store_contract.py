"""The store contract: etcd v3 semantics every Store backend must keep.

Each backend's test module provides a `store` fixture (an empty store) and
imports these tests, so the embedded SQLite store and the etcd client are
held to the same cases; backend-only behaviour (TTL mechanics, compaction,
a second client) stays in the backend's own module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from netlab.store import Store

__all__ = [
    "test_put_get_revisions",
    "test_list_is_prefix_scoped_and_sorted",
    "test_create_is_exclusive_and_update_is_cas",
    "test_delete_missing_is_success",
    "test_events_since_put_delete_and_last_value",
]


def test_put_get_revisions(store: Store) -> None:
    r1 = store.put("/a/1", {"x": 1})
    r2 = store.put("/a/1", {"x": 2})
    kv = store.get("/a/1")
    assert r2 == r1 + 1
    assert kv.value == {"x": 2} and kv.mod_revision == r2 and kv.create_revision == r1
    assert store.get("/a/nope") is None


def test_list_is_prefix_scoped_and_sorted(store: Store) -> None:
    for k in ("/a/2", "/a/1", "/ab/1", "/b/1"):
        store.put(k, k)
    items, rev = store.list("/a/")
    assert [kv.key for kv in items] == ["/a/1", "/a/2"]
    assert rev == store.revision()


def test_create_is_exclusive_and_update_is_cas(store: Store) -> None:
    assert store.create("/lease", {"n": 1}) is not None
    assert store.create("/lease", {"n": 2}) is None
    kv = store.get("/lease")
    assert store.update("/lease", {"n": 3}, expect_revision=kv.mod_revision - 1) is None
    assert store.update("/lease", {"n": 3}, expect_revision=kv.mod_revision) is not None
    assert store.get("/lease").value == {"n": 3}
    assert store.update("/missing", {"n": 1}, expect_revision=1) is None


def test_delete_missing_is_success(store: Store) -> None:
    assert store.delete("/nope") is False
    store.put("/x", 1)
    assert store.delete("/x") is True
    assert store.get("/x") is None
    store.put("/p/1", 1)
    store.put("/p/2", 2)
    assert store.delete_prefix("/p/") == 2


def test_events_since_put_delete_and_last_value(store: Store) -> None:
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


def check_watch_sees_writes_from(store: Store, open_other: Callable[[], Store]) -> None:
    """A watcher sees writes made through another client, in order."""
    other = open_other()
    stop = threading.Event()
    seen: list[str] = []
    since = store.revision()

    def watcher() -> None:
        for ev in store.watch("/k/", since, stop, poll_interval=0.01):
            seen.append(ev.key)
            if len(seen) == 2:
                stop.set()

    t = threading.Thread(target=watcher)
    t.start()
    try:
        other.put("/k/1", 1)
        other.put("/k/2", 2)
        t.join(timeout=5)
    finally:
        stop.set()
        other.close()
    assert seen == ["/k/1", "/k/2"]
