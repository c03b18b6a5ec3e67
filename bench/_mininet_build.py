"""Mininet's half of bench/lab_build.py, run by Debian's python3 inside the benchmark's own namespace.

Mininet 2.3 through its Python API: LinuxBridge switches, no controller,
cleanup=False (never `mn -c`: it kills and deletes by broad pattern).
Prints one JSON line: hosts, build seconds, stop seconds.
"""

import json
import sys
import time

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo


class Racks(Topo):
    def build(self, switches: int, per_switch: int) -> None:
        prev = None
        for s in range(switches):
            sw = self.addSwitch(f"s{s + 1}")
            for h in range(per_switch):
                host = self.addHost(f"h{s + 1}x{h + 1}")
                self.addLink(host, sw)
            if prev is not None:
                self.addLink(prev, sw)
            prev = sw


def main() -> None:
    switches, per_switch = int(sys.argv[1]), int(sys.argv[2])
    setLogLevel("error")
    topo = Racks(switches, per_switch)
    t0 = time.perf_counter()
    net = Mininet(topo=topo, switch=LinuxBridge, controller=None, cleanup=False, build=False)
    net.build()
    net.start()
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    net.stop()
    stopped = time.perf_counter() - t1
    print(json.dumps({"hosts": switches * per_switch, "build_s": built, "stop_s": stopped}))


if __name__ == "__main__":
    main()
