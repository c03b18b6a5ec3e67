"""The controllers' watch loop: reconcile on every change, and relist after any store error.

As a controller built on client-go's informers: a full list (here, one
reconcile pass) at start, then a watch; a watch that fails for any reason
(the API server away, etcd restarting, a compacted revision) is started
again from a fresh list, with a back-off while the store does not answer.
A failed reconcile is retried the same way, so no change is lost to an
outage (client-go requeues a failed key with a rate limit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from netlab import store as st

# The back-off after a store error: doubling from the first to the last (client-go's
# reflector waits 0.8 s doubling to 30 s; a lab wants to recover sooner).
BACKOFF_START = 0.5
BACKOFF_MAX = 8.0


def changed_since(store: st.Store, prefixes: Sequence[str], rev: int) -> tuple[bool, int]:
    """Whether anything under `prefixes` changed after `rev`, and the revision to watch from next.

    The lowest revision read at, so an event written between two reads is never skipped.
    """
    seen, changed = [], False
    for prefix in prefixes:
        events, at = store.events_since(prefix, rev)
        changed = changed or bool(events)
        seen.append(at)
    return changed, min(seen)


def run_reconciler(store: st.Store, prefixes: Sequence[str], reconcile: Callable[[], object],
                   stop: threading.Event, poll_interval: float, log: logging.Logger) -> None:
    """Reconcile at start and on every change under `prefixes`, until `stop` is set.

    Never ends on a store error: it is logged, waited out (back-off), and
    followed by a full reconcile from a fresh revision.
    """
    rev: int | None = None  # None: relist (a full reconcile) before watching again
    backoff = BACKOFF_START
    while not stop.is_set():
        wait = poll_interval
        try:
            if rev is None:
                at = store.revision()  # read before the pass: nothing written during it is missed
                reconcile()
                rev = at
            else:
                changed, at = changed_since(store, prefixes, rev)
                if changed:
                    reconcile()
                rev = at
            backoff = BACKOFF_START
        except st.Compacted as e:
            log.info("watch compacted (%s): relisting", e)
            rev = None
        except Exception as e:  # noqa: BLE001 - any store error: back off, then relist
            log.warning("store error (%s: %s); relisting in %.1fs", type(e).__name__, e, backoff)
            rev, wait = None, backoff
            backoff = min(backoff * 2, BACKOFF_MAX)
        stop.wait(wait)

