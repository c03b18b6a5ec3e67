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


def install(directory: str, python: str | None = None) -> list[str]:
    """Write netlab-<plugin> executables into `directory` (upsert: replaced atomically)."""
    os.makedirs(directory, 0o755, exist_ok=True)
    compile_package()
    written = []
    for plugin in registry.PLUGINS:
        path = os.path.join(directory, registry.PREFIX + plugin)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(render(plugin, python))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def compile_package() -> None:
    """Byte-compile the cni package now, so no plugin call compiles (or writes) a .pyc."""
    import compileall

    compileall.compile_dir(os.path.join(_root(), "cni"), quiet=1)


@click.group(name="cni")
def cni() -> None:
    """netlab's CNI plugins (netlab-bridge, -host-local, -loopback, -portmap, -flannel)."""


@cni.command(name="install")
@click.option("--dir", "directory", default="/opt/cni/bin", show_default=True, help="CNI bin directory (a CNI_PATH entry)")
def install_cmd(directory: str) -> None:
    """Install the plugin executables, beside any reference plugins already there."""
    for p in install(directory):
        click.echo(p)
