"""Shared fixtures of the CNI integration tests (no tests here): throwaway node/pod namespaces."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading

import pytest

from cni import cli, nscache
from netlab import netns
from tests.helpers import unique


class Namespaces:
    """Namespaces named <prefix>-<random>-<role>, all removed on close (also when a test fails)."""

    def __init__(self, prefix: str = "nltest-cni") -> None:
        self.names: list[str] = []
        self.prefix = prefix
        self.tag = unique("")

    def new(self, role: str) -> str:
        name = f"{self.prefix}-{self.tag}-{role}"
        netns.create(name)
        self.names.append(name)
        return name

    def close(self) -> None:
        for n in self.names:
            nscache.forget(n)
        for n in self.names:
            with contextlib.suppress(OSError):
                netns.remove(n)


def sh(ns: str, *argv: str) -> str:
    p = netns.run_in(ns, list(argv), capture_output=True, text=True)
    assert p.returncode == 0, (argv, p.stderr)
    return p.stdout


def try_sh(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return netns.run_in(ns, list(argv), capture_output=True, text=True)


REF = "/usr/lib/cni"  # Debian's containernetworking-plugins 1.1.1: CNI up to 1.0.0


def call(rt, type_: str, command: str, container_id: str, pod: str | None, conf: dict,
         ifname: str = "eth0") -> tuple[int, dict | None]:
    """One exec'd plugin call as a runtime makes it: (exit code, decoded stdout or None).

    `type_` is looked up along the runtime's CNI_PATH; `pod` is a namespace
    name (None: no CNI_NETNS). The config goes on stdin as given.
    """
    env = rt.env(command, container_id, netns.path(pod) if pod else "", ifname)
    r = rt.exec_raw(rt.find(type_), env, json.dumps(conf).encode())
    return r.code, (json.loads(r.stdout) if r.stdout.strip() else None)


@contextlib.contextmanager
def serving(node: str):
    """netlab's CNI daemon (cni.daemon) serving namespace `node`, from threads of this process.

    Yields a list that gets one entry per call the daemon answered, so a test
    can tell that the executables handed their calls over (not run in Python).
    """
    from cni import daemon

    answered: list[int] = []
    real = daemon.handle
    ready, box = threading.Event(), {}

    def counting(conn) -> None:
        answered.append(1)
        real(conn)

    def run() -> None:
        try:
            netns.enter_for_good(node)  # this thread only; the daemon's workers inherit it
            box["sock"] = daemon.listen()
        finally:
            ready.set()
        daemon.serve(box["sock"])

    daemon.handle = counting
    t = threading.Thread(target=run, daemon=True, name=f"cni-daemon-{node}")
    t.start()
    try:
        ready.wait(10)
        assert "sock" in box, f"the CNI daemon did not start in {node}"
        yield answered
    finally:
        if "sock" in box:
            daemon.stop(box["sock"])
        t.join(30)
        daemon.handle = real
    assert not t.is_alive()


def error_of(out: dict | None) -> tuple[int, str]:
    """(code, msg) of a spec error object: what a runtime shows; "cniVersion"/"details" aside."""
    assert out is not None and "code" in out, out
    return out["code"], out["msg"]


@pytest.fixture(scope="module")
def bindir(tmp_path_factory) -> str:
    """A CNI bin directory with netlab's plugins installed (`netlab cni install`'s code), one per module."""
    d = tmp_path_factory.mktemp("cnibin")
    cli.install(str(d))
    return str(d)


def nss_fixture(prefix: str = "nltest-cni"):
    """A function-scoped `nss` fixture: a Namespaces with this suite's prefix, closed after the test."""

    @pytest.fixture
    def nss():
        n = Namespaces(prefix)
        try:
            yield n
        finally:
            n.close()

    return nss
