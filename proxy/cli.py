"""netlab-proxy: the per-node service proxy (kube-proxy's command line, where it applies).

Lab mode: ``netlab-proxy --store URL --node NAME`` started inside the node's
namespace (or with ``--netns``), as kube-proxy runs on every node.
Standalone: ``netlab-proxy --spec DIR --node-ip IP [--cluster-cidr CIDR]``
programs Services from YAML files in whatever namespace it runs in
(``--netns`` to pick one) — never the host's root namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import logging
import signal
import sys

from netlab import store as st
from netlab.errors import NetlabError
from netlab.stopflag import StopFlag
from proxy.backend import Backend
from proxy.iptables import Options
from proxy.iptables_apply import IptablesBackend, Runner
from proxy.loop import ProxyLoop
from proxy.model import NodeContext, check_ipvs_scheduler
from proxy.server import serve
from proxy.sources import DirSource, StoreSource

log = logging.getLogger("netlab.proxy")


def duration(text: str) -> float:
    """"1s", "500ms", "2m" or plain seconds, as kube-proxy's duration flags."""
    t = text.strip()
    for suffix, mul in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(t[: -len(suffix)]) * mul
    return float(t)


def ipvs_scheduler(text: str) -> str:
    """--ipvs-scheduler: one of kube-proxy's names; "" means the default, rr (as kube-proxy)."""
    if text == "":
        return text
    try:
        return check_ipvs_scheduler(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def service_cidrs(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """--service-cluster-ip-range: the cluster's Service CIDRs, as kube-apiserver's flag of that name.

    One CIDR, or two of different families (dual-stack), comma-separated,
    each a network address (no host bits). kube-proxy itself learns them
    from the ServiceCIDR objects the API server makes from its flag
    (OnServiceCIDRsChanged); each proxier keeps the ones of its family.
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give one CIDR, or two (one IPv4, one IPv6) separated by a comma")
    nets = []
    for part in parts:
        try:
            nets.append(ipaddress.ip_network(part, strict=True))
        except ValueError as e:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f" (did you mean {ipaddress.ip_network(part, strict=False)}?)"
            raise argparse.ArgumentTypeError(f"{part!r} is not a CIDR: {e}{hint}") from None
    if len(nets) == 2 and nets[0].version == nets[1].version:
        raise argparse.ArgumentTypeError(f"{text!r}: two CIDRs must be one IPv4 and one IPv6 (dual-stack)")
    return tuple(nets)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="netlab-proxy", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", metavar="DIR", help="standalone: Services and EndpointSlices from YAML files in DIR")
    src.add_argument("--store", metavar="URL", help="lab: the lab's store (sqlite:///... or etcd://...)")
    ap.add_argument("--node", default="", help="this node's name (kube-proxy --hostname-override)")
    ap.add_argument("--node-ip", action="append", default=[], help="this node's IP (repeatable)")
    ap.add_argument("--cluster-cidr", help="the pod network; traffic from outside it is masqueraded")
    ap.add_argument("--service-cluster-ip-range", type=service_cidrs, default=(), metavar="CIDR[,CIDR]",
                    help="the Service CIDRs (kube-apiserver's flag; kube-proxy reads its ServiceCIDR objects): "
                    "nftables mode drops traffic to addresses in them that no Service holds")
    ap.add_argument("--nodeport-addresses", action="append", default=[], help="CIDRs NodePorts answer on")
    ap.add_argument("--masquerade-all", action="store_true")
    ap.add_argument("--mode", default="iptables", help="iptables (this module), ipvs, nftables, userspace")
    ap.add_argument("--iptables", choices=("nft", "legacy"), default="nft", help="iptables backend binaries")
    ap.add_argument("--ipvs-scheduler", type=ipvs_scheduler, default="", metavar="NAME",
                    help="IPVS mode: the scheduler of every virtual server (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, "
                    "sed, nq; default rr); a Service's kube-router.io/service.scheduler annotation overrides it")
    ap.add_argument("--min-sync-period", type=duration, default=1.0)
    ap.add_argument("--sync-period", type=duration, default=30.0)
    ap.add_argument("--netns", help="program this named network namespace (default: the one we run in)")
    ap.add_argument("--healthz-bind-address", default="0.0.0.0:10256")
    ap.add_argument("--metrics-bind-address", default="0.0.0.0:10249")
    ap.add_argument("--cleanup", action="store_true", help="remove every rule this mode wrote, and exit")
    ap.add_argument("--once", action="store_true", help="sync once and exit (non-zero if it failed)")
    return ap


def make_backend(args: argparse.Namespace) -> Backend:
    if args.mode == "iptables":
        return IptablesBackend(args.netns, args.iptables, Options(random_fully=True))
    # Other modes live in proxy/<mode>.py and expose make_backend(args) -> Backend.
    try:
        mod = importlib.import_module(f"proxy.{args.mode}")
    except ImportError:
        raise NetlabError(f"unknown proxy mode {args.mode!r}") from None
    return mod.make_backend(args)


def node_context(args: argparse.Namespace, store: st.Store | None) -> NodeContext:
    """Flags first; in a lab, the Node object's InternalIP and flannel's Network fill the gaps."""
    ips = [ip for v in args.node_ip for ip in v.split(",") if ip]
    cidr = args.cluster_cidr
    if store is not None and args.node:
        kv = store.get(st.NODES + args.node)
        if kv and not ips:
            ips = [a["address"] for a in kv.value.get("status", {}).get("addresses", []) if a.get("type") == "InternalIP"]
        if not cidr:
            cfg = store.get(st.FLANNEL_CONFIG)
            cidr = cfg.value.get("Network") if cfg else None
    return NodeContext(
        node_name=args.node,
        node_ips=tuple(ips),
        cluster_cidr=cidr,
        node_port_addresses=tuple(args.nodeport_addresses),
        masquerade_all=args.masquerade_all,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        backend = make_backend(args)
        if args.cleanup:
            backend.cleanup()
            return 0
        store = st.open_store(args.store) if args.store else None
        source = StoreSource(store) if store is not None else DirSource(args.spec)
        node = node_context(args, store)
        loop = ProxyLoop(
            source, backend, node, min_sync_period=args.min_sync_period, sync_period=args.sync_period,
            conntrack_run=Runner(args.netns),
        )
        if args.once:
            loop.source.refresh()
            ok = loop.sync_once(force_full=True) is not None
            for key, msg in loop.invalid.items():
                print(f"invalid: {msg}", file=sys.stderr)
            if not ok:
                print(loop.last_error, file=sys.stderr)
            return 0 if ok else 1
        stop = StopFlag()  # not a threading.Event: its set() can hang in a signal handler (netlab.stopflag)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        serve(loop, args.healthz_bind_address, True, args.netns)
        serve(loop, args.metrics_bind_address, False, args.netns)
        loop.run(stop)  # rules stay in place on exit, as kube-proxy leaves them
        return 0
    except NetlabError as e:
        print(f"netlab-proxy: {e}", file=sys.stderr)
        return e.exit_code
