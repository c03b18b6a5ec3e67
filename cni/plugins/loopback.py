"""The loopback plugin: bring `lo` up in the pod, as plugins/main/loopback.

As the reference, the plugin works on `lo` whatever CNI_IFNAME says
(it sets args.IfName = "lo"), and so names `lo` in its result.
"""

from __future__ import annotations

from cni import skel
from cni.errors import CNIError, INTERNAL
from cni.netlink import AF_INET, AF_INET6
from cni.podns import open_netlink as _open, try_open


def add(conf: dict, args: skel.Args) -> dict:
    nl = _open(args.netns)
    try:
        lo = nl.get_link("lo")
        if lo is None:
            raise CNIError(INTERNAL, "failed to lookup lo")
        nl.set_link(lo.index, up=True)
        addrs = nl.addrs(lo.index)
    finally:
        nl.close()
    prev = skel.prev_result(conf)
    if prev is not None:
        return prev  # loopback passes a prevResult through
    v4 = [a for a in addrs if a.family == AF_INET]
    v6 = [a for a in addrs if a.family == AF_INET6]
    for a in v4 + v6:  # the reference's sanity check: lo holds loopback addresses only
        if not (a.address.startswith("127.") if a.family == AF_INET else a.address == "::1"):
            raise CNIError(INTERNAL, f'loopback interface found with non-loopback address "{a.address}"')
    ips = [{"interface": 0, "address": a.cidr} for a in v4[:1] + v6[:1]]
    out: dict = {"interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": args.netns}]}
    if ips:
        out["ips"] = ips
    return out


def delete(conf: dict, args: skel.Args) -> None:
    nl = try_open(args.netns)
    if nl is None:
        return
    try:
        lo = nl.get_link("lo")
        if lo is not None:
            nl.set_link(lo.index, up=False)
    finally:
        nl.close()


def check(conf: dict, args: skel.Args) -> None:
    nl = _open(args.netns)
    try:
        lo = nl.get_link("lo")
        if lo is None or not lo.up:
            raise CNIError(INTERNAL, "loopback interface is down")
    finally:
        nl.close()
