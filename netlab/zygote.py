"""A fork server for Python daemons: their modules imported once, each daemon a fork of that.

Every node of a lab runs flanneld's and kube-proxy's roles, `python -m
cni.overlay` and `python -m proxy`. Started alone, each spends 0.2-0.3 s of
CPU importing its modules (pyroute2 above all) before it does anything:
twenty of them, for ten nodes, took ~5 s of CPU on a 2-core machine while
the kubelet was making sandboxes. As Android's zygote and Chromium's
zygote do, this process imports what the daemons need once and forks one
child per daemon; a fork of a process that has imported the modules costs
a few milliseconds, and the children share those pages until they write
to them.

Each child does what `daemons.spawn` has a fresh process do: it enters its
network namespace (setns, as `ip netns exec`), starts its own session,
reads /dev/null and writes to its log, marks itself NETLAB_DAEMON=<name>
for its own children, and runs its module as `python -m` would (runpy,
sys.argv as given). Its /proc/PID/cmdline is rewritten in place to the
daemon's own argv (as setproctitle(3) does, in the argv area the zygote
was started with, padded to fit), so `ps`, `pgrep -f` and the tests see
each daemon as if it was started alone.
/proc/PID/environ still shows the zygote's environment: NETLAB_LAB is the
same, which is what finds a lab's processes.

Protocol: `python -m netlab.zygote --preload=MODULE,... --pad=SPACES`
imports the modules, then reads one JSON object on stdin, {"daemons":
[{"name", "netns", "argv", "log"}, ...]}, where each argv is [python,
"-m", module, args...] (stdin closed empty: it exits, forking nothing);
it writes one line {"name", "pid"} on
stdout per fork, as it forks, then closes stdout and stays, reaping its
daemons as they end and passing SIGTERM on (see `supervise`).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import traceback

from netlab import netns

ENV_DAEMON = "NETLAB_DAEMON"  # as netlab.daemons.ENV_DAEMON (not imported: the zygote loads little of its own)
PAD_FLAG = "--pad"
PRELOAD_FLAG = "--preload"


def pad_argv(argvs: list[list[str]]) -> str:
    """The padding argument that leaves room in the zygote's argv area for the longest daemon argv."""
    longest = max((sum(len(a.encode()) + 1 for a in argv) for argv in argvs), default=0)
    return f"{PAD_FLAG}={' ' * longest}"


def _arg_area() -> tuple[int, int]:
    """(arg_start, arg_end) of this process: where /proc/PID/cmdline is read from (proc(5), fields 48-49)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[45]), int(fields[46])


def set_cmdline(argv: list[str]) -> bool:
    """Rewrite this process's argv area to `argv`, NUL-padded; False if it does not fit (left as it was)."""
    start, end = _arg_area()
    text = b"".join(a.encode() + b"\0" for a in argv)
    if len(text) > end - start:
        return False
    ctypes.memmove(start, text + b"\0" * (end - start - len(text)), end - start)
    return True


def become(daemon: dict) -> None:
    """In a fresh fork: turn into `daemon` and run it. Never returns: the daemon's exit ends the process."""
    os.setsid()
    if daemon.get("netns"):
        with netns._child_enters(daemon["netns"]) as enter:
            enter()
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(daemon["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    os.environ[ENV_DAEMON] = daemon["name"]
    argv = daemon["argv"]
    set_cmdline(argv)
    module = argv[2]
    sys.argv = [argv[0], *argv[3:]]  # runpy puts the module's file in sys.argv[0], as `python -m` does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0  # the module returned: exit 0, as `python -m` would
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException:  # noqa: BLE001 - as the interpreter: the traceback on stderr, status 1
        traceback.print_exc()
        status = 1
    _exit(status)


def _exit_status(code: object) -> int:
    """The process status of `sys.exit(code)`, as the interpreter makes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _exit(status: int) -> None:
    """End a daemon as the interpreter would, but for freeing every module's objects one by one.

    Its threads are joined and its atexit handlers run (logging flushes its
    handlers there), its streams flushed; then os._exit, as multiprocessing
    ends the children it forks: a fork of the zygote carries all the
    zygote's imports, and an orderly teardown of them took ~1 s of a
    loaded machine per agent when a lab went down.
    """
    threading._shutdown()  # what the interpreter does first at exit: wait for non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def check(daemons: list[dict]) -> None:
    for d in daemons:
        argv = d["argv"]
        if len(argv) < 3 or argv[1] != "-m":
            raise ValueError(f"{d['name']}: the zygote runs `python -m MODULE ...` daemons, not {argv[:3]}")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    # Imported before the request is read: a starter can start the zygote early and say later what to fork.
    for arg in args:
        if arg.startswith(PRELOAD_FLAG + "="):
            for name in filter(None, arg.split("=", 1)[1].split(",")):
                importlib.import_module(name)
    try:
        request = json.load(sys.stdin)
    except ValueError:
        return  # the starter closed stdin without a request: nothing to fork
    daemons = request["daemons"]
    check(daemons)
    children: dict[int, str] = {}
    for d in daemons:
        pid = os.fork()
        if pid == 0:
            become(d)  # ends the child with the daemon's exit status
        children[pid] = d["name"]
        # One line per fork, at once: the starter knows what exists even if this process fails later.
        sys.stdout.write(json.dumps({"name": d["name"], "pid": pid}) + "\n")
        sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # end of the list: the starter reads EOF
    supervise(children)


def supervise(children: dict[int, str]) -> None:
    """Stay the daemons' parent until the last one exits, as containerd's shim stays its container's.

    Each exit is reaped at once and logged with its status (so a daemon
    that ended is gone from the process table, not a zombie waiting for
    init), and SIGTERM or SIGINT is passed on to every daemon still running.
    """

    def forward(signum: int, _frame) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return
        name = children.pop(pid, None)
        if name is not None:
            code = os.waitstatus_to_exitcode(status)
            how = f"exit status {code}" if code >= 0 else f"signal {-code}"
            print(f"netlab zygote: {name} (pid {pid}) ended: {how}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
