"""Processes netlab starts: spawned inside a namespace, marked, recorded, ended by PID.

Principle 3: every process carries ``NETLAB_LAB=<lab>`` in its environment
(inherited by its children), and its PID with the kernel's start time is
recorded under /run/netlab/<lab>/pids/, so `down` ends exactly the lab's
processes (a recycled PID has another start time) and nothing else, unlike
Mininet's `mn -c` which kills by broad pattern.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

from netlab import names, netns

ENV_LAB = "NETLAB_LAB"
ENV_DAEMON = "NETLAB_DAEMON"
# How long `terminate` waits for an ended process's parent (not us) to reap it.
REAP_WAIT = 0.2
# How long a zygote may take to import its modules and fork every daemon.
ZYGOTE_TIMEOUT = 60.0


def pid_dir(lab: str) -> str:
    return os.path.join(names.lab_dir(lab), "pids")


def log_dir(lab: str) -> str:
    return os.path.join(names.lab_dir(lab), "logs")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def env_for(lab: str, daemon: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_LAB] = lab
    if daemon:
        env[ENV_DAEMON] = daemon
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn(lab: str, daemon: str, netns_name: str, argv: list[str]) -> int:
    """Start a detached daemon in `netns_name`, log to logs/<daemon>.log, record its PID."""
    os.makedirs(pid_dir(lab), exist_ok=True)
    os.makedirs(log_dir(lab), exist_ok=True)
    log = open(os.path.join(log_dir(lab), f"{daemon}.log"), "ab")
    try:
        proc = netns.popen_in(
            netns_name, argv, env=env_for(lab, daemon), stdin=open(os.devnull, "rb"), stdout=log, stderr=log,
            close_fds=True, cwd="/",
        )
    finally:
        log.close()
    _record(lab, daemon, proc.pid)
    # Detached (own session), but still our child while we live: keep it to reap it.
    _children.append(proc)
    reap()
    return proc.pid


def spawn_many(lab: str, daemons: list[tuple[str, str, list[str]]], preload: tuple[str, ...] = ()) -> dict[str, int]:
    """Start several `python -m` daemons as forks of one zygote (netlab.zygote) that imported `preload` once.

    Each entry is (daemon, netns, argv), as `spawn` takes them; each daemon
    logs to logs/<daemon>.log and has its PID recorded, as with `spawn`.
    """
    if not daemons:
        return {}
    with Zygote(lab, daemons[0][1], preload, [argv for *_, argv in daemons]) as zygote:
        zygote.fork(daemons)
        return zygote.started()


class Zygote:
    """A zygote (netlab.zygote) started ahead: it imports `preload` while the caller works, and forks when told.

    `fork(daemons)` hands it the daemons (each (daemon, netns, argv), the
    argv among `argvs` given at start, which size its argv area);
    `started()` records their PIDs and starts alone any daemon the zygote
    did not fork (it failed). It runs in namespace `netns_name` (it touches
    no network: each fork enters its own). Leaving the `with` block without
    `fork` ends it, forking nothing; with no `argvs`, none is started.
    """

    def __init__(self, lab: str, netns_name: str, preload: tuple[str, ...], argvs: list[list[str]]) -> None:
        import subprocess

        from netlab import zygote

        self.lab = lab
        self.daemons: list[tuple[str, str, list[str]]] = []
        self.proc = None
        os.makedirs(pid_dir(lab), exist_ok=True)
        os.makedirs(log_dir(lab), exist_ok=True)
        self.log_path = os.path.join(log_dir(lab), "zygote.log")
        if not argvs:
            return  # nothing to fork: no zygote
        argv = [sys.executable, "-m", "netlab.zygote", f"{zygote.PRELOAD_FLAG}={','.join(preload)}", zygote.pad_argv(argvs)]
        with open(self.log_path, "ab") as log:
            try:
                self.proc = netns.popen_in(netns_name, argv, env=env_for(lab, "zygote"), stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=log, close_fds=True, cwd="/")
            except OSError as e:
                log.write(f"netlab: no zygote ({e}); each daemon starts alone\n".encode())
                return
        _children.append(self.proc)  # it stays, as the daemons' parent: reaped when it ends

    def fork(self, daemons: list[tuple[str, str, list[str]]]) -> None:
        import json

        from netlab import zygote

        self.daemons = list(daemons)
        if self.proc is None:
            return
        request = {"daemons": [{"name": d, "netns": ns, "argv": argv, "log": os.path.join(log_dir(self.lab), f"{d}.log")}
                               for d, ns, argv in daemons]}
        try:
            zygote.check(request["daemons"])
            self.proc.stdin.write(json.dumps(request).encode())
        except (OSError, ValueError) as e:
            self._note(f"netlab: the zygote was not told ({e}); each daemon starts alone")
        self._close_stdin()

    def started(self) -> dict[str, int]:
        """Wait until the zygote has forked every daemon; record their PIDs (starting alone any it did not fork)."""
        import json

        pids: dict[str, int] = {}
        if self.proc is not None:
            fd = self.proc.stdout.fileno()
            out, eof = _read_until_eof(fd, ZYGOTE_TIMEOUT)
            if not eof:  # hung: end it, and take what it forked before (it forks nothing more)
                self._note(f"netlab: the zygote did not finish within {ZYGOTE_TIMEOUT:.0f}s; killed")
                self.proc.kill()
                out += _read_until_eof(fd, 5.0)[0]
            self.proc.stdout.close()
            # One line per fork, written as it forks: what it made before failing is known too.
            for line in out.decode(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    pids[entry["name"]] = int(entry["pid"])
        missing = [d for d, _ns, _argv in self.daemons if d not in pids]
        if missing and self.proc is not None:
            self._note(f"netlab: the zygote did not start {', '.join(missing)}; starting them alone")
        for d, ns, argv in self.daemons:
            if d in pids:
                _record(self.lab, d, pids[d])
            else:
                pids[d] = spawn(self.lab, d, ns, argv)
        return pids

    def _note(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def _close_stdin(self) -> None:
        if self.proc is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_stdin()  # not told: it exits, forking nothing


def _read_until_eof(fd: int, timeout: float) -> tuple[bytes, bool]:
    """What a pipe gives until its writers close it (True) or until `timeout` (False)."""
    import select

    chunks = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def _record(lab: str, daemon: str, pid: int) -> None:
    with open(os.path.join(pid_dir(lab), f"{daemon}.pid"), "w") as f:
        f.write(f"{pid} {start_time(pid)}\n")


_children: list = []


def reap() -> None:
    """Collect exited children, so a long-lived parent (tests, benchmarks) leaves no zombies."""
    _children[:] = [p for p in _children if p.poll() is None]


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def recorded_pid(lab: str, daemon: str) -> int | None:
    """The daemon's PID if it is still the process we started."""
    try:
        with open(os.path.join(pid_dir(lab), f"{daemon}.pid")) as f:
            pid_s, start_s = f.read().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if str(start_time(pid)) == start_s else None


def alive(lab: str, daemon: str) -> bool:
    pid = recorded_pid(lab, daemon)
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lab_processes(lab: str) -> list[int]:
    """PIDs whose environment marks them as `lab`'s; never our own.

    Always one named lab: "any process with a NETLAB_LAB marker" would take
    in other labs' and other test runs' processes (Mininet's `mn -c` mistake).
    """
    me = os.getpid()
    marker = f"{ENV_LAB}={lab}".encode()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and marker in _environ(int(e))]


def terminate(pids: Iterable[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace` seconds.

    Each process is held by a pidfd (taken while its start time still
    matches, so a reused PID is never signalled) and waited for with
    poll(2): a pidfd turns readable when its process exits, so the wait
    ends the moment the last one does, with no polling interval.
    """
    pids = list(pids)
    starts = {p: start_time(p) for p in pids}
    held: dict[int, int] = {}  # pidfd -> pid
    try:
        for p in pids:
            if starts[p] is None:
                continue
            try:
                fd = os.pidfd_open(p)
            except OSError:  # gone already
                continue
            if start_time(p) != starts[p]:  # ended and the PID reused before the pidfd was taken
                os.close(fd)
                continue
            held[fd] = p
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            for fd in held:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
            wait_exits(held, time.monotonic() + wait)
            if not held:
                break
    finally:
        for fd in held:
            os.close(fd)
    reap()
    # Ended, but maybe not yet reaped by a parent that is not us (a zygote reaps at once; init may
    # take longer): wait a little for the PIDs to leave the process table, so "gone" means gone.
    deadline = time.monotonic() + REAP_WAIT
    while any(starts[p] is not None and start_time(p) == starts[p] for p in pids) and time.monotonic() < deadline:
        time.sleep(0.005)


def wait_exits(held: dict[int, int], deadline: float) -> None:
    """Wait until every pidfd of `held` (pidfd -> pid) is readable, its process exited, or
    `deadline`; each one that turned readable is closed and taken out of `held`. Our own
    children are reaped as they exit."""
    import select

    poller = select.poll()
    for fd in held:
        poller.register(fd, select.POLLIN)
    while held:
        timeout_ms = (deadline - time.monotonic()) * 1000
        if timeout_ms <= 0:
            return
        ready = [fd for fd, _ in poller.poll(timeout_ms)]
        reap()  # our Popen children, through Popen (it keeps their status)
        for fd in ready:
            poller.unregister(fd)
            pid = held.pop(fd)
            os.close(fd)
            with contextlib.suppress(ChildProcessError):  # any other child of ours: no zombie left
                os.waitpid(pid, os.WNOHANG)


def stop(lab: str, daemon: str) -> None:
    pid = recorded_pid(lab, daemon)
    if pid is not None:
        terminate([pid])
    try:
        os.unlink(os.path.join(pid_dir(lab), f"{daemon}.pid"))
    except FileNotFoundError:
        pass
