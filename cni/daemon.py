"""The node's CNI daemon: runs the calls netlab's plugin executables hand it.

`netlab cni install` builds each plugin executable from cni/shim.c when a C
compiler is there: a small program that connects to the abstract unix
socket "@netlab-cni/1" of the network namespace it was exec'd in, sends
the plugin name, its environment and stdin, and writes back what this
daemon answers (exit code and stdout). The answer is cni.main.execute's,
the same function the Python executable runs, so a call means the same
with the daemon or without it (the executable then runs it in a Python
process of its own). What the daemon saves is the interpreter's start and
the imports, per call: Cilium's cilium-cni and Multus' thick plugin hand
their calls to a node daemon for the same reason.

An abstract socket belongs to the network namespace it was bound in, so
one daemon serves the runtime of one node (run it where the runtime runs
its plugins: `netlab cni serve`, or `--netns NODE`). Only root and the
daemon's own user are served (SO_PEERCRED; any other caller is answered
REFUSED and runs the call itself); the executable checks the daemon's
credentials before it sends anything.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

SOCKET_NAME = "netlab-cni/1"  # abstract (leading NUL), per network namespace; cni/shim.c's
MAGIC = b"NLCNI\x01"
REFUSED = -1  # the answer's exit code for "not served here": the executable runs the call itself
MAX_FIELD = 64 << 20  # no config, environment or result is this large; a longer one is not a call
WORKERS = 8  # calls run at once (each thread keeps its own netlink sockets: cni.nscache)
# How long a caller may take to send its call: the executable sends it at once, so a slow one
# is not ours, and must not hold a worker. One the daemon does not serve gets a second.
READ_TIMEOUT = 30.0
UNSERVED_READ_TIMEOUT = 1.0

_U32 = struct.Struct("=I")
_ANSWER = struct.Struct("=iI")


def read_exact(conn: socket.socket, n: int) -> bytes:
    """`n` bytes from a stream socket; EOFError if the peer closes it first (netlab.sandbox_workers reads with it too)."""
    chunks, got = [], 0
    while got < n:
        c = conn.recv(min(n - got, 1 << 20))
        if not c:
            raise EOFError(f"the peer closed the connection after {got} of {n} bytes")
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


def _field(conn: socket.socket) -> bytes:
    (n,) = _U32.unpack(read_exact(conn, 4))
    if n > MAX_FIELD:
        raise ValueError(f"field of {n} bytes")
    return read_exact(conn, n)


def read_request(conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """(plugin, environment, stdin) of one call, as cni/shim.c sends it."""
    if read_exact(conn, len(MAGIC)) != MAGIC:
        raise ValueError("not a netlab CNI call")
    plugin = _field(conn).decode()
    env: dict[str, str] = {}
    for entry in _field(conn).split(b"\0"):
        k, sep, v = entry.partition(b"=")
        if sep:
            env[k.decode(errors="surrogateescape")] = v.decode(errors="surrogateescape")
    return plugin, env, _field(conn)


def encode_request(plugin: str, env: dict[str, str], stdin: bytes) -> bytes:
    """What cni/shim.c sends (for tests and for callers in Python)."""
    blob = b"".join(f"{k}={v}".encode(errors="surrogateescape") + b"\0" for k, v in env.items())
    return MAGIC + b"".join(_U32.pack(len(f)) + f for f in (plugin.encode(), blob, stdin))


def _peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def handle(conn: socket.socket) -> None:
    """One call: the request in, cni.main.execute's exit code and stdout out."""
    from cni import registry
    from cni.main import execute

    with conn:
        served = _peer_uid(conn) in (0, os.geteuid())
        conn.settimeout(READ_TIMEOUT if served else UNSERVED_READ_TIMEOUT)
        try:
            plugin, env, stdin = read_request(conn)
        except (EOFError, ValueError, OSError):  # socket.timeout is an OSError
            return  # not a call from the executable, cut short, or too slow: nothing to answer
        conn.settimeout(None)
        if not served or registry.short(plugin) is None:
            # Not a caller this daemon serves (a user the executable's own process would run
            # as, say in another user namespace), or a plugin it does not know: REFUSED, and
            # the executable runs the call itself, as without a daemon.
            code, data = REFUSED, b""
        else:
            code, out = execute(registry.short(plugin), env, stdin, caller_environ=True)
            data = (out + "\n").encode() if out else b""
        try:
            conn.sendall(_ANSWER.pack(code, len(data)) + data)
        except OSError:
            pass  # the caller is gone; what was done stays done, as for a killed plugin process


def listen() -> socket.socket:
    """The daemon's socket, in the calling thread's network namespace."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.bind("\0" + SOCKET_NAME)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"@{SOCKET_NAME} is taken in this network namespace "
                               f"(another netlab CNI daemon runs here?): {e.strerror}") from None
    s.listen(128)
    return s


def serve(sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Answer calls on `sock` until it is shut down (`stop`), then let running calls finish."""
    # Warm: the imports every call makes, before the first call pays them.
    from cni import main, registry  # noqa: F401
    from cni.plugins import bridge, hostlocal  # noqa: F401

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="netlab-cni") as pool:
        if on_ready:
            on_ready()
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # shut down by stop(), or closed
                break
            pool.submit(handle, conn)
    sock.close()


def stop(sock: socket.socket) -> None:
    """Wake serve()'s accept and end it (no new calls; running ones finish)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
