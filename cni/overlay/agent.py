"""The overlay agent: flanneld's role on one node.

Start-up, as flanneld's main: wait for the network config, claim a subnet
lease, write subnet.env, program the backend. Then converge forever:

- every lease change seen by the watch (polled every `poll` seconds,
  default 0.1 s) relists the leases and converges, so a node joining or
  leaving is programmed on every peer well within a second;
- every `resync` seconds it converges anyway, which restores a flannel.1,
  route, neighbour or FDB entry that someone deleted behind its back
  (flannel's hostgw routeCheck loop, generalised);
- the lease is renewed before its TTL runs out (flannel's LeaseRenewer);
- flanneld's iptables chains (FLANNEL-POSTRTG for --ip-masq, FLANNEL-FWD
  for --iptables-forward-rules) are ensured at start-up, after a new lease
  and at every resync, as flannel's setupAndEnsureIPTables loop does; they
  depend on the network and the node's own subnet only, so lease events
  of other nodes do not wait for them.

Converging is always the same pure step: leases → plan.desired → diff
against kernel.observe → kernel.apply. A restarted agent therefore changes
nothing that was already right: the lease it finds is its own (same
PublicIP), the VTEP MAC is derived rather than random, and an empty diff
applies nothing. On exit the agent leaves lease and kernel state in place,
as flanneld does; the lab releases a removed node's lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface

from netlab.stopflag import StopFlag
from netlab.store import FLANNEL_CONFIG, FLANNEL_SUBNETS, Compacted, Store

from . import lease as leases
from . import masq, netconf, plan
from .kernel import Iptables, Kernel
from .subnet_file import read_subnet, write_subnet_env

log = logging.getLogger("cni.overlay")


@dataclass
class AgentOptions:
    node: str
    subnet_file: str
    iface: str = "eth0"
    node_ip: str | None = None
    resync: float = 5.0
    poll: float = 0.1
    lease_ttl: float = leases.LEASE_TTL
    ip_masq: bool = True
    forward_rules: bool = True  # flanneld --iptables-forward-rules


@dataclass
class Status:
    """What the agent last did; read by tests and `netlab status`-like callers."""

    lease: leases.Lease | None = None
    converged_at: float = 0.0
    last_changes: str = ""
    applied: int = 0  # how many converges changed the kernel
    acquired: int = 0  # lease acquisitions (1 + re-acquisitions after a lost lease)
    renewed: int = 0
    rules_applied: int = 0  # iptables-restore runs that changed flannel's chains


class Agent:
    def __init__(self, opts: AgentOptions, store: Store, kernel: Kernel, iptables: Iptables | None = None) -> None:
        self.opts = opts
        self.store = store
        self.kernel = kernel
        self.iptables = iptables  # None: leave iptables alone (flannel's chains are neither made nor removed)
        self.status = Status()
        self.conf: netconf.NetConf | None = None
        self.node: plan.Node | None = None
        self._renew_at = 0.0
        self._next_resync = 0.0
        self._rev = 0

    # -- start-up ----------------------------------------------------------------

    def wait_config(self, stop: threading.Event | StopFlag) -> netconf.NetConf | None:
        """The network config from the store, waiting for it as flanneld does."""
        warned = False
        while not stop.is_set():
            kv = self.store.get(FLANNEL_CONFIG)
            if kv is not None:
                return netconf.parse(kv.value, where=FLANNEL_CONFIG)
            if not warned:
                log.info("waiting for %s", FLANNEL_CONFIG)
                warned = True
            stop.wait(self.opts.poll)
        return None

    def local_node(self) -> plan.Node:
        """Node IP (with the underlay prefix) and MTU from the uplink, as flannel's LookupExtIface."""
        found = self.kernel.uplink(self.opts.iface)
        if found is None:
            raise RuntimeError(f"interface {self.opts.iface} is missing or has no IPv4 address")
        cidr, mtu = found
        iface = IPv4Interface(cidr)
        if self.opts.node_ip and str(iface.ip) != self.opts.node_ip:
            if self.conf is not None and self.conf.backend.type == "host-gw":
                # flannel's hostgw.New refuses the same: peers route to the PublicIP as a next hop,
                # which only works if it is this interface's own address.
                raise RuntimeError(
                    f"--node-ip {self.opts.node_ip} differs from {self.opts.iface}'s address {iface.ip}, "
                    "meaning that probably you're on a NAT, which is not supported by host-gw backend")
            # --node-ip names another address (flannel's --public-ip): keep the uplink's prefix.
            iface = IPv4Interface(f"{self.opts.node_ip}/{iface.network.prefixlen}")
        return plan.Node(ip=iface, uplink=self.opts.iface, uplink_mtu=mtu)

    def acquire(self) -> leases.Lease:
        assert self.conf and self.node
        attrs = plan.own_lease_attrs(self.conf, self.node)
        previous = read_subnet(self.opts.subnet_file)
        lease = leases.acquire(
            self.store, self.conf, attrs, self.opts.node, previous=previous, ttl=self.opts.lease_ttl
        )
        self.status.lease = lease
        self.status.acquired += 1
        self._schedule_renew()
        write_subnet_env(
            self.opts.subnet_file, self.conf.network, lease.subnet,
            self.conf.mtu(self.node.uplink_mtu), self.opts.ip_masq,
        )
        log.info("lease %s (PublicIP %s, %s)", lease.subnet, lease.public_ip, lease.backend_type)
        self.ensure_rules()
        return lease

    def _schedule_renew(self) -> None:
        ttl = self.opts.lease_ttl
        self._renew_at = time.monotonic() + ttl - min(leases.RENEW_MARGIN, ttl / 2)

    # -- converge ----------------------------------------------------------------

    def converge(self) -> plan.Changes:
        """Relist the leases, plan, observe, apply the difference."""
        assert self.conf and self.node and self.status.lease
        items, rev = self.store.list(FLANNEL_SUBNETS)
        current = leases.parse_leases([(kv.key, kv.value) for kv in items])
        self._rev = rev
        want = plan.desired(self.conf, self.node, self.status.lease, current)
        have = self.kernel.observe(self.conf, self.status.lease.subnet)
        changes = plan.diff(want, have)
        if not changes.empty():
            self.kernel.apply(changes)
            self.status.applied += 1
            self.status.last_changes = changes.summary()
            log.info("applied: %s", changes.summary())
        self.status.converged_at = time.monotonic()
        return changes

    def ensure_rules(self) -> str | None:
        """flannel's FLANNEL-POSTRTG / FLANNEL-FWD for the current lease; the restore text applied, if any."""
        if self.iptables is None:
            return None
        assert self.conf and self.status.lease
        want = masq.desired(self.conf.network, self.status.lease.subnet, self.opts.ip_masq, self.opts.forward_rules)
        text = masq.restore_text(want, masq.parse_save(self.iptables.save()))
        if text:
            self.iptables.restore(text)
            self.status.rules_applied += 1
            log.info("iptables: %s", ", ".join(
                f"{c} {'ensured' if r else 'removed'}" for c, r in want.items()))
        return text

    def run(self, stop: threading.Event | StopFlag) -> None:
        """Start up, then watch and converge until `stop` is set."""
        self.conf = self.wait_config(stop)
        if self.conf is None:
            return
        self.node = self.local_node()
        self.acquire()
        first = self.converge()
        log.info("ready: %s", first.summary())  # "ready: nothing" after a restart onto a right kernel
        self._next_resync = time.monotonic() + self.opts.resync
        while not stop.is_set():
            try:
                dirty = self.step()
            except Exception as e:  # store unreachable, a netlink hiccup: flanneld logs and retries
                log.warning("retrying in 1 s: %s: %s", type(e).__name__, e)
                stop.wait(1.0)
                continue
            if not dirty:
                stop.wait(self.opts.poll)

    def step(self) -> bool:
        """One turn of the loop: events, renewal, converge if needed; True if leases changed."""
        dirty = False
        try:
            events, rev = self.store.events_since(FLANNEL_SUBNETS, self._rev)
            if events:
                dirty = True
                mine = [e for e in events if e.key == self.status.lease.key]
                if mine and mine[-1].type == "DELETE":
                    # Our lease vanished (expired, or deleted by hand): take it back.
                    log.warning("own lease %s was deleted; re-acquiring", self.status.lease.subnet)
                    self.acquire()
            self._rev = max(self._rev, rev)
        except Compacted:
            dirty = True  # fell behind the store's history: the converge below relists
        now = time.monotonic()
        if now >= self._renew_at:
            if leases.renew(self.store, self.status.lease, ttl=self.opts.lease_ttl):
                self.status.renewed += 1
            else:
                log.warning("lease %s lost; re-acquiring", self.status.lease.subnet)
                self.acquire()
            self._schedule_renew()
        if dirty or now >= self._next_resync:
            self.converge()
            if now >= self._next_resync:
                self.ensure_rules()
            self._next_resync = time.monotonic() + self.opts.resync
        return dirty


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("NETLAB_LOG", "INFO"),
        format="%(asctime)s cni.overlay[%(process)d] %(levelname)s %(message)s",
    )

