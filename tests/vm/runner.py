"""Run the IPVS test subset inside a stock-kernel QEMU guest and report back.

This machine's kernel has no IPVS and no dummy links (no loadable modules);
Debian's stock kernel has both. `stockvm.sh` boots that kernel with the
host's / shared read-only and the repo read-write at the same path, so the
repo's venv and code run unchanged inside. The inner pytest runs with
NETLAB_REQUIRE_IPVS=1 (a missing IPVS fails, never skips) and
NETLAB_IN_VM=1, and writes no bytecode into the shared repo.

    python -m tests.vm.runner [pytest args...]      # default: the IPVS subset
    python -m tests.vm.runner --bench [bench/dataplane.py args...]
    python -m tests.vm.runner --shell 'CMD'          # one command, e.g. '$PY tests/vm/profile_ipvs_sync.py'

Exit status is the inner pytest's (124: the VM timed out).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STOCKVM = Path(__file__).with_name("stockvm.sh")
# Focused: Python is ~20x slower in the guest (TCG), a few minutes at most.
# The IPVS lab through the CLI: ~100 s in the guest (a lab up and seven CLI runs).
IPVS_SUBSET = ["tests/integration/test_proxy_ipvs.py", "tests/integration/test_proxy_ipvs_flows.py",
               "tests/vm/test_ipvs_batch_kernel.py",
               "tests/integration/test_proxy_modes_lab.py::test_services_through_the_cli[ipvs]"]


@dataclass
class VmRun:
    returncode: int
    output: str


def unavailable_reason() -> str | None:
    """Why the guest cannot boot here (None: it can)."""
    if not shutil.which("qemu-system-x86_64") and not shutil.which("apt-get"):
        return "qemu-system-x86_64 is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return "the VM set-up needs root (apt-get, /var/cache/netlab-vm)"
    return None


def setup(timeout: float = 900) -> VmRun:
    p = subprocess.run(["bash", str(STOCKVM), "setup"], capture_output=True, text=True, timeout=timeout)
    return VmRun(p.returncode, p.stdout + p.stderr)


# /etc/protocols is copied up into the guest's tmpfs: `ipset` looks a protocol up by name for
# every entry it reads or prints (getprotobyname: open, stat, read /etc/protocols each time),
# which over the guest's 9p root took ~2.5 ms an entry (72 s of a 10k-service IPVS sync); on a
# node, /etc is a local disk.
PRELUDE = (
    "export NETLAB_IN_VM=1 NETLAB_REQUIRE_IPVS=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1; "
    "cp /etc/protocols /etc/.protocols && mv /etc/.protocols /etc/protocols; "
    "ip link set lo up; modprobe br_netfilter; "
)


def run(pytest_args: list[str] | None = None, timeout: int = 900) -> VmRun:
    """Boot the guest, run pytest on `pytest_args` in the repo, return its status and output."""
    args = pytest_args or IPVS_SUBSET
    return run_shell(
        f"exec {shlex.quote(sys.executable)} -m pytest -p no:cacheprovider --color=no -q -rfEs "
        + " ".join(shlex.quote(a) for a in args),
        timeout,
    )


def run_shell(command: str, timeout: int = 900) -> VmRun:
    """Boot the guest and run one shell command in the repo (after the node-like prelude)."""
    inner = PRELUDE + command
    env = dict(os.environ, VM_RW=str(REPO), VM_TIMEOUT=str(timeout))
    p = subprocess.run(
        ["bash", str(STOCKVM), "run", inner],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )
    return VmRun(p.returncode, p.stdout + p.stderr)


def main(argv: list[str]) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"tests/vm: cannot run: {reason}", file=sys.stderr)
        return 2
    if argv[:1] == ["--bench"]:
        # bench/dataplane.py inside the guest: IPVS against iptables in the same VM.
        r = run_shell(f"exec {shlex.quote(sys.executable)} bench/dataplane.py "
                      + " ".join(shlex.quote(a) for a in argv[1:]), timeout=3000)
    elif argv[:1] == ["--shell"]:
        # $PY is the host's interpreter (the repo's venv), at the same path in the guest.
        r = run_shell(f"PY={shlex.quote(sys.executable)}; " + " ".join(argv[1:]), timeout=3000)
    else:
        r = run(argv or None)
    sys.stdout.write(r.output)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
