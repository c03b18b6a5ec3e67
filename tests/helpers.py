"""Shared test helpers: root-namespace snapshots, leak checks, unique names."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

from netlab import names, netns, statedir


def _run(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return f"<{argv[0]} not installed>"
    p = subprocess.run(argv, capture_output=True, text=True)
    return p.stdout + p.stderr


def _strip_counters(text: str) -> str:
    # iptables-save prints a timestamp comment line and packet counters.
    return "\n".join(l for l in text.splitlines() if not l.startswith("#"))


def root_snapshot() -> dict[str, str]:
    """What the host's root namespace looks like, read without changing it."""
    snap = {
        "links": _run(["ip", "-o", "link", "show"]),
        "addresses": _run(["ip", "-o", "addr", "show"]),
        "routes": _run(["ip", "route", "show", "table", "all"]),
        "iptables-nft-save": _strip_counters(_run(["iptables-nft-save"])),
        "iptables-legacy-save": _strip_counters(_run(["iptables-legacy-save"])),
        "nft-ruleset": _run(["nft", "list", "ruleset"]),
    }
    for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"):
        try:
            with open(f"/proc/sys/{key}") as f:
                snap[key] = f.read()
        except OSError:
            snap[key] = "<absent>"
    # Link statistics change as the host lives; keep only names, flags and addresses.
    snap["links"] = "\n".join(
        " ".join(w for w in line.split() if not w.isdigit()) for line in snap["links"].splitlines()
    )
    return snap


def unique(prefix: str) -> str:
    """A short unique name, fit for a lab (DNS label) and for interface names."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def lab_leaks(lab: str) -> list[str]:
    """Everything of `lab` that is still on the machine: namespaces, processes, files."""
    leaks = [f"netns {n}" for n in netns.list_names() if names.lab_of_netns(n) == lab]
    if statedir.our_mount(lab):
        leaks.append(f"tmpfs on {names.lab_dir(lab)}")
    if os.path.exists(names.lab_dir(lab)):
        leaks.append(f"state dir {names.lab_dir(lab)}")
    marker = f"NETLAB_LAB={lab}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker in env:
            leaks.append(f"process {pid}")
    return leaks


def assert_no_leaks(lab: str) -> None:
    leaks = lab_leaks(lab)
    assert not leaks, f"lab {lab} left behind: {leaks}"


def wait_until(cond, timeout: float = 10.0, what: str = "condition"):
    """Poll `cond` until it returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
