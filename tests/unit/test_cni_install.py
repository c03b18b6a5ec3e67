"""`netlab cni install` as a user runs it: the executables, their mode and marker, upsert, and VERSION.

No root needed: the plugins go into a tmp dir, and VERSION touches no namespace.
"""

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cni import registry, skel
from netlab.cli import cli

NETLAB = os.path.join(os.path.dirname(sys.executable), "netlab")  # the console script of this venv
NAMES = sorted(registry.PREFIX + p for p in registry.PLUGINS)


def installed(d) -> dict[str, tuple[int, bytes, int]]:
    """name -> (permission bits, contents, inode) of every entry in `d`."""
    out = {}
    for name in os.listdir(d):
        st = os.lstat(d / name)
        assert stat.S_ISREG(st.st_mode), name
        out[name] = (stat.S_IMODE(st.st_mode), (d / name).read_bytes(), st.st_ino)
    return out


@pytest.mark.parametrize("kind", ["--shim", "--no-shim"])
def test_install_then_upsert_and_every_plugin_answers_version(tmp_path, kind):
    """--shim: cni/shim.c built per plugin (no daemon here: each call falls back to Python);
    --no-shim: the Python executables themselves."""
    d = tmp_path / "opt" / "cni" / "bin"  # made by the command, parents included
    first = subprocess.run([NETLAB, "cni", "install", "--dir", str(d), kind], capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split()) == [str(d / n) for n in NAMES]  # one line per file written
    files = installed(d)
    assert sorted(files) == NAMES  # nothing else (no *.tmp left behind)
    python = os.path.realpath(sys.executable)
    for name, (mode, data, _ino) in files.items():
        assert mode == 0o755, (name, oct(mode))
        assert registry.is_ours(str(d / name))
        if kind == "--shim":
            assert data.startswith(b"\x7fELF") and python.encode() in data  # its fallback interpreter
            continue
        lines = data.decode().splitlines()
        assert lines[0] == f"#!{python} -IS"
        assert lines[1] == f"# {registry.MARKER.decode()}: {name} (installed by `netlab cni install`)"

    # Upsert: a second run (through click this time) replaces each file whole, restores a
    # damaged one, and leaves what is not netlab's alone (a reference plugin beside ours).
    (d / "bridge").write_text("#!/bin/sh\necho reference\n")
    os.chmod(d / "bridge", 0o700)
    (d / "netlab-bridge").write_text("damaged")
    os.chmod(d / "netlab-bridge", 0o600)
    second = CliRunner().invoke(cli, ["cni", "install", "--dir", str(d), kind])
    assert second.exit_code == 0, second.output
    assert sorted(second.output.split()) == [str(d / n) for n in NAMES]
    again = installed(d)
    assert again.pop("bridge")[:2] == (0o700, b"#!/bin/sh\necho reference\n")
    assert {n: v[:2] for n, v in again.items()} == {n: v[:2] for n, v in files.items()}
    assert all(again[n][2] != files[n][2] for n in NAMES)  # new inodes: each replaced by rename, never rewritten in place

    # Every installed plugin answers VERSION as a runtime asks it.
    for name in NAMES:
        p = subprocess.run([str(d / name)], input=b'{"cniVersion":"1.1.0"}', capture_output=True, timeout=60,
                           env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, (name, p.stdout, p.stderr)
        assert json.loads(p.stdout) == {"cniVersion": "1.1.0", "supportedVersions": list(skel.SUPPORTED_VERSIONS)}


def test_install_help_names_the_default_dir():
    r = CliRunner().invoke(cli, ["cni", "install", "--help"])
    assert r.exit_code == 0 and "/opt/cni/bin" in r.output


def test_serve_refuses_a_namespace_that_is_not_there():
    r = CliRunner().invoke(cli, ["cni", "serve", "--netns", "nltest-no-such-ns"])
    assert r.exit_code == 2 and "no network namespace 'nltest-no-such-ns'" in r.output
