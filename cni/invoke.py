"""Calling another plugin, as libcni's pkg/invoke does for delegating plugins.

The reference bridge plugin runs its IPAM plugin with ipam.ExecAdd, and
flannel runs its delegate with invoke.DelegateAdd: both look the type up
along CNI_PATH and exec it with the caller's CNI_* environment. netlab does
the same lookup (types map to the ``netlab-`` executables, see
`cni.registry`); when the executable found is one of netlab's own, the
same code runs in-process instead of paying a fork+exec, and anything else
(the reference "static" IPAM, say) is exec'd exactly as libcni would.
"""

from __future__ import annotations

import os

from cni import fastjson, registry, skel
from cni.errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_CONFIG


def find_in_path(name: str, dirs: list[str]) -> str:
    """As invoke.FindInPath: the first executable `name` in `dirs`."""
    if not dirs:
        raise CNIError(INVALID_CONFIG, f'failed to find plugin "{name}" in path []')
    if "/" in name or name in ("", ".", ".."):
        raise CNIError(INVALID_CONFIG, f'invalid plugin name "{name}"')
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise CNIError(INVALID_CONFIG, f'failed to find plugin "{name}" in path {dirs}')


def delegate(command: str, conf: dict, args: skel.Args, type_: str | None = None) -> dict | None:
    """Run `command` of plugin `type_` (default conf["type"]) on `conf`; return its result in 1.x shape.

    An IPAM plugin gets the whole network config, as ipam.ExecAdd passes it.
    """
    if type_ is None:
        type_ = conf.get("type")
    if not isinstance(type_, str) or not type_:
        raise CNIError(INVALID_CONFIG, "delegate config has no type")
    short = registry.short(type_)
    exe = None
    if args.exec_mode or short is None:
        exe = find_in_path(registry.exe_name(type_), args.path)
        if short is not None and not registry.is_ours(exe):
            short = None
    sub = args.replace(command=command)
    if short is not None:
        out = skel.run(registry.load(short), conf, sub)
    else:
        assert exe is not None
        out = exec_plugin(exe, conf, sub)
    return skel.to_internal(out) if out else None


def plugin_env(args: skel.Args) -> dict[str, str]:
    """What an exec'd delegate gets: the caller's environment (a runtime's, also when the node's
    CNI daemon runs the call for it) with the call's CNI_* variables."""
    env = dict(os.environ if args.environ is None else args.environ)
    env.update(
        CNI_COMMAND=args.command,
        CNI_CONTAINERID=args.container_id,
        CNI_NETNS=args.netns,
        CNI_IFNAME=args.ifname,
        CNI_ARGS=args.args,
        CNI_PATH=os.pathsep.join(args.path),
    )
    return env


def exec_plugin(exe: str, conf: dict, args: skel.Args) -> dict | None:
    """fork+exec one plugin the way a runtime does; raise its error object as CNIError."""
    import subprocess

    stdin = fastjson.dumps(conf).encode()
    kw = dict(input=stdin, capture_output=True, env=plugin_env(args))
    if args.host_netns is not None:
        from netlab import netns

        p = netns.run_in(args.host_netns, [exe], **kw)
    else:
        p = subprocess.run([exe], **kw)
    if p.returncode != 0:
        try:
            err = fastjson.loads(p.stdout)
            raise CNIError(int(err.get("code", INTERNAL)), str(err.get("msg", "")), str(err.get("details", "")))
        except (ValueError, AttributeError, TypeError):
            raise CNIError(INTERNAL, f"plugin {exe} failed", (p.stderr or p.stdout).decode(errors="replace")) from None
    if not p.stdout.strip():
        return None
    try:
        return fastjson.loads(p.stdout)
    except ValueError as e:
        raise CNIError(DECODE_FAILURE, f"decoding result of {exe}", str(e)) from None
