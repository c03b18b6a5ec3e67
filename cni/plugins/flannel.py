"""The flannel plugin: read subnet.env, delegate to bridge + host-local.

As flannel-io/cni-plugin (flannel_linux.go): the delegate config is the
user's "delegate" object completed with name, cniVersion, ipMasq = not
FLANNEL_IPMASQ (flanneld masquerades itself when that is true), mtu =
FLANNEL_MTU, isGateway true for bridge, and an "ipam" of host-local with a
range of the node's subnet and a route to the whole flannel Network. The
delegate config is saved under dataDir/<containerID> so DEL can replay it
after subnet.env has changed or gone.

netlab addition: when the flannel config names its own dataDir and the
IPAM section names none, host-local's dataDir becomes the sibling
``<dirname(dataDir)>/networks`` -- on a real node both are defaults
(/var/lib/cni/flannel and /var/lib/cni/networks); in a lab each node has
its own /var/lib/cni, so both move together.
"""

from __future__ import annotations

import os

from cni import fastjson, invoke, skel, subnet_env
from cni.errors import CNIError, INVALID_CONFIG, IO_FAILURE, NOT_AVAILABLE, TRY_AGAIN

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
# What subnetEnv.missing() asks for: a network and a subnet of either family (IPv4,
# IPv6 or both), the MTU and the masquerade flag; each entry is (env keys, parse keys).
REQUIRED = (
    (("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"), ("network", "network6")),
    (("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"), ("subnet", "subnet6")),
    (("FLANNEL_MTU",), ("mtu",)),
    (("FLANNEL_IPMASQ",), ("ipmasq",)),
)


def _str_opt(conf: dict, key: str, default: str) -> str:
    v = conf.get(key) or default
    if not isinstance(v, str):
        raise CNIError(INVALID_CONFIG, f"{key} must be a string")
    return v


def load_env(path: str) -> dict:
    """subnet.env, or error 11: flanneld has not written it yet (try again later)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise CNIError(
            TRY_AGAIN,
            f"failed to load flannel 'subnet.env' file: open {path}: no such file or directory",
            "Check the flannel pod log for this node.",
        ) from None
    except OSError as e:
        raise CNIError(IO_FAILURE, f"failed to load flannel 'subnet.env' file {path}", str(e)) from None
    try:
        env = subnet_env.parse(text)
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, f"{path}: {e}") from None
    missing = [n for names, keys in REQUIRED if not any(k in env for k in keys) for n in names]
    if missing:
        raise CNIError(TRY_AGAIN, f"{path} is missing {', '.join(missing)}")
    return env


def _copy(v: object) -> object:
    """A deep copy of decoded JSON (dicts, lists, scalars): copy.deepcopy without its import."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def build_delegate(conf: dict, env: dict) -> dict:
    """Pure: the delegate config flannel hands to bridge (flannel's cmdAdd, doCmdAdd, getDelegateIPAM).

    Field for field what flannel-io/cni-plugin builds (tests/unit/test_cni_flannel.py),
    with two netlab additions: "netlab-bridge" is a bridge too (isGateway
    defaults to true for it), and the IPAM dataDir follows the flannel
    dataDir (see the module docstring).
    """
    d = conf.get("delegate")
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise CNIError(INVALID_CONFIG, "delegate must be an object")
    if "type" in d and not isinstance(d["type"], str):
        raise CNIError(INVALID_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in d:
        raise CNIError(INVALID_CONFIG, "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
    if "ipam" in d:
        raise CNIError(INVALID_CONFIG, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    d = _copy(d)
    if conf.get("runtimeConfig") is not None:
        d["runtimeConfig"] = _copy(conf["runtimeConfig"])
    d["name"] = conf["name"]
    d.setdefault("type", "bridge")
    d.setdefault("ipMasq", not env["ipmasq"])
    d.setdefault("mtu", env["mtu"])
    if d["type"] in ("bridge", "netlab-bridge"):
        d.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        d["cniVersion"] = conf["cniVersion"]
    ipam = conf.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "ipam must be an object")
    ipam = _copy(ipam)
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": env[k]}] for k in ("subnet", "subnet6") if env.get(k)]
    routes = [_route(r) for r in _routes_of(ipam)]
    routes += [{"dst": n} for n in env.get("networks", []) + env.get("networks6", [])]  # subnet_env.parse's lists
    ipam["routes"] = routes
    if conf.get("dataDir") and "dataDir" not in ipam:
        ipam["dataDir"] = os.path.join(os.path.dirname(os.path.normpath(conf["dataDir"])), "networks")
    d["ipam"] = ipam
    return d


def _routes_of(ipam: dict) -> list:
    routes = ipam.get("routes")
    if routes is None:
        return []
    if not isinstance(routes, list) or not all(isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes):
        raise CNIError(INVALID_CONFIG, "failed to assemble Delegate IPAM: failed to read IPAM routes", repr(routes))
    return routes


# types.Route's JSON fields (libcni 1.x), each omitted when empty as its omitempty tags say.
_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")


def _route(r: dict) -> dict:
    """An ipam route as flannel re-encodes it (getIPAMRoutes decodes into types.Route): known keys, no empties."""
    out = {"dst": r["dst"]}
    for k in _ROUTE_KEYS[1:]:
        v = r.get(k)
        if v is not None and (v != 0 or k in ("table", "scope")) and v != "":
            out[k] = v
    return out


def _scratch(conf: dict, container_id: str) -> str:
    return os.path.join(_str_opt(conf, "dataDir", DEFAULT_DATA_DIR), container_id)


# Per data dir, the scratch bytes this process wrote last and a read-only fd on that file,
# with its mtime: data dir -> (bytes, fd, mtime_ns). See _save_scratch.
_shared: dict[str, tuple[bytes, int, int]] = {}
_shared_lock = __import__("_thread").allocate_lock()


def _save_scratch(path: str, data: bytes) -> None:
    """dataDir/<containerID> := data (mode 0600), as the reference's saveScratchNetConf.

    The pods of a node save the same bytes (the delegate config). When this
    process wrote these bytes in this dir before, the new file is another
    name for that inode (a hard link), not a new inode: on the shared
    machines' disk /run, a new inode is what a file costs (see
    netlab.netns._mount_point). Nothing is ever written through a name: an
    existing file is replaced, not truncated, and the inode is shared only
    while its size and mtime say nobody wrote into it since.
    """
    from netlab.netns import link_fd

    try:
        os.unlink(path)  # a repeated ADD: replace the file, never write into one that may be shared
    except FileNotFoundError:
        pass
    d = os.path.dirname(path)
    with _shared_lock:
        hit = _shared.get(d)
        if hit is not None and hit[0] == data:
            try:
                st = os.fstat(hit[1])
                if st.st_nlink and st.st_size == len(data) and st.st_mtime_ns == hit[2] and link_fd(hit[1], path):
                    return
            except OSError:
                pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        keep = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if hit is not None:
            os.close(hit[1])
        elif len(_shared) >= 64:  # many data dirs over a long life (tests): let the others go
            for _data, other, _m in _shared.values():
                os.close(other)
            _shared.clear()
        _shared[d] = (data, keep, os.fstat(keep).st_mtime_ns)


def add(conf: dict, args: skel.Args) -> dict:
    env = load_env(_str_opt(conf, "subnetFile", DEFAULT_SUBNET_FILE))
    d = build_delegate(conf, env)
    path = _scratch(conf, args.container_id)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    _save_scratch(path, fastjson.dumps(d).encode())
    try:
        result = invoke.delegate("ADD", d, args)
    except BaseException:
        _unlink(path)
        raise
    return result or {}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _saved(conf: dict, args: skel.Args) -> tuple[str, dict | None]:
    path = _scratch(conf, args.container_id)
    try:
        with open(path, "rb") as f:
            saved = fastjson.loads(f.read())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return path, saved
    except FileNotFoundError:
        return path, None
    except (OSError, ValueError) as e:
        raise CNIError(IO_FAILURE, f"failed to read {path}", str(e)) from None


def delete(conf: dict, args: skel.Args) -> None:
    path, d = _saved(conf, args)
    if d is None:
        return  # already cleaned up
    invoke.delegate("DEL", d, args)
    _unlink(path)


def check(conf: dict, args: skel.Args) -> None:
    path, d = _saved(conf, args)
    if d is None:
        raise CNIError(IO_FAILURE, f"failed to read {path}", "no such file or directory")
    d = dict(d, prevResult=conf["prevResult"], cniVersion=conf["cniVersion"])
    invoke.delegate("CHECK", d, args)


def gc(conf: dict, args: skel.Args) -> None:
    """GC: drop scratch files of dead attachments, then GC the delegate (its host-local)."""
    valid = conf.get("cni.dev/valid-attachments") or []
    keep = {a.get("containerID") for a in valid if isinstance(a, dict)}
    data_dir = _str_opt(conf, "dataDir", DEFAULT_DATA_DIR)
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        names = []
    for name in names:
        if name not in keep:
            try:
                os.unlink(os.path.join(data_dir, name))
            except OSError:
                pass
    try:
        env = load_env(_str_opt(conf, "subnetFile", DEFAULT_SUBNET_FILE))
    except CNIError:
        return
    d = build_delegate(conf, env)
    d["cni.dev/valid-attachments"] = valid
    invoke.delegate("GC", d, args)


def status(conf: dict, args: skel.Args) -> None:
    """STATUS: not ready (50) until flanneld has written subnet.env."""
    try:
        load_env(_str_opt(conf, "subnetFile", DEFAULT_SUBNET_FILE))
    except CNIError as e:
        raise CNIError(NOT_AVAILABLE, "plugin not available", str(e)) from None
