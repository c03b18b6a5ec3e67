"""IPVS mode, the kernel half: apply an IpvsPlan inside one node's namespace.

Everything goes through the node's own netlink sockets (generic netlink for
IPVS, rtnetlink for kube-ipvs0's addresses, opened inside the namespace, no
fork per call) except ipset and iptables, which take their text
transactions as kube-proxy feeds them (`ipset restore`, `iptables-restore
--noflush`).

Each sync diffs against what the kernel has, as kube-proxy's syncService /
syncEndpoint / cleanLegacyService: a virtual server is added, changed or
deleted only when it differs; real servers likewise, except that one that
goes away drains first (weight 0 until its connections are gone, then
deleted by a later sync: kube-proxy's graceful termination); addresses on
kube-ipvs0 are bound and unbound by difference; ipset entries by difference.

The changes go to the kernel in batches (proxy/nlbatch.py): many requests
per sendmsg, each failure mapped back to its object. kube-proxy makes one
netlink round trip per virtual server, real server and address; in Python
that round trip was the whole sync (30 s at 1k services in the TCG guest,
pyroute2's message objects and an asyncio turn per request). A failed
request fails only its object; the sync reports every failed one and
raises, so the loop's next sync is a full one, as before.

pyroute2's IPVS helpers are not used for the messages themselves (its
"update" maps to IPVS_CMD_DEL_SERVICE, its IPVSDest defaults to direct
routing): proxy/ipvs_batch.py builds exactly what ipvsadm and moby/ipvs
(kube-proxy's library) send.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from netlab import netns
from proxy import ipset
from proxy.backend import SyncError, SyncResult
from proxy.ipvs import (
    DEFAULT_SCHEDULER,
    DUMMY_DEVICE,
    GRACEFUL_TIMEOUT,
    IpvsPlan,
    RealServer,
    VirtualServer,
    iptables_text,
    missing_jumps,
    plan,
    sysctls_for_kernel,
)
from proxy.ipvs_batch import (
    CMD_FLUSH,
    GENL_NAME,
    GENL_VERSION,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_NEWADDR,
    Op,
    Table,
    addr_body,
    diff_table,
    dump_addrs_body,
    dump_dests_body,
    dump_services_body,
    merge_snapshot,
    parse_addr,
    parse_dest,
    parse_proc_ip_vs,
    parse_service,
)
from proxy.model import ProxyState, ServicePortName
from proxy.nlbatch import NLM_F_CREATE, NLM_F_EXCL, BatchSocket, NetlinkError, errno_name, genl_body

NETLINK_GENERIC = 16
NETLINK_ROUTE = 0


def ipvs_unavailable_reason(name: str) -> str | None:
    """Why IPVS cannot be used in namespace `name` (None: it can).

    The IPVS generic-netlink family exists only once ip_vs is loaded; asking
    the kernel for it autoloads the module where modules can be loaded. The
    dummy link type is checked the same way.
    """
    k = KernelIpvs(name)
    try:
        k._s()
    except Exception as e:  # noqa: BLE001 - any failure means "no IPVS here"
        return f"kernel {os.uname().release} has no IPVS (generic netlink family IPVS: {e})"
    finally:
        k.close()
    try:
        with netns.iproute(name) as ipr:
            ipr.link("add", ifname="nltestdummy0", kind="dummy")
            ipr.link("del", ifname="nltestdummy0")
    except Exception as e:  # noqa: BLE001
        return f"kernel {os.uname().release} has no dummy links: {e}"
    return None


def open_batch_socket(netns_name: str, protocol: int) -> BatchSocket:
    """A netlink socket living in `netns_name` (it stays there whatever thread uses it)."""
    return BatchSocket.open(protocol, lambda *a: netns.socket_in(netns_name, *a))


class PerCallIpvs:
    """The table read and changed one call per object, for tables that are not a kernel (test fakes).

    Subclasses give services(), real_servers(vs) and the add/update/delete
    calls; this turns them into the snapshot/apply interface the sync uses.
    """

    _METHODS = {"add-vs": "add_service", "update-vs": "update_service", "delete-vs": "delete_service",
                "add-rs": "add_real_server", "update-rs": "update_real_server",
                "quiesce-rs": "update_real_server", "delete-rs": "delete_real_server"}

    def snapshot(self) -> Table:
        return {key: (vs, set(self.real_servers(vs))) for key, vs in self.services().items()}

    def apply(self, ops: list[Op]) -> list[int]:
        """Each op's errno (0: done)."""
        codes = []
        for op in ops:
            fn = getattr(self, self._METHODS[op.kind])
            try:
                fn(op.vs) if op.rs is None else fn(op.vs, op.rs)
                codes.append(0)
            except OSError as e:
                codes.append(e.errno or errno.EIO)
        return codes


@dataclass
class KernelIpvs:
    """The IPVS table of one namespace, read and changed through generic netlink."""

    netns_name: str
    _sock: BatchSocket | None = field(default=None, init=False, repr=False)
    _family: int = field(default=0, init=False, repr=False)

    def _s(self) -> BatchSocket:
        if self._sock is None:
            sock = open_batch_socket(self.netns_name, NETLINK_GENERIC)
            try:
                self._family = sock.genl_family(GENL_NAME)
            except Exception:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- reads -----------------------------------------------------------------

    def services(self) -> dict[tuple[str, str, int], VirtualServer]:
        """Every IPv4 address:port virtual server (one dump: kube-proxy's GetVirtualServers)."""
        s = self._s()
        out = {}
        for m in s.dump(self._family, dump_services_body()):
            vs = parse_service(m)
            if vs is not None:
                out[vs.key] = vs
        return out

    def real_servers(self, vs: VirtualServer) -> set[RealServer]:
        """One virtual server's real servers, with connection counts (one dump: GetRealServers)."""
        s = self._s()
        return {rs for rs in (parse_dest(m) for m in s.dump(self._family, dump_dests_body(vs))) if rs}

    def table(self) -> dict[VirtualServer, set[RealServer]]:
        """The whole IPVS table (as `ipvsadm -Ln`), read through netlink only."""
        return {vs: self.real_servers(vs) for vs in self.services().values()}

    def snapshot(self) -> Table:
        """virtual server key -> (virtual server, its real servers): what a sync diffs against.

        The virtual servers from one netlink dump; the real servers from one
        read of /proc/net/ip_vs (this namespace's) instead of one dump per
        virtual server, and a dump for each virtual server the file left
        out (merge_snapshot says why it leaves some out). Without that
        file, the dumps.
        """
        services = self.services()
        try:
            with netns.entered(self.netns_name), open("/proc/thread-self/net/ip_vs") as f:
                proc = parse_proc_ip_vs(f.read())
        except FileNotFoundError:
            proc = {}
        return merge_snapshot(services, proc, self.real_servers)

    # -- writes ----------------------------------------------------------------

    def apply(self, ops: list[Op]) -> list[int]:
        """Send the changes in batches, in order; each op's errno (0: done, or already so)."""
        s = self._s()
        codes = s.batch([(self._family, op.flags(), op.body()) for op in ops])
        return [0 if c == op.ok_errno else c for op, c in zip(ops, codes)]

    def _one(self, op: Op) -> None:
        code = self.apply([op])[0]
        if code:
            raise NetlinkError(code, f"{op}: {errno_name(code)}")

    def add_service(self, vs: VirtualServer) -> None:
        self._one(Op("add-vs", vs))

    def update_service(self, vs: VirtualServer) -> None:
        self._one(Op("update-vs", vs))

    def delete_service(self, vs: VirtualServer) -> None:
        self._one(Op("delete-vs", vs))

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._one(Op("add-rs", vs, rs))

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._one(Op("update-rs", vs, rs))

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        self._one(Op("delete-rs", vs, rs))

    def flush(self) -> None:
        self._s().request(self._family, 0, genl_body(CMD_FLUSH, GENL_VERSION, b""))


@dataclass
class IpvsChanges:
    """What one IPVS sync changed (for SyncResult and for tests of "only what differs")."""

    services_added: int = 0
    services_updated: int = 0
    services_deleted: int = 0
    real_servers_added: int = 0
    real_servers_updated: int = 0
    real_servers_deleted: int = 0
    real_servers_quiesced: int = 0  # weight set to 0, left to drain (graceful termination)
    addresses_bound: int = 0
    addresses_unbound: int = 0
    ipset_entries_changed: int = 0

    @property
    def total(self) -> int:
        return sum(vars(self).values())

    _FIELD = {"add-vs": "services_added", "update-vs": "services_updated", "delete-vs": "services_deleted",
              "add-rs": "real_servers_added", "update-rs": "real_servers_updated",
              "quiesce-rs": "real_servers_quiesced", "delete-rs": "real_servers_deleted"}

    def count(self, op: Op) -> None:
        name = self._FIELD[op.kind]
        setattr(self, name, getattr(self, name) + 1)


def failures_text(what: str, failed: list[tuple[object, int]], limit: int = 20) -> str:
    """One line per failed object (the first `limit`), for the SyncError."""
    lines = [f"{obj}: {errno_name(code)}" for obj, code in failed[:limit]]
    more = f"\n  ... and {len(failed) - limit} more" if len(failed) > limit else ""
    return f"{len(failed)} {what} failed:\n  " + "\n  ".join(lines) + more


def sync_ipvs_table(
    k: KernelIpvs | PerCallIpvs,
    p: IpvsPlan,
    changes: IpvsChanges,
    terminating: Mapping[tuple[str, str, int], Mapping[tuple[str, int], float]] | None = None,
    now: float = 0.0,
    timeout: float = GRACEFUL_TIMEOUT,
) -> dict[tuple[str, str, int], dict[tuple[str, int], float]]:
    """Make the kernel's IPVS table equal the plan, touching only what differs.

    Real servers that go away drain first (diff_real_servers); `terminating`
    is who was draining after the last sync, and the return value who is
    draining now. A virtual server that goes away is deleted at once, with
    its real servers, as kube-proxy's cleanLegacyService. Every change is
    tried; `changes` counts the ones done, and any that failed raise one
    SyncError naming each (the caller's next sync is then a full one).
    """
    d = diff_table(p, k.snapshot(), terminating or {}, now, timeout)
    codes = k.apply(d.ops)
    failed = []
    for op, code in zip(d.ops, codes):
        if code:
            failed.append((op, code))
        else:
            changes.count(op)
    if failed:
        raise SyncError(failures_text("IPVS changes", failed))
    return d.draining


def _run(name: str, argv: list[str], text_in: str | None = None) -> subprocess.CompletedProcess:
    return netns.run_in(name, argv, input=text_in, capture_output=True, text=True)


def _checked(name: str, argv: list[str], text_in: str | None = None) -> str:
    p = _run(name, argv, text_in)
    if p.returncode != 0:
        raise SyncError(f"{' '.join(argv)} in {name} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class IpvsBackend:
    """kube-proxy's IPVS mode for one node namespace (implements proxy.backend.Backend)."""

    name = "ipvs"

    def __init__(
        self,
        netns_name: str,
        scheduler: str = DEFAULT_SCHEDULER,
        graceful_timeout: float = GRACEFUL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.netns_name = netns_name
        self.scheduler = scheduler  # --ipvs-scheduler; a Service's annotation overrides it
        self.graceful_timeout = graceful_timeout
        self.clock = clock
        # The graceful termination list: virtual server -> real server -> draining since.
        self.terminating: dict[tuple[str, str, int], dict[tuple[str, int], float]] = {}
        self.kernel = KernelIpvs(netns_name)
        self._rtnl: BatchSocket | None = None
        self._initialized = False
        self.last_changes = IpvsChanges()

    # -- one-time node set-up (NewProxier) ---------------------------------------------------

    def _init_node(self) -> None:
        # Asking for the IPVS netlink family loads ip_vs (where modules load); its
        # net.ipv4.vs.* sysctls exist only from then on.
        self.kernel._s()
        for key, value in sysctls_for_kernel(os.uname().release):
            netns.write_sysctl(self.netns_name, key, value)
        self._initialized = True

    def _dummy_index(self) -> int:
        """kube-ipvs0's ifindex, creating it if it is missing (kube-proxy's EnsureDummyDevice, every sync)."""
        try:
            with netns.entered(self.netns_name):
                return socket.if_nametoindex(DUMMY_DEVICE)
        except OSError:
            pass
        with netns.iproute(self.netns_name) as ipr:
            if not ipr.link_lookup(ifname=DUMMY_DEVICE):
                # Created, left down; its addresses still get local routes, which is all IPVS needs.
                ipr.link("add", ifname=DUMMY_DEVICE, kind="dummy")
            return ipr.link_lookup(ifname=DUMMY_DEVICE)[0]

    # -- Backend -------------------------------------------------------------------------------

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        t0 = mark = time.perf_counter()
        phases: dict[str, int] = {}  # where the sync's time went, per step (SyncResult.details)

        def phase(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[f"{name}_ms"] = int((now - mark) * 1000)
            mark = now

        if not self._initialized:
            self._init_node()
        p = plan(state, self.scheduler)
        ch = IpvsChanges()
        phase("plan")
        try:
            # 1. ipsets first: the iptables rules reference every set.
            current_sets = ipset.parse_save(_checked(self.netns_name, ["ipset", "save"]))
            text, ch.ipset_entries_changed = ipset.restore_text(p.ipsets, current_sets)
            _checked(self.netns_name, ["ipset", "restore"], text)
            phase("ipset")
            # 2. iptables: KUBE-* chains rewritten (declared = flushed), jumps ensured.
            save = _checked(self.netns_name, ["iptables-save"])
            rules = iptables_text(state.node, p.nonempty_sets(), missing_jumps(save))
            _checked(self.netns_name, ["iptables-restore", "--noflush"], rules)
            phase("iptables")
            # 3. addresses on kube-ipvs0, then the IPVS table.
            self._sync_addresses(p.bound_addresses, ch)
            phase("addresses")
            self.terminating = sync_ipvs_table(self.kernel, p, ch, self.terminating, self.clock(),
                                               self.graceful_timeout)
            phase("ipvs")
        except OSError as e:  # a netlink socket failed as a whole (not one object)
            raise SyncError(f"IPVS sync in {self.netns_name}: {e}") from e
        self.last_changes = ch
        return SyncResult(
            full=changed is None,
            rules=p.iptables.count("\n-A "),
            chains=p.iptables.count("\n:"),
            details={k: v for k, v in vars(ch).items()}
            | {"virtual_servers": len(p.virtual_servers), "sync_ms": int((time.perf_counter() - t0) * 1000),
               "real_servers_terminating": sum(len(v) for v in self.terminating.values())} | phases,
        )

    def _rtnl_socket(self) -> BatchSocket:
        if self._rtnl is None:
            self._rtnl = open_batch_socket(self.netns_name, NETLINK_ROUTE)
        return self._rtnl

    def _sync_addresses(self, want: set[str], ch: IpvsChanges) -> None:
        """Bind and unbind service addresses on kube-ipvs0 by difference, in batches.

        kube-proxy's syncService binds each with netlink's AddrAdd (one round
        trip each) and unbinds the ones no service uses any more.
        """
        idx = self._dummy_index()
        s = self._rtnl_socket()
        have = {ip for ip in (parse_addr(m, idx) for m in s.dump(RTM_GETADDR, dump_addrs_body())) if ip}
        # (what, address, request, flags, the errno that means "already so")
        changes = ([("bind", ip, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, errno.EEXIST) for ip in sorted(want - have)]
                   + [("unbind", ip, RTM_DELADDR, 0, errno.EADDRNOTAVAIL) for ip in sorted(have - want)])
        codes = s.batch([(kind, flags, addr_body(idx, ip)) for _, ip, kind, flags, _ in changes])
        failed = []
        for (what, ip, _, _, already), code in zip(changes, codes):
            if code and code != already:
                failed.append((f"{what} {ip} on {DUMMY_DEVICE}", code))
            elif what == "bind":
                ch.addresses_bound += 1
            else:
                ch.addresses_unbound += 1
        if failed:
            raise SyncError(failures_text("address changes", failed))

    def cleanup(self) -> None:
        """kube-proxy --cleanup for IPVS mode: IPVS table, kube-ipvs0, KUBE-* chains, ipsets."""
        with_netlink_errors_ignored(self.kernel.flush)
        self.kernel.close()
        self._close_rtnl()
        self.terminating = {}
        with netns.iproute(self.netns_name) as ipr:
            for idx in ipr.link_lookup(ifname=DUMMY_DEVICE):
                ipr.link("del", index=idx)
        save = _run(self.netns_name, ["iptables-save"]).stdout
        _run(self.netns_name, ["iptables-restore", "--noflush"], cleanup_iptables_text(save))
        present = ipset.parse_save(_run(self.netns_name, ["ipset", "save"]).stdout)
        for s in ipset.ALL_SETS:
            if s.name in present:
                _run(self.netns_name, ["ipset", "destroy", s.name])
        self._initialized = False

    def _close_rtnl(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def close(self) -> None:
        self.kernel.close()
        self._close_rtnl()


def with_netlink_errors_ignored(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - cleanup is best effort, "missing" is success
        pass


def cleanup_iptables_text(save: str) -> str:
    """iptables-restore --noflush text deleting IPVS mode's jumps and chains (cleanupIptablesLeftovers)."""
    from proxy.ipvs import FILTER_CHAINS, JUMP_CHAINS, NAT_CHAINS, _table_lines

    out: list[str] = []
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
        lines = _table_lines(save, table)
        existing = {l.split()[0][1:] for l in lines if l.startswith(":")}
        body: list[str] = []
        for t, builtin, chain, _comment in JUMP_CHAINS:
            if t != table:
                continue
            for l in lines:
                if l.startswith(f"-A {builtin} ") and l.endswith(f"-j {chain}"):
                    body.append("-D" + l[2:])
        ours = [c for c in chains if c in existing]
        body += [f":{c} - [0:0]" for c in ours]  # declaring flushes them
        body += [f"-X {c}" for c in ours]
        if body:
            out += [f"*{table}"] + body + ["COMMIT"]
    return "\n".join(out) + ("\n" if out else "")


def table_text(t: dict[VirtualServer, Iterable[RealServer]]) -> str:
    """`ipvsadm -Ln`-like text of a table, for messages and the walker."""
    lines = []
    for vs in sorted(t):
        lines.append(f"{vs.protocol}  {vs.address}:{vs.port} {vs.scheduler}"
                     + (f" persistent {vs.persistent_timeout}" if vs.persistent_timeout else ""))
        lines += [f"  -> {rs.address}:{rs.port}  Masq {rs.weight}" for rs in sorted(t[vs])]
    return "\n".join(lines)
