"""The in-process CNI API the lab wires its pods with.

Same plugins, same validation, same results as the executables (both go
through `cni.skel`), minus the fork+exec: the lab calls `add` with the
node's namespace as `host_netns`, i.e. where containerd would have exec'd
the plugin, and nothing is created in the caller's own namespace.

`conf` is one network config or a conflist; conflists are chained as
libcni does (prevResult, capabilities -> runtimeConfig). A failed ADD of a
conflist is rolled back with DEL of the whole list, as containerd tears
down a sandbox whose network setup failed, so nothing is left half-made.
"""

from __future__ import annotations

from cni import libcni, registry, skel
from cni.errors import CNIError, INVALID_CONFIG


def _invoker(base: skel.Args):
    def invoke(command: str, conf: dict) -> dict | None:
        short = registry.short(conf.get("type"))
        if short is None:
            raise CNIError(INVALID_CONFIG, f'failed to find plugin "{conf.get("type")}": not a netlab plugin')
        a = base.replace(command=command)
        return skel.run(registry.load(short), conf, a)

    return invoke


def _args(container_id: str, netns: str, ifname: str, args: str, host_netns: str | None) -> skel.Args:
    return skel.Args(command="", container_id=container_id, netns=netns, ifname=ifname, args=args, host_netns=host_netns)


def add(
    conf: dict,
    *,
    container_id: str,
    netns: str,
    ifname: str = "eth0",
    args: str = "",
    host_netns: str | None = None,
    runtime_config: dict | None = None,
) -> dict:
    """ADD: wire a pod; return the CNI result as the plugin would print it."""
    invoke = _invoker(_args(container_id, netns, ifname, args, host_netns))
    try:
        result = libcni.add_list(conf, invoke, runtime_config)
    except BaseException:
        if isinstance(conf, dict) and "plugins" in conf:
            try:
                libcni.del_list(conf, invoke, runtime_config)
            except Exception:
                pass
        raise
    return result or {}


def delete(
    conf: dict,
    *,
    container_id: str,
    netns: str,
    ifname: str = "eth0",
    args: str = "",
    host_netns: str | None = None,
    runtime_config: dict | None = None,
) -> None:
    """DEL: unwire a pod; idempotent, also for an unknown container or a missing namespace."""
    invoke = _invoker(_args(container_id, netns, ifname, args, host_netns))
    libcni.del_list(conf, invoke, runtime_config)


def check(conf: dict, *, container_id: str, netns: str, prev_result: dict, ifname: str = "eth0", args: str = "",
          host_netns: str | None = None, runtime_config: dict | None = None) -> None:
    invoke = _invoker(_args(container_id, netns, ifname, args, host_netns))
    libcni.check_list(conf, invoke, prev_result, runtime_config)


def gc(conf: dict, *, valid_attachments: list[dict], host_netns: str | None = None) -> None:
    """GC: release everything of this network not in `valid_attachments` ({containerID, ifname})."""
    libcni.gc_list(conf, _invoker(_args("", "", "", "", host_netns)), valid_attachments)


def status(conf: dict, *, host_netns: str | None = None) -> None:
    libcni.status_list(conf, _invoker(_args("", "", "", "", host_netns)))


def forget(host_netns: str | None = None) -> None:
    """Drop cached netlink sockets of a node namespace (call when the node is torn down)."""
    from cni import nscache

    nscache.forget(host_netns)


__all__ = ["add", "delete", "check", "gc", "status", "forget", "CNIError"]

