"""A connectivity check across a lab, with plain sockets inside the namespaces.

Every pod asks every other pod's built-in server who it is (TCP /hostname
and UDP "hostname"), and every node asks its own pods; the answer must be
the target pod's name. Same-node pairs test the bridge, cross-node pairs
the overlay.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from netlab import netns
from netlab.netexec import HTTP_PORT, UDP_PORT


@dataclass
class CheckResult:
    source: str
    target: str
    proto: str
    ok: bool
    answer: str


def http_get(ns: str, ip: str, path: str, port: int = HTTP_PORT, timeout: float = 2.0) -> str:
    """GET http://ip:port/path from inside namespace `ns`; return the body."""
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((ip, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"HTTP {head.split(b' ')[1:2]}")
    return body.decode()


def udp_ask(ns: str, ip: str, message: str, port: int = UDP_PORT, timeout: float = 2.0) -> str:
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(message.encode(), (ip, port))
        return s.recv(65536).decode()


def _probe(source: str, ns: str, pod: dict, proto: str) -> CheckResult:
    target = f"{pod['namespace']}/{pod['name']}"
    try:
        answer = http_get(ns, pod["ip"], "/hostname") if proto == "TCP" else udp_ask(ns, pod["ip"], "hostname")
        return CheckResult(source, target, proto, answer == pod["name"], answer)
    except OSError as e:
        return CheckResult(source, target, proto, False, str(e) or type(e).__name__)


def run_checks(st: dict, max_pairs: int = 200) -> list[CheckResult]:
    pods = [p for p in st["pods"] if p["phase"] == "Running" and p["ip"]]
    results = []
    for a in pods:
        for b in pods:
            if a is not b and len(results) < max_pairs:
                for proto in ("TCP", "UDP"):
                    results.append(_probe(f"{a['namespace']}/{a['name']}", a["netns"], b, proto))
    for n in st["nodes"]:
        for p in pods:
            if p["node"] == n["name"]:
                results.append(_probe(f"node {n['name']}", n["netns"], p, "TCP"))
    results.extend(service_checks(st, pods))
    return results


def _spread(ns: str, ip: str, port: int, tries: int) -> set[str]:
    seen = set()
    for _ in range(tries):
        seen.add(http_get(ns, ip, "/hostname", port=port))
    return seen


def service_checks(st: dict, pods: list[dict], tries: int = 10) -> list[CheckResult]:
    """Each TCP Service from a pod (ClusterIP) and from an external client (NodePort, LoadBalancer)."""
    results = []
    names_by_ip = {p["ip"]: p["name"] for p in pods}
    for s in st["services"]:
        want = {names_by_ip.get(ip, ip) for ip in s["endpoints"]}
        targets = []
        for port in s["ports"]:
            if port.get("protocol", "TCP") != "TCP":
                continue
            if pods and s["clusterIP"] not in (None, "None"):
                src = pods[0]
                targets.append((f"{src['namespace']}/{src['name']}", src["netns"], s["clusterIP"], port["port"], "ClusterIP"))
            if st.get("clients") and port.get("nodePort"):
                c, n = st["clients"][0], st["nodes"][0]
                targets.append((f"client {c['name']}", c["netns"], n["ip"], port["nodePort"], "NodePort"))
            for lb in s["loadBalancerIPs"] if st.get("clients") else []:
                c = st["clients"][0]
                targets.append((f"client {c['name']}", c["netns"], lb, port["port"], "LoadBalancer"))
        for source, ns, ip, port, kind in targets:
            label = f"svc {s['namespace']}/{s['name']} {ip}:{port}"
            try:
                seen = _spread(ns, ip, port, tries)
                ok = bool(want) and seen <= want
                results.append(CheckResult(source, label, kind, ok, ",".join(sorted(seen))))
            except OSError as e:
                results.append(CheckResult(source, label, kind, False, str(e) or type(e).__name__))
    return results
