"""The Vagrantfile parses and is complete, checked offline (no box needed)."""

import os
import shutil
import subprocess

import pytest


@pytest.mark.skipif(not shutil.which("vagrant"), reason="Debian's vagrant package is not installed")
def test_vagrant_validate():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(["vagrant", "validate", "--ignore-provider"], capture_output=True, text=True, timeout=120, cwd=repo,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Vagrantfile validated successfully" in out.stdout


def test_vagrantfile_loads_the_modules_a_stock_kernel_needs():
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "Vagrantfile")).read()
    for mod in ("br_netfilter", "vxlan", "ip_vs", "dummy", "nf_conntrack"):
        assert mod in text
    assert "./bootstrap.sh demo" in text and '"libvirt"' in text and '"virtualbox"' in text


def test_vagrantfile_loads_a_module_for_every_ipvs_scheduler():
    """A scheduler netlab-proxy accepts (kube-proxy's list) must load in the VM: ip_vs_<name>."""
    from proxy.model import IPVS_SCHEDULERS

    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "Vagrantfile")).read()
    mods = text.split('mods="', 1)[1].split('"', 1)[0].split()
    assert sorted(m for m in mods if m.startswith("ip_vs_")) == sorted(f"ip_vs_{s}" for s in IPVS_SCHEDULERS)
