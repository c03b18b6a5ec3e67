"""The portmap plugin (chained): hostPort -> containerPort DNAT in the node's namespace.

Rules are laid out as the reference plugins/meta/portmap (iptables
backend) lays them, captured from /usr/lib/cni/portmap:

    PREROUTING/OUTPUT  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    POSTROUTING        -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
    CNI-HOSTPORT-DNAT  -p tcp -m comment --comment "dnat name: ..." -m multiport --dports P -j CNI-DN-<hash>
    CNI-DN-<hash>      -s <pod subnet> ... -j CNI-HOSTPORT-SETMARK    (hairpin: a pod reaching itself)
                       -s 127.0.0.1/32 ... -j CNI-HOSTPORT-SETMARK    (node-local clients)
                       ... -j DNAT --to-destination <pod>:<containerPort>
    CNI-HOSTPORT-SETMARK  MARK 0x2000/0x2000;  CNI-HOSTPORT-MASQ  MASQUERADE marked packets

plus route_localnet=1 on the host interface of the pod's subnet, so
127.0.0.1:hostPort can be DNAT'ed. DEL removes the pod's chain and its
jumps; the shared chains stay, as the reference leaves them. Not done:
IPv6 mappings and the conntrack flush of stale UDP entries.
"""

from __future__ import annotations

import ipaddress

from cni import hostns, iptables, nscache, skel
from cni.errors import CNIError, INVALID_CONFIG

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
MARK = "0x2000/0x2000"


def dn_chain(name: str, container_id: str) -> str:
    return iptables.chain_name(name, container_id, prefix="CNI-DN-")


def parse_mappings(conf: dict) -> list[dict]:
    """Pure: runtimeConfig.portMappings, validated, protocol defaulting to tcp."""
    rc = conf.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise CNIError(INVALID_CONFIG, "runtimeConfig must be an object")
    pms = rc.get("portMappings") or []
    if not isinstance(pms, list):
        raise CNIError(INVALID_CONFIG, "portMappings must be a list")
    out = []
    for pm in pms:
        if not isinstance(pm, dict):
            raise CNIError(INVALID_CONFIG, f"invalid port mapping {pm!r}")
        hp, cp = pm.get("hostPort"), pm.get("containerPort")
        for v in (hp, cp):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 65536:
                raise CNIError(INVALID_CONFIG, f"Invalid port number: {v!r}")
        proto = pm.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in ("tcp", "udp", "sctp"):
            raise CNIError(INVALID_CONFIG, f"Invalid protocol: {proto!r}")
        host_ip = pm.get("hostIP") or ""
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except (ValueError, TypeError):
                raise CNIError(INVALID_CONFIG, f"invalid hostIP {host_ip!r}") from None
        out.append({"hostPort": hp, "containerPort": cp, "protocol": proto.lower(), "hostIP": host_ip})
    return out


def plan(name: str, container_id: str, pod_ip: str, pod_net: str, mappings: list[dict]) -> tuple[str, list[str], list[str]]:
    """Pure: (pod chain, its rules, the jumps from CNI-HOSTPORT-DNAT), as fillDnatRules."""
    ch = dn_chain(name, container_id)
    c = iptables._q("dnat " + iptables.comment(name, container_id))
    protos: dict[str, list[str]] = {}
    for m in mappings:
        ports = protos.setdefault(m["protocol"], [])
        if str(m["hostPort"]) not in ports:
            ports.append(str(m["hostPort"]))
    jumps = [f"-A {DNAT_CHAIN} -p {p} -m comment --comment {c} -m multiport --dports {','.join(ports)} -j {ch}"
             for p, ports in protos.items()]
    rules = []
    for m in mappings:
        p = m["protocol"]
        dst = f"-d {m['hostIP']}/32 " if m["hostIP"] else ""
        match = f"{dst}-p {p} -m {p} --dport {m['hostPort']}"
        rules.append(f"-A {ch} -s {pod_net} {match} -j {SETMARK_CHAIN}")
        rules.append(f"-A {ch} -s 127.0.0.1/32 {match} -j {SETMARK_CHAIN}")
        rules.append(f"-A {ch} {match} -j DNAT --to-destination {pod_ip}:{m['containerPort']}")
    return ch, rules, jumps


BASE_RULES = [
    f"-A PREROUTING -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}",
    f"-A OUTPUT -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}",
    f'-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j {MASQ_CHAIN}',
    f"-A {MASQ_CHAIN} -m mark --mark {MARK} -j MASQUERADE",
    f'-A {SETMARK_CHAIN} -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark {MARK}',
]


def _pod_v4(prev: dict) -> ipaddress.IPv4Interface | None:
    for ip in prev.get("ips") or []:
        iface = ipaddress.ip_interface(ip["address"])
        if iface.version == 4:
            return iface  # type: ignore[return-value]
    return None


def add(conf: dict, args: skel.Args) -> dict:
    prev = skel.prev_result(conf)
    if prev is None:
        raise CNIError(INVALID_CONFIG, "must be called as chained plugin")
    mappings = parse_mappings(conf)
    if not mappings:
        return prev
    pod = _pod_v4(prev)
    if pod is None:
        return prev
    ch, rules, jumps = plan(conf["name"], args.container_id, str(pod.ip), str(pod.network), mappings)
    saved = iptables.save(args, "nat")
    existing = set(saved)
    lines = ["*nat"]
    for chain in (DNAT_CHAIN, MASQ_CHAIN, SETMARK_CHAIN):
        if not any(l.startswith(f":{chain} ") for l in saved):
            lines.append(f":{chain} - [0:0]")
    lines.append(f":{ch} - [0:0]")  # (re)built from scratch: --noflush flushes a declared chain
    lines += [r for r in BASE_RULES if r not in existing]
    lines += rules
    lines += [j for j in jumps if j not in existing]
    lines += ["COMMIT", ""]
    try:
        iptables.restore(args, "\n".join(lines))
        _route_localnet(args, pod)
    except BaseException:
        iptables.teardown_chain(args, "nat", ch, families=(4,))
        raise
    return prev


def _route_localnet(args: skel.Args, pod: ipaddress.IPv4Interface) -> None:
    """route_localnet=1 on the node interface that reaches the pod (getRoutableHostIF)."""
    nl = nscache.netlink(args.host_netns)
    for a in nl.addrs():
        if ":" not in a.address and pod.ip in ipaddress.ip_interface(a.cidr).network:
            link = nl.get_link(index=a.index)
            if link is not None:
                hostns.ensure_sysctl(args, f"net.ipv4.conf.{link.name}.route_localnet")
            return


def delete(conf: dict, args: skel.Args) -> None:
    iptables.teardown_chain(args, "nat", dn_chain(conf["name"], args.container_id), families=(4,))


def check(conf: dict, args: skel.Args) -> None:
    if not parse_mappings(conf):
        return
    ch = dn_chain(conf["name"], args.container_id)
    if not any(l.startswith(f":{ch} ") for l in iptables.save(args, "nat")):
        raise CNIError(999, f"portmap chain {ch} is missing")
