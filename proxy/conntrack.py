"""Stale UDP conntrack entries: which to flush after a sync (pure), and flushing them.

UDP has no connection teardown: after an endpoint goes away, a client that
keeps sending to the service IP keeps hitting the old DNAT entry until it
times out. kube-proxy flushes them after each successful sync
(proxier.go: deleteUDPEndpointConnections / conntrack.CleanStaleEntries):
- an endpoint gone from a UDP service port: entries whose original
  destination is a service IP and whose DNAT target is that endpoint;
- a UDP service port that just got its first endpoint: entries for the
  service IP (they may have been created while traffic was REJECTed).
Mode-independent: the loop calls it for every backend.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.model import ProxyState, ServicePort


def _service_ips(sp: ServicePort) -> list[str]:
    return [ip for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips) if ip]


def stale_udp_flushes(old: ProxyState | None, new: ProxyState) -> list[list[str]]:
    """conntrack(8) argument lists to run after `new` is applied, as kube-proxy's ClearEntriesFor*."""
    if old is None:
        return []
    cmds: list[list[str]] = []
    for name, sp in new.services.items():
        if sp.protocol != "UDP":
            continue
        old_eps = {(e.ip, e.port) for e in old.endpoints_of(name) if e.ready or e.serving}
        new_eps = {(e.ip, e.port) for e in new.endpoints_of(name) if e.ready or e.serving}
        old_sp = old.services.get(name)
        for ip, _port in sorted(old_eps - new_eps):
            for svc_ip in _service_ips(old_sp or sp):
                cmds.append(["-D", "--orig-dst", svc_ip, "--dst-nat", ip, "-p", "udp"])
            if sp.node_port:
                cmds.append(["-D", "-p", "udp", "--dport", str(sp.node_port), "--dst-nat", ip])
        if new_eps and not old_eps:
            for svc_ip in _service_ips(sp):
                cmds.append(["-D", "--orig-dst", svc_ip, "-p", "udp"])
            if sp.node_port:
                cmds.append(["-D", "-p", "udp", "--dport", str(sp.node_port)])
    # Deleted UDP services: their endpoints are gone too.
    for name, sp in old.services.items():
        if sp.protocol == "UDP" and name not in new.services:
            for e in old.endpoints_of(name):
                for svc_ip in _service_ips(sp):
                    cmds.append(["-D", "--orig-dst", svc_ip, "--dst-nat", e.ip, "-p", "udp"])
    return cmds


def flush(cmds: list[list[str]], run: Callable[[list[str]], object]) -> int:
    """Run each flush with `run(argv)`; "0 flow entries" is success, as kube-proxy treats it."""
    done = 0
    for args in cmds:
        try:
            run(["conntrack", *args])
            done += 1
        except Exception as e:  # noqa: BLE001 - conntrack exits 1 when nothing matched
            if "0 flow entries" not in str(e):
                raise
    return done
