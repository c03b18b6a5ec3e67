"""Worker processes that make and remove pod sandboxes for the kubelet.

A sandbox is some sixty system calls (unshare, a bind mount, netlink to
the node's and the pod's namespaces, host-local's files) with a little
Python between each. On threads of labd, every one of those calls hands
the GIL to another thread and takes it back: profiled in a 1000-pod build,
labd's sandbox threads spent about half their time waiting for the GIL,
and a fifth of labd's CPU went to the wake-ups and context switches of
those hand-offs. A container runtime does not have this problem because
every CNI call is a process of its own; here each worker is a process with
one thread, so the workers run side by side on every core.

The workers are forked from labd before it starts any thread (a fork
copies only the calling thread: a lock another thread held at that moment
would stay held in the child forever), after the CNI plugins were
imported, so a worker costs a fork and shares labd's pages. Each runs one
call at a time, in order; the parent sends a worker its next call before
the current one ends, so a worker does not wait for labd's event loop to
hand it work.

A call is a module-level function and its arguments (pickled by
reference, as multiprocessing sends them); an exception in the worker
comes back as a WorkerError with the same message, its traceback attached
as a note. A worker ends with labd (PR_SET_PDEATHSIG) and when its socket
closes. A worker that dies fails the calls it held (the kubelet retries
those pods, as after any failed sandbox); the pool goes on with the others,
and with none left it runs calls on a thread of labd.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from cni.daemon import read_exact
from netlab import daemons

log = logging.getLogger("netlab.sandbox_workers")

_LEN = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1
# At close, how long a worker may take to finish the call it is in before it is killed.
CLOSE_GRACE = 2.0


class WorkerError(Exception):
    """An exception raised by a call in a worker (or the worker's death), with the same message."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


# -- the worker's side ----------------------------------------------------------------


def _answer(fn: Callable, args: tuple) -> bytes:
    try:
        reply: tuple = (True, fn(*args))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
        reply = (False, (str(e), type(e).__name__, traceback.format_exc()))
    try:
        return pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - a result that cannot travel is an error of the call
        return pickle.dumps((False, (f"cannot send the result of {fn.__name__}: {e}", type(e).__name__, "")))


def serve(sock: socket.socket) -> None:
    """The worker's loop: one call after the other, until its socket closes."""
    while True:
        try:
            body = read_exact(sock, _LEN.unpack(read_exact(sock, _LEN.size))[0])
        except EOFError:  # the pool closed its end
            return
        fn, args = pickle.loads(body)
        out = _answer(fn, args)
        sock.sendall(_LEN.pack(len(out)) + out)


def _become_worker(sock: socket.socket, parent: int, others: list[socket.socket]) -> None:
    """In a fresh fork: serve calls until the parent goes, then exit without running the parent's exit handlers."""
    status = 0
    try:
        for s in others:
            s.close()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was asked for
            os._exit(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is labd's to handle
        serve(sock)
    except BaseException:  # noqa: BLE001 - the traceback on labd's log, then exit
        traceback.print_exc()
        status = 1
    os._exit(status)


# -- the parent's side ----------------------------------------------------------------


@dataclass
class _Worker:
    pid: int
    sock: socket.socket
    pending: collections.deque = field(default_factory=collections.deque)
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task | None = None  # held: the event loop keeps only a weak reference to a task
    alive: bool = True


class SandboxWorkers:
    """The pool: calls spread over the workers, each call's reply awaited on the event loop (no threads)."""

    def __init__(self, workers: list[_Worker]) -> None:
        self._workers = workers
        self._started: asyncio.Future | None = None
        self._fallback: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def fork(cls, n: int) -> "SandboxWorkers":
        """Fork `n` workers. Call it while this process has a single thread (see the module's docstring)."""
        gc.collect()
        gc.freeze()  # the objects so far are never collected: the workers' collections do not copy their pages
        parent = os.getpid()
        workers: list[_Worker] = []
        try:
            for _ in range(n):
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                pid = os.fork()
                if pid == 0:
                    _become_worker(theirs, parent, [mine, *(w.sock for w in workers)])
                theirs.close()
                workers.append(_Worker(pid, mine))
        except BaseException:
            cls(workers).close()
            raise
        finally:
            gc.unfreeze()
        return cls(workers)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.alive]

    async def _start(self) -> None:
        for w in self._workers:
            reader, w.writer = await asyncio.open_unix_connection(sock=w.sock)
            w.reader_task = asyncio.ensure_future(self._read_replies(w, reader))

    async def _read_replies(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(_LEN.size)
                ok, value = pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))
                fut = w.pending.popleft()
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    message, kind, tb = value
                    err = WorkerError(message, kind)
                    if tb:
                        err.add_note(f"in sandbox worker {w.pid}:\n{tb.rstrip()}")
                    fut.set_exception(err)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self._lost(w, f"sandbox worker {w.pid} is gone ({type(e).__name__})")

    def _lost(self, w: _Worker, why: str) -> None:
        if not w.alive:
            return
        w.alive = False
        log.error("%s; %d call(s) it held fail, the other workers go on", why, len(w.pending))
        while w.pending:
            fut = w.pending.popleft()
            if not fut.done():
                fut.set_exception(WorkerError(why, "WorkerLost"))
        if w.writer is not None:
            w.writer.close()

    async def call(self, fn: Callable, *args: Any) -> Any:
        """Run fn(*args) in the least busy worker (a thread of this process if none is left)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)  # the first calls all wait for one start
        alive = [w for w in self._workers if w.alive]
        if not alive:
            if self._fallback is None:
                self._fallback = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sandbox")
            return await asyncio.get_running_loop().run_in_executor(self._fallback, fn, *args)
        w = min(alive, key=lambda x: len(x.pending))
        body = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
        fut = asyncio.get_running_loop().create_future()
        w.pending.append(fut)
        try:
            w.writer.write(_LEN.pack(len(body)) + body)
            await w.writer.drain()
        except (ConnectionError, OSError) as e:
            self._lost(w, f"sandbox worker {w.pid} cannot be reached ({e})")
        return await fut

    def close(self) -> None:
        """End the workers (their socket closes: each finishes its call and exits) and reap them.

        Called once the event loop that awaited the calls has ended (labd's last step).
        """
        held: dict[int, int] = {}  # pidfd -> pid: our unreaped children, so no PID is reused under us
        for w in self._workers:
            w.sock.close()  # the reader's transport holds this same socket; its loop has ended
            w.alive = False
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                if os.waitpid(w.pid, os.WNOHANG)[0] == 0:  # not reaped yet (a dead worker may be)
                    held[os.pidfd_open(w.pid)] = w.pid
        daemons.wait_exits(held, time.monotonic() + CLOSE_GRACE)  # reaps each as it exits
        for fd, pid in held.items():  # still in a call after the grace: its sandbox is in the journal
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
        if self._fallback is not None:
            self._fallback.shutdown(wait=False)
