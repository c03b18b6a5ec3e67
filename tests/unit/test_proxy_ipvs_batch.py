"""IPVS mode's batched sync: netlink framing and error mapping, the IPVS messages, the diff, the reads.

The kernel side is a fake that answers a sendmsg as netlink_rcv_skb does:
messages in order, an NLMSG_ERROR for each failure and for each request
with NLM_F_ACK, one datagram per answer.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from proxy.backend import SyncError
from proxy.ipvs import IpvsPlan, RealServer, VirtualServer
from proxy.ipvs_batch import (
    CMD_ATTR_DEST,
    CMD_ATTR_SERVICE,
    CMD_DEL_SERVICE,
    CMD_NEW_DEST,
    CMD_NEW_SERVICE,
    CMD_SET_DEST,
    DEST_ADDR,
    DEST_FWD_METHOD,
    DEST_PORT,
    DEST_WEIGHT,
    IFA_LOCAL,
    IFADDRMSG,
    RTM_DELADDR,
    RTM_NEWADDR,
    SVC_ADDR,
    SVC_FLAGS,
    SVC_NETMASK,
    SVC_PORT,
    SVC_SCHED_NAME,
    SVC_TIMEOUT,
    Op,
    addr_body,
    diff_table,
    merge_snapshot,
    parse_addr,
    parse_dest,
    parse_proc_ip_vs,
    parse_service,
)
from proxy.ipvs_kernel import IpvsBackend, IpvsChanges, KernelIpvs, sync_ipvs_table
from proxy.nlbatch import (
    GENL_HDR,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HDR,
    BatchSocket,
    Message,
    attr,
    frame,
    nested,
    parse_attrs,
    split_messages,
    windows,
)

VS = VirtualServer("10.96.0.10", "TCP", 80, "rr")
RS = RealServer("10.244.1.5", 8080, 1)


class FakeKernelSocket:
    """A netlink socket whose 'kernel' handles each sendmsg in order and queues its answers."""

    def __init__(self, verdict=lambda kind, flags, body: 0) -> None:
        self.verdict = verdict  # (type, flags, body) -> errno (0: done)
        self.sent: list[list[tuple[int, int, int, bytes]]] = []  # per sendmsg: (type, flags, seq, body)
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        msgs = []
        pos = 0
        while pos < len(data):
            n, kind, flags, seq, _ = NLMSG_HDR.unpack_from(data, pos)
            body = data[pos + NLMSG_HDR.size:pos + n]
            msgs.append((kind, flags, seq, body))
            code = self.verdict(kind, flags, body)
            if code or flags & NLM_F_ACK:
                # NLMSG_ERROR: -errno, then the request's header (NETLINK_CAP_ACK: no payload echoed).
                payload = struct.pack("=i", -code) + data[pos:pos + NLMSG_HDR.size]
                self.queue.append(frame(NLMSG_ERROR, 0x100, seq, payload))
            pos += (n + 3) & ~3
        self.sent.append(msgs)
        return len(data)

    def recv(self, _n: int) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


# -- netlink framing ------------------------------------------------------------------------------


def test_attributes_are_padded_and_parse_back():
    a = attr(6, b"rr\0") + nested(1, attr(3, b"\x0a\x60\x00\x0a"), attr(4, b"\x00\x50"))
    assert len(attr(6, b"rr\0")) == 8  # 4 header + 3 payload, padded to 8
    top = parse_attrs(a)
    assert top[6] == b"rr\0"
    assert parse_attrs(top[1]) == {3: b"\x0a\x60\x00\x0a", 4: b"\x00\x50"}
    assert struct.unpack_from("=H", nested(1), 2)[0] == 1 | NLA_F_NESTED


def test_windows_split_by_framed_size_and_keep_order():
    reqs = [(20, 0, bytes(100 + i)) for i in range(10)]
    ws = list(windows(reqs, limit=400))
    assert [r for w in ws for r in w] == reqs
    assert all(sum((NLMSG_HDR.size + len(b) + 3) & ~3 for _, _, b in w) <= 400 for w in ws)
    assert list(windows([(20, 0, bytes(1000))], limit=400)) == [[(20, 0, bytes(1000))]]  # never empty
    assert [len(w) for w in windows([(20, 0, b"")] * 10, count=4)] == [4, 4, 2]  # room for every error


def test_a_socket_sends_no_more_requests_at_once_than_its_receive_buffer_has_room_for_errors():
    k = FakeKernelSocket(lambda kind, flags, body: errno.EPERM)
    s = BatchSocket(k, max_requests=3)
    assert s.batch([(20, 0, b"")] * 7) == [errno.EPERM] * 7
    assert [len(m) for m in k.sent] == [3, 3, 1]


def test_a_batch_is_one_sendmsg_with_only_its_last_request_acked():
    k = FakeKernelSocket()
    s = BatchSocket(k)
    codes = s.batch([(RTM_NEWADDR, NLM_F_CREATE, b"x" * 8) for _ in range(5)])
    assert codes == [0] * 5
    assert len(k.sent) == 1
    flags = [f for _, f, _, _ in k.sent[0]]
    assert all(f & NLM_F_REQUEST and f & NLM_F_CREATE for f in flags)
    assert [bool(f & NLM_F_ACK) for f in flags] == [False] * 4 + [True]
    seqs = [seq for _, _, seq, _ in k.sent[0]]
    assert seqs == sorted(set(seqs))  # one sequence number each, increasing
    assert k.queue == []  # the last ack was read, nothing left behind


def test_errors_map_back_to_their_requests_across_windows():
    bad = {3, 7, 400}

    def verdict(kind, flags, body):
        i = struct.unpack("=I", body[:4])[0]
        return errno.EEXIST if i in bad else 0

    k = FakeKernelSocket(verdict)
    s = BatchSocket(k)
    reqs = [(RTM_NEWADDR, 0, struct.pack("=I", i) + bytes(200)) for i in range(1000)]
    codes = s.batch(reqs)
    assert len(k.sent) > 1  # more than one window of 64 KiB
    assert [i for i, c in enumerate(codes) if c] == sorted(bad)
    assert all(codes[i] == errno.EEXIST for i in bad)
    assert k.queue == []


def test_a_failing_last_request_is_its_own_ack():
    k = FakeKernelSocket(lambda kind, flags, body: errno.ENODEV)
    codes = BatchSocket(k).batch([(RTM_NEWADDR, 0, b"")] * 3)
    assert codes == [errno.ENODEV] * 3 and k.queue == []


def test_stale_answers_from_an_earlier_exchange_are_skipped():
    k = FakeKernelSocket()
    s = BatchSocket(k, seq=100)
    k.queue.append(frame(NLMSG_ERROR, 0, 42, struct.pack("=i", -errno.EBUSY) + bytes(16)))
    assert s.batch([(RTM_NEWADDR, 0, b"")]) == [0]


def test_the_sequence_wraps_without_confusing_the_window():
    k = FakeKernelSocket(lambda kind, flags, body: errno.EINVAL if body == b"bad!" else 0)
    s = BatchSocket(k, seq=0xFFFFFFFE)
    codes = s.batch([(20, 0, b"good"), (20, 0, b"bad!"), (20, 0, b"good")])
    assert codes == [0, errno.EINVAL, 0]
    assert [seq for _, _, seq, _ in k.sent[0]] == [0xFFFFFFFF, 1, 2]  # 0 is skipped


# -- IPVS messages -------------------------------------------------------------------------------


def _genl(body: bytes) -> tuple[int, dict[int, bytes]]:
    cmd, _version, _ = GENL_HDR.unpack_from(body)
    return cmd, parse_attrs(body, GENL_HDR.size)


def test_a_new_virtual_server_carries_what_ipvsadm_sends():
    vs = VirtualServer("10.96.0.10", "TCP", 80, "wlc", persistent_timeout=600)
    op = Op("add-vs", vs)
    cmd, top = _genl(op.body())
    svc = parse_attrs(top[CMD_ATTR_SERVICE])
    assert cmd == CMD_NEW_SERVICE and op.flags() == NLM_F_CREATE | NLM_F_EXCL
    assert svc[SVC_ADDR] == socket.inet_aton("10.96.0.10") and svc[SVC_PORT] == b"\x00\x50"  # network order
    assert svc[SVC_SCHED_NAME] == b"wlc\0"
    assert struct.unpack("=II", svc[SVC_FLAGS]) == (1, 0xFFFFFFFF)  # persistent, full mask
    assert struct.unpack("=I", svc[SVC_TIMEOUT])[0] == 600 and svc[SVC_NETMASK] == b"\xff" * 4
    cmd, top = _genl(Op("delete-vs", vs).body())
    assert cmd == CMD_DEL_SERVICE and SVC_SCHED_NAME not in parse_attrs(top[CMD_ATTR_SERVICE])  # the key only


def test_a_real_server_is_nat_with_its_weight():
    cmd, top = _genl(Op("add-rs", VS, RS).body())
    assert cmd == CMD_NEW_DEST and SVC_ADDR in parse_attrs(top[CMD_ATTR_SERVICE])
    d = parse_attrs(top[CMD_ATTR_DEST])
    assert d[DEST_ADDR] == socket.inet_aton(RS.address) and d[DEST_PORT] == struct.pack("!H", 8080)
    assert struct.unpack("=I", d[DEST_FWD_METHOD])[0] == 0  # masq, not pyroute2's direct routing
    cmd, top = _genl(Op("quiesce-rs", VS, RealServer(RS.address, RS.port, 0)).body())
    assert cmd == CMD_SET_DEST and struct.unpack("=I", parse_attrs(top[CMD_ATTR_DEST])[DEST_WEIGHT])[0] == 0


def test_dump_answers_parse_back_into_the_same_objects():
    vs = VirtualServer("10.96.0.11", "UDP", 53, "sh", persistent_timeout=30)
    stats = attr(10, bytes(40))  # the kernel adds stats; ignored
    body = Op("add-vs", vs).body()
    svc = parse_attrs(body, GENL_HDR.size)[CMD_ATTR_SERVICE] + stats
    assert parse_service(Message(0, 0, 1, body[:GENL_HDR.size] + nested(CMD_ATTR_SERVICE, svc))) == vs
    body = Op("add-rs", VS, RealServer("10.244.1.6", 8080, 3)).body()
    dest = parse_attrs(body, GENL_HDR.size)[CMD_ATTR_DEST] + attr(7, struct.pack("=I", 2)) + attr(8, struct.pack("=I", 5))
    rs = parse_dest(Message(0, 0, 1, body[:GENL_HDR.size] + nested(CMD_ATTR_DEST, dest)))
    assert (rs.address, rs.port, rs.weight, rs.active_conns, rs.inactive_conns) == ("10.244.1.6", 8080, 3, 2, 5)


# What the stock 6.1 kernel wrote for `ipvsadm -A -t 10.96.0.1:80 -s rr -p 600; -a ... -m -w 3;
# -A -u 10.96.0.2:53 -s sh; -A -f 5 -s rr` (persistence in jiffies, HZ=250).
PROC_IP_VS = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600001:0050 rr  persistent 150000 FFFFFFFF
  -> 0AF40105:1F90      Masq    3      1          4         
UDP  0A600002:0035 sh  
FWM  00000005 rr 
  -> 0AF40106:1F90      Masq    1      0          0         
TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0050 rr 
  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0050      Masq    1      0          0         
"""


def test_proc_ip_vs_gives_every_virtual_servers_real_servers_with_counts():
    t = parse_proc_ip_vs(PROC_IP_VS)
    assert set(t) == {("10.96.0.1", "TCP", 80), ("10.96.0.2", "UDP", 53)}  # no fwmark, no IPv6
    (rs,) = t[("10.96.0.1", "TCP", 80)]
    assert (rs.address, rs.port, rs.weight, rs.active_conns, rs.inactive_conns) == ("10.244.1.5", 8080, 3, 1, 4)
    assert t[("10.96.0.2", "UDP", 53)] == set()


def test_the_snapshot_dumps_only_the_virtual_servers_proc_left_out():
    """A real kernel that leaves entries out of /proc/net/ip_vs: tests/vm/test_ipvs_batch_kernel.py."""
    listed, left_out, empty = (VirtualServer(f"10.96.0.{i}", "TCP", 80) for i in (1, 2, 3))
    services = {vs.key: vs for vs in (listed, left_out, empty)}
    proc = {listed.key: {RS}, empty.key: set()}  # listed with no real servers: nothing to dump
    dumped = []
    dests = {left_out.key: {RealServer("10.244.2.7", 8080, 2)}}

    def dump(vs):
        dumped.append(vs)
        return dests[vs.key]

    assert merge_snapshot(services, proc, dump) == {
        listed.key: (listed, {RS}), left_out.key: (left_out, dests[left_out.key]), empty.key: (empty, set())}
    assert dumped == [left_out]


# -- the diff ------------------------------------------------------------------------------------------


def _plan(*entries: tuple[VirtualServer, list[RealServer]]) -> IpvsPlan:
    p = IpvsPlan()
    for vs, rss in entries:
        p.virtual_servers[vs.key] = vs
        p.real_servers[vs.key] = frozenset(rss)
    return p


def test_ops_come_in_an_order_the_kernel_can_apply_in_one_pass():
    new = VirtualServer("10.96.0.20", "TCP", 80)
    gone = VirtualServer("10.96.0.5", "TCP", 80)
    changed = VirtualServer("10.96.0.10", "TCP", 80, "sh")
    current = {gone.key: (gone, {RS}), VS.key: (VS, {RS, RealServer("10.244.1.9", 8080)})}
    d = diff_table(_plan((new, [RS]), (changed, [RS])), current, {}, 0.0, 900.0)
    assert [str(op) for op in d.ops] == [
        "update-vs TCP 10.96.0.10:80 sh",
        "delete-rs TCP 10.96.0.10:80 sh -> 10.244.1.9:8080 weight 1",
        "add-vs TCP 10.96.0.20:80 rr",
        "add-rs TCP 10.96.0.20:80 rr -> 10.244.1.5:8080 weight 1",
        "delete-vs TCP 10.96.0.5:80 rr",  # last, with its real servers
    ]
    assert diff_table(_plan((VS, [RS])), {VS.key: (VS, {RS})}, {}, 0.0, 900.0).ops == []  # nothing differs


def test_a_real_server_with_connections_is_quiesced_and_listed_as_draining():
    busy = RealServer("10.244.1.9", 8080, 1, active_conns=1)
    d = diff_table(_plan((VS, [RS])), {VS.key: (VS, {RS, busy})}, {}, 50.0, 900.0)
    assert [op.kind for op in d.ops] == ["quiesce-rs"] and d.ops[0].rs.weight == 0
    assert d.draining == {VS.key: {busy.key: 50.0}}


# -- the sync: every change tried, each failure named ---------------------------------------------


def _kernel(verdict=lambda kind, flags, body: 0, table=None) -> tuple[KernelIpvs, FakeKernelSocket]:
    k = KernelIpvs("nlipvs-unit")
    fake = FakeKernelSocket(verdict)
    k._sock, k._family = BatchSocket(fake), 0x20
    k.snapshot = lambda: dict(table or {})  # the reads are tested above; here the writes
    return k, fake


def test_a_full_sync_is_one_batch_and_counts_what_was_done():
    k, fake = _kernel()
    p = _plan(*[(VirtualServer(f"10.96.0.{i}", "TCP", 80), [RS]) for i in range(1, 101)])
    ch = IpvsChanges()
    assert sync_ipvs_table(k, p, ch) == {}
    assert len(fake.sent) == 1 and len(fake.sent[0]) == 200  # 100 virtual + 100 real servers, one sendmsg
    assert (ch.services_added, ch.real_servers_added, ch.total) == (100, 100, 200)


def test_failed_changes_are_each_named_and_the_rest_still_applied():
    def verdict(kind, flags, body):
        cmd, top = _genl(body)
        addr = socket.inet_ntoa(parse_attrs(top[CMD_ATTR_SERVICE])[SVC_ADDR])
        if addr == "10.96.0.2":  # its virtual server fails, so does its real server (no such service)
            return errno.EINVAL if cmd == CMD_NEW_SERVICE else errno.ESRCH
        return 0

    k, fake = _kernel(verdict)
    p = _plan(*[(VirtualServer(f"10.96.0.{i}", "TCP", 80), [RS]) for i in range(1, 4)])
    ch = IpvsChanges()
    with pytest.raises(SyncError) as e:
        sync_ipvs_table(k, p, ch)
    msg = str(e.value)
    assert "2 IPVS changes failed" in msg
    assert "add-vs TCP 10.96.0.2:80 rr: EINVAL" in msg and "add-rs TCP 10.96.0.2:80 rr -> 10.244.1.5:8080" in msg
    assert len(fake.sent[0]) == 6  # the ones after the failure were sent too
    assert (ch.services_added, ch.real_servers_added) == (2, 2)


def test_deleting_what_is_already_gone_is_done():
    gone = VirtualServer("10.96.0.5", "TCP", 80)
    k, _ = _kernel(lambda kind, flags, body: errno.ESRCH, table={gone.key: (gone, set())})
    ch = IpvsChanges()
    sync_ipvs_table(k, _plan(), ch)
    assert ch.services_deleted == 1


# -- kube-ipvs0's addresses --------------------------------------------------------------------------


class FakeRtnl(BatchSocket):
    """An rtnetlink BatchSocket over FakeKernelSocket, with a canned address dump."""

    def __init__(self, have: list[tuple[int, str]], verdict) -> None:
        super().__init__(FakeKernelSocket(verdict))
        self.have = have

    def dump(self, kind, body):
        return [Message(RTM_NEWADDR, 0, 0, addr_body(idx, ip)) for idx, ip in self.have]


def _backend(have, verdict=lambda kind, flags, body: 0) -> tuple[IpvsBackend, FakeRtnl]:
    b = IpvsBackend("nlipvs-unit")
    rtnl = FakeRtnl(have, verdict)
    b._rtnl = rtnl
    b._dummy_index = lambda: 7
    return b, rtnl


def _addr_of(body: bytes) -> str:
    return socket.inet_ntoa(parse_attrs(body, IFADDRMSG.size)[IFA_LOCAL])


def test_addresses_bind_and_unbind_by_difference_in_one_batch():
    # 10.96.0.9 on another link (index 3) is not kube-ipvs0's: left alone.
    b, rtnl = _backend([(7, "10.96.0.1"), (7, "10.96.0.2"), (3, "10.96.0.9")])
    ch = IpvsChanges()
    b._sync_addresses({"10.96.0.2", "10.96.0.3", "10.96.0.4"}, ch)
    (sent,) = rtnl.sock.sent
    assert [(kind, _addr_of(body)) for kind, _, _, body in sent] == [
        (RTM_NEWADDR, "10.96.0.3"), (RTM_NEWADDR, "10.96.0.4"), (RTM_DELADDR, "10.96.0.1")]
    assert all(f & NLM_F_EXCL for kind, f, _, _ in sent if kind == RTM_NEWADDR)
    assert (ch.addresses_bound, ch.addresses_unbound) == (2, 1)


def test_an_address_that_fails_is_named_and_already_so_is_fine():
    def verdict(kind, flags, body):
        return {"10.96.0.3": errno.EEXIST, "10.96.0.4": errno.ENOSPC, "10.96.0.1": errno.EADDRNOTAVAIL}.get(
            _addr_of(body), 0)

    b, _ = _backend([(7, "10.96.0.1")], verdict)
    ch = IpvsChanges()
    with pytest.raises(SyncError) as e:
        b._sync_addresses({"10.96.0.3", "10.96.0.4", "10.96.0.5"}, ch)
    assert "1 address changes failed" in str(e.value) and "bind 10.96.0.4 on kube-ipvs0: ENOSPC" in str(e.value)
    assert (ch.addresses_bound, ch.addresses_unbound) == (2, 1)


def test_parse_addr_reads_an_rtnetlink_address():
    m = Message(RTM_NEWADDR, 0, 0, addr_body(7, "10.96.0.1"))
    assert parse_addr(m, 7) == "10.96.0.1" and parse_addr(m, 8) is None
    assert list(split_messages(frame(RTM_NEWADDR, 0, 9, addr_body(7, "10.96.0.1"))))[0].seq == 9
