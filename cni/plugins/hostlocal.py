"""host-local IPAM, with the reference plugin's on-disk layout.

``<dataDir>/<network name>/`` holds one file per reserved address, named by
the address and holding ``<containerID>\\r\\n<ifname>`` (backend/disk
Reserve), ``last_reserved_ip.<range set index>`` for round-robin
allocation, and ``lock``, flock(2)ed around every change, so concurrent
ADDs (threads in one process or separate executables) never hand out one
address twice. A lab can read it with the same `ls` a cluster admin uses
on /var/lib/cni/networks.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os

from cni import skel
from cni.errors import CNIError, INTERNAL, INVALID_CONFIG, INVALID_ENV, IO_FAILURE
from cni.record import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    IP = ipaddress.IPv4Address | ipaddress.IPv6Address
    Net = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"


class Range(Frozen):
    """One allocation range: its subnet, first and last address, and gateway."""

    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(self, subnet: Net, start: IP, end: IP, gateway: IP | None) -> None:
        self._set(subnet=subnet, start=start, end=end, gateway=gateway)

    def contains(self, ip: IP) -> bool:
        return ip.version == self.subnet.version and self.start <= ip <= self.end


class Config(Frozen):
    """The host-local part of a network config (allocator.IPAMConfig)."""

    __slots__ = ("name", "range_sets", "routes", "data_dir", "resolv_conf")

    def __init__(self, name: str, range_sets: list[list[Range]], routes: list[dict], data_dir: str,
                 resolv_conf: str) -> None:
        self._set(name=name, range_sets=range_sets, routes=routes, data_dir=data_dir, resolv_conf=resolv_conf)

    @property
    def dir(self) -> str:
        return os.path.join(self.data_dir, self.name)


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, msg)


def _parse_range(r: object, where: str) -> Range:
    """As host-local's Range.Canonicalize: defaults, and every address inside the subnet."""
    if not isinstance(r, dict):
        raise _bad(f"{where}: a range must be an object")
    if "subnet" not in r or not isinstance(r["subnet"], str):
        raise _bad(f"{where}: IPAM config missing 'subnet' key")
    try:
        iface = ipaddress.ip_interface(r["subnet"])
    except ValueError:
        raise _bad(f"{where}: invalid CIDR address: {r['subnet']}") from None
    net = iface.network
    if iface.ip != net.network_address:
        raise _bad(f"{where}: Network has host bits set. For a subnet mask of length {net.prefixlen} the network address is {net.network_address}")
    if net.prefixlen > net.max_prefixlen - 2:
        raise _bad(f"{where}: Network {net} too small to allocate from")

    def ip_of(key: str) -> IP | None:
        v = r.get(key)
        if v in (None, ""):
            return None
        if not isinstance(v, str):
            raise _bad(f"{where}: {key} must be a string")
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise _bad(f"{where}: invalid {key} {v!r}") from None
        if ip not in net:
            raise _bad(f"{where}: {key} {ip} not in network {net}")
        return ip

    gw = ip_of("gateway")
    if gw is None:
        gw = net.network_address + 1
    start = ip_of("rangeStart") or net.network_address + 1
    last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    end = ip_of("rangeEnd") or last
    if start > end:
        raise _bad(f"{where}: RangeStart {start} is after RangeEnd {end}")
    return Range(net, start, end, gw)


def parse_config(conf: dict) -> Config:
    """Pure: the host-local part of a network config, validated and defaulted."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise _bad("IPAM config missing 'ipam' key")
    raw_sets = ipam.get("ranges")
    if raw_sets is None and "subnet" in ipam:
        # The pre-"ranges" form: subnet/rangeStart/rangeEnd/gateway at the top.
        raw_sets = [[{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}]]
    if not isinstance(raw_sets, list) or not raw_sets:
        raise _bad("no IP ranges specified")
    sets: list[list[Range]] = []
    for i, rs in enumerate(raw_sets):
        if not isinstance(rs, list) or not rs:
            raise _bad(f"invalid range set {i}: empty range set")
        ranges = [_parse_range(r, f"invalid range set {i}") for r in rs]
        fams = {r.subnet.version for r in ranges}
        if len(fams) != 1:
            raise _bad(f"invalid range set {i}: mixed address families")
        for a in range(len(ranges)):
            for b in range(a + 1, len(ranges)):
                if ranges[a].subnet.overlaps(ranges[b].subnet):  # type: ignore[arg-type]
                    raise _bad(f"invalid range set {i}: subnets {ranges[a].subnet} and {ranges[b].subnet} overlap")
        sets.append(ranges)
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if any(x.subnet.overlaps(y.subnet) for x in sets[a] for y in sets[b] if x.subnet.version == y.subnet.version):  # type: ignore[arg-type]
                raise _bad(f"range set {a} overlaps with {b}")
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise _bad("routes must be a list")
    out_routes = []
    for rt in routes:
        if not isinstance(rt, dict) or not isinstance(rt.get("dst"), str):
            raise _bad(f"invalid route {rt!r}")
        try:
            dst = ipaddress.ip_network(rt["dst"], strict=False)
            route: dict = {"dst": str(dst)}
            if rt.get("gw"):
                route["gw"] = str(ipaddress.ip_address(rt["gw"]))
        except (ValueError, TypeError):
            raise _bad(f"invalid route {rt!r}") from None
        out_routes.append(route)
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise _bad("dataDir must be a string")
    name = conf["name"]
    resolv = ipam.get("resolvConf") or ""
    return Config(name=name, range_sets=sets, routes=out_routes, data_dir=data_dir, resolv_conf=resolv)


def parse_resolv_conf(path: str) -> dict:
    """As host-local's parseResolvConf: nameservers, domain, search and options."""
    dns: dict = {}
    try:
        text = open(path).read()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"failed to read resolvConf {path}", str(e)) from None
    for line in text.splitlines():
        f = line.split()
        if len(f) < 2 or f[0].startswith(("#", ";")):
            continue
        if f[0] == "nameserver":
            dns.setdefault("nameservers", []).append(f[1])
        elif f[0] == "domain":
            dns["domain"] = f[1]
        elif f[0] == "search":
            dns.setdefault("search", []).extend(f[1:])
        elif f[0] == "options":
            dns.setdefault("options", []).extend(f[1:])
    return dns


# -- the disk store (backend/disk) ---------------------------------------------


# This process's view of each data dir: reservation file name -> (inode, stripped
# content), keyed by the dir and its lock file's identity. See Store._index.
_INDEX: dict[tuple, dict[str, tuple[int, str]]] = {}


class Store:
    """One network's directory, locked for the duration of a `with`.

    The files are the reference's, and so is every change to them, but
    this process keeps an index of them (file name -> inode and content)
    so that an ADD does not read every reservation of the network: under
    the lock, one directory listing validates the index (a name that is
    new, or whose inode changed, is read; a name gone is dropped), which
    keeps it exact for changes made by any process, the reference plugins
    included -- they create reservation files with O_EXCL and delete them,
    never rewrite one in place. Anything that deletes a file re-reads it
    first, and GC re-reads them all, so a stale entry can never release
    someone else's address.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._key: tuple | None = None  # set while locked
        self._idx: dict[str, tuple[int, str]] | None = None  # validated in this locked section

    def locked(self, create: bool = True) -> "_Locked":
        """``with store.locked():`` the network's lock file flock(2)ed, as the reference's FileLock."""
        return _Locked(self, create)

    def _lock(self, create: bool) -> int:
        if create:
            os.makedirs(self.dir, 0o755, exist_ok=True)
        # The reference FileLock creates "lock" with mode 0750 (its os.OpenFile perm).
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o750)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        # A data dir removed and made again has a new lock file: its index starts afresh.
        self._key = (self.dir, st.st_dev, st.st_ino, st.st_ctime_ns)
        return fd

    def _unlock(self, fd: int) -> None:
        self._key = self._idx = None
        os.close(fd)  # closing drops the flock

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, 4096).decode(errors="replace").strip()
        except OSError:
            return None
        finally:
            os.close(fd)

    def _index(self, reread: bool = False) -> dict[str, tuple[int, str]]:
        """Reservation files (names that are addresses) -> (inode, stripped content); call locked.

        `reread` reads every file again, as the reference's directory walk does.
        """
        if self._idx is not None and not reread:
            return self._idx
        old = {} if reread or self._key is None else _INDEX.get(self._key, {})
        new: dict[str, tuple[int, str]] = {}
        try:
            it = os.scandir(self.dir)
        except FileNotFoundError:
            it = None
        if it is not None:
            with it:
                for e in it:
                    n = e.name
                    ino = e.inode()
                    hit = old.get(n)
                    if hit is not None and hit[0] == ino:
                        new[n] = hit
                        continue
                    if n == "lock" or n.startswith(LAST_IP_PREFIX):
                        continue
                    try:
                        ipaddress.ip_address(n)
                    except ValueError:
                        continue
                    content = self._read(e.path)
                    if content is not None:
                        new[n] = (ino, content)
        if self._key is not None:
            if len(_INDEX) > 256:  # many networks over a long life: forget the others
                _INDEX.clear()
            _INDEX[self._key] = new
        self._idx = new
        return new

    def _confirm(self, names: list[str], want: tuple[str, ...]) -> list[str]:
        """The names whose file, read now, still holds one of `want` (the index updated)."""
        idx = self._index()
        out = []
        for n in names:
            content = self._read(os.path.join(self.dir, n))
            if content is None:
                idx.pop(n, None)
                continue
            idx[n] = (idx[n][0], content) if n in idx else (0, content)
            if content in want:
                out.append(n)
        return out

    def by_id(self, cid: str, ifname: str) -> list[IP]:
        want = (cid.strip() + LINE_BREAK + ifname, cid.strip())
        hits = [n for n, (_ino, c) in self._index().items() if c in want]
        return [ipaddress.ip_address(n) for n in self._confirm(hits, want)] if hits else []

    def reserve(self, cid: str, ifname: str, ip: IP, range_id: str) -> bool:
        name = str(ip)
        path = os.path.join(self.dir, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        content = cid.strip() + LINE_BREAK + ifname
        try:
            os.write(fd, content.encode())
            ino = os.fstat(fd).st_ino
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self._index()[name] = (ino, content.strip())
        self._write_last(range_id, name)
        return True

    def _write_last(self, range_id: str, text: str) -> None:
        """last_reserved_ip.N := text, written in place and cut to length.

        Not O_TRUNC: ext4 starts writeback of a file truncated to zero when
        it is closed (auto_da_alloc), 15x the cost of this write. Every
        reader holds the lock, so none sees it half-written.
        """
        data = text.encode()
        fd = os.open(os.path.join(self.dir, LAST_IP_PREFIX + range_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def last_reserved(self, range_id: str) -> IP | None:
        content = self._read(os.path.join(self.dir, LAST_IP_PREFIX + range_id))
        try:
            return ipaddress.ip_address(content) if content else None
        except ValueError:
            return None

    def release(self, ip: IP) -> None:
        name = str(ip)
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass
        self._index().pop(name, None)

    def release_by_id(self, cid: str, ifname: str) -> None:
        """As ReleaseByID: every file of this attachment (or of a pre-ifname version's id).

        Each file is read again before it is removed; when the index knows
        of none, every file is read, as the reference does.
        """
        match, old = cid.strip() + LINE_BREAK + ifname, cid.strip()
        for reread in (False, True):
            idx = self._index(reread)
            hits = self._confirm([n for n, (_ino, c) in idx.items() if c == match], (match,))
            if not hits:
                hits = self._confirm([n for n, (_ino, c) in idx.items() if c == old], (old,))
            if hits:
                break
        for n in hits:
            self.release(ipaddress.ip_address(n))

    def attachments(self) -> list[tuple[str, str, str]]:
        """(address, container ID, ifname) of every reservation, every file read again."""
        out = []
        for n, (_ino, c) in self._index(reread=True).items():
            cid, _, ifn = c.partition(LINE_BREAK)
            out.append((n, cid.strip(), ifn.strip()))
        return out


class _Locked:
    """Store.locked's context manager (a class: contextlib's import is time an exec'd plugin pays)."""

    def __init__(self, store: Store, create: bool) -> None:
        self.store, self.create, self.fd = store, create, -1

    def __enter__(self) -> Store:
        self.fd = self.store._lock(self.create)
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store._unlock(self.fd)


def _iterate(ranges: list[Range], last: IP | None) -> Iterator[tuple[IP, Range]]:
    """As host-local's RangeIter: every address once, starting after the last reserved one."""
    start_r, start_ip = 0, ranges[0].start
    if last is not None:
        for i, r in enumerate(ranges):
            if r.contains(last):
                start_r = i
                if last < r.end:
                    start_ip = last + 1
                else:
                    start_r = (i + 1) % len(ranges)
                    start_ip = ranges[start_r].start
                break
    # Walk from start_ip to the end of its range, every other range, then wrap around.
    r = ranges[start_r]
    ip = start_ip
    while ip <= r.end:
        yield ip, r
        ip += 1
    for k in range(1, len(ranges)):
        r = ranges[(start_r + k) % len(ranges)]
        ip = r.start
        while ip <= r.end:
            yield ip, r
            ip += 1
    r = ranges[start_r]
    ip = r.start
    while ip < start_ip:
        yield ip, r
        ip += 1


def _requested_ips(conf: dict, args: skel.Args) -> list[IP]:
    """IP=... in CNI_ARGS, "ips" in runtimeConfig or args.cni (host-local's three sources)."""
    out: list[IP] = []
    cargs = args.cni_args()
    known = {"IgnoreUnknown", "IP"}
    unknown = [k for k in cargs if k not in known]
    if unknown and cargs.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CNIError(INVALID_ENV, f"ARGS: unknown args {unknown!r}")
    if cargs.get("IP"):
        for s in cargs["IP"].split(","):
            try:
                out.append(ipaddress.ip_address(s.strip()))
            except ValueError:
                raise CNIError(INVALID_ENV, f"invalid IP in CNI_ARGS: {s!r}") from None
    for src in ((conf.get("runtimeConfig") or {}).get("ips"), ((conf.get("args") or {}).get("cni") or {}).get("ips")):
        for s in src or []:
            try:
                out.append(ipaddress.ip_interface(s).ip)
            except (ValueError, TypeError):
                raise CNIError(INVALID_CONFIG, f"invalid requested IP {s!r}") from None
    return out


# -- verbs ------------------------------------------------------------------------


def add(conf: dict, args: skel.Args) -> dict:
    cfg = parse_config(conf)
    requested = _requested_ips(conf, args)
    dns = parse_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else {}
    store = Store(cfg.dir)
    ips: list[dict] = []
    reserved: list[IP] = []
    try:
        with store.locked():
            mine = store.by_id(args.container_id, args.ifname)
            for i, ranges in enumerate(cfg.range_sets):
                for ip in mine:
                    if any(r.contains(ip) for r in ranges):
                        raise CNIError(INTERNAL, f"{ip} has been allocated to {args.container_id}, duplicate allocation is not allowed")
                want = [ip for ip in requested if any(r.contains(ip) for r in ranges)]
                got: tuple[IP, Range] | None = None
                if want:
                    ip = want[0]
                    r = next(r for r in ranges if r.contains(ip))
                    if ip == r.gateway:
                        raise CNIError(INTERNAL, f"requested ip {ip} is subnet's gateway")
                    if not store.reserve(args.container_id, args.ifname, ip, str(i)):
                        raise CNIError(INTERNAL, f"requested IP address {ip} is not available in range set {_fmt_set(ranges)}")
                    requested.remove(ip)
                    got = (ip, r)
                else:
                    for ip, r in _iterate(ranges, store.last_reserved(str(i))):
                        if ip == r.gateway:
                            continue
                        if store.reserve(args.container_id, args.ifname, ip, str(i)):
                            got = (ip, r)
                            break
                    if got is None:
                        raise CNIError(INTERNAL, f"no IP addresses available in range set: {_fmt_set(ranges)}")
                ip, r = got
                reserved.append(ip)
                entry: dict = {"address": f"{ip}/{r.subnet.prefixlen}"}
                if r.gateway is not None:
                    entry["gateway"] = str(r.gateway)
                ips.append(entry)
            if requested:
                raise CNIError(INTERNAL, f"could not allocate all requested IPs: {', '.join(map(str, requested))}")
    except BaseException:
        # Leave no reservation behind: undo what this call reserved.
        for ip in reserved:
            store.release(ip)
        raise
    result: dict = {"ips": ips, "dns": dns}
    if cfg.routes:
        result["routes"] = cfg.routes
    return result


def _fmt_set(ranges: list[Range]) -> str:
    return ",".join(f"{r.start}-{r.end}" for r in ranges)


def delete(conf: dict, args: skel.Args) -> None:
    cfg = parse_config(conf)
    store = Store(cfg.dir)
    if not os.path.isdir(cfg.dir):
        return
    with store.locked():
        store.release_by_id(args.container_id, args.ifname)


def check(conf: dict, args: skel.Args) -> None:
    cfg = parse_config(conf)
    store = Store(cfg.dir)
    if not os.path.isdir(cfg.dir):
        raise CNIError(INTERNAL, f"host-local: Failed to find address added by container {args.container_id}")
    with store.locked():
        if not store.by_id(args.container_id, args.ifname):
            raise CNIError(INTERNAL, f"host-local: Failed to find address added by container {args.container_id}")


def gc(conf: dict, args: skel.Args) -> None:
    """Release every reservation whose attachment is not in cni.dev/valid-attachments."""
    cfg = parse_config(conf)
    valid = conf.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list):
        raise CNIError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    keep = set()
    for a in valid:
        if not isinstance(a, dict):
            raise CNIError(INVALID_CONFIG, "invalid entry in cni.dev/valid-attachments", repr(a))
        keep.add((str(a.get("containerID", "")).strip(), str(a.get("ifname", ""))))
    if not os.path.isdir(cfg.dir):
        return
    store = Store(cfg.dir)
    with store.locked():
        for ip, cid, ifn in store.attachments():
            if (cid, ifn) not in keep:
                store.release(ipaddress.ip_address(ip))


def status(conf: dict, args: skel.Args) -> None:
    parse_config(conf)
