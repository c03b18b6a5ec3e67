"""The built-in test server, in the spirit of Kubernetes' `agnhost netexec`.

A container without a command runs this: HTTP on 8080 answering
``/hostname``, ``/clientip`` (the "ip:port" the server saw: the address a
Service's SNAT did or did not rewrite) and ``/echo?msg=``; UDP on 8081
answering ``hostname``, ``clientip`` and ``echo <msg>``. Declared
containerPorts get the same server, so a Service with targetPort 80 works.

Memory matters (1000 pods in well under 1 GiB): one asyncio loop in the
kubelet process holds every pod's sockets. A socket is bound to the
namespace it was created in, so each is created while the thread is inside
the pod's namespace and then served from anywhere.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from netlab import netns

HTTP_PORT = 8080
UDP_PORT = 8081
_MAX_REQUEST = 8192


def _addr(peer) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_answer(path_qs: str, hostname: str, client: str) -> tuple[int, str]:
    """The body for a netexec HTTP path (pure, unit-tested)."""
    parts = urlsplit(path_qs)
    path, query = parts.path, parse_qs(parts.query)
    if path == "/hostname":
        return 200, hostname
    if path == "/clientip":
        return 200, client
    if path == "/echo":
        return 200, query.get("msg", [""])[0]
    if path in ("/healthz", "/readyz"):
        return 200, "ok"
    if path == "/":
        return 200, f"netexec on {hostname}: /hostname /clientip /echo?msg=\n"
    return 404, f"404 page not found: {path}"


def udp_answer(data: bytes, hostname: str, client: str) -> bytes | None:
    text = data.decode(errors="replace").strip()
    if text == "hostname":
        return hostname.encode()
    if text == "clientip":
        return client.encode()
    if text.startswith("echo "):
        return text[5:].encode()
    return None


class _Http(asyncio.Protocol):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > _MAX_REQUEST:
                self.transport.close()
            return
        line = self.buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        parts = line.split()
        if len(parts) < 2:
            status, body = 400, "bad request"
        else:
            status, body = http_answer(parts[1], self.hostname, _addr(self.transport.get_extra_info("peername")))
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        payload = body.encode()
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        self.transport.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        answer = udp_answer(data, self.hostname, _addr(addr))
        if answer is not None:
            self.transport.sendto(answer, addr)


@dataclass
class PodServers:
    """The open servers of one pod; close() releases the pod's namespace."""

    servers: list = field(default_factory=list)
    transports: list = field(default_factory=list)

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for t in self.transports:
            t.close()


def _bound(ns: str, kind: int, port: int) -> socket.socket:
    sock = netns.socket_in(ns, socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(ns: str, hostname: str, tcp_ports: set[int], udp_ports: set[int]) -> PodServers:
    """Start netexec in namespace `ns` on the given ports (8080/8081 always)."""
    loop = asyncio.get_running_loop()
    out = PodServers()
    try:
        for port in sorted(tcp_ports | {HTTP_PORT}):
            sock = _bound(ns, socket.SOCK_STREAM, port)
            out.servers.append(await loop.create_server(lambda: _Http(hostname), sock=sock))
        for port in sorted(udp_ports | {UDP_PORT}):
            sock = _bound(ns, socket.SOCK_DGRAM, port)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(hostname), sock=sock)
            out.transports.append(transport)
    except BaseException:
        out.close()
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m netlab.netexec --netns NS`: the server on its own, e.g. in a node's namespace."""
    import argparse

    ap = argparse.ArgumentParser(prog="netexec")
    ap.add_argument("--netns", required=True)
    ap.add_argument("--hostname", default=socket.gethostname())
    ap.add_argument("--http-port", type=int, action="append", default=[])
    ap.add_argument("--udp-port", type=int, action="append", default=[])
    args = ap.parse_args(argv)

    async def run() -> None:
        servers = await serve(args.netns, args.hostname, set(args.http_port), set(args.udp_port))
        try:
            await asyncio.Event().wait()
        finally:
            servers.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
