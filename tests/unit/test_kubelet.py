"""The kubelet without a kernel: its sandbox journal (what a restarted kubelet must clean up), its fd limit,
its loop through store outages."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from netlab import kubelet, names
from netlab.kubelet import Journal, Kubelet
from netlab.store import Compacted
from netlab.store_etcd import EtcdError


def sb(i: int) -> SimpleNamespace:
    return SimpleNamespace(id=f"id{i}", key=f"default/p{i}", netns=f"ns{i}", node="node1")


def test_live_sandboxes_survive_a_new_journal(tmp_path):
    j = Journal(str(tmp_path))
    for i in range(3):
        j.added(sb(i))
    j.removed("id1")
    j.removed("id1")  # twice, and unknown ids: nothing to write
    j.removed("nope")
    j.close()
    again = Journal(str(tmp_path))
    assert sorted(e["id"] for e in again.read()) == ["id0", "id2"]
    assert {e["netns"] for e in again.read()} == {"ns0", "ns2"}
    assert len((tmp_path / Journal.NAME).read_text().splitlines()) == 4
    again.reset()
    assert again.read() == []
    again.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    j = Journal(str(tmp_path))
    j.added(sb(0))
    j.close()
    with open(tmp_path / Journal.NAME, "a") as f:
        f.write('{"op":"add","id":"id9","ke')
    assert [e["id"] for e in Journal(str(tmp_path)).read()] == ["id0"]


def test_removed_entries_are_compacted_away(tmp_path):
    j = Journal(str(tmp_path))
    j.added(sb(0))
    for i in range(1, 1200):
        j.added(sb(i))
        j.removed(f"id{i}")
    lines = (tmp_path / Journal.NAME).read_text().splitlines()
    assert len(lines) < 1000  # rewritten with the live entries once removals passed 1000
    assert [e["id"] for e in j.read()] == ["id0"]
    j.added(sb(5000))  # appends go to the new file
    assert sorted(e["id"] for e in j.read()) == ["id0", "id5000"]
    j.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    code = ("import resource; from netlab import kubelet; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "kubelet.raise_nofile(); s, h = resource.getrlimit(resource.RLIMIT_NOFILE); print(s == h or s == 1 << 20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


class FlakyStore:
    """A store whose list and watch fail while `errors` has entries (one error per call), then answer."""

    def __init__(self, list_errors=(), watch_errors=()) -> None:
        self.list_errors = list(list_errors)
        self.watch_errors = list(watch_errors)
        self.lists = 0
        self.calls: list[str] = []

    def list(self, prefix):
        self.calls.append("list")
        if self.list_errors:
            raise self.list_errors.pop(0)
        self.lists += 1
        return [], 1

    def events_since(self, prefix, revision):
        self.calls.append("watch")
        if self.watch_errors:
            raise self.watch_errors.pop(0)
        return [], revision


def run_until(k, done, limit: float = 10.0) -> None:
    """Run the kubelet until `done()`, then stop it; the kubelet must not end by itself before."""

    async def main():
        task = asyncio.ensure_future(k.run())
        t0 = time.monotonic()
        while not done():
            assert not task.done(), f"the kubelet ended: {task.exception()!r}"
            assert time.monotonic() - t0 < limit, "timed out"
            await asyncio.sleep(0.01)
        k.stop_event.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


@pytest.fixture
def quick(tmp_path, monkeypatch):
    """A kubelet's state under tmp_path, and short back-offs."""
    monkeypatch.setattr(names, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(kubelet, "STORE_BACKOFF_START", 0.01)
    monkeypatch.setattr(kubelet, "WATCH_POLL", 0.01)


def test_store_errors_in_the_watch_are_waited_out_then_everything_is_relisted(quick):
    errors = [EtcdError("etcd at 192.168.56.1:2379 unreachable"), Compacted("revision 1 is compacted"),
              sqlite3.OperationalError("database is locked"), RuntimeError("connection reset")]
    store = FlakyStore(watch_errors=errors)
    k = Kubelet("nllb-unit", store)
    run_until(k, lambda: not store.watch_errors and store.lists >= 2 * (len(errors) + 2))
    # Each failed watch was followed by a resync: nodes and pods listed again.
    fails = [i for i, c in enumerate(store.calls) if c == "watch"][: len(errors)]
    assert all(store.calls[i + 1] == "list" for i in fails)


def test_a_failing_sync_is_retried_with_a_growing_back_off(quick, monkeypatch):
    pauses = []
    store = FlakyStore(list_errors=[EtcdError("unreachable")] * 3)
    k = Kubelet("nllb-unit", store)
    real = k._pause

    async def pause(seconds):
        pauses.append(seconds)
        await real(seconds)

    monkeypatch.setattr(k, "_pause", pause)
    run_until(k, lambda: store.lists >= 2)
    assert pauses[:3] == [0.01, 0.02, 0.04]


def test_a_stopped_kubelet_does_not_wait_out_its_back_off(quick, monkeypatch):
    monkeypatch.setattr(kubelet, "STORE_BACKOFF_START", 60.0)
    store = FlakyStore(list_errors=[EtcdError("unreachable")] * 100)
    k = Kubelet("nllb-unit", store)
    t0 = time.monotonic()
    run_until(k, lambda: store.calls)
    assert time.monotonic() - t0 < 5
