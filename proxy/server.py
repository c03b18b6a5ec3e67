"""kube-proxy's HTTP endpoints: /healthz on 10256, /metrics on 10249.

Sockets are opened while the thread is inside the node's namespace (when
one is given), so the ports belong to the node, as kube-proxy's host-network
pod serves them on the node's addresses. /healthz answers as kube-proxy's
ProxierHealthServer: 200 with lastUpdated/currentTime while syncs keep
up, 503 when the last successful sync is older than twice the sync period.
netlab adds /status: the loop's status, including invalid objects.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from netlab import netns
from proxy.loop import ProxyLoop


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z") if t else ""


def _handler(loop: ProxyLoop, healthz: bool):
    class Handler(BaseHTTPRequestHandler):
        # Go's net/http (kube-proxy's servers) answers an HTTP/1.1 request in HTTP/1.1; http.server
        # would say HTTP/1.0. Every answer carries Content-Length, so keep-alive is safe.
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the proxy's own log is enough
            pass

        def _send(self, code: int, body: str, ctype: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if path in ("/healthz", "/livez") and healthz:
                now = time.time()
                last = loop.last_success_wall
                ok = bool(last) and now - last <= max(2 * loop.sync_period, 2.0)
                body = json.dumps({"lastUpdated": _iso(last), "currentTime": _iso(now),
                                   "nodeEligible": True})
                self._send(200 if ok else 503, body, "application/json")
            elif path == "/metrics":
                self._send(200, loop.metrics.render(), "text/plain; version=0.0.4")
            elif path == "/status":
                self._send(200, json.dumps(loop.status(), indent=2), "application/json")
            else:
                self._send(404, "not found\n", "text/plain")

    return Handler


def _parse(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "0.0.0.0", int(port)


def serve(loop: ProxyLoop, addr: str, healthz: bool, netns_name: str | None = None) -> ThreadingHTTPServer | None:
    """Start one server thread on `addr` ("host:port"; port 0 disables it)."""
    host, port = _parse(addr)
    if port == 0:
        return None
    if netns_name:
        with netns.entered(netns_name):
            srv = ThreadingHTTPServer((host, port), _handler(loop, healthz))
    else:
        srv = ThreadingHTTPServer((host, port), _handler(loop, healthz))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name=f"http-{port}", daemon=True).start()
    return srv
