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
import time
from typing import Any

from netlab import names
from netlab.errors import NetlabError
from netlab.kubelet import SANDBOX_WORKERS, Kubelet, load_cni_plugins
from netlab.sandbox_workers import SandboxWorkers
from netlab.store import Event, open_store

log = logging.getLogger("netlab.labd")

# How often a store outage is logged while it lasts.
OUTAGE_LOG_PERIOD = 5.0


class PatientWatch:
    """The kubelet's store, whose watch waits out a store outage (etcd restarting) instead of ending the kubelet.

    While the store does not answer, a watch sees no events; the kubelet's
    next sync fails, is logged and retried, as a kubelet keeps its pods
    running while the API server is away. Everything else is the store's.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._logged = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def events_since(self, prefix: str, revision: int) -> tuple[list[Event], int]:
        try:
            return self._store.events_since(prefix, revision)
        except (NetlabError, OSError) as e:
            if time.monotonic() - self._logged > OUTAGE_LOG_PERIOD:
                log.warning("store unavailable, waiting: %s", e)
                self._logged = time.monotonic()
            return [], revision


def _supervise(target, args: tuple, stop: threading.Event, what: str) -> None:
    """Run `target(*args)` until `stop`; start it again if it ends or fails (a store outage ends a loop)."""
    while not stop.is_set():
        try:
            target(*args)
        except Exception:  # noqa: BLE001 - logged, and run again
            log.exception("%s failed", what)
        if not stop.is_set():
            log.warning("%s ended; starting it again", what)
            stop.wait(1.0)


def _controllers(store_url: str, lab: str, stop: threading.Event) -> list[threading.Thread]:
    """The controller-manager's loops, each on its own store connection and thread."""
    threads = []
    try:
        from netlab.controllers import run_controllers  # the service proxy's controllers
    except ImportError:
        return threads
    t = threading.Thread(target=_supervise, args=(run_controllers, (store_url, lab, stop), stop, "controllers"),
                         name="controllers", daemon=True)
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
    # The sandbox workers are forked first, while this process has one thread, with the plugins imported.
    load_cni_plugins()
    workers = SandboxWorkers.fork(SANDBOX_WORKERS)
    stop = threading.Event()
    _controllers(url, args.lab, stop)

    async def run() -> None:
        kubelet = Kubelet(args.lab, PatientWatch(open_store(url)), workers)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kubelet.stop_event.set)
        await kubelet.run()

    try:
        asyncio.run(run())
    finally:
        stop.set()
        workers.close()


if __name__ == "__main__":
    main()
