"""The runtime side of CNI: network config lists, prevResult chaining, capabilities.

As containernetworking/cni's libcni (AddNetworkList, buildOneConfig,
injectRuntimeConfig): every plugin of a conflist gets the list's name and
cniVersion, the previous plugin's result as prevResult, and a
runtimeConfig holding only the capabilities it declares. DEL walks the
list backwards. `invoke` decides how a plugin is reached: in-process
(`cni.api`) or by exec along CNI_PATH (`cni.runtime`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from cni.errors import CNIError, INVALID_CONFIG

# invoke(command, plugin_conf) -> result (versioned dict) or None
Invoker = Callable[[str, dict], "dict | None"]


def plugins_of(conf: dict) -> tuple[str, str, list[dict]]:
    """(name, cniVersion, plugin configs) of a conflist or of a single network config."""
    if not isinstance(conf, dict):
        raise CNIError(INVALID_CONFIG, "network config must be an object")
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) for p in plugins):
            raise CNIError(INVALID_CONFIG, "error parsing configuration list: no plugins in list")
        return conf.get("name", ""), conf.get("cniVersion", ""), plugins
    return conf.get("name", ""), conf.get("cniVersion", ""), [conf]


def build_one(plugin: dict, name: str, version: str, prev: dict | None, runtime_config: dict | None) -> dict:
    """As buildOneConfig + injectRuntimeConfig."""
    c = copy.deepcopy(plugin)
    if name:
        c["name"] = name
    if version:
        c["cniVersion"] = version
    if prev is not None:
        c["prevResult"] = prev
    caps = c.get("capabilities") or {}
    rc = {k: v for k, v in (runtime_config or {}).items() if isinstance(caps, dict) and caps.get(k)}
    if rc:
        c["runtimeConfig"] = rc
    return c


def add_list(conf: dict, invoke: Invoker, runtime_config: dict | None = None) -> dict | None:
    name, version, plugins = plugins_of(conf)
    prev: dict | None = None
    for p in plugins:
        prev = invoke("ADD", build_one(p, name, version, prev, runtime_config))
    return prev


def del_list(conf: dict, invoke: Invoker, runtime_config: dict | None = None, prev: dict | None = None) -> None:
    """DEL in reverse order; every plugin is called even if one fails (the first error is raised)."""
    name, version, plugins = plugins_of(conf)
    first: CNIError | None = None
    for p in reversed(plugins):
        try:
            invoke("DEL", build_one(p, name, version, prev, runtime_config))
        except CNIError as e:
            first = first or e
    if first is not None:
        raise first


def check_list(conf: dict, invoke: Invoker, prev: dict, runtime_config: dict | None = None) -> None:
    name, version, plugins = plugins_of(conf)
    for p in plugins:
        invoke("CHECK", build_one(p, name, version, prev, runtime_config))


def gc_list(conf: dict, invoke: Invoker, valid_attachments: list[dict]) -> None:
    name, version, plugins = plugins_of(conf)
    for p in plugins:
        c = build_one(p, name, version, None, None)
        c["cni.dev/valid-attachments"] = valid_attachments
        invoke("GC", c)


def status_list(conf: dict, invoke: Invoker) -> None:
    name, version, plugins = plugins_of(conf)
    for p in plugins:
        invoke("STATUS", build_one(p, name, version, None, None))
