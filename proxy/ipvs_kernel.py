"""IPVS mode, the kernel half: apply an IpvsPlan inside one node's namespace.

Everything goes through the node's own netlink sockets (pyroute2's IPVS
generic-netlink socket and IPRoute, opened inside the namespace, no fork per
call) except ipset and iptables, which take their text transactions as
kube-proxy feeds them (`ipset restore`, `iptables-restore --noflush`).

Each sync diffs against what the kernel has, as kube-proxy's syncService /
syncEndpoint / cleanLegacyService: a virtual server is added, changed or
deleted only when it differs; real servers likewise, except that one that
goes away drains first (weight 0 until its connections are gone, then
deleted by a later sync: kube-proxy's graceful termination); addresses on
kube-ipvs0 are bound and unbound by difference; ipset entries by difference.

pyroute2 0.9.7's IPVSService/IPVSDest helpers are bypassed for the
messages themselves: its "update" command maps to IPVS_CMD_DEL_SERVICE, its
IPVSDest defaults to direct routing (fwd_method 3), and `from_message`
mixes raw and friendly keys. The messages below carry exactly the
attributes ipvsadm and moby/ipvs (kube-proxy's library) send.
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
    FLAG_PERSISTENT,
    GRACEFUL_TIMEOUT,
    IpvsPlan,
    RealServer,
    VirtualServer,
    diff_real_servers,
    iptables_text,
    missing_jumps,
    plan,
    sysctls_for_kernel,
)
from proxy.model import ProxyState, ServicePortName

_PROTO = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
_PROTO_NAME = {v: k for k, v in _PROTO.items()}
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT, as kube-proxy's real servers


def ipvs_unavailable_reason(name: str) -> str | None:
    """Why IPVS cannot be used in namespace `name` (None: it can).

    The IPVS generic-netlink family exists only once ip_vs is loaded; opening
    the socket asks the kernel for it (and autoloads the module where
    modules can be loaded). The dummy link type is checked the same way.
    """
    try:
        sock = _ipvs_socket(name)
    except Exception as e:  # noqa: BLE001 - any failure means "no IPVS here"
        return f"kernel {os.uname().release} has no IPVS (generic netlink family IPVS: {e})"
    sock.close()
    try:
        with netns.iproute(name) as ipr:
            ipr.link("add", ifname="nltestdummy0", kind="dummy")
            ipr.link("del", ifname="nltestdummy0")
    except Exception as e:  # noqa: BLE001
        return f"kernel {os.uname().release} has no dummy links: {e}"
    return None


def _ipvs_socket(name: str):
    from pyroute2 import IPVS

    with netns.entered(name):
        return IPVS()


@dataclass
class KernelIpvs:
    """The IPVS table of one namespace, read and changed through generic netlink."""

    netns_name: str
    _sock: object = field(default=None, init=False, repr=False)

    def _s(self):
        if self._sock is None:
            self._sock = _ipvs_socket(self.netns_name)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _req(self, cmd: int, attrs: list, flags: int):
        from pyroute2.netlink.generic import ipvs as g

        s = self._s()
        msg = g.ipvsmsg()
        msg["cmd"] = cmd
        msg["version"] = g.GENL_VERSION
        msg["attrs"] = attrs
        return s._run_with_cleanup(s.asyncore._do_request, msg, flags)

    @staticmethod
    def _svc_key(vs: VirtualServer) -> dict:
        return {
            "attrs": [
                ("IPVS_SVC_ATTR_AF", socket.AF_INET),
                ("IPVS_SVC_ATTR_PROTOCOL", _PROTO[vs.protocol]),
                ("IPVS_SVC_ATTR_ADDR", vs.address),
                ("IPVS_SVC_ATTR_PORT", vs.port),
            ]
        }

    @classmethod
    def _svc_full(cls, vs: VirtualServer) -> dict:
        flags = FLAG_PERSISTENT if vs.persistent_timeout else 0
        return {
            "attrs": cls._svc_key(vs)["attrs"]
            + [
                ("IPVS_SVC_ATTR_SCHED_NAME", vs.scheduler),
                ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
                ("IPVS_SVC_ATTR_TIMEOUT", vs.persistent_timeout),
                ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
            ]
        }

    @staticmethod
    def _dest(rs: RealServer) -> dict:
        return {
            "attrs": [
                ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET),
                ("IPVS_DEST_ATTR_ADDR", rs.address),
                ("IPVS_DEST_ATTR_PORT", rs.port),
                ("IPVS_DEST_ATTR_FWD_METHOD", FWD_MASQ),
                ("IPVS_DEST_ATTR_WEIGHT", rs.weight),
                ("IPVS_DEST_ATTR_U_THRESH", 0),
                ("IPVS_DEST_ATTR_L_THRESH", 0),
            ]
        }

    # -- reads -----------------------------------------------------------------

    def services(self) -> dict[tuple[str, str, int], VirtualServer]:
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.generic import ipvs as g

        out = {}
        for m in self._req(g.IPVS_CMD_GET_SERVICE, [], NLM_F_REQUEST | NLM_F_DUMP):
            s = m.get("IPVS_CMD_ATTR_SERVICE")
            if s.get("IPVS_SVC_ATTR_FWMARK") or s.get("IPVS_SVC_ATTR_AF") != socket.AF_INET:
                continue
            flags = (s.get("IPVS_SVC_ATTR_FLAGS") or {}).get("flags", 0)
            vs = VirtualServer(
                address=s.get("IPVS_SVC_ATTR_ADDR"),
                protocol=_PROTO_NAME.get(s.get("IPVS_SVC_ATTR_PROTOCOL"), str(s.get("IPVS_SVC_ATTR_PROTOCOL"))),
                port=s.get("IPVS_SVC_ATTR_PORT"),
                scheduler=s.get("IPVS_SVC_ATTR_SCHED_NAME"),
                persistent_timeout=s.get("IPVS_SVC_ATTR_TIMEOUT") if flags & FLAG_PERSISTENT else 0,
            )
            out[vs.key] = vs
        return out

    def real_servers(self, vs: VirtualServer) -> set[RealServer]:
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.generic import ipvs as g

        out = set()
        for m in self._req(g.IPVS_CMD_GET_DEST, [("IPVS_CMD_ATTR_SERVICE", self._svc_key(vs))],
                           NLM_F_REQUEST | NLM_F_DUMP):
            d = m.get("IPVS_CMD_ATTR_DEST")
            out.add(RealServer(d.get("IPVS_DEST_ATTR_ADDR"), d.get("IPVS_DEST_ATTR_PORT"),
                               d.get("IPVS_DEST_ATTR_WEIGHT"),
                               active_conns=d.get("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
                               inactive_conns=d.get("IPVS_DEST_ATTR_INACT_CONNS") or 0))
        return out

    def table(self) -> dict[VirtualServer, set[RealServer]]:
        """The whole IPVS table (as `ipvsadm -Ln`)."""
        return {vs: self.real_servers(vs) for vs in self.services().values()}

    # -- writes ----------------------------------------------------------------

    def _write(self, cmd: int, attrs: list, ok_errnos: tuple[int, ...] = ()) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._req(cmd, attrs, NLM_F_REQUEST | NLM_F_ACK)
        except NetlinkError as e:
            if e.code not in ok_errnos:
                raise

    def add_service(self, vs: VirtualServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", self._svc_full(vs))])

    def update_service(self, vs: VirtualServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_SET_SERVICE, [("IPVS_CMD_ATTR_SERVICE", self._svc_full(vs))])

    def delete_service(self, vs: VirtualServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_DEL_SERVICE, [("IPVS_CMD_ATTR_SERVICE", self._svc_key(vs))], (errno.ESRCH,))

    def add_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_NEW_DEST,
                    [("IPVS_CMD_ATTR_SERVICE", self._svc_key(vs)), ("IPVS_CMD_ATTR_DEST", self._dest(rs))])

    def update_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_SET_DEST,
                    [("IPVS_CMD_ATTR_SERVICE", self._svc_key(vs)), ("IPVS_CMD_ATTR_DEST", self._dest(rs))])

    def delete_real_server(self, vs: VirtualServer, rs: RealServer) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_DEL_DEST,
                    [("IPVS_CMD_ATTR_SERVICE", self._svc_key(vs)), ("IPVS_CMD_ATTR_DEST", self._dest(rs))],
                    (errno.ENOENT,))

    def flush(self) -> None:
        from pyroute2.netlink.generic import ipvs as g

        self._write(g.IPVS_CMD_FLUSH, [])


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


def sync_ipvs_table(
    k: KernelIpvs,
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
    its real servers, as kube-proxy's cleanLegacyService.
    """
    terminating = terminating or {}
    draining: dict[tuple[str, str, int], dict[tuple[str, int], float]] = {}
    current = k.services()
    for key, want in sorted(p.virtual_servers.items()):
        have = current.get(key)
        if have is None:
            k.add_service(want)
            changes.services_added += 1
            have_rs: set[RealServer] = set()
        else:
            if have != want:
                k.update_service(want)
                changes.services_updated += 1
            have_rs = k.real_servers(want)
        d = diff_real_servers(want, p.real_servers[key], have_rs, terminating.get(key, {}), now, timeout)
        for rs in d.add:
            k.add_real_server(want, rs)
        for rs in d.update + d.quiesce:
            k.update_real_server(want, rs)
        for rs in d.delete:
            k.delete_real_server(want, rs)
        changes.real_servers_added += len(d.add)
        changes.real_servers_updated += len(d.update)
        changes.real_servers_quiesced += len(d.quiesce)
        changes.real_servers_deleted += len(d.delete)
        if d.terminating:
            draining[key] = d.terminating
    for key, have in sorted(current.items()):
        if key not in p.virtual_servers:
            k.delete_service(have)
            changes.services_deleted += 1
    return draining


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
        self._initialized = False
        self.last_changes = IpvsChanges()

    # -- one-time node set-up (NewProxier) ---------------------------------------------------

    def _init_node(self) -> None:
        # Opening the IPVS netlink socket loads ip_vs (where modules load); its
        # net.ipv4.vs.* sysctls exist only from then on.
        self.kernel._s()
        for key, value in sysctls_for_kernel(os.uname().release):
            netns.write_sysctl(self.netns_name, key, value)
        with netns.iproute(self.netns_name) as ipr:
            if not ipr.link_lookup(ifname=DUMMY_DEVICE):
                # kube-proxy's EnsureDummyDevice: created, left down; its addresses
                # still get local routes, which is all IPVS needs.
                ipr.link("add", ifname=DUMMY_DEVICE, kind="dummy")
        self._initialized = True

    # -- Backend -------------------------------------------------------------------------------

    def sync(self, state: ProxyState, changed: set[ServicePortName] | None) -> SyncResult:
        from pyroute2.netlink.exceptions import NetlinkError

        t0 = time.perf_counter()
        if not self._initialized:
            self._init_node()
        p = plan(state, self.scheduler)
        ch = IpvsChanges()
        try:
            # 1. ipsets first: the iptables rules reference every set.
            current_sets = ipset.parse_save(_checked(self.netns_name, ["ipset", "save"]))
            text, ch.ipset_entries_changed = ipset.restore_text(p.ipsets, current_sets)
            _checked(self.netns_name, ["ipset", "restore"], text)
            # 2. iptables: KUBE-* chains rewritten (declared = flushed), jumps ensured.
            save = _checked(self.netns_name, ["iptables-save"])
            rules = iptables_text(state.node, p.nonempty_sets(), missing_jumps(save))
            _checked(self.netns_name, ["iptables-restore", "--noflush"], rules)
            # 3. addresses on kube-ipvs0, then the IPVS table.
            self._sync_addresses(p.bound_addresses, ch)
            self.terminating = sync_ipvs_table(self.kernel, p, ch, self.terminating, self.clock(),
                                               self.graceful_timeout)
        except NetlinkError as e:
            raise SyncError(f"IPVS sync in {self.netns_name}: {e}") from e
        self.last_changes = ch
        return SyncResult(
            full=changed is None,
            rules=p.iptables.count("\n-A "),
            chains=p.iptables.count("\n:"),
            details={k: v for k, v in vars(ch).items()}
            | {"virtual_servers": len(p.virtual_servers), "sync_ms": int((time.perf_counter() - t0) * 1000),
               "real_servers_terminating": sum(len(v) for v in self.terminating.values())},
        )

    def _sync_addresses(self, want: set[str], ch: IpvsChanges) -> None:
        with netns.iproute(self.netns_name) as ipr:
            idx = ipr.link_lookup(ifname=DUMMY_DEVICE)[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
            for ip in sorted(want - have):
                ipr.addr("add", index=idx, address=ip, prefixlen=32)
                ch.addresses_bound += 1
            for ip in sorted(have - want):
                ipr.addr("del", index=idx, address=ip, prefixlen=32)
                ch.addresses_unbound += 1

    def cleanup(self) -> None:
        """kube-proxy --cleanup for IPVS mode: IPVS table, kube-ipvs0, KUBE-* chains, ipsets."""
        with_netlink_errors_ignored(self.kernel.flush)
        self.kernel.close()
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

    def close(self) -> None:
        self.kernel.close()


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
