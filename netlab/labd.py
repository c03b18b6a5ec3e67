"""The lab daemon: one process per lab, in the lab's namespace.

It plays the cluster-wide roles that have no per-node home in netlab: the
kubelet for every node's pods (netlab.kubelet) and the controllers of
kube-controller-manager (netlab.controllers: EndpointSlices, load
balancers) when they are present. Started by `netlab up`, ended by `down`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading

from netlab import names
from netlab.kubelet import Kubelet
from netlab.store import open_store


def _controllers(store_url: str, lab: str, stop: threading.Event) -> list[threading.Thread]:
    """The controller-manager's loops, each on its own store connection and thread."""
    threads = []
    try:
        from netlab.controllers import run_controllers  # the service proxy's controllers
    except ImportError:
        return threads
    t = threading.Thread(target=run_controllers, args=(store_url, lab, stop), name="controllers", daemon=True)
    t.start()
    threads.append(t)
    return threads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="netlab-labd")
    ap.add_argument("--lab", required=True)
    ap.add_argument("--store", help="store URL (default: the lab's embedded store)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = args.store or f"sqlite://{names.store_path(args.lab)}"
    stop = threading.Event()
    _controllers(url, args.lab, stop)

    async def run() -> None:
        kubelet = Kubelet(args.lab, open_store(url))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kubelet.stop_event.set)
        await kubelet.run()

    try:
        asyncio.run(run())
    finally:
        stop.set()


if __name__ == "__main__":
    main()
