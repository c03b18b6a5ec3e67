"""kube-proxy's Prometheus metrics, in the text exposition format, without a client library.

Names are kube-proxy's (pkg/proxy/metrics), so dashboards and alerts written
for a real cluster read the same here; netlab's additions are prefixed
`netlab_proxy_`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# kube-proxy's SyncProxyRulesLatency buckets: exponential, 1ms * 2^i for 14 buckets.
BUCKETS = tuple(0.001 * 2**i for i in range(14))


@dataclass
class Histogram:
    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += v
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        for b, c in zip(self.buckets, self.counts):
            out.append(f'{name}_bucket{{le="{b:g}"}} {c}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total}", f"{name}_count {self.n}"]
        return out


class Metrics:
    """Everything /metrics shows; updated by the loop, read by the server thread."""

    def __init__(self, mode: str = "iptables") -> None:
        self.mode = mode
        self.lock = threading.Lock()
        self.sync = Histogram()
        self.full_sync = Histogram()
        self.partial_sync = Histogram()
        self.last_sync_timestamp = 0.0  # kubeproxy_sync_proxy_rules_last_timestamp_seconds
        self.last_queued_timestamp = 0.0
        self.rules: dict[str, int] = {}  # table -> rules
        self.restore_failures = 0
        self.partial_restore_failures = 0
        self.invalid_objects = 0
        self.services = 0
        self.endpoints = 0
        self.stale_udp_flushed = 0

    def observe_sync(self, seconds: float, full: bool, rules: dict[str, int], at: float) -> None:
        with self.lock:
            self.sync.observe(seconds)
            (self.full_sync if full else self.partial_sync).observe(seconds)
            self.rules = dict(rules)
            self.last_sync_timestamp = at

    def failed(self, full: bool) -> None:
        with self.lock:
            if full:
                self.restore_failures += 1
            else:
                self.partial_restore_failures += 1

    def render(self) -> str:
        with self.lock:
            out: list[str] = []
            out += self.sync.lines("kubeproxy_sync_proxy_rules_duration_seconds")
            out += self.full_sync.lines("kubeproxy_sync_full_proxy_rules_duration_seconds")
            out += self.partial_sync.lines("kubeproxy_sync_partial_proxy_rules_duration_seconds")
            out += [
                "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
                f"kubeproxy_sync_proxy_rules_last_timestamp_seconds {self.last_sync_timestamp}",
                "# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge",
                f"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds {self.last_queued_timestamp}",
                f"# TYPE kubeproxy_sync_proxy_rules_{self.mode}_total gauge",
            ]
            for table, n in sorted(self.rules.items()):
                out.append(f'kubeproxy_sync_proxy_rules_{self.mode}_total{{table="{table}"}} {n}')
            out += [
                f"# TYPE kubeproxy_sync_proxy_rules_{self.mode}_restore_failures_total counter",
                f"kubeproxy_sync_proxy_rules_{self.mode}_restore_failures_total {self.restore_failures}",
                f"# TYPE kubeproxy_sync_proxy_rules_{self.mode}_partial_restore_failures_total counter",
                f"kubeproxy_sync_proxy_rules_{self.mode}_partial_restore_failures_total {self.partial_restore_failures}",
                "# TYPE netlab_proxy_invalid_objects gauge",
                f"netlab_proxy_invalid_objects {self.invalid_objects}",
                "# TYPE netlab_proxy_service_ports gauge",
                f"netlab_proxy_service_ports {self.services}",
                "# TYPE netlab_proxy_endpoints gauge",
                f"netlab_proxy_endpoints {self.endpoints}",
                "# TYPE netlab_proxy_stale_udp_flushes_total counter",
                f"netlab_proxy_stale_udp_flushes_total {self.stale_udp_flushed}",
            ]
            return "\n".join(out) + "\n"
