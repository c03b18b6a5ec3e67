"""Netlink sockets per network namespace, kept across calls.

Opening a socket inside a namespace costs a setns(2) round trip; a lab
wiring hundreds of pods into a handful of node namespaces should pay that
once per node, not once per pod. Sockets are cached per thread (a netlink
socket carries one request at a time) and keyed by the namespace's inode,
which is what identifies a namespace (a path can be unmounted and reused).

A cached socket keeps its namespace alive after `ip netns del`, so entries
whose path no longer leads to the same inode are closed on a periodic
sweep, and `forget()` lets a caller that tears a node down drop them at once.
"""

import _thread
import posix  # os.stat without importing `os` (see cni.main)

from cni.netlink import RtNetlink

SELF = "/proc/thread-self/ns/net"
_SWEEP_EVERY = 128

_local = _thread._local()  # threading.local, without importing `threading`
_all_lock = _thread.allocate_lock()
_all: list[dict[int, tuple[str, RtNetlink]]] = []  # every thread's cache, for forget()


def _cache() -> dict[int, tuple[str, RtNetlink]]:
    c = getattr(_local, "cache", None)
    if c is None:
        c = _local.cache = {}
        _local.calls = 0
        with _all_lock:
            _all.append(c)
    return c


def _path(ns: str) -> str:
    from netlab import netns as _netns

    return _netns.path(ns)


def _inode(path: str) -> int | None:
    try:
        return posix.stat(path).st_ino
    except OSError:
        return None


def netlink(ns: str | None) -> RtNetlink:
    """The cached rtnetlink socket of namespace `ns` (None: the calling thread's own)."""
    cache = _cache()
    _local.calls += 1
    if _local.calls % _SWEEP_EVERY == 0:
        _sweep(cache)
    path = SELF if ns is None else _path(ns)
    ino = posix.stat(path).st_ino  # FileNotFoundError for a missing namespace: the caller's to handle
    hit = cache.get(ino)
    if hit is not None:
        return hit[1]
    if ns is None:
        nl = RtNetlink.open()
    else:
        from cni.nsenter import entered

        with entered(path):
            nl = RtNetlink.open()
    cache[ino] = (path, nl)
    return nl


def _sweep(cache: dict[int, tuple[str, RtNetlink]]) -> None:
    for ino, (path, nl) in list(cache.items()):
        if path != SELF and _inode(path) != ino:
            nl.close()
            del cache[ino]


def forget(ns: str | None = None) -> None:
    """Close cached sockets of namespace `ns` in every thread (None: all of them)."""
    with _all_lock:
        caches = list(_all)
    target = None if ns is None else _path(ns)
    for cache in caches:
        for ino, (path, nl) in list(cache.items()):
            if target is None or path == target or (path != SELF and _inode(path) != ino):
                nl.close()
                cache.pop(ino, None)
