"""Entering a network namespace (setns(2)) from the plugin path, through `_ctypes` alone.

The pod side of an ADD needs a netlink socket created inside the pod's
namespace, so the calling thread enters it for that moment, as the
reference plugins' ns.WithNetNSPath does. Python 3.11 has no os.setns;
`netlab.netns.entered` does the same through `ctypes`, whose import costs
an exec'd plugin ~3 ms of its start-up (ctypes defines its whole type
zoo and imports `os`); the two symbols needed here cost ~0.5 ms.
"""

from __future__ import annotations

import _ctypes
import posix

CLONE_NEWNET = 0x40000000
SELF = "/proc/thread-self/ns/net"
_OPEN = posix.O_RDONLY | posix.O_CLOEXEC


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _CFunc(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


_setns_fn = _CFunc(_ctypes.dlsym(_ctypes.dlopen(None, 0), "setns"))


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as `fd`."""
    if _setns_fn(fd, CLONE_NEWNET) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"setns: {posix.strerror(err)}")


class entered:
    """``with entered(path):`` the calling thread inside that namespace, back in its own after.

    Only the calling thread moves (the network namespace is a per-thread
    attribute); OSError when `path` is not a namespace one may enter.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._own = -1

    def __enter__(self) -> None:
        own = posix.open(SELF, _OPEN)
        try:
            target = posix.open(self.path, _OPEN)
            try:
                setns(target)
            finally:
                posix.close(target)
        except BaseException:
            posix.close(own)
            raise
        self._own = own

    def __exit__(self, *exc: object) -> None:
        own, self._own = self._own, -1
        try:
            setns(own)
        finally:
            posix.close(own)
