"""netlab's host-local and Debian's reference host-local share one data dir.

netlab's plugin keeps an in-process index of the reservation files; the
reference one reads them all on every call. Interleaved calls of both, in
one data dir, must never hand out an address twice, and each must release
the other's reservations, as two reference plugins would.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni import skel
from cni.plugins import hostlocal

REF = "/usr/lib/cni/host-local"
pytestmark = pytest.mark.skipif(not os.access(REF, os.X_OK), reason="containernetworking-plugins not installed")


def ref(command: str, conf: dict, cid: str) -> dict | None:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "")}
    p = subprocess.run([REF], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout) if p.stdout.strip() else None


def ours(command: str, conf: dict, cid: str) -> dict | None:
    a = skel.Args(command, container_id=cid, ifname="eth0", netns="/proc/self/ns/net")
    return hostlocal.add(conf, a) if command == "ADD" else hostlocal.delete(conf, a)


def ip_of(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def test_interleaved_with_the_reference_plugin(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "mixnet", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.66.0.0/28"}]]}}
    d = tmp_path / "mixnet"
    got = {}
    for i in range(12):  # alternate writers; our index is warm from the previous rounds
        call = ours if i % 2 else ref
        got[f"c{i}"] = ip_of(call("ADD", conf, f"c{i}"))
    assert len(set(got.values())) == 12
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.name[0].isdigit()}
    assert files == {ip: f"{cid}\r\neth0".encode() for cid, ip in got.items()}
    # Each releases the other's reservations (and DEL of an unknown container is fine for both).
    ours("DEL", conf, "c0")
    ref("DEL", conf, "c1")
    ours("DEL", conf, "nobody")
    ref("DEL", conf, "nobody")
    assert not (d / got["c0"]).exists() and not (d / got["c1"]).exists()
    # The reference reserves an address our index last saw free, then ours must skip it.
    ref("ADD", conf, "r1")
    mine = ip_of(ours("ADD", conf, "o1"))
    theirs = (d / "last_reserved_ip.0").read_text()
    assert mine == theirs and (d / mine).read_bytes() == b"o1\r\neth0"
    assert len({p.read_bytes() for p in d.iterdir() if p.name[0].isdigit()}) == 12
    ref("ADD", conf, "r2")  # the 13th and last address of .2-.14
    # The range is full now, for both.
    for call in (ours, ref):
        with pytest.raises((AssertionError, hostlocal.CNIError)):
            call("ADD", conf, "extra")
