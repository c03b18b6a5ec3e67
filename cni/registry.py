"""Which plugin types netlab implements, and how their executables are named.

Executables are installed as ``netlab-<type>`` so they can share one
CNI_PATH with the reference plugins. A config may name a type with or
without the prefix ("flannel" == "netlab-flannel"). An installed executable
carries MARKER, so a delegating plugin that found it on CNI_PATH knows it
may run the same code in-process instead of forking.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

PREFIX = "netlab-"
MARKER = b"netlab-cni-plugin"
PLUGINS = {
    "bridge": "cni.plugins.bridge",
    "host-local": "cni.plugins.hostlocal",
    "loopback": "cni.plugins.loopback",
    "portmap": "cni.plugins.portmap",
    "flannel": "cni.plugins.flannel",
}


def short(type_: object) -> str | None:
    """"netlab-bridge" / "bridge" -> "bridge"; None for a type netlab does not implement."""
    if not isinstance(type_, str):
        return None
    name = type_[len(PREFIX):] if type_.startswith(PREFIX) else type_
    return name if name in PLUGINS else None


def exe_name(type_: str) -> str:
    """The executable a delegate type is looked up as on CNI_PATH."""
    s = short(type_)
    return PREFIX + s if s else type_


def load(short_name: str) -> "ModuleType":
    """The plugin's module (__import__ rather than importlib: one import less per exec).

    Always through __import__, never sys.modules alone: a module another
    thread is still importing is already in sys.modules, half made, and only
    the import system waits for it (the module's import lock). The kubelet's
    sandbox threads load plugins concurrently.
    """
    name = PLUGINS[short_name]
    __import__(name)
    return sys.modules[name]


def is_ours(path: str) -> bool:
    """Whether `path` is one of netlab's executables: the Python one carries MARKER in its
    header, the compiled one (cni/shim.c) in its data, a few KiB in."""
    try:
        with open(path, "rb") as f:
            return MARKER in f.read(1 << 20)
    except OSError:
        return False
