"""20 concurrent exec'd ADDs never share an address; 20 concurrent DELs leave no reservation.

As a runtime starting 20 pods at once: 20 `netlab-bridge` processes, each
exec'd in the node's namespace with its own CNI_* variables and config on
stdin. Each finds `netlab-host-local` along CNI_PATH as ipam.ExecAdd
would; seeing netlab's marker in it, it runs host-local's code in its own
process instead of a fork+exec (cni/invoke.py), so 20 processes race for
the network's lock file. In "ref-bridge": the reference bridge exec's
`netlab-host-local` itself, 20 separate host-local processes. All 20 are
started, blocked on stdin, before any is fed. The same run is made with
the reference bridge + host-local, to show the invariants hold for it too
(the test checks what a runtime relies on, not netlab's own choices).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from cni.runtime import Runtime
from netlab import netns
from tests.integration.test_cni_support import REF, bindir, nss_fixture, serving, sh  # noqa: F401 (bindir: a fixture)

nss = nss_fixture("nlct")
PODS = 20
TYPES = {"ours": ("netlab-bridge", "netlab-host-local"), "ours-daemon": ("netlab-bridge", "netlab-host-local"),
         "ref-bridge": ("bridge", "netlab-host-local"), "ref": ("bridge", "host-local")}


def conf(who: str, data_dir: str) -> dict:
    bridge, ipam = TYPES[who]
    return {"cniVersion": "1.0.0", "name": "racenet", "type": bridge, "bridge": "cni0", "isGateway": True,
            "ipam": {"type": ipam, "dataDir": data_dir, "ranges": [[{"subnet": "10.84.0.0/24"}]]}}


def all_at_once(rt: Runtime, node: str, command: str, c: dict, pods: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Start one plugin process per pod (each waits on stdin), then feed them all: (code, stdout) per container ID."""
    exe = rt.find(c["type"])
    data = json.dumps(c).encode()
    procs = {cid: netns.popen_in(node, [exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=rt.env(command, cid, netns.path(pod), "eth0"))
             for cid, pod in pods.items()}
    for p in procs.values():
        p.stdin.write(data)
        p.stdin.close()
    out = {}
    for cid, p in procs.items():
        stdout = p.stdout.read().decode()
        p.stdout.close()
        p.stderr.close()
        out[cid] = (p.wait(timeout=120), stdout)
    return out


def reservations(d: str) -> dict[str, bytes]:
    return {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d) if f[0].isdigit()}


@pytest.mark.parametrize("who", sorted(TYPES))
def test_twenty_concurrent_exec_adds_and_dels(who, nss, bindir, tmp_path):
    """"ours-daemon": the same executables, with the node's CNI daemon answering their calls
    (cni.daemon: 20 calls at once on its workers, in threads of one process)."""
    role = {"ours-daemon": "od", "ref-bridge": "refb"}.get(who, who)
    node = nss.new(f"{role}n")
    with serving(node) if who == "ours-daemon" else contextlib.nullcontext([]) as answered:
        _race(who, node, nss, bindir, tmp_path, role)
    assert len(answered) == (2 * PODS if who == "ours-daemon" else 0)  # every ADD and DEL handed over


def _race(who, node, nss, bindir, tmp_path, role):
    pods = {f"race{i:02d}": nss.new(f"{role}{i:02d}") for i in range(PODS)}
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    c = conf(who, str(tmp_path))
    added = all_at_once(rt, node, "ADD", c, pods)
    assert all(code == 0 for code, _ in added.values()), {k: v for k, v in added.items() if v[0] != 0}
    addr = {cid: json.loads(out)["ips"][0]["address"] for cid, (_, out) in added.items()}
    assert len(set(addr.values())) == PODS  # no address handed out twice
    # host-local's files: one per address, holding "<containerID>\r\n<ifname>" of the pod that got it.
    d = str(tmp_path / "racenet")
    files = reservations(d)
    assert files == {a.split("/")[0]: f"{cid}\r\neth0".encode() for cid, a in addr.items()}
    assert open(os.path.join(d, "last_reserved_ip.0")).read() in files and os.path.exists(os.path.join(d, "lock"))
    # ...and the kernel agrees: each pod has its own address, every veth is on the bridge.
    for cid, pod in pods.items():
        assert f"inet {addr[cid]}" in sh(pod, "ip", "-o", "-4", "addr", "show", "eth0")
    assert len(json.loads(sh(node, "ip", "-j", "link", "show", "master", "cni0"))) == PODS
    deleted = all_at_once(rt, node, "DEL", c, pods)
    assert deleted == {cid: (0, "") for cid in pods}
    assert reservations(d) == {}  # no reservation left
    assert json.loads(sh(node, "ip", "-j", "link", "show", "master", "cni0")) == []
    for pod in pods.values():
        assert "eth0" not in sh(pod, "ip", "-o", "link")
