"""The IPVS subset, run in a stock-kernel QEMU guest as part of the normal test run.

On a kernel with IPVS (the Vagrant VM, most users' machines)
test_proxy_ipvs.py runs directly and this test steps aside. Here, where the
kernel has neither IPVS nor dummy links, it boots the guest (tests/vm) and
asserts the inner pytest passed with no skips; its output is the failure
message. It skips only where the guest cannot be made at all (no root, or
neither QEMU nor apt-get to install it); a failed preparation fails.
"""

from __future__ import annotations

import re

import pytest

from netlab import netns
from proxy.ipvs_kernel import ipvs_unavailable_reason
from tests.helpers import unique
from tests.vm import runner
from tests.vm.minilab import in_vm


def _host_has_ipvs() -> bool:
    name = unique("nltest-pm-")
    netns.create(name)
    try:
        return ipvs_unavailable_reason(name) is None
    finally:
        netns.remove(name)


@pytest.mark.slow
def test_ipvs_subset_passes_in_stock_kernel_vm():
    if in_vm():
        pytest.skip("already inside the VM")
    if _host_has_ipvs():
        pytest.skip("this kernel has IPVS: tests/integration/test_proxy_ipvs.py runs directly")
    reason = runner.unavailable_reason()
    if reason:
        pytest.skip(f"cannot boot the stock-kernel VM: {reason}")
    # Root and apt are here, so the guest can be prepared: a failure to do so
    # fails the run rather than leaving IPVS untested behind a skip.
    s = runner.setup()
    assert s.returncode == 0, f"cannot prepare the stock-kernel VM (kernel package, initramfs):\n{s.output[-3000:]}"
    r = runner.run()
    tail = r.output[-6000:]
    assert r.returncode == 0, f"IPVS tests failed in the VM (exit {r.returncode}):\n{tail}"
    summary = re.search(r"^=*\s*(\d+) passed(.*)$", r.output, re.M)
    assert summary, f"no pytest summary in the VM output:\n{tail}"
    assert "skipped" not in summary.group(2) and "error" not in summary.group(2), tail
