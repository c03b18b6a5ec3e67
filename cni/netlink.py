"""A minimal rtnetlink client: only the messages the CNI plugins send.

Why not pyroute2: importing it costs ~130 ms, which a plugin executable pays
on every exec (the reference Go bridge plugin answers an ADD in ~10 ms),
and each pyroute2 request costs more than the kernel call itself. The
reference plugins talk to the kernel through vishvananda/netlink; this is
the same handful of requests (RTM_NEWLINK for bridge and veth, RTM_SETLINK
with IFLA_PROTINFO for hairpin, RTM_NEWADDR, RTM_NEWROUTE, the GET dumps),
encoded with `struct`.

A socket belongs to the network namespace it was created in, so one
`RtNetlink` per namespace is enough; see `cni.nscache`. A request about
another namespace (IFLA_TARGET_NETNSID) needs no socket in it at all.

Imports are the C modules only (`_socket`, not `socket`, which pulls
`enum`; no dataclasses; `ipaddress` only where an address is parsed or
printed): this module is on every exec'd plugin's start-up path.
"""

import _socket
import errno
import posix  # os's functions, without importing `os` (see cni.main)
import struct

from cni.record import Frozen, Record

AF_INET, AF_INET6, AF_NETLINK = _socket.AF_INET, _socket.AF_INET6, _socket.AF_NETLINK

# netlink message types and flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO = 10, 12, 18
IFLA_NET_NS_FD = 28
IFLA_TARGET_NETNSID = 46  # act on a link of another namespace, named by its nsid here
RTM_NEWNSID, RTM_GETNSID = 88, 90
NETNSA_NSID, NETNSA_FD = 1, 3
NETNSA_NSID_NOT_ASSIGNED = -1
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND = 1, 2, 4
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFF_UP, IFF_PROMISC = 0x1, 0x100
AF_BRIDGE = 7

IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1

NLMSG_HDR = _HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


def attr(type_: int, payload: bytes) -> bytes:
    """One netlink attribute (struct nlattr), padded to 4 bytes: netlab's one encoder
    (the plugins' rtnetlink here, portmap, and the IPVS batches of proxy.nlbatch)."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, type_) + payload + b"\0" * (-n % 4)


def _str(type_: int, value: str) -> bytes:
    return attr(type_, value.encode() + b"\0")


def _u32(type_: int, value: int) -> bytes:
    return attr(type_, struct.pack("=I", value))


def attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in data[offset:end], by type (nested and byte-order flags masked off; last wins)."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + 4 <= end:
        n, t = struct.unpack_from("=HH", data, offset)
        if n < 4:
            break
        out[t & 0x3FFF] = bytes(data[offset + 4 : offset + n])
        offset += (n + 3) & ~3
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def random_mac() -> bytes:
    """A random locally administered unicast MAC, as the kernel's eth_random_addr."""
    b = bytearray(posix.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return bytes(b)


class NetlinkError(OSError):
    """A kernel refusal, with the extended-ack text when the kernel gives one."""


class Link(Record):
    """A link as RTM_NEWLINK describes it; `peer_index` is IFLA_LINK, a veth's peer ifindex (in its namespace)."""

    __slots__ = ("index", "name", "flags", "mtu", "mac", "master", "kind", "peer_index", "attrs")

    def __init__(self, index: int, name: str, flags: int, mtu: int, mac: str, master: int, kind: str,
                 peer_index: int, attrs: dict[int, bytes] | None = None) -> None:
        self.index = index
        self.name = name
        self.flags = flags
        self.mtu = mtu
        self.mac = mac
        self.master = master
        self.kind = kind
        self.peer_index = peer_index
        self.attrs = {} if attrs is None else attrs

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)


class Addr(Frozen):
    """An interface address ("10.244.1.1", 24) of link `index`."""

    __slots__ = ("index", "address", "prefixlen", "family")

    def __init__(self, index: int, address: str, prefixlen: int, family: int) -> None:
        self._set(index=index, address=address, prefixlen=prefixlen, family=family)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


class Route(Frozen):
    """A route; `dst` is a CIDR ("0.0.0.0/0" for the default)."""

    __slots__ = ("dst", "gw", "oif", "table", "scope", "protocol")

    def __init__(self, dst: str, gw: str | None, oif: int, table: int, scope: int, protocol: int) -> None:
        self._set(dst=dst, gw=gw, oif=oif, table=table, scope=scope, protocol=protocol)


def _parse_link(body: bytes) -> Link:
    _fam, _type, index, flags, _chg = _IFINFO.unpack_from(body)
    a = attrs(body, _IFINFO.size)
    kind = ""
    if IFLA_LINKINFO in a:
        info = attrs(a[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _cstr(info[IFLA_INFO_KIND])
    return Link(
        index=index,
        name=_cstr(a.get(IFLA_IFNAME, b"")),
        flags=flags,
        mtu=struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
        mac=mac_str(a.get(IFLA_ADDRESS, b"")),
        master=struct.unpack("=I", a[IFLA_MASTER])[0] if IFLA_MASTER in a else 0,
        kind=kind,
        peer_index=struct.unpack("=I", a[IFLA_LINK])[0] if IFLA_LINK in a else 0,
        attrs=a,
    )


def _ip_bytes(addr: str) -> tuple[int, bytes]:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    return (AF_INET if ip.version == 4 else AF_INET6), ip.packed


def _ip_str(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(raw))


NLM_F_ECHO = 0x8  # echo the change back to the requester (honoured by RTM_NEWLINK since Linux 6.3)
IFLA_NUM_TX_QUEUES = 31


def frame(type_: int, flags: int, seq: int, body: bytes) -> bytes:
    """One whole request: struct nlmsghdr + body (pid 0: the kernel fills in the sender's)."""
    return _HDR.pack(_HDR.size + len(body), type_, flags, seq, 0) + body


def messages(data: bytes):
    """(offset, length, type, flags, seq) of each message in one datagram the kernel sent."""
    off = 0
    while off + _HDR.size <= len(data):
        n, t, mflags, mseq, _pid = _HDR.unpack_from(data, off)
        if n < _HDR.size:
            return
        yield off, n, t, mflags, mseq
        off += (n + 3) & ~3


class RtNetlink:
    """One NETLINK_ROUTE socket, bound to the namespace it was opened in."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    @classmethod
    def open(cls) -> "RtNetlink":
        s = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, _socket.NETLINK_ROUTE)
        try:
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:  # pragma: no cover - kernels before 4.12
            pass
        s.bind((0, 0))
        return cls(s)

    def close(self) -> None:
        self.sock.close()

    # -- transport ---------------------------------------------------------

    @staticmethod
    def _nack(data: bytes, off: int, n: int, mflags: int) -> "NetlinkError | None":
        """The error an NLMSG_ERROR message carries (None for an ACK), with the extended-ack text."""
        (err,) = struct.unpack_from("=i", data, off + 16)
        if err == 0:
            return None
        msg = ""
        if mflags & NLM_F_ACK_TLVS:
            tlv = attrs(data[off : off + n], 16 + 4 + 16)
            if NLMSGERR_ATTR_MSG in tlv:
                msg = _cstr(tlv[NLMSGERR_ATTR_MSG])
        return NetlinkError(-err, posix.strerror(-err) + (f" ({msg})" if msg else ""))

    def request(self, type_: int, body: bytes, flags: int = 0, dump: bool = False) -> list[tuple[int, bytes]]:
        """Send one request; return the reply messages; raise on a NACK."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        fl = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK) | flags
        self.sock.send(frame(type_, fl, seq, body))
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            for off, n, t, mflags, mseq in messages(data):
                if mseq != seq:
                    continue
                if t == NLMSG_ERROR:
                    err = self._nack(data, off, n, mflags)
                    if err is None:
                        return replies
                    raise err
                if t == NLMSG_DONE:
                    return replies
                replies.append((t, data[off + _HDR.size : off + n]))

    def request_many(self, msgs: list[tuple[int, bytes, int]]) -> list[NetlinkError | None]:
        """Several (type, body, flags) requests in one send, acked one by one; their errors, in order.

        The kernel runs them in order, each as if sent alone (a failed one
        does not stop the ones after it), so a caller that needs "stop at
        the first failure" must only batch requests whose later members are
        harmless when an earlier one failed.
        """
        first = self._seq + 1
        buf = []
        for i, (type_, body, flags) in enumerate(msgs):
            seq = (first + i) & 0xFFFFFFFF
            buf.append(frame(type_, NLM_F_REQUEST | NLM_F_ACK | flags, seq, body))
        self._seq = (first + len(msgs) - 1) & 0xFFFFFFFF
        self.sock.send(b"".join(buf))
        want = {(first + i) & 0xFFFFFFFF: i for i in range(len(msgs))}
        errors: list[NetlinkError | None] = [None] * len(msgs)
        while want:
            data = self.sock.recv(1 << 16)
            for off, n, t, mflags, mseq in messages(data):
                if t == NLMSG_ERROR and mseq in want:
                    errors[want.pop(mseq)] = self._nack(data, off, n, mflags)
        return errors

    # -- links -------------------------------------------------------------

    def get_link(self, name: str | None = None, index: int = 0) -> Link | None:
        body = _IFINFO.pack(0, 0, index, 0, 0) + (_str(IFLA_IFNAME, name) if name else b"")
        try:
            replies = self.request(RTM_GETLINK, body)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for t, b in replies:
            if t == RTM_NEWLINK:
                return _parse_link(b)
        return None

    def links(self) -> list[Link]:
        return [_parse_link(b) for t, b in self.request(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), dump=True) if t == RTM_NEWLINK]

    def add_bridge(self, name: str, *, mtu: int = 0, mac: bytes | None = None, up: bool = True, promisc: bool = False) -> None:
        flags = (IFF_UP if up else 0) | (IFF_PROMISC if promisc else 0)
        body = _IFINFO.pack(0, 0, 0, flags, flags) + _str(IFLA_IFNAME, name)
        if mtu:
            body += _u32(IFLA_MTU, mtu)
        if mac:
            body += attr(IFLA_ADDRESS, mac)
        body += attr(IFLA_LINKINFO | NLA_F_NESTED, _str(IFLA_INFO_KIND, "bridge"))
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_veth(
        self,
        name: str,
        peer_name: str,
        *,
        peer_netns_fd: int,
        mtu: int = 0,
        mac: bytes | None = None,
        peer_mac: bytes | None = None,
        master: int = 0,
        up: bool = True,
        echo: bool = False,
    ) -> Link | None:
        """Create a veth pair, its peer born inside another namespace, in one request.

        IFLA_MASTER on creation enslaves the host side and IFF_UP brings it
        up in the same round trip. The peer cannot be born up: veth_newlink
        configures it before the pair is linked, and veth_open then fails
        with ENOTCONN, so the caller brings it up from inside its namespace.

        `echo` asks the kernel for the new link back (NLM_F_ECHO): its
        ifindex and, as IFLA_LINK, the peer's ifindex in the other
        namespace, so neither needs a lookup. None when the kernel does not
        echo (before 6.3).

        Both ends get one TX queue from the start. A veth is otherwise
        allocated with one per possible CPU and then cut to one in use
        (veth_init_queues), and each cut waits for an expedited RCU grace
        period while holding RTNL: two per pair, the largest share of a
        pod's kernel time on a busy 2-CPU machine. The queues in use are
        the same; `ip -d link` shows numtxqueues 1.
        """
        flags = IFF_UP if up else 0
        peer = _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, peer_name) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        if mtu:
            peer += _u32(IFLA_MTU, mtu)
        if peer_mac:
            peer += attr(IFLA_ADDRESS, peer_mac)
        peer += _u32(IFLA_NUM_TX_QUEUES, 1)
        info = _str(IFLA_INFO_KIND, "veth") + attr(
            IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer)
        )
        body = _IFINFO.pack(0, 0, 0, flags, flags) + _str(IFLA_IFNAME, name)
        if mtu:
            body += _u32(IFLA_MTU, mtu)
        if mac:
            body += attr(IFLA_ADDRESS, mac)
        if master:
            body += _u32(IFLA_MASTER, master)
        body += _u32(IFLA_NUM_TX_QUEUES, 1)
        body += attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        replies = self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL | (NLM_F_ECHO if echo else 0))
        for t, b in replies:
            if t == RTM_NEWLINK:
                link = _parse_link(b)
                if link.name == name:
                    return link
        return None

    def set_link(self, index: int, **changes) -> None:
        """Change a link: `up`, `promisc`, `mtu`, `mac`, `master` as set_link_msg takes them."""
        self.request(*self.set_link_msg(index, **changes))

    @staticmethod
    def set_link_msg(
        index: int,
        *,
        up: bool | None = None,
        promisc: bool | None = None,
        mtu: int = 0,
        mac: bytes | None = None,
        master: int | None = None,
    ) -> tuple[int, bytes, int]:
        """The set_link request as (type, body, flags), for request_many."""
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if promisc is not None:
            change |= IFF_PROMISC
            flags |= IFF_PROMISC if promisc else 0
        body = _IFINFO.pack(0, 0, index, flags, change)
        if mtu:
            body += _u32(IFLA_MTU, mtu)
        if mac:
            body += attr(IFLA_ADDRESS, mac)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        return RTM_NEWLINK, body, 0

    def set_hairpin(self, index: int, on: bool = True) -> None:
        """Bridge-port hairpin mode, as netlink.LinkSetHairpin (AF_BRIDGE + IFLA_PROTINFO)."""
        body = _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + attr(
            IFLA_PROTINFO | NLA_F_NESTED, attr(IFLA_BRPORT_MODE, bytes([1 if on else 0]))
        )
        self.request(RTM_SETLINK, body)

    def brport_hairpin(self, index: int) -> bool | None:
        """Read a bridge port's hairpin mode (None: not a bridge port)."""
        for t, b in self.request(RTM_GETLINK, _IFINFO.pack(AF_BRIDGE, 0, 0, 0, 0), dump=True):
            if t != RTM_NEWLINK:
                continue
            if _IFINFO.unpack_from(b)[2] != index:
                continue
            a = attrs(b, _IFINFO.size)
            if IFLA_PROTINFO in a:
                p = attrs(a[IFLA_PROTINFO])
                if IFLA_BRPORT_MODE in p:
                    return bool(p[IFLA_BRPORT_MODE][0])
        return None

    def nsid_of(self, ns_fd: int) -> int:
        """The nsid this socket's namespace knows the namespace open as `ns_fd` by (RTM_GETNSID).

        NETNSA_NSID_NOT_ASSIGNED (-1) when it has none. The kernel assigns
        one when a link of one namespace is paired with a link of the
        other (a veth's IFLA_LINK_NETNSID), so a pod's namespace has one
        in its node's as long as the pod's veth exists.
        """
        body = b"\0\0\0\0" + _u32(NETNSA_FD, ns_fd)  # struct rtgenmsg (AF_UNSPEC), aligned to 4
        for t, b in self.request(RTM_GETNSID, body):
            if t == RTM_NEWNSID:
                a = attrs(b, 4)
                if NETNSA_NSID in a:
                    return struct.unpack("=i", a[NETNSA_NSID])[0]
        return NETNSA_NSID_NOT_ASSIGNED

    def del_link_in(self, nsid: int, name: str) -> bool:
        """Delete link `name` of the namespace this one knows as `nsid` (IFLA_TARGET_NETNSID).

        What `ip -n POD link del NAME` does, without a socket in that
        namespace (no setns). A missing link is success (returns False).
        """
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + attr(IFLA_TARGET_NETNSID, struct.pack("=i", nsid))
        try:
            self.request(RTM_DELLINK, body)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def del_link(self, index: int) -> bool:
        """Delete a link; a missing one is success (returns False)."""
        try:
            self.request(RTM_DELLINK, _IFINFO.pack(0, 0, index, 0, 0))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses -----------------------------------------------------------

    def addrs(self, index: int = 0, family: int = 0) -> list[Addr]:
        out = []
        for t, b in self.request(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0), dump=True):
            if t != RTM_NEWADDR:
                continue
            fam, plen, _fl, _scope, idx = _IFADDR.unpack_from(b)
            if index and idx != index:
                continue
            if family and fam != family:
                continue
            a = attrs(b, _IFADDR.size)
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw is None:
                continue
            out.append(Addr(idx, _ip_str(raw), plen, fam))
        return out

    def add_addr(self, index: int, address: str, prefixlen: int) -> None:
        """Add an address; IPv4 gets the broadcast vishvananda/netlink's AddrAdd computes."""
        self.request(*self.add_addr_msg(index, address, prefixlen))

    @staticmethod
    def add_addr_msg(index: int, address: str, prefixlen: int) -> tuple[int, bytes, int]:
        """The add_addr request as (type, body, flags), for request_many."""
        fam, raw = _ip_bytes(address)
        body = _IFADDR.pack(fam, prefixlen, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
        if fam == AF_INET and prefixlen < 31:
            import ipaddress

            net = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
            body += attr(IFA_BROADCAST, net.broadcast_address.packed)
        return RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL

    def del_addr(self, index: int, address: str, prefixlen: int) -> None:
        fam, raw = _ip_bytes(address)
        body = _IFADDR.pack(fam, prefixlen, 0, 0, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
        self.request(RTM_DELADDR, body)

    # -- routes ----------------------------------------------------------------

    def add_route(self, dst: str, *, gw: str | None = None, oif: int = 0, scope: int | None = None) -> None:
        """Add a main-table unicast route (NLM_F_EXCL: an existing one is an error, as RouteAdd)."""
        self.request(*self.add_route_msg(dst, gw=gw, oif=oif, scope=scope))

    @staticmethod
    def add_route_msg(dst: str, *, gw: str | None = None, oif: int = 0, scope: int | None = None,
                      protocol: int = RTPROT_BOOT) -> tuple[int, bytes, int]:
        """The add_route request as (type, body, flags), for request_many; `protocol` RTPROT_BOOT as `ip route add`."""
        import ipaddress

        net = ipaddress.ip_network(dst, strict=False)
        fam = AF_INET if net.version == 4 else AF_INET6
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK
        body = _RTMSG.pack(fam, net.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST, 0)
        if net.prefixlen:
            body += attr(RTA_DST, net.network_address.packed)
        if gw:
            body += attr(RTA_GATEWAY, ipaddress.ip_address(gw).packed)
        if oif:
            body += _u32(RTA_OIF, oif)
        return RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL

    def routes(self, family: int = AF_INET) -> list[Route]:
        out = []
        for t, b in self.request(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), dump=True):
            if t != RTM_NEWROUTE:
                continue
            fam, dlen, _s, _tos, table, proto, scope, _rt, _fl = _RTMSG.unpack_from(b)
            a = attrs(b, _RTMSG.size)
            if RTA_TABLE in a:
                table = struct.unpack("=I", a[RTA_TABLE])[0]
            zero = "0.0.0.0" if fam == AF_INET else "::"
            dst = _ip_str(a[RTA_DST]) if RTA_DST in a else zero
            out.append(
                Route(
                    dst=f"{dst}/{dlen}",
                    gw=_ip_str(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
                    oif=struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else 0,
                    table=table,
                    scope=scope,
                    protocol=proto,
                )
            )
        return out
