"""Netlink in batches: many requests in one sendmsg, errors mapped back to their requests.

Why not pyroute2 for this: an IPVS full sync is thousands of small requests
(a virtual server, a real server, an address on kube-ipvs0 each), and
pyroute2 0.9 spends ~0.5 ms of Python per request on host CPUs (its
message objects, and an asyncio loop turn per request), ~10 ms in a TCG
guest: that was nearly all of a 30 s sync at 1k services. Here a request
is bytes built with struct, and a batch is one sendmsg.

How the kernel answers a batch (netlink_rcv_skb): it handles the messages
of one sendmsg in order, synchronously, and queues an NLMSG_ERROR for
every message that failed and for every message that asked for an ack
(NLM_F_ACK). So only the last message of a batch asks for an ack: every
error carries the sequence number of the request that failed, and the
last ack says the kernel is done with the batch. ipvsadm's `--restore`
and `ip -batch` send one request per round trip instead; libnl and
iproute2 both rely on the same per-sequence error mapping.
"""

from __future__ import annotations

import errno as _errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# The message framing and attribute codec are the CNI plugins' (cni.netlink): one for netlab.
from cni.netlink import NLMSG_HDR, attr, attrs as parse_attrs, frame, messages  # noqa: F401 - re-exported

GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved (struct genlmsghdr)

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the failed request's payload back
SO_RCVBUFFORCE = 33

GENL_ID_CTRL = 0x10  # nlctrl, generic netlink's own family
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# A batch is at most this many bytes per sendmsg (the kernel refuses more than
# the socket's send buffer, ~208 KiB by default), and at most one request per
# this many bytes of receive buffer: if every request of a batch failed, all
# their errors (an skb each, under 1 KiB with NETLINK_CAP_ACK) must fit, or the
# kernel drops some and the read fails with ENOBUFS.
BATCH_BYTES = 64 * 1024
RCVBUF_PER_REQUEST = 1024
# No answer for this long: the exchange is abandoned (the sync fails and is retried).
RECV_TIMEOUT = 120.0


def _pad(n: int) -> int:
    return (n + 3) & ~3


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def u16(v: int) -> bytes:
    return struct.pack("=H", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def be16(v: int) -> bytes:
    return struct.pack("!H", v)


def asciiz(s: str) -> bytes:
    return s.encode() + b"\0"


@dataclass(frozen=True)
class Message:
    """One received netlink message: header fields and its payload (after the header)."""

    type: int
    flags: int
    seq: int
    payload: bytes


def split_messages(data: bytes) -> Iterator[Message]:
    """The messages of one datagram the kernel sent."""
    for off, n, kind, flags, seq in messages(data):
        yield Message(kind, flags, seq, data[off + NLMSG_HDR.size:off + n])


def error_code(m: Message) -> int:
    """The errno of an NLMSG_ERROR (0: an ack). The kernel sends it negated."""
    return -struct.unpack_from("=i", m.payload)[0]


def genl_body(cmd: int, version: int, attrs: bytes) -> bytes:
    return GENL_HDR.pack(cmd, version, 0) + attrs


def windows(
    requests: list[tuple[int, int, bytes]], limit: int = BATCH_BYTES, count: int = 1 << 30
) -> Iterator[list[tuple[int, int, bytes]]]:
    """Consecutive slices of (type, flags, body) requests, each at most `limit` bytes framed
    and `count` requests."""
    cur: list[tuple[int, int, bytes]] = []
    size = 0
    for r in requests:
        n = _pad(NLMSG_HDR.size + len(r[2]))
        if cur and (size + n > limit or len(cur) >= count):
            yield cur
            cur, size = [], 0
        cur.append(r)
        size += n
    if cur:
        yield cur


class NetlinkError(OSError):
    """A netlink request failed (errno as the kernel gave it)."""


@dataclass
class BatchSocket:
    """One netlink socket (already in the right namespace) that sends requests in batches."""

    sock: socket.socket
    seq: int = 0
    max_requests: int = 1 << 30  # per sendmsg (see RCVBUF_PER_REQUEST)

    @classmethod
    def open(cls, protocol: int, make=socket.socket) -> "BatchSocket":
        """`make(family, type, proto)` creates the socket (netns.socket_in puts it in a namespace)."""
        s = make(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # room for a batch's errors
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
                break
            except OSError:
                continue
        s.settimeout(RECV_TIMEOUT)
        rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return cls(s, max_requests=max(1, rcvbuf // RCVBUF_PER_REQUEST))

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def batch(self, requests: list[tuple[int, int, bytes]]) -> list[int]:
        """Send (type, flags, body) requests in order; return each one's errno (0: done).

        `flags` need not hold NLM_F_REQUEST or NLM_F_ACK: every request gets
        the first, the last of each sendmsg the second. A request whose
        batch could not be confirmed at all (the socket failed) raises.
        """
        result: list[int] = []
        for win in windows(requests, BATCH_BYTES, self.max_requests):
            seqs = [self._next_seq() for _ in win]
            first, last = seqs[0], seqs[-1]
            data = b"".join(
                frame(kind, flags | NLM_F_REQUEST | (NLM_F_ACK if seq == last else 0), seq, body)
                for (kind, flags, body), seq in zip(win, seqs)
            )
            self.sock.send(data)
            errs = self._collect(first, last)
            result += [errs.get(seq, 0) for seq in seqs]
        return result

    def _collect(self, first: int, last: int) -> dict[int, int]:
        """Read NLMSG_ERRORs until the ack of `last`: seq -> errno of each failed request."""
        errs: dict[int, int] = {}
        while True:
            for m in split_messages(self.sock.recv(1 << 16)):
                if m.type != NLMSG_ERROR or not _in_window(m.seq, first, last):
                    continue  # a stale answer from an earlier, abandoned exchange
                code = error_code(m)
                if code:
                    errs[m.seq] = code
                if m.seq == last:
                    return errs

    def request(self, kind: int, flags: int, body: bytes) -> None:
        """One request, acked; raises NetlinkError on failure."""
        code = self.batch([(kind, flags, body)])[0]
        if code:
            raise NetlinkError(code, errno_name(code))

    def dump(self, kind: int, body: bytes) -> list[Message]:
        """All messages of one dump (NLM_F_DUMP) request."""
        seq = self._next_seq()
        self.sock.send(frame(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        out: list[Message] = []
        while True:
            for m in split_messages(self.sock.recv(1 << 20)):
                if m.seq != seq:
                    continue
                if m.type == NLMSG_DONE:
                    return out
                if m.type == NLMSG_ERROR:
                    code = error_code(m)
                    if code:
                        raise NetlinkError(code, errno_name(code))
                    return out
                out.append(m)

    def genl_family(self, name: str) -> int:
        """A generic netlink family's id (CTRL_CMD_GETFAMILY; the kernel loads its module if it can)."""
        seq = self._next_seq()
        body = genl_body(CTRL_CMD_GETFAMILY, 1, attr(CTRL_ATTR_FAMILY_NAME, asciiz(name)))
        self.sock.send(frame(GENL_ID_CTRL, NLM_F_REQUEST, seq, body))
        while True:
            for m in split_messages(self.sock.recv(1 << 16)):
                if m.seq != seq:
                    continue
                if m.type == NLMSG_ERROR:
                    code = error_code(m)
                    raise NetlinkError(code, errno_name(code))
                a = parse_attrs(m.payload, GENL_HDR.size)
                return struct.unpack("=H", a[CTRL_ATTR_FAMILY_ID][:2])[0]


def _in_window(seq: int, first: int, last: int) -> bool:
    if first <= last:
        return first <= seq <= last
    return seq >= first or seq <= last  # the sequence wrapped


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, str(code))

