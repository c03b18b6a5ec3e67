"""IPVS mode's sync as data: the kernel's table in, a list of netlink requests out.

Pure (no sockets): proxy/ipvs_kernel.py reads the table, calls `diff_table`,
and sends the requests of `Op.request` in batches (proxy/nlbatch.py). The
diff is kube-proxy's syncService / syncEndpoint / cleanLegacyService with
graceful termination (proxy.ipvs.diff_real_servers): only what differs
becomes a request, in an order the kernel can apply in one pass (a virtual
server before its real servers; deleted virtual servers last).

The messages carry exactly the attributes ipvsadm and moby/ipvs (kube-proxy's
library) send: NAT forwarding, thresholds 0, netmask /32, the flags with a
full mask. Reads: the virtual servers come from one IPVS_CMD_GET_SERVICE
dump (kube-proxy's GetVirtualServers); their real servers from one read of
/proc/net/ip_vs, which lists every destination with its weight and
connection counts (what kube-proxy gets from one GetRealServers dump per
virtual server), and from a dump each for the virtual servers that file
left out (see `merge_snapshot`). /proc's persistence timeout is in jiffies,
so the virtual servers themselves are not taken from it.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from proxy.ipvs import FLAG_PERSISTENT, IpvsPlan, RealServer, VirtualServer, diff_real_servers
from proxy.nlbatch import (
    GENL_HDR,
    NLM_F_CREATE,
    NLM_F_EXCL,
    Message,
    asciiz,
    attr,
    be16,
    genl_body,
    nested,
    parse_attrs,
    u16,
    u32,
)

# include/uapi/linux/ip_vs.h
GENL_NAME = "IPVS"
GENL_VERSION = 1
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_FLUSH = 17
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_ADDR_FAMILY = 7, 8, 11
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT, as kube-proxy's real servers

PROTO = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTO_NAME = {v: k for k, v in PROTO.items()}

# rtnetlink (include/uapi/linux/rtnetlink.h, if_addr.h)
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index

Table = dict[tuple[str, str, int], tuple[VirtualServer, set[RealServer]]]


# -- IPVS messages ---------------------------------------------------------------------------


def _svc_key(vs: VirtualServer) -> bytes:
    return (attr(SVC_AF, u16(socket.AF_INET)) + attr(SVC_PROTOCOL, u16(PROTO[vs.protocol]))
            + attr(SVC_ADDR, socket.inet_aton(vs.address)) + attr(SVC_PORT, be16(vs.port)))


def _svc_full(vs: VirtualServer) -> bytes:
    flags = FLAG_PERSISTENT if vs.persistent_timeout else 0
    return (_svc_key(vs) + attr(SVC_SCHED_NAME, asciiz(vs.scheduler))
            + attr(SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
            + attr(SVC_TIMEOUT, u32(vs.persistent_timeout))
            + attr(SVC_NETMASK, socket.inet_aton("255.255.255.255")))


def _dest(rs: RealServer) -> bytes:
    return (attr(DEST_ADDR_FAMILY, u16(socket.AF_INET)) + attr(DEST_ADDR, socket.inet_aton(rs.address))
            + attr(DEST_PORT, be16(rs.port)) + attr(DEST_FWD_METHOD, u32(FWD_MASQ))
            + attr(DEST_WEIGHT, u32(rs.weight)) + attr(DEST_U_THRESH, u32(0)) + attr(DEST_L_THRESH, u32(0)))


@dataclass(frozen=True)
class Op:
    """One change to the IPVS table: a virtual server's, or one of its real servers'."""

    kind: str  # add-vs | update-vs | delete-vs | add-rs | update-rs | quiesce-rs | delete-rs
    vs: VirtualServer
    rs: RealServer | None = None

    # kind -> (IPVS command, the errno that means "already so": a delete of what is gone is done)
    COMMANDS: ClassVar[dict[str, tuple[int, int]]] = {
        "add-vs": (CMD_NEW_SERVICE, 0),
        "update-vs": (CMD_SET_SERVICE, 0),
        "delete-vs": (CMD_DEL_SERVICE, errno.ESRCH),
        "add-rs": (CMD_NEW_DEST, 0),
        "update-rs": (CMD_SET_DEST, 0),
        "quiesce-rs": (CMD_SET_DEST, 0),  # weight 0: graceful termination
        "delete-rs": (CMD_DEL_DEST, errno.ENOENT),
    }

    def body(self) -> bytes:
        """The generic netlink request (genlmsghdr + attributes) for this change."""
        cmd, _ = self.COMMANDS[self.kind]
        if self.rs is None:
            svc = _svc_key(self.vs) if self.kind == "delete-vs" else _svc_full(self.vs)
            return genl_body(cmd, GENL_VERSION, nested(CMD_ATTR_SERVICE, svc))
        return genl_body(cmd, GENL_VERSION,
                         nested(CMD_ATTR_SERVICE, _svc_key(self.vs)) + nested(CMD_ATTR_DEST, _dest(self.rs)))

    def flags(self) -> int:
        return NLM_F_CREATE | NLM_F_EXCL if self.kind.startswith("add") else 0

    @property
    def ok_errno(self) -> int:
        return self.COMMANDS[self.kind][1]

    def __str__(self) -> str:
        return f"{self.kind} {self.vs}" + (f" -> {self.rs} weight {self.rs.weight}" if self.rs else "")


def dump_services_body() -> bytes:
    return genl_body(CMD_GET_SERVICE, GENL_VERSION, b"")


def dump_dests_body(vs: VirtualServer) -> bytes:
    return genl_body(CMD_GET_DEST, GENL_VERSION, nested(CMD_ATTR_SERVICE, _svc_key(vs)))


def parse_service(m: Message) -> VirtualServer | None:
    """A GET_SERVICE dump message -> VirtualServer (None: fwmark or IPv6, not netlab's)."""
    a = parse_attrs(m.payload, GENL_HDR.size).get(CMD_ATTR_SERVICE)
    if a is None:
        return None
    s = parse_attrs(a)
    if SVC_FWMARK in s or struct.unpack("=H", s[SVC_AF][:2])[0] != socket.AF_INET:
        return None
    flags = struct.unpack("=I", s[SVC_FLAGS][:4])[0] if SVC_FLAGS in s else 0
    proto = struct.unpack("=H", s[SVC_PROTOCOL][:2])[0]
    return VirtualServer(
        address=socket.inet_ntoa(s[SVC_ADDR][:4]),
        protocol=PROTO_NAME.get(proto, str(proto)),
        port=struct.unpack("!H", s[SVC_PORT])[0],
        scheduler=s[SVC_SCHED_NAME].rstrip(b"\0").decode(),
        persistent_timeout=struct.unpack("=I", s[SVC_TIMEOUT])[0] if flags & FLAG_PERSISTENT else 0,
    )


def parse_dest(m: Message) -> RealServer | None:
    a = parse_attrs(m.payload, GENL_HDR.size).get(CMD_ATTR_DEST)
    if a is None:
        return None
    d = parse_attrs(a)
    if DEST_ADDR_FAMILY in d and struct.unpack("=H", d[DEST_ADDR_FAMILY][:2])[0] != socket.AF_INET:
        return None

    def u(k: int) -> int:
        return struct.unpack("=I", d[k][:4])[0] if k in d else 0

    return RealServer(socket.inet_ntoa(d[DEST_ADDR][:4]), struct.unpack("!H", d[DEST_PORT])[0], u(DEST_WEIGHT),
                      active_conns=u(DEST_ACTIVE_CONNS), inactive_conns=u(DEST_INACT_CONNS))


def parse_proc_ip_vs(text: str) -> dict[tuple[str, str, int], set[RealServer]]:
    """/proc/net/ip_vs -> the real servers of every IPv4 address:port virtual server.

        TCP  0A600001:0050 rr  persistent 150000 FFFFFFFF
          -> 0AF40105:1F90      Masq    3      0          0

    (ip_vs_info_seq_show; hex addresses and ports.) Fwmark and IPv6
    virtual servers are left out, as parse_service leaves them out.
    """
    out: dict[tuple[str, str, int], set[RealServer]] = {}
    cur: set[RealServer] | None = None
    for line in text.splitlines()[3:]:  # a version line and two column headers
        f = line.split()
        if not f:
            continue
        if f[0] == "->":
            if cur is not None and not f[1].startswith("["):
                ip, port = f[1].split(":")
                cur.add(RealServer(_hexip(ip), int(port, 16), int(f[3]),
                                   active_conns=int(f[4]), inactive_conns=int(f[5])))
            continue
        if f[0] == "FWM" or f[1].startswith("["):
            cur = None
            continue
        ip, port = f[1].split(":")
        cur = out.setdefault((_hexip(ip), f[0], int(port, 16)), set())
    return out


def merge_snapshot(
    services: Mapping[tuple[str, str, int], VirtualServer],
    proc: Mapping[tuple[str, str, int], set[RealServer]],
    dump: Callable[[VirtualServer], set[RealServer]],
) -> Table:
    """The table a sync diffs against: each virtual server with its real servers from
    /proc/net/ip_vs where the file listed it, else from a dump of its own.

    /proc/net/ip_vs cannot be trusted to list them all. Up to Linux 6.1 at
    least, every namespace's virtual servers share one hash table; the
    file's ->next counts the other namespaces' entries in its position
    while its ->start, which each read(2) after the first resumes from,
    counts only this namespace's: with virtual servers in other namespaces
    (every other node of a lab on one kernel; a namespace being torn down)
    the reads after the first page skip entries or end early. Measured in
    the stock-kernel guest: 50 virtual servers beside another namespace's
    300, the file showed the first 32 (one page) and ended. A record is
    written whole or not at all (seq_file retries one that overflows), so a
    virtual server the file did list has all its real servers; one it left
    out costs one GetRealServers dump, as in kube-proxy.
    """
    return {key: (vs, proc[key] if key in proc else dump(vs)) for key, vs in services.items()}


def _hexip(h: str) -> str:
    return socket.inet_ntoa(int(h, 16).to_bytes(4, "big"))


# -- the diff ----------------------------------------------------------------------------------


@dataclass
class TableDiff:
    ops: list[Op] = field(default_factory=list)
    # Who is draining after this sync: virtual server -> real server -> since.
    draining: dict[tuple[str, str, int], dict[tuple[str, int], float]] = field(default_factory=dict)


def diff_table(
    p: IpvsPlan,
    current: Table,
    terminating: Mapping[tuple[str, str, int], Mapping[tuple[str, int], float]],
    now: float,
    timeout: float,
) -> TableDiff:
    """The changes that make the kernel's table (`current`) equal the plan, in applicable order.

    A virtual server that is new is added and then its real servers; one
    that differs (scheduler, persistence) is updated in place; real servers
    differ as diff_real_servers says (add, update, quiesce to weight 0, delete);
    virtual servers the plan lacks are deleted last, with their real servers
    (cleanLegacyService).
    """
    out = TableDiff()
    for key, want in sorted(p.virtual_servers.items()):
        have = current.get(key)
        have_rs: set[RealServer] = set()
        if have is None:
            out.ops.append(Op("add-vs", want))
        else:
            if have[0] != want:
                out.ops.append(Op("update-vs", want))
            have_rs = have[1]
        want_rs = p.real_servers[key]
        if have_rs == want_rs:  # same addresses, ports and weights: nothing to add, change or drain
            continue
        d = diff_real_servers(want, want_rs, have_rs, terminating.get(key, {}), now, timeout)
        out.ops += [Op("add-rs", want, rs) for rs in d.add]
        out.ops += [Op("update-rs", want, rs) for rs in d.update]
        out.ops += [Op("quiesce-rs", want, rs) for rs in d.quiesce]
        out.ops += [Op("delete-rs", want, rs) for rs in d.delete]
        if d.terminating:
            out.draining[key] = d.terminating
    for key, (have, _) in sorted(current.items()):
        if key not in p.virtual_servers:
            out.ops.append(Op("delete-vs", have))
    return out


# -- kube-ipvs0's addresses ------------------------------------------------------------------------


def addr_body(index: int, ip: str) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR body for ip/32 on link `index` (as `ip addr add IP/32 dev kube-ipvs0`)."""
    raw = socket.inet_aton(ip)
    return IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)


def dump_addrs_body() -> bytes:
    return IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)


def parse_addr(m: Message, index: int) -> str | None:
    """An RTM_NEWADDR dump message -> its IPv4 address, if it is on link `index`."""
    family, _plen, _flags, _scope, idx = IFADDRMSG.unpack_from(m.payload)
    if family != socket.AF_INET or idx != index:
        return None
    a = parse_attrs(m.payload, IFADDRMSG.size)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    return socket.inet_ntoa(raw[:4]) if raw else None
