"""The bridge plugin: a Linux bridge in the node, a veth pair per pod.

Follows the reference plugins/main/bridge step by step: ensureBridge,
IPAM (delegated, as ipam.ExecAdd), setupVeth, ipam.ConfigureIface inside
the pod, then the gateway address on the bridge, forwarding and ipMasq.
Differences, invisible in the result and in `ip`/`bridge` output but for
the veth's numtxqueues (1 allocated, as many in use as the reference's):

- the veth pair is created in one RTM_NEWLINK from the node side, with the
  peer born inside the pod namespace, already up and enslaved, instead of
  being created in the pod and moved;
- MACs are chosen here (random, locally administered, as the kernel's
  eth_random_addr) so no read-back is needed for the result;
- IPAM runs before the veth exists, and a failed ADD undoes both the veth
  and the reservation (the reference releases only the reservation);
- the veth is made with one TX queue, the one the reference's ends up
  using, which spares two RCU grace periods under RTNL per pod (see
  RtNetlink.add_veth);
- DEL names the pod's interface through the pod namespace's nsid in the
  node's instead of entering the pod, and deletes it on a thread while
  IPAM releases the address, instead of deleting, then releasing (see
  _VethDeletion); with ipMasq it keeps the reference's sequence.
"""

import _thread
import posix  # os's open/close/urandom, without importing `os` (see cni.main)

from cni import nscache, skel
from cni.errors import CNIError, INTERNAL, INVALID_CONFIG, INVALID_ENV
from cni.netlink import AF_INET, AF_INET6, NETNSA_NSID_NOT_ASSIGNED, NetlinkError, RtNetlink, mac_str, random_mac
from cni.record import Frozen

# Imported where used, not here: `ipaddress` (ADD and CHECK only), cni.iptables
# (ipMasq only: hashlib, subprocess), cni.hostns, cni.podns, cni.invoke. An
# exec'd DEL reaches the kernel before any of them is loaded.

DEFAULT_BRIDGE = "cni0"


class Config(Frozen):
    """The bridge options of a network config (loadNetConf's NetConf)."""

    __slots__ = ("name", "bridge", "is_gateway", "is_default_gateway", "force_address", "ip_masq", "mtu",
                 "hairpin", "promisc", "ipam_type", "dns")

    def __init__(self, name: str, bridge: str = DEFAULT_BRIDGE, is_gateway: bool = False,
                 is_default_gateway: bool = False, force_address: bool = False, ip_masq: bool = False,
                 mtu: int = 0, hairpin: bool = False, promisc: bool = False, ipam_type: str = "",
                 dns: dict | None = None) -> None:
        self._set(name=name, bridge=bridge, is_gateway=is_gateway, is_default_gateway=is_default_gateway,
                  force_address=force_address, ip_masq=ip_masq, mtu=mtu, hairpin=hairpin, promisc=promisc,
                  ipam_type=ipam_type, dns={} if dns is None else dns)


def _bool(conf: dict, key: str) -> bool:
    v = conf.get(key, False)
    if not isinstance(v, bool):
        raise CNIError(INVALID_CONFIG, f"{key} must be a boolean", repr(v))
    return v


def parse_config(conf: dict) -> Config:
    """Pure: the bridge options, validated as loadNetConf does (plus type checks)."""
    br = conf.get("bridge", DEFAULT_BRIDGE) or DEFAULT_BRIDGE
    if not isinstance(br, str):
        raise CNIError(INVALID_CONFIG, "bridge must be a string")
    skel.validate_ifname(br) if br else None
    mtu = conf.get("mtu", 0)
    mtu = 0 if mtu is None else mtu  # JSON null is "unset"; "" or "1500" are not ints (Go would refuse them too)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not (0 <= mtu <= 65535) or (mtu and mtu < 68):
        raise CNIError(INVALID_CONFIG, "invalid mtu", repr(mtu))
    ipam = conf.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "ipam must be an object")
    ipam_type = ipam.get("type", "") or ""
    if not isinstance(ipam_type, str):
        raise CNIError(INVALID_CONFIG, "ipam type must be a string")
    dns = conf.get("dns") or {}
    if not isinstance(dns, dict):
        raise CNIError(INVALID_CONFIG, "dns must be an object")
    c = Config(
        name=conf["name"],
        bridge=br,
        is_gateway=_bool(conf, "isGateway"),
        is_default_gateway=_bool(conf, "isDefaultGateway"),
        force_address=_bool(conf, "forceAddress"),
        ip_masq=_bool(conf, "ipMasq"),
        mtu=mtu,
        hairpin=_bool(conf, "hairpinMode"),
        promisc=_bool(conf, "promiscMode"),
        ipam_type=ipam_type,
        dns=dns,
    )
    if c.hairpin and c.promisc:
        raise CNIError(INVALID_CONFIG, "cannot set hairpin mode and promiscuous mode at the same time.")
    if c.is_default_gateway and not c.is_gateway:
        # As loadNetConf: a default gateway is a gateway.
        c = c.replace(is_gateway=True)
    return c


def plan_gateways(cfg: Config, ipam: dict) -> tuple[list[dict], list[dict], list[tuple[str, int]]]:
    """Pure: calcGateways. Returns (ips, routes, bridge gateway addresses as (ip, prefixlen))."""
    import ipaddress

    ips = [dict(ip, interface=2) for ip in ipam.get("ips", [])]
    routes = [dict(r) for r in ipam.get("routes", [])]
    gws: list[tuple[str, int]] = []
    default_found = {4: False, 6: False}
    for ip in ips:
        iface = ipaddress.ip_interface(ip["address"])
        fam = iface.version
        if not ip.get("gateway") and cfg.is_gateway:
            ip["gateway"] = str(iface.network.network_address + 1)
        if cfg.is_default_gateway and not default_found[fam]:
            zero = "0.0.0.0/0" if fam == 4 else "::/0"
            for r in routes:
                if r.get("gw") and ipaddress.ip_network(r["dst"], strict=False) == ipaddress.ip_network(zero):
                    default_found[fam] = True
                    break
            if not default_found[fam]:
                routes.append({"dst": zero, "gw": ip.get("gateway")})
                default_found[fam] = True
        if cfg.is_gateway and ip.get("gateway"):
            g = (ip["gateway"], iface.network.prefixlen)
            if g not in gws:
                gws.append(g)
    return ips, routes, gws


class _Pod:
    """``with _Pod(path) as (fd, nl):`` an fd of the pod namespace (for IFLA_NET_NS_FD) and a netlink socket in it."""

    def __init__(self, netns_path: str) -> None:
        self.path = netns_path

    def __enter__(self) -> tuple[int, RtNetlink]:
        from cni import podns

        try:
            self.fd = posix.open(self.path, posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError as e:
            raise CNIError(INVALID_ENV, f'failed to open netns "{self.path}"', e.strerror or str(e)) from None
        try:
            self.nl = podns.open_netlink(self.path)
        except BaseException:
            posix.close(self.fd)
            raise
        return self.fd, self.nl

    def __exit__(self, *exc: object) -> None:
        try:
            self.nl.close()
        finally:
            posix.close(self.fd)


def ensure_bridge(nl: RtNetlink, cfg: Config):
    """As ensureBridge: reuse a bridge of that name, create it otherwise (upsert)."""
    br = nl.get_link(cfg.bridge)
    if br is None:
        try:
            nl.add_bridge(cfg.bridge, mtu=cfg.mtu, mac=random_mac(), up=True, promisc=cfg.promisc)
        except NetlinkError as e:
            if e.errno != 17:  # EEXIST: another ADD made it first
                raise CNIError(INTERNAL, f'could not add "{cfg.bridge}"', str(e)) from None
        br = nl.get_link(cfg.bridge)
        if br is None:
            raise CNIError(INTERNAL, f'could not lookup "{cfg.bridge}"')
    if br.kind != "bridge":
        raise CNIError(INTERNAL, f'"{cfg.bridge}" already exists but is not a bridge')
    if not br.up or (cfg.promisc and not br.promisc):
        nl.set_link(br.index, up=True, promisc=True if cfg.promisc else None)
    return br


def ensure_addr(nl: RtNetlink, br, gw: str, prefixlen: int, force: bool) -> None:
    """As ensureAddr: the gateway address on the bridge; another one in the way is an error unless forceAddress."""
    import ipaddress

    want = ipaddress.ip_interface(f"{gw}/{prefixlen}")
    fam = AF_INET if want.version == 4 else AF_INET6
    for a in nl.addrs(br.index, fam):
        have = ipaddress.ip_interface(a.cidr)
        if have == want:
            return
        if want.version == 4 or want.ip in have.network or have.ip in want.network:
            if force:
                nl.del_addr(br.index, a.address, a.prefixlen)
            else:
                # The reference wraps ensureAddr's error: "failed to set bridge addr: ..."
                raise CNIError(INTERNAL, f'failed to set bridge addr: "{br.name}" already has an IP address different from {want}')
    try:
        nl.add_addr(br.index, gw, prefixlen)
    except NetlinkError as e:
        if e.errno != 17:
            raise CNIError(INTERNAL, f'failed to set bridge addr: could not add IP address to "{br.name}"', str(e)) from None
    # "Set the bridge's MAC to itself", so it stops following its lowest-numbered port.
    nl.set_link(br.index, mac=bytes(int(x, 16) for x in br.mac.split(":")))


def _veth(host: RtNetlink, pod: RtNetlink, pod_fd: int, cfg: Config, br, ifname: str):
    """As setupVeth: a "veth" + 8 hex name on the node, `ifname` in the pod; retried on a name clash.

    Returns (host name, host MAC, pod MAC, the host link as the kernel
    echoed it or None).
    """
    for _ in range(10):
        name = "veth" + posix.urandom(4).hex()
        hmac, pmac = random_mac(), random_mac()
        try:
            link = host.add_veth(name, ifname, peer_netns_fd=pod_fd, mtu=cfg.mtu, mac=hmac, peer_mac=pmac,
                                 master=br.index, echo=True)
            return name, hmac, pmac, link
        except NetlinkError as e:
            if e.errno != 17:
                raise CNIError(INTERNAL, "failed to setup veth", str(e)) from None
            if pod.get_link(ifname) is not None:
                raise CNIError(INTERNAL, f"container veth name provided ({ifname}) already exists")
    raise CNIError(INTERNAL, "failed to find a free veth name")


def configure_iface(pod: RtNetlink, ifname: str, ips: list[dict], routes: list[dict], index: int = 0) -> None:
    """As ipam.ConfigureIface: addresses, then routes defaulting to the family's gateway.

    With the interface's `index` known (a veth just made, still down), it
    is brought up and given its addresses and routes in one send: the same
    requests in the same order, one round trip.
    """
    import ipaddress

    if index:
        _configure_new(pod, ifname, index, ips, routes)
        return
    link = pod.get_link(ifname)
    if link is None:
        raise CNIError(INTERNAL, f"failed to lookup {ifname}")
    if not link.up:
        pod.set_link(link.index, up=True)
    gw: dict[int, str | None] = {4: None, 6: None}
    for ip in ips:
        if ip.get("interface") != 2:
            continue
        iface = ipaddress.ip_interface(ip["address"])
        try:
            pod.add_addr(link.index, str(iface.ip), iface.network.prefixlen)
        except NetlinkError as e:
            raise CNIError(INTERNAL, f"failed to add IP addr {iface} to {ifname}", str(e)) from None
        if ip.get("gateway") and gw[iface.version] is None:
            gw[iface.version] = ip["gateway"]
    for r in routes:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        via = r.get("gw") or gw[dst.version]
        try:
            pod.add_route(str(dst), gw=via, oif=link.index, scope=0)
        except NetlinkError as e:
            raise CNIError(INTERNAL, f"failed to add route '{dst} via {via} dev {ifname}'", str(e)) from None


def _configure_new(pod: RtNetlink, ifname: str, index: int, ips: list[dict], routes: list[dict]) -> None:
    import ipaddress

    msgs: list[tuple[int, bytes, int]] = [pod.set_link_msg(index, up=True)]
    what = [f"failed to set {ifname} up"]
    gw: dict[int, str | None] = {4: None, 6: None}
    for ip in ips:
        if ip.get("interface") != 2:
            continue
        iface = ipaddress.ip_interface(ip["address"])
        msgs.append(pod.add_addr_msg(index, str(iface.ip), iface.network.prefixlen))
        what.append(f"failed to add IP addr {iface} to {ifname}")
        if ip.get("gateway") and gw[iface.version] is None:
            gw[iface.version] = ip["gateway"]
    for r in routes:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        via = r.get("gw") or gw[dst.version]
        msgs.append(pod.add_route_msg(str(dst), gw=via, oif=index, scope=0))
        what.append(f"failed to add route '{dst} via {via} dev {ifname}'")
    for err, msg in zip(pod.request_many(msgs), what):
        if err is not None:
            raise CNIError(INTERNAL, msg, str(err))


def add(conf: dict, args: skel.Args) -> dict:
    from cni import hostns, invoke

    cfg = parse_config(conf)
    with _Pod(args.netns) as (pod_fd, pod):
        host = nscache.netlink(args.host_netns)
        br = ensure_bridge(host, cfg)
        ipam: dict = {}
        if cfg.ipam_type:
            ipam = invoke.delegate("ADD", conf, args, cfg.ipam_type) or {}
        undo_ipam = bool(cfg.ipam_type)
        veth = None
        try:
            if cfg.ipam_type and not ipam.get("ips"):
                raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
            veth, hmac, pmac, made = _veth(host, pod, pod_fd, cfg, br, args.ifname)
            if cfg.hairpin:
                hl = made or host.get_link(veth)
                if hl is None:
                    raise CNIError(INTERNAL, f"failed to lookup {veth}")
                host.set_hairpin(hl.index, True)
            ips, routes, gws = plan_gateways(cfg, ipam)
            configure_iface(pod, args.ifname, ips, routes, index=made.peer_index if made is not None else 0)
            for gw, plen in gws:
                ensure_addr(host, br, gw, plen, cfg.force_address)
            if gws:
                if any(":" not in g for g, _ in gws):
                    hostns.ensure_sysctl(args, "net.ipv4.ip_forward")
                if any(":" in g for g, _ in gws):
                    hostns.ensure_sysctl(args, "net.ipv6.conf.all.forwarding")
            if cfg.ip_masq and ips:
                import ipaddress

                from cni import iptables

                pairs = [(str(ipaddress.ip_interface(i["address"]).network), str(ipaddress.ip_interface(i["address"]).ip)) for i in ips]
                iptables.setup_masq(args, pairs, cfg.name)
        except BaseException:
            if veth is not None:
                try:
                    l = host.get_link(veth)
                    if l is not None:
                        host.del_link(l.index)
                except Exception:
                    pass
            if undo_ipam:
                try:
                    invoke.delegate("DEL", conf, args, cfg.ipam_type)
                except Exception:
                    pass
            raise
    result: dict = {
        "interfaces": [
            {"name": br.name, "mac": br.mac},
            {"name": veth, "mac": mac_str(hmac)},
            {"name": args.ifname, "mac": mac_str(pmac), "sandbox": args.netns},
        ],
    }
    if cfg.ipam_type:
        result["ips"] = ips
        result["routes"] = routes
    result["dns"] = cfg.dns
    return result


class _VethDeletion:
    """The pod's veth pair deleted from the node's namespace, on a thread of its own.

    RTM_DELLINK of a veth blocks its caller until the kernel has
    unregistered both ends, and that ends in rcu_barrier() (netdev_run_todo):
    ~20 ms here, the largest part of a DEL, the same for the reference
    plugin. The kernel does it inside sendmsg(2), so sending early and
    reading the ack late saves nothing; a thread blocked in that call lets
    the plugin release the address (host-local) meanwhile, with the GIL
    released. The reference deletes the link, then execs host-local.

    The link is the pod's `ifname`, named in the pod namespace through its
    nsid in the node's (RTM_GETNSID, then IFLA_TARGET_NETNSID), as
    `ip -n POD link del eth0` names it: no setns, no socket in the pod.
    A pod namespace that the node has no nsid for (no veth between them
    ever made one) is entered instead, as the reference does. A missing
    namespace, or one that is not a namespace, has nothing to delete.

    The caller waits until the thread is about to send: a new thread gets
    the GIL only when the running one blocks or after the switch interval
    (5 ms), and the caller's next step (importing host-local) would hold it.
    """

    def __init__(self, host: RtNetlink | None, netns_path: str, ifname: str) -> None:
        self.host, self.path, self.ifname = host, netns_path, ifname
        self.error: BaseException | None = None
        self.nsid: int | None = None  # None: nothing to delete
        if netns_path:
            self.nsid = self._nsid() if host is not None else NETNSA_NSID_NOT_ASSIGNED
        self._done = _thread.allocate_lock()
        self._done.acquire()
        if self.nsid is None:
            self._done.release()  # nothing to delete
            return
        sending = _thread.allocate_lock()
        sending.acquire()
        _thread.start_new_thread(self._run, (sending,))
        sending.acquire()  # released by the thread right before its request

    def _nsid(self) -> int | None:
        """The pod namespace's nsid in the node's; NOT_ASSIGNED if none; None if there is no namespace."""
        assert self.host is not None
        try:
            fd = posix.open(self.path, posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            return None  # no namespace (any more), and no veth with it
        try:
            return self.host.nsid_of(fd)
        except NetlinkError:
            return None  # not a network namespace
        finally:
            posix.close(fd)

    def _run(self, sending: _thread.LockType) -> None:
        try:
            sending.release()
            if self.host is not None and self.nsid is not None and self.nsid >= 0:
                self.host.del_link_in(self.nsid, self.ifname)
            else:
                self._delete_inside()
        except BaseException as e:
            self.error = e
        finally:
            self._done.release()

    def _delete_inside(self) -> None:
        """The reference's way: enter the pod namespace, delete `ifname` there."""
        from cni import podns

        pod = podns.try_open(self.path)
        if pod is None:
            return
        try:
            link = pod.get_link(self.ifname)
            if link is not None:
                pod.del_link(link.index)
        finally:
            pod.close()

    def wait(self) -> BaseException | None:
        """Block until the deletion is over; its error, if it failed."""
        self._done.acquire()
        self._done.release()
        return self.error


def _del_masq(conf: dict, args: skel.Args, cfg: Config) -> None:
    """DEL with ipMasq: the pod's addresses decide whether there are masquerade rules to remove.

    As the reference's DelLinkByNameAddr + TeardownIPMasq, inside the pod
    namespace: the link's addresses read, the link deleted, then IPAM
    released and the rules removed.
    """
    from cni import invoke, iptables, podns

    addrs = []
    pod = podns.try_open(args.netns)
    if pod is not None:
        try:
            link = pod.get_link(args.ifname)
            if link is not None:
                addrs = pod.addrs(link.index)
                pod.del_link(link.index)
        finally:
            pod.close()
    invoke.delegate("DEL", conf, args, cfg.ipam_type)
    if addrs:
        iptables.teardown_chain(args, "nat", iptables.chain_name(cfg.name, args.container_id))


def delete(conf: dict, args: skel.Args) -> None:
    """As cmdDel: the pod's veth pair deleted, then the address released (IPAM DEL), both idempotent.

    Here the two overlap: the deletion runs on a thread while IPAM
    releases (see _VethDeletion); the first error of the two is raised,
    after both are over.
    """
    cfg = parse_config(conf)
    if cfg.ipam_type and cfg.ip_masq:
        _del_masq(conf, args, cfg)
        return
    try:
        host: RtNetlink | None = nscache.netlink(args.host_netns)
    except OSError:
        host = None  # the node's namespace is gone, and every veth of it: only the pod's side may be left
    deletion = _VethDeletion(host, args.netns, args.ifname)
    error: BaseException | None = None
    try:
        if cfg.ipam_type:
            from cni import invoke

            invoke.delegate("DEL", conf, args, cfg.ipam_type)
    except BaseException as e:
        error = e
    error = error or deletion.wait()
    if error is not None:
        raise error


def check(conf: dict, args: skel.Args) -> None:
    """As cmdCheck: IPAM's CHECK, then the bridge, the pod interface, its host veth, addresses and routes.

    In the reference's order and with its messages (validateCniBrInterface,
    validateCniContainerInterface, validateCniVethInterface, then
    ip.ValidateExpectedInterfaceIPs and ip.ValidateExpectedRoute), so a
    runtime reading the error sees what it would see from
    /usr/lib/cni/bridge. One difference, on purpose: a prevResult route
    without "gw" matches the pod's route to that destination whatever its
    gateway; the reference looks for a route with no gateway, which its
    own ADD never installs (ConfigureIface routes via the family's
    gateway), so its CHECK fails right after its ADD for such a route.
    """
    from cni import invoke

    cfg = parse_config(conf)
    prev = skel.prev_result(conf) or {}
    if cfg.ipam_type:
        invoke.delegate("CHECK", conf, args, cfg.ipam_type)
    ifaces = prev.get("interfaces") or []
    br_map: dict = {}
    cont_map: dict = {}
    for i in ifaces:  # the reference's loop: the last match wins
        if i.get("name") == cfg.bridge:
            br_map = i
        elif i.get("name") == args.ifname and i.get("sandbox") == args.netns:
            cont_map = i
    host = nscache.netlink(args.host_netns)
    br = _check_iface(host, br_map, in_sandbox=False)
    if br.kind != "bridge":
        raise CNIError(INTERNAL, f"Interface {br.name} does not have link type of bridge")
    if br_map.get("mac") and br_map["mac"] != br.mac:
        raise CNIError(INTERNAL, f"Bridge interface {br.name} Mac doesn't match: {br_map['mac']}")
    if args.netns != cont_map.get("sandbox", ""):
        raise CNIError(INTERNAL, f"Sandbox in prevResult {cont_map.get('sandbox', '')} doesn't match configured netns: {args.netns}")
    with _Pod(args.netns) as (_fd, pod):
        cont = _check_iface(pod, cont_map, in_sandbox=True)
        if cont.kind == "veth" and cont_map.get("mac") and cont_map["mac"] != cont.mac:
            raise CNIError(INTERNAL, f"Interface {cont.name} Mac {cont_map['mac']} doesn't match container Mac: {cont.mac}")
        veth_found = False
        if cont.kind == "veth":
            for i in ifaces:
                if i.get("name") in (br_map.get("name"), cont_map.get("name")):
                    continue
                hl = _check_iface(host, i, in_sandbox=False)
                if hl.kind != "veth" or hl.index != cont.peer_index or hl.master != br.index:
                    continue
                if i.get("mac") and i["mac"] != hl.mac:
                    raise CNIError(INTERNAL, f"Interface {hl.name} Mac doesn't match: {i['mac']} not found")
                veth_found = True
                break
        if cont.kind != "veth":
            raise CNIError(INTERNAL, f"CNI created interface in container {args.ifname} not found")
        if not veth_found:
            raise CNIError(INTERNAL, f"CNI veth created for bridge {cfg.bridge} was not found")
        _check_ips_and_routes(pod, cont, prev)


def _check_iface(nl: RtNetlink, intf: dict, in_sandbox: bool):
    """As the reference's validateInterface: the prevResult interface exists where it should."""
    name = intf.get("name") or ""
    if not name:
        raise CNIError(INTERNAL, "Interface name missing ")
    link = nl.get_link(name)
    if link is None:
        raise CNIError(INTERNAL, f"Interface name {name} not found")
    if in_sandbox and not intf.get("sandbox"):
        raise CNIError(INTERNAL, f"Interface {name} is expected to be in a namespace")
    if not in_sandbox and intf.get("sandbox"):
        raise CNIError(INTERNAL, f"Interface {name} should not be in sandbox")
    return link


def _go_route(dst: str, gw: str | None) -> str:
    """A types.Route as the reference's errors print it (%+v): {Dst:{IP:10.70.0.0 Mask:ffff0000} GW:<nil>}.

    The IP as the config wrote it (types.ParseCIDR keeps host bits), the mask in hex (net.IPMask.String).
    """
    import ipaddress

    iface = ipaddress.ip_interface(dst)
    mask = int(iface.network.netmask).to_bytes(iface.network.max_prefixlen // 8, "big").hex()
    return f"{{Dst:{{IP:{iface.ip} Mask:{mask}}} GW:{gw or '<nil>'}}}"


def _check_ips_and_routes(pod: RtNetlink, link, prev: dict) -> None:
    """ip.ValidateExpectedInterfaceIPs, then ip.ValidateExpectedRoute (main table, any device)."""
    import ipaddress

    have = {a.cidr for a in pod.addrs(link.index)}
    for ip in prev.get("ips") or []:
        want = ipaddress.ip_interface(ip["address"])
        if f"{want.ip}/{want.network.prefixlen}" not in have:
            raise CNIError(INTERNAL, f"Failed to match addr {want} on interface {link.name}")
    rts = [r for fam in (AF_INET, AF_INET6) for r in pod.routes(fam) if r.table == 254]
    for r in prev.get("routes") or []:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        gw = str(ipaddress.ip_address(r["gw"])) if r.get("gw") else None
        if not any(ipaddress.ip_network(k.dst) == dst and (gw is None or k.gw == gw) for k in rts):
            raise CNIError(INTERNAL, f"Expected Route {_go_route(r['dst'], gw)} not found in routing table")


def gc(conf: dict, args: skel.Args) -> None:
    from cni import invoke

    cfg = parse_config(conf)
    if cfg.ipam_type:
        invoke.delegate("GC", conf, args, cfg.ipam_type)


def status(conf: dict, args: skel.Args) -> None:
    from cni import invoke

    cfg = parse_config(conf)
    if cfg.ipam_type:
        invoke.delegate("STATUS", conf, args, cfg.ipam_type)
