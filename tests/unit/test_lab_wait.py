"""`up`'s wait for pods on the store's events (no kernel): phases, a failed sandbox, a compacted watch."""

from __future__ import annotations

import threading
import time

import pytest

from netlab import lab
from netlab.errors import NetlabError
from netlab.store import PODS, Compacted, SqliteStore


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


def put_pod(store, name: str, status: dict | None = None) -> None:
    body = {"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "node1"}}
    if status is not None:
        body["status"] = status
    store.put(f"{PODS}default/{name}", body)


def later(seconds: float, fn) -> threading.Thread:
    t = threading.Timer(seconds, fn)
    t.start()
    return t


def test_waits_for_every_pod_to_leave_pending_following_events(store):
    put_pod(store, "a", {"phase": "Running"})
    put_pod(store, "b")
    put_pod(store, "other")  # not waited for
    seen = []
    t = later(0.2, lambda: store.put_many({f"{PODS}default/b": {"metadata": {"name": "b", "namespace": "default"},
                                                                  "status": {"phase": "Running"}}}))
    phases = lab.wait_for_pods(store, {"default/a", "default/b"}, 10, lambda w, d, n: seen.append(d))
    t.join()
    assert phases == {"default/a": "Running", "default/b": "Running"}
    assert seen[0] == 1 and seen[-1] == 2


def test_a_pod_whose_sandbox_failed_fails_the_wait_with_the_kubelets_message(store):
    put_pod(store, "a")
    t = later(0.1, lambda: put_pod(store, "a", {"phase": "Pending", "reason": "FailedCreatePodSandBox",
                                                "message": "no IP addresses available in range set"}))
    with pytest.raises(NetlabError, match="pod default/a: sandbox failed: no IP addresses available"):
        lab.wait_for_pods(store, {"default/a"}, 10, None)
    t.join()


def test_a_deleted_pod_is_pending_again_and_the_timeout_returns_phases(store):
    put_pod(store, "a", {"phase": "Running"})
    put_pod(store, "b", {"phase": "Running"})
    store.delete(f"{PODS}default/b")
    t0 = time.monotonic()
    phases = lab.wait_for_pods(store, {"default/a", "default/b", "default/never"}, 0.3, None)
    assert phases == {"default/a": "Running", "default/b": "Pending", "default/never": "Pending"}
    assert time.monotonic() - t0 < 5


def test_a_compacted_watch_lists_again(store, monkeypatch):
    put_pod(store, "a")
    real = store.events_since
    calls = []

    def events_since(prefix, rev):
        calls.append(rev)
        if len(calls) == 1:
            put_pod(store, "a", {"phase": "Running"})  # written while the history is "gone"
            raise Compacted("revision is compacted")
        return real(prefix, rev)

    monkeypatch.setattr(store, "events_since", events_since)
    assert lab.wait_for_pods(store, {"default/a"}, 10, None) == {"default/a": "Running"}
    assert len(calls) == 1  # the relist saw it: no watch needed after


def test_also_runs_while_waiting(store):
    put_pod(store, "a")
    ticks = []
    t = later(0.3, lambda: put_pod(store, "a", {"phase": "Running"}))
    lab.wait_for_pods(store, {"default/a"}, 10, None, also=lambda: ticks.append(1))
    t.join()
    assert ticks


def test_every_runs_at_most_once_per_period():
    calls = []
    f = lab._every(60.0, lambda: calls.append(1))
    f()
    f()
    assert calls == [1]
