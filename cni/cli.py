"""`netlab cni ...`: install the plugin executables into a CNI bin directory."""

from __future__ import annotations

import os
import sys

import click

from cni import registry

# The executable: a fixed interpreter started with -I -S (no site-packages,
# no user env: netlab's plugins need only the stdlib), the package's parent
# directory on sys.path, and MARKER, by which a delegating plugin recognises
# its own kind on CNI_PATH and runs it in-process.
TEMPLATE = """#!{python} -IS
# {marker}: {name} (installed by `netlab cni install`)
import sys
sys.path.insert(0, {root!r})
from cni.main import run
sys.exit(run({plugin!r}))
"""


def render(plugin: str, python: str | None = None, root: str | None = None) -> str:
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return TEMPLATE.format(
        python=python or sys.executable,
        marker=registry.MARKER.decode(),
        name=registry.PREFIX + plugin,
        root=root,
        plugin=plugin,
    )


def install(directory: str, python: str | None = None) -> list[str]:
    """Write netlab-<plugin> executables into `directory` (upsert: replaced atomically)."""
    os.makedirs(directory, 0o755, exist_ok=True)
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


@click.group(name="cni")
def cni() -> None:
    """netlab's CNI plugins (netlab-bridge, -host-local, -loopback, -portmap, -flannel)."""


@cni.command(name="install")
@click.option("--dir", "directory", default="/opt/cni/bin", show_default=True, help="CNI bin directory (a CNI_PATH entry)")
def install_cmd(directory: str) -> None:
    """Install the plugin executables, beside any reference plugins already there."""
    for p in install(directory):
        click.echo(p)
