"""Network namespaces without a fork per call.

`ip netns add` and pyroute2's ``netns.create`` both fork a child to call
unshare(2); pyroute2 also forks to open a socket inside a namespace. A lab
of a thousand pods would pay for thousands of forks. The network namespace
is a per-thread attribute on Linux, so this module switches only the
calling thread (unshare/setns), does its work, and switches back. A netlink
socket stays bound to the namespace it was created in, so an IPRoute built
while the thread is "inside" keeps working after the thread has left.

Namespaces are bind-mounted under /run/netns exactly as iproute2 does, so
``ip netns exec NAME ...`` works on everything netlab creates.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

NETNS_DIR = "/run/netns"

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS = 0x8913, 0x8914
_IFF_UP = 0x1
_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> str:
    """The bind-mount path of a named namespace (absolute paths pass through)."""
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


_SELF = "/proc/thread-self/ns/net"  # this thread's namespace (the network namespace is per thread)
_PID1 = "/proc/1/ns/net"  # the host's, where PID 1 is the host's init


def _identity(p: str) -> tuple[int, int]:
    """A namespace's identity: (st_dev, st_ino) of its nsfs file, as `ip netns identify` compares them.

    The inode number alone is not enough: a mount point under /run/netns
    whose mount is gone is a plain file on /run, with an inode number of
    another file system that may equal some namespace's.
    """
    st = os.stat(p)
    return st.st_dev, st.st_ino


def current_name() -> str | None:
    """The name under /run/netns of this thread's network namespace; None when it has none.

    `ip netns identify` for the calling thread, without a fork. Positive
    identification: a namespace netlab (or iproute2) made has a name here;
    the host's root namespace does not.
    """
    mine = _identity(_SELF)
    for name in list_names():
        try:
            if _identity(path(name)) == mine:
                return name
        except OSError:  # removed meanwhile, or a mount point we may not stat
            continue
    return None


def in_root_namespace() -> bool:
    """Whether this thread is in the host's root network namespace (PID 1's).

    Where /proc/1/ns/net cannot be read (a container, a sandbox without
    CAP_SYS_PTRACE over PID 1), "not the host's" cannot be told by comparison:
    then only a named namespace counts as not the root one.
    """
    try:
        root = _identity(_PID1)
    except OSError:
        return current_name() is None
    return _identity(_SELF) == root


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with this thread inside namespace `name`.

    Only the calling thread moves; other threads and the process's
    other namespaces (mount, pid) are untouched.
    """
    own = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_for_good(name)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def enter_for_good(name: str) -> None:
    """Move the calling thread into namespace `name` and stay (threads it starts later inherit it)."""
    target = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    finally:
        os.close(target)


def _lo_up() -> None:
    """`ip link set lo up` in the calling thread's namespace (two ioctls, no netlink)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


# The inode every mount point of this process is a hard link to (an fd that pins it), see _mount_point.
_mount_inode: list[int] = []
_mount_lock = __import__("_thread").allocate_lock()  # an fd is closed only while no thread links from it


def link_fd(fd: int, p: str) -> bool:
    """A new name `p` for the file open as `fd` (linkat of its /proc link); False if it has no name left.

    FileExistsError when `p` exists.
    """
    if _libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, p.encode(), _AT_SYMLINK_FOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), p)
    return False  # ENOENT: the last name is gone; anything else: the caller makes a new file


def _mount_point(p: str) -> None:
    """The empty file a namespace is bind-mounted on, made with O_EXCL semantics as `ip netns add` makes it.

    Each is a new name for one shared inode (a hard link), not a new inode:
    the mount is on the name, so every namespace still has its own file for
    `ip netns` and friends. Where /run is a disk file system, allocating an
    inode is what costs: without a journal, ext4 skips every inode freed in
    the last minutes (each lab's teardown frees thousands), 0.5-2 ms per
    file on the shared machines; a link costs 20 us and frees nothing.
    """
    with _mount_lock:
        if _mount_inode:
            if link_fd(_mount_inode[0], p):
                return
            os.close(_mount_inode.pop())  # its last name is gone (every namespace removed): start a new one
        _mount_inode.append(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))


def create(name: str, *, lo_up: bool = False) -> bool:
    """Create a named namespace; return False if it already exists (upsert).

    `lo_up` brings its loopback up while this thread is still inside (as a
    container runtime does for a sandbox), also when it already existed.
    """
    p = path(name)
    os.makedirs(NETNS_DIR, exist_ok=True)
    try:
        _mount_point(p)
    except FileExistsError:
        if os.path.ismount(p):
            if lo_up:
                with entered(p):
                    _lo_up()
            return False
        # A mount point left behind by an interrupted create: finish it.
    own = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) for {name}: {os.strerror(err)}")
        try:
            if _libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", _MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind-mount of netns {name}: {os.strerror(err)}")
            if lo_up:
                try:
                    _lo_up()
                except BaseException:
                    _libc.umount2(p.encode(), _MNT_DETACH)
                    raise
        finally:
            _setns(own)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(p)
        raise
    finally:
        os.close(own)
    return True


def remove(name: str) -> bool:
    """Remove a named namespace; a missing one is success (returns False).

    The kernel destroys the namespace, and every link inside it, once the
    last reference (mount, process, socket) is gone.
    """
    p = path(name)
    if not os.path.lexists(p):
        return False
    if _libc.umount2(p.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {p}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)
    return True


def iproute(name: str | None):  # -> pyroute2.IPRoute (imported lazily: plugin start-up time)
    """An IPRoute whose netlink socket lives in namespace `name` (None: the caller's).

    For requests only: subscribed to no multicast group (pyroute2 joins
    links, addresses, routes and neighbours by default), so the kernel does
    not copy every event of a busy namespace (a veth per pod) into a socket
    nobody reads.
    """
    from pyroute2 import IPRoute

    if name is None:
        return IPRoute(groups=0)
    with entered(name):
        return IPRoute(groups=0)


def socket_in(name: str, family: int, type_: int, proto: int = 0):
    """A socket created inside namespace `name` (it stays bound there)."""
    import socket

    with entered(name):
        return socket.socket(family, type_, proto)


def write_sysctl(name: str, key: str, value: str | int) -> None:
    """Set a per-namespace sysctl (net.*) from inside namespace `name`.

    /proc/sys/net resolves against the opening thread's namespace, so the
    file is opened while this thread is inside.
    """
    rel = key.replace(".", "/")
    with entered(name):
        with open(f"/proc/sys/{rel}", "w") as f:
            f.write(str(value))


def read_sysctl(name: str, key: str) -> str:
    rel = key.replace(".", "/")
    with entered(name):
        with open(f"/proc/sys/{rel}") as f:
            return f.read().strip()


def inode(name: str) -> int:
    return os.stat(path(name)).st_ino


@contextlib.contextmanager
def _child_enters(name: str) -> Iterator:
    """A preexec_fn that moves a forked child into namespace `name`.

    The namespace fd is opened in the parent and closed once the child has
    been forked, so the child only calls setns(2), as `ip netns exec` does.
    """
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)

    def _enter() -> None:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            os._exit(126)

    try:
        yield _enter
    finally:
        os.close(fd)


def popen_in(name: str, argv: list[str], **kwargs):
    """subprocess.Popen of `argv` inside namespace `name`, in a new session."""
    import subprocess

    kwargs.setdefault("start_new_session", True)
    with _child_enters(name) as enter:
        return subprocess.Popen(argv, preexec_fn=enter, **kwargs)


def run_in(name: str, argv: list[str], **kwargs):
    """subprocess.run of `argv` inside namespace `name`."""
    import subprocess

    with _child_enters(name) as enter:
        return subprocess.run(argv, preexec_fn=enter, **kwargs)
