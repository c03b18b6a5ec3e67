"""Where an IPVS full sync's time goes, at N services (run inside the stock-kernel guest).

    python -m tests.vm.runner --shell '$PY tests/vm/profile_ipvs_sync.py 1000'

One MiniLab node, N ClusterIP services with one endpoint each (bench/dataplane.py's
state): a full sync into the empty node and a resync over it, each timed, then the
same pair under cProfile (top functions by cumulative and own time).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.dataplane import state_with  # noqa: E402
from proxy.ipvs_kernel import IpvsBackend  # noqa: E402
from tests.vm.minilab import MiniLab  # noqa: E402


def once(n: int, profile: bool) -> None:
    lab = MiniLab(f"nlipvs-prof{os.getpid() % 10000}")
    try:
        lab.up(["server", "client"])
        state = state_with(n, lab.pods["server"])
        b = IpvsBackend(lab.node)
        prof = cProfile.Profile() if profile else None
        for what in ("full sync", "resync"):
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            r = b.sync(state, None)
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            print(f"{'profiled ' if profile else ''}{what} of {n} services: {dt:.2f} s  {r.details}", flush=True)
        if prof:
            for key in ("cumulative", "tottime"):
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats(key).print_stats(35)
                print(s.getvalue(), flush=True)
        b.cleanup()
        b.close()
    finally:
        lab.down()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    once(n, profile=False)
    if "--no-profile" not in sys.argv:
        once(n, profile=True)
