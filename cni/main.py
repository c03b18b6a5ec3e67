"""The executables' entry point: CNI_* environment and stdin in, JSON out.

As libcni's skel.PluginMainFuncs: the required variables per verb, the
config decoded from stdin, an error object on stdout with exit code 1.
Imports stay minimal (stdlib C modules, no json/re/dataclasses/socket,
no click/rich/scapy/pyroute2): a runtime pays this process start-up on
every pod, and every module a call does not need is time added to it
(BENCHMARKS.md, "CNI plugin"). The modules a DEL loads before it reaches
the kernel (this one, fastjson, skel, errors, record, registry, bridge,
netlink, nscache) also do without ``from __future__ import annotations``:
`__future__` is one more module to load.
"""

import sys

from cni import fastjson

# Variables a runtime must set, per verb (skel's checkCmdArgs table).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
_UNDECODED = object()


def _decode(raw: bytes) -> object:
    """The config, or _UNDECODED when stdin is not JSON (an error only for verbs that read it)."""
    try:
        return fastjson.loads(raw)
    except ValueError:
        return _UNDECODED


def _version_of(conf: object) -> str:
    from cni import skel

    if isinstance(conf, dict):
        v = conf.get("cniVersion")
        if v in skel.SUPPORTED_VERSIONS:
            return v  # type: ignore[return-value]
    return skel.LATEST


def execute(plugin: str, environ: dict, stdin: bytes, caller_environ: bool = False) -> tuple[int, str]:
    """One plugin call as a runtime makes it; returns (exit code, stdout text).

    `caller_environ`: `environ` is another process's (the node daemon's caller),
    so delegates exec'd by this call inherit it instead of this process's.
    """
    from cni import registry, skel
    from cni.errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_ENV

    conf = _decode(stdin)
    version = _version_of(conf)
    try:
        cmd = environ.get("CNI_COMMAND", "")
        if not cmd:
            raise CNIError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        if cmd not in _REQUIRED:
            raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")
        missing = [k for k in _REQUIRED[cmd] if k not in environ or (k != "CNI_PATH" and not environ[k])]
        if missing:
            raise CNIError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
        if cmd == "VERSION":
            return 0, fastjson.dumps(skel.version_info())
        if conf is _UNDECODED:
            try:
                fastjson.loads(stdin)
            except ValueError as e:  # the decoder's own message, as the details
                raise CNIError(DECODE_FAILURE, "error unmarshaling network config", str(e)) from None
        if not isinstance(conf, dict):
            raise CNIError(DECODE_FAILURE, "error unmarshaling network config", "not a JSON object")
        args = skel.Args(
            command=cmd,
            container_id=environ.get("CNI_CONTAINERID", ""),
            netns=environ.get("CNI_NETNS", ""),
            ifname=environ.get("CNI_IFNAME", ""),
            args=environ.get("CNI_ARGS", ""),
            path=[p for p in environ.get("CNI_PATH", "").split(":") if p],  # os.pathsep on Linux
            exec_mode=True,
            environ=environ if caller_environ else None,
        )
        out = skel.run(registry.load(plugin), conf, args)
        return 0, fastjson.dumps(out) if out is not None else ""
    except CNIError as e:
        return 1, fastjson.dumps(e.to_json(version))
    except Exception as e:  # a bug or an unexpected kernel answer: still the spec's error object
        return 1, fastjson.dumps(CNIError(INTERNAL, f"{type(e).__name__}: {e}").to_json(version))


def _environ() -> dict[str, str]:
    """os.environ as a plain dict, from `posix` (importing `os` costs an exec'd plugin ~1 ms)."""
    import posix

    return {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, v in posix.environ.items()}


def run(plugin: str) -> int:
    """The executable's body: returns the exit code (the caller exits, see cni.cli.TEMPLATE)."""
    code, out = execute(plugin, _environ(), sys.stdin.buffer.read())
    if out:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return code
