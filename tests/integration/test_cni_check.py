"""CHECK failing as the reference fails it: bridge + host-local after the pod's state was broken.

For each way of breaking an attachment (its address, its veth, the
bridge, a route, the host veth's enslavement, the host-local
reservation), the reference (/usr/lib/cni/bridge + host-local) and ours
(netlab-bridge + netlab-host-local) are ADDed, CHECKed (success), broken
the same way, and CHECKed again: both must fail with the same spec error
(code and message), exit 1.

Explained difference (test_route_without_gw_passes_check): the
reference's CHECK fails right after its own ADD when an ipam route has no
"gw" -- ip.ValidateExpectedRoute looks for that route with no gateway,
while ipam.ConfigureIface installed it via the family's gateway. netlab's
CHECK accepts any gateway for such a route; the configs below give every
route a "gw" so that the reference's success path holds.
"""

from __future__ import annotations

import json
import os

import pytest

from cni.runtime import Runtime
from tests.integration.test_cni_support import REF, Namespaces, bindir, call, error_of, nss_fixture, sh  # noqa: F401 (bindir: a fixture)


nss = nss_fixture("nlct")


def conf_for(ours: bool, data_dir: str, **extra) -> dict:
    c = {"cniVersion": "1.0.0", "name": "chknet", "type": "netlab-bridge" if ours else "bridge", "bridge": "cnichk",
         "isGateway": True,
         "ipam": {"type": "netlab-host-local" if ours else "host-local", "dataDir": data_dir,
                  "ranges": [[{"subnet": "10.81.0.0/24"}]],
                  "routes": [{"dst": "10.70.0.0/16", "gw": "10.81.0.1"}, {"dst": "10.71.0.0/16", "gw": "10.81.0.254"}]}}
    c.update(extra)
    return c


def _host_veths(node: str) -> list[str]:
    return [l["ifname"] for l in json.loads(sh(node, "ip", "-j", "link", "show", "master", "cnichk"))]


def _unreserve(node: str, pod: str, data_dir: str) -> None:
    d = os.path.join(data_dir, "chknet")
    for f in os.listdir(d):
        if f[0].isdigit():
            os.unlink(os.path.join(d, f))


BREAK = {
    "pod-address": lambda node, pod, dd: sh(pod, "ip", "addr", "del", "10.81.0.2/24", "dev", "eth0"),
    "pod-veth": lambda node, pod, dd: sh(pod, "ip", "link", "del", "eth0"),
    "bridge": lambda node, pod, dd: sh(node, "ip", "link", "del", "cnichk"),
    "route": lambda node, pod, dd: sh(pod, "ip", "route", "del", "10.70.0.0/16"),
    "route-other-gw": lambda node, pod, dd: (sh(pod, "ip", "route", "del", "10.71.0.0/16"),
                                             sh(pod, "ip", "route", "add", "10.71.0.0/16", "via", "10.81.0.1")),
    "host-veth-nomaster": lambda node, pod, dd: [sh(node, "ip", "link", "set", v, "nomaster") for v in _host_veths(node)],
    "host-local-reservation": lambda node, pod, dd: _unreserve(node, pod, dd),
}
EXPECTED = {  # what the reference says (checked against it in every run, below)
    "pod-address": "Failed to match addr 10.81.0.2/24 on interface eth0",
    "pod-veth": "Interface name eth0 not found",
    "bridge": "Interface name cnichk not found",
    "route": "Expected Route {Dst:{IP:10.70.0.0 Mask:ffff0000} GW:10.81.0.1} not found in routing table",
    "route-other-gw": "Expected Route {Dst:{IP:10.71.0.0 Mask:ffff0000} GW:10.81.0.254} not found in routing table",
    "host-veth-nomaster": "CNI veth created for bridge cnichk was not found",
    "host-local-reservation": "host-local: Failed to find address added by container chkctr",
}


def broken_check(nss: Namespaces, bindir: str, tmp_path, case: str, ours: bool) -> tuple:
    role = "o" if ours else "r"
    node, pod = nss.new(f"{role}n"), nss.new(f"{role}p")
    data_dir = str(tmp_path / role)
    rt = Runtime(cni_path=[bindir, REF], host_netns=node)
    conf = conf_for(ours, data_dir)
    code, result = call(rt, conf["type"], "ADD", "chkctr", pod, conf)
    assert code == 0, result
    ok = call(rt, conf["type"], "CHECK", "chkctr", pod, dict(conf, prevResult=result))
    BREAK[case](node, pod, data_dir)
    code, err = call(rt, conf["type"], "CHECK", "chkctr", pod, dict(conf, prevResult=result))
    # DEL still cleans up whatever is left (idempotent on a half-broken attachment).
    assert call(rt, conf["type"], "DEL", "chkctr", pod, conf) == (0, None)
    return ok, code, error_of(err)


@pytest.mark.parametrize("case", sorted(BREAK))
def test_broken_attachment_fails_check_as_the_reference(case, nss, bindir, tmp_path):
    ref = broken_check(nss, bindir, tmp_path, case, ours=False)
    ours = broken_check(nss, bindir, tmp_path, case, ours=True)
    assert ref == ((0, None), 1, (999, EXPECTED[case]))
    assert ours == ref


def test_host_local_check_without_a_reservation(nss, bindir, tmp_path):
    """host-local alone: CHECK for an attachment it never reserved, and with no network dir at all."""
    out = {}
    for ours in (False, True):
        node, pod = nss.new(("o" if ours else "r") + "n"), nss.new(("o" if ours else "r") + "p")
        rt = Runtime(cni_path=[bindir, REF], host_netns=node)
        t = "netlab-host-local" if ours else "host-local"
        conf = {"cniVersion": "1.0.0", "name": "hlchk", "type": t,
                "ipam": {"type": t, "dataDir": str(tmp_path / str(ours)), "ranges": [[{"subnet": "10.82.0.0/24"}]]}}
        code, result = call(rt, t, "ADD", "have", pod, conf)
        assert code == 0
        checks = [call(rt, t, "CHECK", "have", pod, dict(conf, prevResult=result)),
                  call(rt, t, "CHECK", "never", pod, dict(conf, prevResult=result)),
                  call(rt, t, "CHECK", "have", pod, dict(conf, name="nodir", prevResult=result))]
        out[ours] = [(c, error_of(e) if e else None) for c, e in checks]
    assert out[False] == [(0, None), (1, (999, "host-local: Failed to find address added by container never")),
                          (1, (999, "host-local: Failed to find address added by container have"))]
    assert out[True] == out[False]


def test_route_without_gw_passes_check(nss, bindir, tmp_path):
    """The explained difference: a gw-less ipam route fails the reference's CHECK right after its ADD, not ours."""
    out = {}
    for ours in (False, True):
        role = "o" if ours else "r"
        node, pod = nss.new(f"{role}n"), nss.new(f"{role}p")
        rt = Runtime(cni_path=[bindir, REF], host_netns=node)
        conf = conf_for(ours, str(tmp_path / role))
        conf["ipam"]["routes"] = [{"dst": "10.70.0.0/16"}]
        code, result = call(rt, conf["type"], "ADD", "gwless", pod, conf)
        assert code == 0
        assert "10.70.0.0/16 via 10.81.0.1 dev eth0" in sh(pod, "ip", "route")  # installed via the gateway, by both
        out[ours] = call(rt, conf["type"], "CHECK", "gwless", pod, dict(conf, prevResult=result))
    assert out[False] == (1, {"code": 999, "msg": "Expected Route {Dst:{IP:10.70.0.0 Mask:ffff0000} GW:<nil>} not found in routing table"})
    assert out[True] == (0, None)
