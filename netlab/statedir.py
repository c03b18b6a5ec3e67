"""The lab's state dir, kept in memory as /run is meant to be.

/run/netlab/<lab>/ holds what lives exactly as long as the lab's
namespaces: the store, PID files, host-local's reservations, flannel's
subnet.env, the kubelet's journal, logs. On a systemd machine /run is a
tmpfs, so all of it goes with a reboot, as the namespaces do. Where /run is
on disk (a container's overlay, some CI machines), netlab mounts a tmpfs of
its own on the lab's dir when `up` makes it and unmounts it at `down`, as
containerd and the kubelet mount tmpfs for what must not reach a disk:
otherwise a reboot would leave state claiming a lab whose namespaces are
gone, and every new file costs an on-disk inode (ext4 took ~1 ms of CPU
per host-local reservation, 14% of a 1000-pod build's, on this project's
CI machine).

Each mount's source is "netlab-<lab>", so /proc/mounts says whose it is;
`down` unmounts only a tmpfs of that source on that dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import re
import shutil
from typing import Iterator

from netlab import names

log = logging.getLogger("netlab.statedir")

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
# As systemd mounts /run: no set-uid programs or device nodes; at most a fifth of memory.
MOUNT_FLAGS = 0x2 | 0x4  # MS_NOSUID | MS_NODEV
MOUNT_DATA = b"mode=0755,size=20%"
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


class _Statfs(ctypes.Structure):
    # struct statfs begins with f_type on every Linux ABI (a long); the rest is not read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def in_memory(path: str) -> bool:
    """True if `path` is on a tmpfs or ramfs (statfs(2)'s f_type)."""
    buf = _Statfs()
    if _libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return buf.f_type in (TMPFS_MAGIC, RAMFS_MAGIC)


def source(lab: str) -> str:
    return f"netlab-{lab}"


def _unescape(field: bytes) -> bytes:
    """A /proc/self/mountinfo path field: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def our_mount(lab: str) -> bool:
    """True if the lab's dir is a mount point of netlab's own tmpfs for this lab (proc(5): mountinfo)."""
    target = os.fsencode(os.path.realpath(names.lab_dir(lab)))
    want = (b"tmpfs", source(lab).encode())
    with open("/proc/self/mountinfo", "rb") as f:  # bytes: a path need not be UTF-8
        for line in f:
            head, _, tail = line.partition(b" - ")
            fields, after = head.split(), tail.split()
            if len(fields) > 4 and len(after) > 1 and _unescape(fields[4]) == target and tuple(after[:2]) == want:
                return True
    return False


@contextlib.contextmanager
def _run_dir_locked() -> Iterator[None]:
    """Two `up`s of one lab at once mount one tmpfs, not two stacked (the lab's own lock lives inside it)."""
    os.makedirs(names.RUN_DIR, exist_ok=True)
    fd = os.open(names.RUN_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def make(lab: str) -> bool:
    """The lab's dir, made in memory: a tmpfs of the lab's own unless the run dir already is in memory.

    True if this call mounted one. Called by `up` before it writes anything there. Where
    mounting is not allowed, the dir stays on disk (with a warning): slower, never wrong.
    """
    d = names.lab_dir(lab)
    with _run_dir_locked():
        os.makedirs(d, exist_ok=True)
        if in_memory(d) or our_mount(lab):
            return False
        if os.listdir(d):  # a dir of an older netlab on disk: never hide files under a mount
            return False
        try:
            _mount_tmpfs(lab, d)
        except OSError as e:  # a container that may not mount: the state stays on disk, as before
            log.warning("the lab's state stays on disk: %s", e)
            return False
        return True


def _mount_tmpfs(lab: str, d: str) -> None:
    if _libc.mount(source(lab).encode(), d.encode(), b"tmpfs", MOUNT_FLAGS, MOUNT_DATA) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {d}: {os.strerror(err)}")


def remove(lab: str) -> bool:
    """Unmount the lab's tmpfs if it has one (the files go with it) and remove the dir. True if it was there.

    Detached (MNT_DETACH): a file still open in it, such as the lock the
    caller holds, keeps the tmpfs until it is closed, and never holds up
    the removal.
    """
    d = names.lab_dir(lab)
    if not os.path.isdir(d):
        return False
    if our_mount(lab) and _libc.umount2(d.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {d}: {os.strerror(err)}")
    shutil.rmtree(d, ignore_errors=True)
    return True
