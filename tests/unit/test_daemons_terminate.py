"""daemons.terminate on real processes (no root, no namespaces): SIGTERM, the wait, SIGKILL.

The signals go through pidfds taken while each PID's start time still
matched, so a PID reused in between is never signalled; that race is not
reproducible here, only the behaviour around it."""

from __future__ import annotations

import subprocess
import sys
import time

from netlab import daemons

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def _started(code: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def test_a_process_that_ends_on_sigterm_ends_the_wait():
    procs = [_started(SLEEPER) for _ in range(3)]
    try:
        t = time.monotonic()
        daemons.terminate([p.pid for p in procs], grace=10)
        took = time.monotonic() - t
        assert all(daemons.start_time(p.pid) is None for p in procs)  # gone, reaped
        assert took < 2, took  # the exit ends the wait, not the 10 s grace
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_what_ignores_sigterm_is_killed_after_the_grace():
    p = _started(STUBBORN)
    try:
        t = time.monotonic()
        daemons.terminate([p.pid], grace=0.3)
        took = time.monotonic() - t
        assert daemons.start_time(p.pid) is None
        assert 0.3 <= took < 3, took
    finally:
        p.kill()
        p.wait()


def test_a_pid_that_is_gone_is_no_error():
    p = _started(SLEEPER)
    p.kill()
    p.wait()
    daemons.terminate([p.pid], grace=0.1)  # nothing to signal, nothing raised


def test_down_lists_the_labs_processes_again_until_none_is_left(monkeypatch):
    """A process a lab process started while the first list was being ended (the zygote forking the
    agents of an interrupted `up`) is found by the next list and ended too."""
    from netlab import lab

    lists = [[11, 12, 99], [13, 99], [99]]  # 13: forked by 12 meanwhile; 99: the etcd, kept for last
    ended = []
    monkeypatch.setattr(daemons, "lab_processes", lambda _lab: lists.pop(0) if lists else [99])
    monkeypatch.setattr(daemons, "terminate", lambda pids: ended.append(sorted(pids)))
    assert lab._end_lab_processes("nlunit", keep=99) == 3
    assert ended == [[11, 12], [13]]
