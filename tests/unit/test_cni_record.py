"""cni.record (the plugin path's dataclasses) and what the plugin path imports at start-up."""

import os
import subprocess
import sys

import pytest

from cni import skel
from cni.errors import CNIError
from cni.netlink import Addr, Link
from cni.plugins import bridge, hostlocal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_records_compare_copy_and_print_like_dataclasses():
    a = skel.Args("ADD", container_id="c1", ifname="eth0")
    assert a.path == [] and a.host_netns is None and a.exec_mode is False
    b = a.replace(command="DEL")
    assert (b.command, b.container_id, a.command) == ("DEL", "c1", "ADD")
    assert a == skel.Args("ADD", container_id="c1", ifname="eth0") and a != b
    assert "container_id='c1'" in repr(a)
    assert a.asdict()["ifname"] == "eth0"
    with pytest.raises(TypeError):
        a.replace(nope=1)
    with pytest.raises(AttributeError):
        a.nope = 1  # __slots__: no stray attributes
    assert Link(1, "eth0", 0, 1500, "", 0, "veth", 2).attrs == {}


def test_frozen_records_refuse_assignment_and_hash():
    addr = Addr(2, "10.0.0.1", 24, 2)
    with pytest.raises(AttributeError):
        addr.prefixlen = 16  # type: ignore[misc]
    assert {addr, Addr(2, "10.0.0.1", 24, 2)} == {addr} and addr.cidr == "10.0.0.1/24"
    cfg = bridge.parse_config({"name": "n", "isDefaultGateway": True})
    assert cfg.is_gateway and cfg.replace(mtu=1400).mtu == 1400 and cfg.mtu == 0
    hl = hostlocal.parse_config({"name": "n", "ipam": {"subnet": "10.1.0.0/24"}})
    with pytest.raises(AttributeError):
        hl.name = "x"  # type: ignore[misc]


def test_cni_error_is_a_plain_exception_with_the_spec_fields():
    e = CNIError(7, "bad", "why")
    assert (e.code, e.msg, e.details, str(e)) == (7, "bad", "why", "bad: why")
    assert e == CNIError(7, "bad", "why") and e != CNIError(7, "bad")
    assert e.to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"}


# What an exec'd plugin must not load at start-up: each costs milliseconds per call
# (BENCHMARKS.md, "CNI plugin"). ipaddress (and functools with it) is allowed where an
# address is parsed: ADD and host-local.
HEAVY = {"json", "re", "enum", "dataclasses", "inspect", "socket", "subprocess", "typing", "hashlib",
         "contextlib", "threading", "ctypes", "copy", "importlib", "os"}


@pytest.mark.parametrize("plugin", ["bridge", "host-local", "loopback"])
def test_the_plugin_path_imports_nothing_heavy(plugin):
    """Importing a plugin as the executable does (cni.main, then the plugin module), in a bare -I -S interpreter."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); before = set(sys.modules)\n"
            f"from cni import main, registry; registry.load({plugin!r})\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    p = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    heavy = HEAVY if plugin != "host-local" else HEAVY - {"os"}
    assert not loaded & heavy, sorted(loaded & heavy)
    if plugin == "bridge":
        # DEL sends RTM_DELLINK before anything parses an address or imports __future__.
        assert not loaded & {"ipaddress", "__future__"}, sorted(loaded & {"ipaddress", "__future__"})
