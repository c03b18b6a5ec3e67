"""Shared fixtures of the CNI integration tests (no tests here): throwaway node/pod namespaces."""

from __future__ import annotations

import contextlib
import subprocess

from cni import nscache
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
