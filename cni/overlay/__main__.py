"""python -m cni.overlay: one node's overlay agent (flanneld's role).

Usage (the lab starts one per node, inside the node's namespace)::

    python -m cni.overlay --store URL --node NAME --subnet-file PATH
                          [--iface eth0] [--node-ip IP] [--netns NAME]
                          [--resync 5] [--poll 0.1] [--lease-ttl 86400]
                          [--ip-masq | --no-ip-masq]
                          [--iptables-forward-rules | --no-iptables-forward-rules]
                          [--iptables auto|nft|legacy]

--store        the cluster store: ``sqlite:///run/netlab/<lab>/store.db`` (or a
               path) or ``etcd://127.0.0.1:2379`` (``?netns=NAME`` opens the
               store's connections inside namespace NAME, e.g. an etcd on the
               loopback of the lab namespace)
--node         the node's name: its Node object /registry/minions/<node> gives
               the podCIDR to lease when it exists (flannel's kube subnet manager)
--subnet-file  where to write subnet.env (flannel: /run/flannel/subnet.env)
--iface        the uplink whose address is the PublicIP and whose MTU the
               overlay MTU derives from (flannel's --iface)
--node-ip      PublicIP, when it is not the uplink's first address (flannel's --public-ip)
--netns        enter this namespace first (default: stay in the one started in)
--resync       seconds between full converges (restores deleted kernel state)
--poll         seconds between store polls for lease events
--lease-ttl    the lease's TTL in seconds (flannel: 24 h)
--ip-masq      masquerade pod traffic leaving the pod network (chain FLANNEL-POSTRTG
               in nat POSTROUTING) and say so in subnet.env (FLANNEL_IPMASQ), so the
               CNI plugin does not masquerade as well; default on, as kube-flannel runs it
--iptables-forward-rules
               accept forwarding to and from the pod network (FLANNEL-FWD in filter
               FORWARD); default on, as flanneld's
--iptables     the iptables binaries: nft, legacy, or auto (default: `iptables` as
               installed, nft on Debian 12); use the one the node's kube-proxy uses

Exits 0 on SIGTERM/SIGINT leaving lease and kernel state as they are (a
restart then changes nothing); exits 2 for a bad net-conf.json, 1 for other
start-up failures.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from netlab import netns
from netlab.errors import SpecError
from netlab.stopflag import StopFlag
from netlab.store import open_store

from .agent import Agent, AgentOptions, configure_logging
from .kernel import IPTABLES_BINARIES, Iptables, Kernel
from .lease import LEASE_TTL, LeaseError

log = logging.getLogger("cni.overlay")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cni.overlay", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--subnet-file", required=True)
    p.add_argument("--iface", default="eth0")
    p.add_argument("--node-ip")
    p.add_argument("--netns")
    p.add_argument("--resync", type=float, default=5.0)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--lease-ttl", type=float, default=LEASE_TTL)
    p.add_argument("--ip-masq", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--iptables-forward-rules", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--iptables", choices=sorted(IPTABLES_BINARIES), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    stop = StopFlag()  # not a threading.Event: its set() can hang in a signal handler (netlab.stopflag)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    opts = AgentOptions(
        node=args.node, subnet_file=args.subnet_file, iface=args.iface, node_ip=args.node_ip,
        resync=args.resync, poll=args.poll, lease_ttl=args.lease_ttl, ip_masq=args.ip_masq,
        forward_rules=args.iptables_forward_rules,
    )
    if args.netns and not netns.exists(args.netns):
        print(f"cni.overlay: namespace {args.netns} does not exist", file=sys.stderr)
        return 1
    try:
        store = open_store(args.store)
        iptables = Iptables(args.netns, args.iptables)
        with Kernel(args.netns) as kernel:
            Agent(opts, store, kernel, iptables).run(stop)
    except SpecError as e:
        print(f"cni.overlay: {e}", file=sys.stderr)
        return 2
    except (LeaseError, RuntimeError, OSError) as e:
        print(f"cni.overlay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
