"""bridge DEL through exec: the veth deleted from the node through the pod's nsid, and every fallback.

An exec'd DEL names the pod's interface in the pod namespace through the
nsid the node has for it (IFLA_TARGET_NETNSID) and deletes it on a thread
while host-local releases the address. Without an nsid it enters the pod
namespace as the reference does; with no namespace, or a path that is not
one, there is nothing to delete and DEL succeeds (idempotence).
"""

from __future__ import annotations

import json
import os

import pytest

from cni.runtime import Runtime
from netlab import netns
from tests.integration.test_cni_support import bindir, nss_fixture, sh  # noqa: F401 (bindir: a fixture)


nss = nss_fixture("nlca")


def conf(data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "delnet", "type": "netlab-bridge", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "netlab-host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.68.0.0/24"}]]}}


def links(ns: str) -> list[str]:
    return sorted(l.split(":")[1].strip().split("@")[0] for l in sh(ns, "ip", "-o", "link").splitlines())


def reservations(data_dir: str) -> list[str]:
    d = os.path.join(data_dir, "delnet")
    return sorted(f for f in os.listdir(d) if f[0].isdigit()) if os.path.isdir(d) else []


def call(rt: Runtime, bindir: str, cmd: str, c: dict, cid: str, ns_path: str):
    r = rt.exec_raw(os.path.join(bindir, "netlab-bridge"), rt.env(cmd, cid, ns_path, "eth0"), json.dumps(c).encode())
    assert r.code == 0, r.stdout + r.stderr
    return r


def test_del_through_the_nsid_removes_both_ends_and_the_address(nss, bindir, tmp_path):
    node, pod = nss.new("node"), nss.new("pod")
    rt = Runtime(cni_path=[bindir], host_netns=node)
    c = conf(str(tmp_path))
    call(rt, bindir, "ADD", c, "c1", netns.path(pod))
    assert "nsid" in sh(node, "ip", "netns", "list-id")  # the veth made the node an nsid for the pod
    assert reservations(str(tmp_path)) == ["10.68.0.2"]
    call(rt, bindir, "DEL", c, "c1", netns.path(pod))
    assert links(pod) == ["lo"]
    assert links(node) == ["cni0", "lo"]
    assert reservations(str(tmp_path)) == []
    call(rt, bindir, "DEL", c, "c1", netns.path(pod))  # again: nothing left, still success


def test_del_without_an_nsid_enters_the_pod(nss, bindir, tmp_path):
    """A pod whose eth0 is not paired with the node (both veth ends inside it): the node has no nsid for it."""
    node, pod = nss.new("node"), nss.new("pod")
    sh(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    assert "nsid" not in sh(node, "ip", "netns", "list-id")  # nothing assigned in the node
    rt = Runtime(cni_path=[bindir], host_netns=node)
    call(rt, bindir, "DEL", conf(str(tmp_path)), "c1", netns.path(pod))
    assert links(pod) == ["lo"]  # eth0 deleted, and its peer with it
    assert "nsid" not in sh(node, "ip", "netns", "list-id")  # and none was assigned on the way


@pytest.mark.parametrize("where", ["missing", "not a namespace", "empty"])
def test_del_with_nothing_to_delete_succeeds(nss, bindir, tmp_path, where):
    node = nss.new("node")
    path = {"missing": "/run/netns/nlca-no-such-ns", "not a namespace": "/etc/hostname", "empty": ""}[where]
    rt = Runtime(cni_path=[bindir], host_netns=node)
    c = conf(str(tmp_path))
    pod = nss.new("pod")
    call(rt, bindir, "ADD", c, "c1", netns.path(pod))
    env = rt.env("DEL", "c1", path, "eth0")
    r = rt.exec_raw(os.path.join(bindir, "netlab-bridge"), env, json.dumps(c).encode())
    assert (r.code, r.stdout) == (0, ""), r.stdout + r.stderr
    assert reservations(str(tmp_path)) == []  # host-local released the address all the same
    assert links(pod) == ["eth0", "lo"]  # and nothing of another namespace was touched
