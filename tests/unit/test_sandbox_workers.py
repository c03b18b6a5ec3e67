"""The kubelet's sandbox workers without a kernel: calls, errors, a worker's death, the parent's death, close."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from netlab.sandbox_workers import SandboxWorkers, WorkerError
from tests.helpers import wait_until


def whoami(x: int) -> tuple[int, int]:
    return os.getpid(), x * 2


def fail(x: int) -> None:
    raise ValueError(f"no sandbox for {x}")


def die() -> None:
    os._exit(3)


def unpicklable() -> object:
    return lambda: None


def slow(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def gone(pid: int) -> bool:
    """The process has exited and been reaped (no zombie left in the table)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def pool():
    p = SandboxWorkers.fork(2)
    yield p
    p.close()


def run(coro):
    return asyncio.run(coro)


def test_calls_run_in_the_workers_and_are_spread_over_them(pool):
    async def go():
        return await asyncio.gather(*(pool.call(whoami, i) for i in range(8)))

    out = run(go())
    assert [x for _pid, x in out] == [i * 2 for i in range(8)]  # replies in the caller's order
    assert {pid for pid, _x in out} == set(pool.pids) and os.getpid() not in pool.pids


def test_an_exception_comes_back_with_its_message_and_the_workers_traceback(pool):
    async def go():
        with pytest.raises(WorkerError) as e:
            await pool.call(fail, 7)
        return e.value

    err = run(go())
    assert str(err) == "no sandbox for 7" and err.kind == "ValueError"
    assert any("in sandbox worker" in n and "ValueError: no sandbox for 7" in n for n in err.__notes__)


def test_a_result_that_cannot_travel_is_an_error_and_the_worker_goes_on(pool):
    async def go():
        with pytest.raises(WorkerError, match="cannot send the result of unpicklable"):
            await pool.call(unpicklable)
        return await asyncio.gather(*(pool.call(whoami, i) for i in range(4)))

    assert len({pid for pid, _ in run(go())}) == 2


def test_a_worker_that_dies_fails_its_calls_and_the_other_one_takes_the_rest(pool):
    async def go():
        with pytest.raises(WorkerError, match="is gone"):
            await pool.call(die)
        return await asyncio.gather(*(pool.call(whoami, i) for i in range(4)))

    first = list(pool.pids)
    out = run(go())
    assert len(pool.pids) == 1 and {pid for pid, _ in out} == set(pool.pids) <= set(first)


def test_with_no_worker_left_calls_run_on_a_thread_of_this_process(pool):
    async def go():
        for _ in range(2):
            with pytest.raises(WorkerError):
                await pool.call(die)
        return await pool.call(whoami, 5)

    assert run(go()) == (os.getpid(), 10) and pool.pids == []


def test_close_lets_a_call_finish_then_reaps_every_worker():
    pool = SandboxWorkers.fork(2)
    pids = list(pool.pids)

    async def go():
        return await pool.call(whoami, 1)

    run(go())
    pool.close()
    assert all(gone(p) for p in pids)


def test_close_kills_a_worker_still_in_a_call_after_the_grace(monkeypatch):
    from netlab import sandbox_workers

    monkeypatch.setattr(sandbox_workers, "CLOSE_GRACE", 0.2)
    pool = SandboxWorkers.fork(1)
    (pid,) = pool.pids

    async def go():
        task = asyncio.ensure_future(pool.call(slow, 30))
        await asyncio.sleep(0.3)  # the call is running in the worker
        task.cancel()

    run(go())
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 5 and gone(pid)


def test_workers_end_with_their_parent(tmp_path):
    """labd killed with SIGKILL: its workers do not live on (PR_SET_PDEATHSIG), not even one in a long call."""
    script = textwrap.dedent("""
        import asyncio, time
        from netlab.sandbox_workers import SandboxWorkers
        from tests.unit.test_sandbox_workers import slow
        pool = SandboxWorkers.fork(2)
        async def start():
            for _ in range(2):
                asyncio.ensure_future(pool.call(slow, 60))  # both workers busy for a minute
            await asyncio.sleep(0.3)
        asyncio.run(start())
        print(*pool.pids, flush=True)
        time.sleep(60)
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(not gone(p) for p in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_until(lambda: all(gone(p) for p in pids), timeout=5, what="the workers to end with their parent")
