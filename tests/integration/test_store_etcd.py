"""EtcdStore against a real etcd server (Debian's etcd-server) on the loopback of a test namespace:
the shared store contract (tests/store_contract.py) plus etcd's own leases and compaction."""

from __future__ import annotations

import contextlib
import time

import pytest

from netlab import netns
from netlab.store import Compacted, open_store
from netlab.store_etcd import EtcdServer, EtcdStore
from tests.helpers import lab_leaks, unique
from tests.store_contract import *  # noqa: F403  (the contract's tests, collected here)
from tests.store_contract import check_watch_sees_writes_from


@contextlib.contextmanager
def running_etcd(prefix: str, data_dir: str, port: int = 2379):
    """Debian's etcd on the loopback of a namespace of its own, marked as that namespace's; all gone after."""
    name = unique(prefix)
    netns.create(name)
    srv = None
    try:
        srv = EtcdServer.start(name, data_dir, port=port, env={"NETLAB_LAB": name})
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        netns.remove(name)
        assert not lab_leaks(name) and not netns.exists(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_etcd("nltest-ovl-", str(tmp_path_factory.mktemp("etcd"))) as srv:
        yield srv


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
    store._call("kv/compaction", {"revision": store.revision(), "physical": True})
    fresh = EtcdStore(server.url)
    with pytest.raises(Compacted):
        fresh.events_since("/c", start)
    fresh.close()


def test_events_come_from_etcds_watch_without_a_round_trip(store, server):
    """A poller costs etcd nothing while nothing changes: events_since answers from the client's watch stream."""
    calls = []
    real = store._call
    store._call = lambda path, body: calls.append(path) or real(path, body)
    before = store.revision()
    store.put("/p/a", 1)
    events, rev = store.events_since("/p/", store.revision())  # starts the watch
    other = EtcdStore(server.url)
    try:
        other.put("/p/b", {"v": 2})
        other.put("/q/x", 1)  # another prefix: seen by the watch, not returned
        other.delete("/p/a")
        calls.clear()
        events, rev2 = store.events_since("/p/", rev)
        while rev2 < other.revision():  # the stream delivers within milliseconds
            more, rev2 = store.events_since("/p/", rev2)
            events += more
        assert [(e.type, e.key, e.value) for e in events] == [("PUT", "/p/b", {"v": 2}), ("DELETE", "/p/a", 1)]
        for _ in range(50):
            assert store.events_since("/p/", rev2) == ([], rev2)
        assert calls == []  # not one request to etcd for any of it
        # A caller that is behind the watch's start is answered from etcd itself (range reads).
        old, _ = store.events_since("/p/", before)
        assert "kv/range" in calls and {e.key for e in old} == {"/p/b"}
    finally:
        other.close()
        store._call = real


def test_the_watch_comes_back_after_etcd_restarts(tmp_path):
    with running_etcd("nltest-ovl-", str(tmp_path / "etcd"), port=23791) as srv:
        store = EtcdStore(srv.url)
        store.put("/r/a", 1)
        _, rev = store.events_since("/r/", store.revision())
        srv.proc.terminate()
        srv.proc.wait(10)
        from netlab.store_etcd import etcd_argv, wait_ready

        argv = etcd_argv(srv.proc.args[0], srv.data_dir, ["127.0.0.1"], 23791)
        with open(tmp_path / "etcd2.log", "ab") as log:
            srv.proc = netns.popen_in(srv.netns_name, argv, env={"NETLAB_LAB": srv.netns_name}, stdout=log, stderr=log)
        wait_ready(srv.url, 20, srv.proc.poll, lambda: "")
        store.put("/r/b", 2)
        deadline = time.monotonic() + 10
        seen = []
        while not seen:
            assert time.monotonic() < deadline, "the watch never came back"
            seen, rev = store.events_since("/r/", rev)
            time.sleep(0.05)
        assert [(e.type, e.key, e.value) for e in seen] == [("PUT", "/r/b", 2)]
        store.close()
        assert store._watch is None


def test_an_etcd_without_the_v3_prefix_is_asked_on_v3beta(store, server):
    """etcd 3.3 (Ubuntu 22.04's) serves the gateway as /v3beta only: a 404 on /v3 switches once."""
    import http.client

    real = http.client.HTTPConnection.request
    seen: list[str] = []

    def request(self, method, url, *a, **kw):
        seen.append(url)
        if url.startswith("/v3/"):  # as etcd 3.3 answers: no such path
            url = "/v3/no-such-path"
        return real(self, method, url, *a, **kw)

    fresh = EtcdStore(server.url)
    http.client.HTTPConnection.request = request
    try:
        fresh.put("/beta/a", {"v": 1})
        assert fresh.get("/beta/a").value == {"v": 1}
    finally:
        http.client.HTTPConnection.request = real
        fresh.close()
    assert fresh.api == "/v3beta"
    assert seen[0].startswith("/v3/") and all(u.startswith("/v3beta/") for u in seen[1:])
