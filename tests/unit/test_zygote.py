"""netlab.zygote: daemons forked from one process that imported their modules, each looking started alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from netlab import zygote

PROBE = '''
import json, os, sys
with open(os.environ["PROBE_OUT"] + "." + os.environ["NETLAB_DAEMON"], "w") as f:
    json.dump({"argv": sys.argv[1:], "name": __name__, "cwd": os.getcwd(), "session": os.getsid(0) == os.getpid(),
               "cmdline": open("/proc/self/cmdline").read().split("\\0"),
               "stdin": sys.stdin.read(), "daemon": os.environ["NETLAB_DAEMON"]}, f)
print("probe ran", sys.argv[1:])
sys.exit(3)
'''


def test_each_fork_runs_its_module_with_its_own_argv_log_and_cmdline(tmp_path):
    (tmp_path / "probe_daemon.py").write_text(PROBE)
    argvs = {"a": [sys.executable, "-m", "probe_daemon", "--node", "node1"],
             "b": [sys.executable, "-m", "probe_daemon", "--node", "node2", "--long", "x" * 300]}
    request = {"daemons": [{"name": n, "netns": None, "argv": a, "log": str(tmp_path / f"{n}.log")}
                           for n, a in argvs.items()]}
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{os.getcwd()}", PROBE_OUT=str(tmp_path / "out"))
    out = subprocess.run([sys.executable, "-m", "netlab.zygote", "--preload=json,ipaddress",
                          zygote.pad_argv(list(argvs.values()))],
                         input=json.dumps(request), capture_output=True, text=True, env=env, timeout=60, check=True)
    pids = {e["name"]: e["pid"] for e in map(json.loads, out.stdout.splitlines())}
    assert sorted(pids) == ["a", "b"] and os.getpid() not in pids.values()
    for name, argv in argvs.items():
        path = tmp_path / f"out.{name}"
        t0 = time.monotonic()
        while not (path.exists() and (tmp_path / f"{name}.log").read_text()):
            assert time.monotonic() - t0 < 10
            time.sleep(0.01)
        time.sleep(0.05)
        got = json.loads(path.read_text())
        assert got["argv"] == argv[3:] and got["name"] == "__main__" and got["daemon"] == name
        assert got["cwd"] == "/" and got["session"] and got["stdin"] == ""
        # /proc/PID/cmdline reads as the daemon's own argv (then NUL padding), not the zygote's.
        assert got["cmdline"][: len(argv)] == argv and not any(got["cmdline"][len(argv):])
        assert (tmp_path / f"{name}.log").read_text() == f"probe ran {argv[3:]}\n"
    # The zygote stayed their parent: it reaped both and logged their status (sys.exit(3)).
    for name, pid in pids.items():
        assert f"netlab zygote: {name} (pid {pid}) ended: exit status 3" in out.stderr


def test_only_python_dash_m_daemons_are_taken():
    try:
        zygote.check([{"name": "etcd", "argv": ["/usr/bin/etcd", "--data-dir", "/x"]}])
    except ValueError as e:
        assert "etcd" in str(e)
    else:
        raise AssertionError("an exec'd binary cannot be a fork of the zygote")


def test_the_padding_fits_the_longest_argv():
    pad = zygote.pad_argv([["a", "bb"], ["ccc"]])
    assert len(pad) - len("--pad=") == len(b"a\0bb\0")


def test_a_zygote_told_nothing_forks_nothing_and_exits():
    out = subprocess.run([sys.executable, "-m", "netlab.zygote", "--preload=json", "--pad="], input="",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == ""


@pytest.mark.parametrize("body, status, logged", [
    ("pass", 0, ""),
    ("import sys; sys.exit(5)", 5, ""),
    ("import sys; sys.exit('no config')", 1, "no config\n"),
    ("raise RuntimeError('boom')", 1, "RuntimeError: boom\n"),
    ("import atexit; atexit.register(print, 'atexit ran')", 0, "atexit ran\n"),
])
def test_a_daemon_ends_with_the_status_python_would_give(tmp_path, body, status, logged):
    (tmp_path / "ender.py").write_text(body + "\n")
    argv = [sys.executable, "-m", "ender"]
    request = {"daemons": [{"name": "e", "netns": None, "argv": argv, "log": str(tmp_path / "e.log")}]}
    out = subprocess.run([sys.executable, "-m", "netlab.zygote", zygote.pad_argv([argv])], input=json.dumps(request),
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=f"{tmp_path}:{os.getcwd()}"),
                         timeout=60, check=True)
    (pid,) = [json.loads(line)["pid"] for line in out.stdout.splitlines()]
    assert f"netlab zygote: e (pid {pid}) ended: exit status {status}" in out.stderr
    assert (tmp_path / "e.log").read_text().endswith(logged)
