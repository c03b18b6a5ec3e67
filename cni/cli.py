"""`netlab cni ...`: install the plugin executables into a CNI bin directory."""

from __future__ import annotations

import os
import sys

import click

from cni import registry

# The executable, as cheap to start as a Python process gets (a runtime
# execs it for every pod and verb):
# - the real interpreter, not a venv's symlink to it: no pyvenv.cfg lookup;
# - -I -S: no site-packages, no user env (the plugins need only the stdlib);
#   frozen stdlib modules are already the default of an installed Python;
# - the garbage collector off: a process that lives for milliseconds frees
#   everything at exit, and a collection pass per ~700 allocations while
#   modules load is pure cost;
# - the package's parent directory on sys.path, its bytecode compiled at
#   install time (no .pyc written by the first calls);
# - os._exit after stdout is flushed: interpreter finalization is skipped.
# MARKER lets a delegating plugin recognise its own kind on CNI_PATH and run
# it in-process.
TEMPLATE = """#!{python} -IS
# {marker}: {name} (installed by `netlab cni install`)
import gc, sys
gc.disable()
sys.path.insert(0, {root!r})
from cni.main import run
code = run({plugin!r})
sys.stderr.flush()
import posix
posix._exit(code)
"""


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(plugin: str, python: str | None = None, root: str | None = None) -> str:
    if root is None:
        root = _root()
    return TEMPLATE.format(
        python=python or os.path.realpath(sys.executable),
        marker=registry.MARKER.decode(),
        name=registry.PREFIX + plugin,
        root=root,
        plugin=plugin,
    )


def install(directory: str, python: str | None = None, shim: bool | None = None) -> list[str]:
    """Write netlab-<plugin> executables into `directory` (upsert: replaced atomically).

    With `shim` (default: when a C compiler is there) each is cni/shim.c
    built for its plugin, which hands calls to the node's CNI daemon
    (cni.daemon) and runs the Python executable's code itself when there is
    none; without, the Python executable (TEMPLATE) itself.
    """
    os.makedirs(directory, 0o755, exist_ok=True)
    compile_package()
    if shim is None:
        shim = compiler() is not None
    written = []
    for plugin in registry.PLUGINS:
        path = os.path.join(directory, registry.PREFIX + plugin)
        tmp = path + ".tmp"
        if shim:
            build_shim(plugin, tmp, python)
        else:
            with open(tmp, "w") as f:
                f.write(render(plugin, python))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def compiler() -> str | None:
    import shutil

    return shutil.which("cc") or shutil.which("gcc")


def c_string(text: str) -> str:
    """`text` as a C string literal (octal escapes for anything but plain printable ASCII)."""
    out = []
    for b in text.encode():
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in '"\\?' else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def build_shim(plugin: str, out: str, python: str | None = None) -> None:
    """Compile cni/shim.c for `plugin` into `out` (the fallback: TEMPLATE's code, run with -IS -c)."""
    import subprocess
    import tempfile

    cc = compiler()
    if cc is None:
        raise click.ClickException("no C compiler (cc) to build the plugin executables: "
                                   "install gcc, or pass --no-shim for Python executables")
    code = render(plugin, python).split("\n", 2)[2]  # the template's body, without its two header lines
    with tempfile.TemporaryDirectory(prefix="netlab-shim-") as tmp:
        with open(os.path.join(tmp, "shim_config.h"), "w") as f:
            f.write(f"#define PLUGIN {c_string(plugin)}\n"
                    f"#define PYTHON {c_string(python or os.path.realpath(sys.executable))}\n"
                    f"#define FALLBACK_CODE {c_string(code)}\n")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.c")
        p = subprocess.run([cc, "-O2", "-Wall", "-Werror", "-I", tmp, "-o", out, src],
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise click.ClickException(f"building {os.path.basename(out)} from {src} failed:\n{p.stderr.strip()}")


def compile_package() -> None:
    """Byte-compile the cni package now, so no plugin call compiles (or writes) a .pyc."""
    import compileall

    compileall.compile_dir(os.path.join(_root(), "cni"), quiet=1)


@click.group(name="cni")
def cni() -> None:
    """netlab's CNI plugins (netlab-bridge, -host-local, -loopback, -portmap, -flannel)."""


@cni.command(name="install")
@click.option("--dir", "directory", default="/opt/cni/bin", show_default=True, help="CNI bin directory (a CNI_PATH entry)")
@click.option("--shim/--no-shim", default=None,
              help="build executables that hand calls to the node's `netlab cni serve` (default: when cc is there)")
def install_cmd(directory: str, shim: bool | None) -> None:
    """Install the plugin executables, beside any reference plugins already there."""
    for p in install(directory, shim=shim):
        click.echo(p)


@cni.command(name="serve")
@click.option("--netns", "netns_name", default=None, help="serve this named network namespace (default: this process's)")
def serve_cmd(netns_name: str | None) -> None:
    """Run the node's CNI daemon: the plugin executables hand it their calls.

    One per network namespace in which a runtime execs plugins; runs until
    killed (SIGTERM/SIGINT). Without it the executables run each call in a
    Python process of their own.
    """
    import signal

    from cni import daemon

    if netns_name is not None:
        from netlab import netns

        if not netns.exists(netns_name):
            raise click.BadParameter(f"no network namespace {netns_name!r} (`ip netns list` shows the names)",
                                     param_hint="--netns")
        # This thread, before any other starts: the daemon's threads inherit its namespace.
        netns.enter_for_good(netns_name)
    try:
        sock = daemon.listen()
    except OSError as e:
        raise click.ClickException(str(e)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):  # accept() is retried after the handler, and fails: serve returns
        signal.signal(sig, lambda *_: daemon.stop(sock))
    daemon.serve(sock, on_ready=lambda: click.echo(f"netlab CNI daemon: serving @{daemon.SOCKET_NAME}", err=True))
