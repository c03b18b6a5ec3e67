"""Suite-wide guards.

- The host's root namespace must be exactly as it was: links, addresses,
  routes, iptables-save (legacy and nft), `nft list ruleset` and forwarding
  sysctls are recorded before the whole run and compared after it.
  Reading never creates anything: `iptables-save` and `nft list` do not
  create tables, unlike `iptables -t nat -L`.
- `lab_leak_check(lab)` is what every integration test's fixture calls on
  the way out: no namespace, link, process or file of that lab remains.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import root_snapshot


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched(request):
    if os.geteuid() != 0:
        yield
        return
    before = root_snapshot()
    yield
    after = root_snapshot()
    diffs = [k for k in before if before[k] != after[k]]
    if diffs:
        import difflib

        text = []
        for k in diffs:
            text.append(f"--- {k}")
            text.extend(difflib.unified_diff(before[k].splitlines(), after[k].splitlines(), lineterm=""))
        pytest.fail("the test run changed the host's root namespace:\n" + "\n".join(text), pytrace=False)
