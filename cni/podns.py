"""Netlink inside a pod's namespace (CNI_NETNS): opened per call, never cached.

A pod namespace is used once per ADD/DEL, so there is nothing to cache;
a missing one is an error for ADD (code 4, the variable points nowhere)
and "nothing to do" for DEL, as the reference plugins treat
ns.NSPathNotExistErr.
"""

from __future__ import annotations

from cni.errors import CNIError, INVALID_ENV
from cni.netlink import RtNetlink
from cni.nsenter import entered


def open_netlink(path: str) -> RtNetlink:
    try:
        with entered(path):
            return RtNetlink.open()
    except OSError as e:
        raise CNIError(INVALID_ENV, f'failed to open netns "{path}"', e.strerror or str(e)) from None


def try_open(path: str) -> RtNetlink | None:
    """The pod's netlink, or None when the namespace is gone (DEL's idempotence)."""
    if not path:
        return None
    try:
        return open_netlink(path)
    except CNIError:
        return None
