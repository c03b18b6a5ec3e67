"""The plugin side of the CNI protocol, shared by the executables and the in-process API.

This is netlab's libcni `pkg/skel`: it validates the call (container ID,
interface name, network name, cniVersion), checks that the verb is allowed
at the config's version, dispatches to a plugin module and converts the
result to the version the config asked for. `cni.main` feeds it from
CNI_* variables and stdin; `cni.api` feeds it from Python arguments; both
end up in the same plugin code.
"""

from cni.errors import (
    CNIError,
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
)
from cni.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# As libcni's utils.ValidateContainerID / ValidateNetworkName
# (^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$): the first character alphanumeric, the
# rest alphanumerics, "_", "." and "-". This is what keeps "../" out of
# host-local's dataDir/<name> and flannel's dataDir/<id>. Checked by hand,
# not with `re`: its import costs an exec'd plugin more than the check.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")
_IFNAME_MAX = 15


def valid_id(s: str) -> bool:
    """The libcni ID pattern, for container IDs and network names."""
    return bool(s) and s[0] in _ALNUM and all(c in _ID_CHARS for c in s)


def vtuple(v: str) -> tuple[int, int, int]:
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions", f"invalid version {v!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


class Args(Record):
    """One plugin call: the CNI_* variables, plus where the plugin "runs".

    `host_netns` is the namespace a runtime would have exec'd the plugin in
    (the node's); None means the calling thread's own, which is what an
    exec'd plugin has. `exec_mode` says delegates are found along CNI_PATH
    (`path`) as invoke.DelegateAdd finds them; in-process callers dispatch
    delegates by type directly. `environ` is what an exec'd delegate
    inherits besides the CNI_* variables (None: this process's).
    """

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "host_netns", "exec_mode", "environ")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: str = "",
        path: list[str] | None = None,
        host_netns: str | None = None,
        exec_mode: bool = False,
        environ: dict | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = [] if path is None else path
        self.host_netns = host_netns
        self.exec_mode = exec_mode
        self.environ = environ  # the caller's whole environment, when it is not this process's (cni.daemon)

    def cni_args(self) -> dict[str, str]:
        """CNI_ARGS "K1=V1;K2=V2" as a dict (types.LoadArgs' input)."""
        out: dict[str, str] = {}
        if not self.args:
            return out
        for pair in self.args.split(";"):
            if not pair:
                continue
            k, sep, v = pair.partition("=")
            if not sep:
                raise CNIError(INVALID_ENV, "invalid CNI_ARGS pair", repr(pair))
            out[k] = v
        return out


def validate_container_id(cid: str) -> None:
    if not cid:
        raise CNIError(INVALID_ENV, "missing containerID")
    if not valid_id(cid):
        raise CNIError(INVALID_ENV, "invalid characters in containerID", cid)


def validate_ifname(name: str) -> None:
    """As libcni's ValidateInterfaceName: what the kernel would accept as a device name."""
    if not name:
        raise CNIError(INVALID_ENV, "interface name is empty")
    if len(name.encode()) > _IFNAME_MAX:
        raise CNIError(INVALID_ENV, "interface name is too long", f"interface name should be less than {_IFNAME_MAX + 1} characters")
    if name in (".", ".."):
        raise CNIError(INVALID_ENV, "interface name is . or ..")
    if any(c in name for c in "/:") or any(c.isspace() for c in name) or "\0" in name:
        raise CNIError(INVALID_ENV, "interface name contains / or : or whitespace characters")


def validate_network_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise CNIError(INVALID_CONFIG, "missing network name")
    if not valid_id(name):
        raise CNIError(INVALID_CONFIG, "invalid characters found in network name", name)


def conf_version(conf: dict) -> str:
    """The config's cniVersion, checked against what netlab supports (error 1 otherwise)."""
    v = conf.get("cniVersion", "0.1.0") or "0.1.0"
    if not isinstance(v, str):
        raise CNIError(DECODE_FAILURE, "decoding version from network config", "cniVersion is not a string")
    if v not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{v}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    return v


def version_info() -> dict:
    return {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- results ------------------------------------------------------------------


def to_internal(result: dict) -> dict:
    """A result of any supported version, in the 1.x shape (no per-IP "version")."""
    out = {k: v for k, v in result.items() if k != "cniVersion"}
    if "ips" in out:
        out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in out["ips"]]
    return out


def to_version(result: dict, version: str) -> dict:
    """Convert an internal (1.x-shaped) result to `version`, as types/100's Convert does."""
    out: dict = {"cniVersion": version}
    old = vtuple(version) < (1, 0, 0)
    for key in ("interfaces", "ips", "routes", "dns"):
        if key not in result or (key != "dns" and not result[key]):
            continue  # Go's omitempty on the lists; "dns" is a struct, always printed
        if key == "ips" and old:
            ips = []
            for ip in result["ips"]:
                conv = {"version": "6" if ":" in ip["address"] else "4"}
                conv.update(ip)
                ips.append(conv)
            out["ips"] = ips
        else:
            out[key] = result[key]
    if "dns" not in out:
        out["dns"] = {}
    return out


def prev_result(conf: dict) -> dict | None:
    pr = conf.get("prevResult")
    if pr is None:
        return None
    if not isinstance(pr, dict):
        raise CNIError(DECODE_FAILURE, "could not parse prevResult", "prevResult is not an object")
    return to_internal(pr)


# -- dispatch -----------------------------------------------------------------


def run(plugin: "ModuleType", conf: dict, args: Args) -> dict | None:
    """Validate the call and run one verb of one plugin; return the versioned result (ADD)."""
    cmd = args.command
    if cmd == "VERSION":
        return version_info()
    if not isinstance(conf, dict):
        raise CNIError(DECODE_FAILURE, "error unmarshaling network config", "not a JSON object")
    version = conf_version(conf)
    validate_network_name(conf.get("name"))
    if cmd in ("ADD", "DEL", "CHECK"):
        validate_container_id(args.container_id)
        validate_ifname(args.ifname)
    if not isinstance(conf.get("type", ""), str):
        raise CNIError(DECODE_FAILURE, "error unmarshaling network config", "type is not a string")
    if cmd == "CHECK" and vtuple(version) < (0, 4, 0):
        raise CNIError(INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    if cmd in ("GC", "STATUS") and vtuple(version) < (1, 1, 0):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version does not allow {cmd}")
    if cmd == "ADD":
        if not args.netns:
            raise CNIError(INVALID_ENV, "required env variables [CNI_NETNS] missing")
        return to_version(plugin.add(conf, args), version)
    if cmd == "DEL":
        plugin.delete(conf, args)
        return None
    if cmd == "CHECK":
        if conf.get("prevResult") is None:
            raise CNIError(INVALID_CONFIG, "required prevResult missing")
        plugin.check(conf, args)
        return None
    if cmd == "GC":
        gc = getattr(plugin, "gc", None)
        if gc is not None:
            gc(conf, args)
        return None
    if cmd == "STATUS":
        status = getattr(plugin, "status", None)
        if status is not None:
            status(conf, args)
        return None
    raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")
