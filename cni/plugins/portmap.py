"""The portmap plugin (chained): hostPort -> containerPort DNAT in the node's namespace."""

from __future__ import annotations

from cni import skel
from cni.errors import CNIError, INVALID_CONFIG


def add(conf: dict, args: skel.Args) -> dict:
    prev = skel.prev_result(conf)
    if prev is None:
        raise CNIError(INVALID_CONFIG, "must be called as chained plugin")
    return prev


def delete(conf: dict, args: skel.Args) -> None:
    return None


def check(conf: dict, args: skel.Args) -> None:
    return None
