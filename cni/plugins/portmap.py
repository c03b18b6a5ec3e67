"""The portmap plugin (chained): hostPort -> containerPort DNAT in the node's namespace.

netlab's plugins/meta/portmap, as containernetworking/plugins 1.1.1 (Debian
12's containernetworking-plugins 1.1.1+ds1) lays its iptables rules out,
per address family of the container (iptables for IPv4, ip6tables for
IPv6; each family's container address is the first one of that family in
prevResult on the CNI_IFNAME sandbox interface, as parseConfig picks it):

    PREROUTING, OUTPUT     -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT        (appended once)
    POSTROUTING            -m comment --comment "CNI portfwd requiring masquerade"
                           -j CNI-HOSTPORT-MASQ                                    (prepended once)
    CNI-HOSTPORT-DNAT      -p <proto> -m comment --comment "dnat name: ..." -m multiport
                           --dports <at most 15 ports> [conditionsV4/V6] -j CNI-DN-<hash>
    CNI-DN-<hash>          per mapping: [-d hostIP] -s <pod net>   ... -j CNI-HOSTPORT-SETMARK   (hairpin)
                                        [-d hostIP] -s 127.0.0.1   ... -j CNI-HOSTPORT-SETMARK   (IPv4: node-local)
                                        [-d hostIP] ... -j DNAT --to-destination <pod>:<containerPort>
    CNI-HOSTPORT-SETMARK   MARK --set-xmark <1<<markMasqBit>;  CNI-HOSTPORT-MASQ: MASQUERADE marked packets

plus route_localnet=1 (IPv4, snat) on the node interface that routes to
the pod, so 127.0.0.1:hostPort can be DNAT'ed to it. After each family's
rules, UDP conntrack entries to the mapped host ports are deleted, as the
reference's deletePortmapStaleConnections does after ADD (not after DEL).
DEL removes the pod's chain and its jumps in both families (and the
CNI-SN-<hash> chain of plugin versions before 0.7); the shared chains stay,
as the reference leaves them.

Options, as 1.1.1 parses them: snat (default true), markMasqBit (0-31,
default 13), externalSetMarkChain (a chain of the user's, e.g. Kubernetes'
KUBE-MARK-MASQ, used instead of CNI-HOSTPORT-SETMARK/-MASQ; exclusive with
markMasqBit), conditionsV4/conditionsV6 (iptables matches added to the
per-container jumps). masqAll is newer than 1.1.1 (which ignores it);
netlab implements it as the later reference does (masquerade every source:
the hairpin rule matches 0.0.0.0/0 or ::/0, no 127.0.0.1 rule). `backend`
(iptables | nftables, newer references) is not a 1.1.1 field and is
ignored as 1.1.1 ignores it: an nftables portmap is out of scope here.

Where netlab differs on purpose (each is asserted in
tests/integration/test_cni_portmap.py):
- errors the reference returns as plain Go errors (code 999) carry the
  spec's codes here: 7 for an invalid option, 6 for a field of the wrong
  JSON type; the messages are the reference's.
- netlab rejects before touching anything what the reference only fails on
  in iptables, after part of the rules exist (ports above 65535, protocols
  other than tcp/udp/sctp), or quietly maps to nothing (a hostIP that is
  not an address: "not IPv4" to Go, so an IPv4 pod gets no rules for it).
  A mapping without "protocol" is tcp (CONVENTIONS.md's portMappings);
  1.1.1 fails on it.
- the JSON keys are matched exactly; Go's encoding/json would also take
  them in another case ("MarkMasqBit").
- the pod's chain is rebuilt on a repeated ADD (the reference only adds
  rules that are missing and keeps stale ones).
- CHECK is the later reference's: the chain, its rules and its jumps must
  exist for each family the pod has. 1.1.1 fails every dual-stack pod (it
  looks for the IPv4 rules in ip6tables too, and the IPv6 ones in iptables).

Imports are kept to what start-up needs: the commands, netlink and
sysctls are imported inside the functions that use them.
"""

from __future__ import annotations

import ipaddress

from cni import iptables, skel
from cni.errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_CONFIG

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
OLD_SNAT_CHAIN = "CNI-HOSTPORT-SNAT"  # the top-level chain of plugin versions before 0.7
DEFAULT_MARK_BIT = 13  # Kubernetes uses 14 and 15, Calico 20-31
MULTIPORT_MAX = 15  # xt_multiport's XT_MULTI_PORTS
PROTOCOLS = ("tcp", "udp", "sctp")
MASQ_COMMENT = "CNI portfwd requiring masquerade"
MARK_COMMENT = "CNI portfwd masquerade mark"


class PortMapConf:
    """The parsed options (PortMapConf of the reference), with its defaults applied."""

    __slots__ = ("name", "snat", "masq_all", "mark_bit", "external_chain", "conditions", "mappings")

    def __init__(self, name: str, snat: bool = True, masq_all: bool = False, mark_bit: int = DEFAULT_MARK_BIT,
                 external_chain: str | None = None, conditions: dict[int, list[str]] | None = None,
                 mappings: list[dict] | None = None) -> None:
        self.name = name
        self.snat = snat
        self.masq_all = masq_all
        self.mark_bit = mark_bit
        self.external_chain = external_chain
        self.conditions = conditions or {4: [], 6: []}
        self.mappings = mappings or []


# -- parsing (pure) -----------------------------------------------------------

_GO_TYPES = {bool: "bool", int: "int", str: "string", list: "[]string", dict: "object"}


def _json_kind(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _typed(obj: dict, key: str, kind: type, where: str) -> object:
    """obj[key] if it decodes into the reference's Go type; None for absent or null (Go's nil)."""
    v = obj.get(key)
    if v is None:
        return None
    ok = (isinstance(v, int) and not isinstance(v, bool)) if kind is int else isinstance(v, kind)
    if kind is list and ok:
        ok = all(isinstance(x, str) for x in v)
    if not ok:
        raise CNIError(DECODE_FAILURE, "failed to parse config: failed to parse network configuration: json: cannot "
                       f"unmarshal {_json_kind(v)} into Go struct field {where}.{key} of type {_GO_TYPES[kind]}")
    return v


def _invalid(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, "failed to parse config: " + msg)


def parse(conf: dict) -> PortMapConf:
    """Pure: the options and runtimeConfig.portMappings, checked in the reference parseConfig's order.

    Each mapping: {"hostPort", "containerPort", "protocol" (as given, "tcp"
    if missing), "hostIP" ("" if none, else the address in canonical form)}.
    """
    snat = _typed(conf, "snat", bool, "PortMapConf")
    masq_all = _typed(conf, "masqAll", bool, "PortMapConf")
    mark_bit = _typed(conf, "markMasqBit", int, "PortMapConf")
    external = _typed(conf, "externalSetMarkChain", str, "PortMapConf")
    cond4 = _typed(conf, "conditionsV4", list, "PortMapConf")
    cond6 = _typed(conf, "conditionsV6", list, "PortMapConf")
    rc = _typed(conf, "runtimeConfig", dict, "PortMapConf") or {}
    pms = rc.get("portMappings")
    if pms is not None and not isinstance(pms, list):
        raise CNIError(DECODE_FAILURE, "failed to parse config: failed to parse network configuration: json: cannot "
                       f"unmarshal {_json_kind(pms)} into Go struct field .runtimeConfig.portMappings of type []main.PortMapEntry")
    raw = []
    for pm in pms or []:
        if not isinstance(pm, dict):
            raise CNIError(DECODE_FAILURE, "failed to parse config: failed to parse network configuration: json: cannot "
                           f"unmarshal {_json_kind(pm)} into Go value of type main.PortMapEntry")
        raw.append((_typed(pm, "hostPort", int, "PortMapEntry") or 0, _typed(pm, "containerPort", int, "PortMapEntry") or 0,
                    _typed(pm, "protocol", str, "PortMapEntry") or "", _typed(pm, "hostIP", str, "PortMapEntry") or ""))

    if mark_bit is not None and external is not None:
        raise _invalid("Cannot specify externalSetMarkChain and markMasqBit")
    if mark_bit is None:
        mark_bit = DEFAULT_MARK_BIT
    if not 0 <= mark_bit <= 31:
        raise _invalid("MasqMarkBit must be between 0 and 31")
    for hp, cp, _p, _h in raw:
        if cp <= 0:
            raise _invalid(f"Invalid container port number: {cp}")
        if hp <= 0:
            raise _invalid(f"Invalid host port number: {hp}")

    # Checks of netlab's own, for what the reference only finds out in iptables.
    mappings = []
    for hp, cp, proto, host_ip in raw:
        if cp > 65535:
            raise _invalid(f"Invalid container port number: {cp}")
        if hp > 65535:
            raise _invalid(f"Invalid host port number: {hp}")
        if proto and proto.lower() not in PROTOCOLS:
            raise _invalid(f"Invalid protocol {proto!r}: tcp, udp or sctp")
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise _invalid(f"Invalid hostIP {host_ip!r}: not an IP address") from None
        mappings.append({"hostPort": hp, "containerPort": cp, "protocol": proto or "tcp", "hostIP": host_ip})
    return PortMapConf(conf.get("name", ""), True if snat is None else snat, bool(masq_all), mark_bit, external,
                       {4: list(cond4 or []), 6: list(cond6 or [])}, mappings)


def container_ips(prev: dict, ifname: str) -> dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Pure: per family, the first prevResult address on the sandbox's CNI_IFNAME (parseConfig's ContIPv4/6).

    An address whose "interface" index names a host-side interface, or an
    interface of another name, is skipped; one without an index is taken.
    """
    ifaces = prev.get("interfaces")
    ips = prev.get("ips")
    ifaces, ips = [] if ifaces is None else ifaces, [] if ips is None else ips
    if not isinstance(ifaces, list) or not isinstance(ips, list):
        raise CNIError(DECODE_FAILURE, "could not parse prevResult", "interfaces and ips must be lists")
    out: dict = {}
    for ip in ips:
        try:
            addr = ipaddress.ip_interface(ip["address"])
        except (TypeError, KeyError, ValueError):
            raise CNIError(DECODE_FAILURE, "could not parse prevResult", f"invalid IP configuration {ip!r}") from None
        if addr.version in out:
            continue
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            iface = ifaces[idx] if isinstance(ifaces[idx], dict) else {}
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        out[addr.version] = addr
    return out


# -- the rule plan (pure) -----------------------------------------------------


def dn_chain(name: str, container_id: str) -> str:
    """CNI-DN-<sha512(name+id)>, as utils.MustFormatChainNameWithPrefix(name, id, "DN-")."""
    return iptables.chain_name(name, container_id, prefix="CNI-DN-")


def sn_chain(name: str, container_id: str) -> str:
    """The per-container SNAT chain of plugin versions before 0.7 (genOldSnatChain), removed on DEL."""
    return iptables.chain_name(name, container_id, prefix="CNI-SN-")


def split_ports(ports: list[int]) -> list[str]:
    """splitPortList: comma-separated groups of at most 15 ports, multiport's limit."""
    return [",".join(str(p) for p in ports[i : i + MULTIPORT_MAX]) for i in range(0, len(ports), MULTIPORT_MAX)]


def mark(bit: int) -> str:
    """The mark as the reference formats it (Go's %#x/%#x), which is how iptables-save prints it."""
    return f"{1 << bit:#x}/{1 << bit:#x}"


def _unique(items: list) -> list:
    """In order, without repeats: utils.InsertUnique adds a rule only if the same rule is not there yet."""
    out: list = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


class Plan:
    """One family's desired rules, every one in the form iptables-save prints it (so it can be
    compared with a listing), except jumps with user conditions (`jumps_canonical` False)."""

    __slots__ = ("family", "chain", "rules", "jump_args", "jumps_canonical", "shared_chains", "shared_rules",
                 "route_localnet")

    def __init__(self, family: int, chain: str) -> None:
        self.family = family
        self.chain = chain
        self.rules: list[str] = []  # the pod chain's rules
        self.jump_args: list[list[str]] = []  # CNI-HOSTPORT-DNAT -> chain, as argv after "-A CNI-HOSTPORT-DNAT"
        self.jumps_canonical = True
        self.shared_chains: list[str] = []
        self.shared_rules: list[tuple[str, bool]] = []  # (rule, prepend to its chain)
        self.route_localnet = False

    @property
    def jumps(self) -> list[str]:
        return [f"-A {DNAT_CHAIN} " + " ".join(iptables.arg(a) for a in args) for args in self.jump_args]


def plan(cfg: PortMapConf, container_id: str, cont: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> Plan:
    """Pure: forwardPorts + fillDnatRules for one container address."""
    v6 = cont.version == 6
    p = Plan(cont.version, dn_chain(cfg.name, container_id))
    setmark = cfg.external_chain if cfg.external_chain is not None else SETMARK_CHAIN
    if cfg.snat and cfg.external_chain is None:
        m = mark(cfg.mark_bit)
        p.shared_chains += [SETMARK_CHAIN, MASQ_CHAIN]
        p.shared_rules += [
            (f"-A {SETMARK_CHAIN} -m comment --comment {iptables.arg(MARK_COMMENT)} -j MARK --set-xmark {m}", False),
            (f"-A {MASQ_CHAIN} -m mark --mark {m} -j MASQUERADE", False),
            # Prepended: the bridge and ptp plugins' ipMasq rules would otherwise come first.
            (f"-A POSTROUTING -m comment --comment {iptables.arg(MASQ_COMMENT)} -j {MASQ_CHAIN}", True),
        ]
    p.route_localnet = cfg.snat and not v6
    p.shared_chains.append(DNAT_CHAIN)
    p.shared_rules += [(f"-A {c} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}", False) for c in ("PREROUTING", "OUTPUT")]

    # The jumps: every mapping's port, whatever its hostIP's family, grouped by
    # protocol as given (sorted, as 1.1.1 sorts them), 15 ports a rule.
    comment = iptables.trim_comment("dnat " + iptables.comment(cfg.name, container_id))
    by_proto: dict[str, list[int]] = {}
    for m in cfg.mappings:
        by_proto.setdefault(m["protocol"], []).append(m["hostPort"])
    conds = cfg.conditions[cont.version]
    p.jumps_canonical = not conds
    for proto in sorted(by_proto):
        for spec in split_ports(by_proto[proto]):
            p.jump_args.append(["-p", proto.lower(), "-m", "comment", "--comment", comment, "-m", "multiport",
                                "--dports", spec, *conds, "-j", p.chain])
    p.jump_args = _unique(p.jump_args)

    host = "/128" if v6 else "/32"
    rules = []
    for m in cfg.mappings:
        dst = ""
        if m["hostIP"]:
            hip = ipaddress.ip_address(m["hostIP"])
            if hip.version != cont.version:
                continue  # a hostIP of the other family: that family's rules only
            if not hip.is_unspecified:
                dst = f"-d {hip}{host} "
        proto = m["protocol"].lower()
        match = f"{dst}-p {proto} -m {proto} --dport {m['hostPort']}"
        if cfg.snat:
            src = "" if cfg.masq_all else f"-s {cont.network} "  # iptables-save omits -s 0.0.0.0/0 and ::/0
            rules.append(f"-A {p.chain} {src}{match} -j {setmark}")
            if not v6 and not cfg.masq_all:
                rules.append(f"-A {p.chain} -s 127.0.0.1/32 {match} -j {setmark}")
        to = f"[{cont.ip}]" if v6 else str(cont.ip)
        rules.append(f"-A {p.chain} {match} -j DNAT --to-destination {to}:{m['containerPort']}")
    p.rules = _unique(rules)
    return p


def restore_text(p: Plan, saved: list[str]) -> str:
    """Pure: the iptables-restore --noflush text that makes `saved` hold plan `p`.

    Shared chains and rules are added only if missing (a declared chain is
    flushed, so an existing shared chain is never declared); the pod chain
    is declared, i.e. flushed and rebuilt. Its jumps are kept if they are
    already the wanted ones, else replaced at the place of the old ones.
    """
    have = iptables.chains_of(saved)
    lines = set(saved)
    out = ["*nat"]
    out += [f":{c} - [0:0]" for c in p.shared_chains if c not in have]
    out.append(f":{p.chain} - [0:0]")
    for rule, prepend in p.shared_rules:
        if rule not in lines:
            chain, rest = rule[3:].split(" ", 1)
            out.append(f"-I {chain} 1 {rest}" if prepend else rule)
    out += p.rules
    in_dnat = [l for l in saved if l.startswith(f"-A {DNAT_CHAIN} ")]
    old = [l for l in in_dnat if l.endswith(f" -j {p.chain}")]
    jumps = p.jumps
    if old != jumps:
        if not old:
            out += jumps  # appended, as 1.1.1's InsertUnique(..., prepend=false); later references prepend
        else:
            pos = in_dnat.index(old[0]) + 1
            out += ["-D " + l[3:] for l in old]
            out += [f"-I {DNAT_CHAIN} {pos + i} {j[len(DNAT_CHAIN) + 4:]}" for i, j in enumerate(jumps)]
    out += ["COMMIT", ""]
    return "\n".join(out)


def check_text(p: Plan, saved: list[str]) -> str | None:
    """Pure: what chain.check would complain about in `saved` (None: all there).

    Jumps with user conditions are not compared here (their saved form is
    iptables' to choose); `check` asks iptables -C about those.
    """
    if p.chain not in iptables.chains_of(saved):
        return f"chain {p.chain} not found in iptables table nat"
    lines = set(saved)
    for r in p.rules:
        if r not in lines:
            return f"rule {r[3:]!r} in chain {p.chain} not found in table nat"
    if p.jumps_canonical:
        for j in p.jumps:
            if j not in lines:
                return f"rule {j[3:]!r} in chain {DNAT_CHAIN} not found in table nat"
    return None


# -- the verbs ----------------------------------------------------------------


def _log(msg: str) -> None:
    import sys

    print(f"portmap: {msg}", file=sys.stderr)


def add(conf: dict, args: skel.Args) -> dict:
    cfg = parse(conf)
    prev = skel.prev_result(conf)
    if prev is None:
        raise CNIError(INVALID_CONFIG, "must be called as chained plugin")
    if not cfg.mappings:
        return prev
    ips = container_ips(prev, args.ifname)
    try:
        for family in (4, 6):
            if family in ips:
                _forward(args, plan(cfg, args.container_id, ips[family]), ips[family])
                # After the rules, so new packets meet them: failures are informative only.
                flush_udp_conntrack(args, cfg.mappings, family)
    except BaseException:
        with iptables.NetnsLock(args):
            iptables.teardown_chain(args, "nat", dn_chain(cfg.name, args.container_id))
        raise
    return prev


def _forward(args: skel.Args, p: Plan, cont: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
    """forwardPorts for one family: the rules in one transaction, then route_localnet."""
    with iptables.NetnsLock(args):
        iptables.restore(args, restore_text(p, iptables.save(args, "nat", p.family)), p.family)
    if p.route_localnet:
        ifname = routable_host_if(args, str(cont.ip))
        if ifname:
            from cni import hostns

            hostns.ensure_sysctl(args, f"net/ipv4/conf/{ifname}/route_localnet")


def routable_host_if(args: skel.Args, ip: str) -> str | None:
    """getRoutableHostIF: the interface of the node's route to `ip` (RTM_GETROUTE, as netlink.RouteGet)."""
    import struct

    from cni import netlink, nscache

    nl = nscache.netlink(args.host_netns)
    addr = ipaddress.ip_address(ip)
    fam = 2 if addr.version == 4 else 10  # AF_INET, AF_INET6
    body = netlink._RTMSG.pack(fam, addr.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + netlink.attr(netlink.RTA_DST, addr.packed)
    try:
        replies = nl.request(netlink.RTM_GETROUTE, body)
    except OSError:
        return None  # no route: the reference skips route_localnet too
    for t, b in replies:
        if t == netlink.RTM_NEWROUTE:
            a = netlink.attrs(b, netlink._RTMSG.size)
            if netlink.RTA_OIF in a:
                link = nl.get_link(index=struct.unpack("=I", a[netlink.RTA_OIF])[0])
                if link is not None:
                    return link.name
    return None


def flush_udp_conntrack(args: skel.Args, mappings: list[dict], family: int) -> None:
    """deletePortmapStaleConnections: delete the node's UDP conntrack entries to each UDP host port.

    A UDP "connection" to a host port that existed before this pod's DNAT
    (an old pod's, or none) would keep carrying packets the old way; the
    reference deletes them with a conntrack netlink filter on the original
    destination port, as `conntrack -D` does here (kubelet's hostport code
    runs the same tool).
    """
    from cni import hostns

    ports = _unique([m["hostPort"] for m in mappings if m["protocol"].lower() == "udp"])
    for port in ports:
        argv = ["conntrack", "-D", "-p", "udp", "--orig-port-dst", str(port), "-f", "ipv6" if family == 6 else "ipv4"]
        try:
            p = hostns.run(args, argv)
        except OSError as e:
            _log(f"failed to delete stale UDP conntrack entries for port {port}: {e}")
            continue
        if p.returncode != 0 and "0 flow entries have been deleted" not in p.stderr:
            _log(f"failed to delete stale UDP conntrack entries for port {port}: {p.stderr.strip()}")


def delete(conf: dict, args: skel.Args) -> None:
    cfg = parse(conf)
    if not cfg.mappings:
        return  # as the reference: DEL without portMappings does nothing
    with iptables.NetnsLock(args):
        iptables.teardown_chains(args, "nat", [dn_chain(cfg.name, args.container_id), sn_chain(cfg.name, args.container_id)])


def check(conf: dict, args: skel.Args) -> None:
    try:
        cfg = parse(conf)
    except CNIError as e:  # cmdCheck returns parseConfig's error as it is, without ADD's and DEL's prefix
        raise CNIError(e.code, e.msg.removeprefix("failed to parse config: "), e.details) from None
    prev = skel.prev_result(conf) or {}
    if not cfg.mappings:
        return
    for family, cont in container_ips(prev, args.ifname).items():
        p = plan(cfg, args.container_id, cont)
        err = check_text(p, iptables.save(args, "nat", family))
        if err is None and not p.jumps_canonical:
            for ja in p.jump_args:
                if not iptables.rule_exists(args, "nat", DNAT_CHAIN, ja, family):
                    err = f"rule {' '.join(ja)!r} in chain {DNAT_CHAIN} not found in table nat"
                    break
        if err is not None:
            raise CNIError(INTERNAL, f"could not check ipv{family} dnat: {err}")
