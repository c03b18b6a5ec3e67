"""Store.modify_many: read-modify-write of many keys (SQLite: one transaction; the default: get + CAS)."""

from __future__ import annotations

import pytest

from netlab.store import PODS, SqliteStore, Store


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


@pytest.mark.parametrize("impl", ["sqlite", "default"])
def test_writes_changed_keys_and_skips_absent_and_unchanged(store, impl):
    for i in range(3):
        store.put(f"{PODS}default/p{i}", {"metadata": {"name": f"p{i}"}})
    before = store.revision()
    modify = store.modify_many if impl == "sqlite" else (lambda ch: Store.modify_many(store, ch))
    out = modify({
        f"{PODS}default/p0": lambda v: dict(v, status={"phase": "Running"}),
        f"{PODS}default/p1": lambda v: None,  # nothing to change
        f"{PODS}default/gone": lambda v: dict(v, status={"phase": "Running"}),  # never created
        f"{PODS}default/p2": lambda v: dict(v, status={"phase": "Failed"}),
    })
    assert sorted(out) == [f"{PODS}default/p0", f"{PODS}default/p2"]
    assert store.get(f"{PODS}default/gone") is None
    assert store.get(f"{PODS}default/p0").value["status"] == {"phase": "Running"}
    assert "status" not in store.get(f"{PODS}default/p1").value
    kv = store.get(f"{PODS}default/p2")
    assert kv.mod_revision == out[kv.key] and kv.create_revision <= before
    events, _ = store.events_since(PODS, before)
    assert [(e.type, e.key) for e in events] == [("PUT", f"{PODS}default/p0"), ("PUT", f"{PODS}default/p2")]
    assert store.revision() == before + 2


def test_one_transaction_sees_each_value_once(store):
    store.put("/a", {"n": 1})
    seen = []

    def bump(v):
        seen.append(v["n"])
        return {"n": v["n"] + 1}

    store.modify_many({"/a": bump})
    assert seen == [1] and store.get("/a").value == {"n": 2}
    assert store.modify_many({}) == {}


@pytest.mark.parametrize("impl", ["sqlite", "default"])
def test_put_many_creates_and_replaces_with_one_event_each(store, impl):
    store.put(f"{PODS}default/p0", {"v": 0})
    created = store.get(f"{PODS}default/p0").create_revision
    before = store.revision()
    put_many = store.put_many if impl == "sqlite" else (lambda items: Store.put_many(store, items))
    out = put_many({f"{PODS}default/p{i}": {"v": i + 10} for i in range(3)})
    assert sorted(out) == [f"{PODS}default/p{i}" for i in range(3)]
    assert store.revision() == before + 3
    kv = store.get(f"{PODS}default/p0")
    assert kv.value == {"v": 10} and kv.create_revision == created and kv.mod_revision == out[kv.key]
    assert store.get(f"{PODS}default/p2").create_revision == out[f"{PODS}default/p2"]
    events, _ = store.events_since(PODS, before)
    assert [(e.type, e.key, e.value) for e in events] == [("PUT", f"{PODS}default/p{i}", {"v": i + 10}) for i in range(3)]
    assert put_many({}) == {}


def test_put_many_is_one_transaction(store, monkeypatch):
    commits = []
    real = store._write
    monkeypatch.setattr(store, "_write", lambda fn: commits.append(1) or real(fn))
    store.put_many({f"{PODS}default/p{i}": {"v": i} for i in range(100)})
    assert len(commits) == 1
