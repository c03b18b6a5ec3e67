"""The plugin executables with the node's CNI daemon (cni/shim.c -> cni.daemon), as a runtime sees them.

With a daemon serving the namespace the runtime execs plugins in, the
executable hands it the call; without one it runs the call in Python
itself. Either way the runtime must see the same thing: these tests call
the same executables both ways and compare, check that state made one way
is understood the other way, and that the executable never hands a call to
a listener that is not root, and says "try again" (code 11) when the
daemon goes away mid-call.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading

import pytest

from cni import cli, daemon
from cni.runtime import Runtime
from netlab import netns
from tests.integration.test_cni_support import nss_fixture, serving, sh

nss = nss_fixture("nlcdm")


@pytest.fixture(scope="module")
def shimdir(tmp_path_factory) -> str:
    if cli.compiler() is None:
        pytest.fail("no C compiler: the test set-up installs gcc (bootstrap.sh)")
    d = tmp_path_factory.mktemp("cnishim")
    cli.install(str(d), shim=True)
    return str(d)


@contextlib.contextmanager
def fake_daemon(node: str, behave):
    """A listener on the daemon's socket in `node` that answers one call with `behave(conn)`."""
    with netns.entered(node):
        sock = daemon.listen()

    def once() -> None:
        conn, _ = sock.accept()
        with conn:
            behave(conn)

    t = threading.Thread(target=once)
    t.start()
    try:
        yield
    finally:
        t.join(10)
        sock.close()


def conf(data_dir: str) -> dict:
    return {"cniVersion": "1.1.0", "name": "dmnet", "type": "netlab-bridge", "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "netlab-host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.86.0.0/24"}]]}}


def run(rt: Runtime, shimdir: str, env: dict, stdin: bytes) -> tuple[int, str]:
    r = rt.exec_raw(f"{shimdir}/netlab-bridge", env, stdin)
    return r.code, r.stdout


BAD_CALLS = [  # (what, CNI_COMMAND or None for none, which variable to drop, stdin)
    ("not JSON", "ADD", None, b"{nope"),
    ("no CNI_IFNAME", "ADD", "CNI_IFNAME", None),
    ("unknown command", "FROB", None, None),
    ("no CNI_COMMAND", None, None, None),
    ("config without a bridge type's keys", "ADD", None, b'{"cniVersion":"1.1.0","name":"x","type":"netlab-bridge",'
                                                          b'"ipam":{"type":"netlab-host-local"}}'),
    ("VERSION", "VERSION", None, b'{"cniVersion":"1.0.0"}'),
]


def test_the_daemon_answers_as_the_python_executable_would(nss, shimdir, tmp_path):
    node, pod = nss.new("n"), nss.new("p")
    rt = Runtime(cni_path=[shimdir], host_netns=node)
    good = json.dumps(conf(str(tmp_path))).encode()

    def env_of(command, drop):
        env = rt.env(command or "ADD", "c1", netns.path(pod), "eth0")
        if command is None:
            del env["CNI_COMMAND"]
        if drop:
            del env[drop]
        return env

    alone = {what: run(rt, shimdir, env_of(cmd, drop), stdin or good) for what, cmd, drop, stdin in BAD_CALLS}
    with serving(node) as answered:
        served = {what: run(rt, shimdir, env_of(cmd, drop), stdin or good) for what, cmd, drop, stdin in BAD_CALLS}
        assert len(answered) == len(BAD_CALLS)
        # Made through the daemon, checked and deleted without it: the same state either way.
        code, out = run(rt, shimdir, rt.env("ADD", "c1", netns.path(pod), "eth0"), good)
        assert code == 0, out
    assert served == alone  # exit codes and stdout, byte for byte
    assert all(code == 1 and json.loads(out)["code"] for what, (code, out) in served.items() if what != "VERSION")
    result = json.loads(out)
    assert "inet 10.86.0.2/24" in sh(pod, "ip", "-o", "-4", "addr", "show", "eth0")
    check = dict(conf(str(tmp_path)), prevResult=result)
    assert run(rt, shimdir, rt.env("CHECK", "c1", netns.path(pod), "eth0"), json.dumps(check).encode()) == (0, "")
    assert run(rt, shimdir, rt.env("DEL", "c1", netns.path(pod), "eth0"), good) == (0, "")
    assert "eth0" not in sh(pod, "ip", "-o", "link")


def test_a_listener_that_is_not_root_is_never_handed_a_call(nss, shimdir, tmp_path):
    """Any process in the namespace can bind the abstract name first; the executable checks
    the listener's credentials (SO_PEERCRED) before it sends anything, and runs the call itself."""
    node, pod = nss.new("n"), nss.new("p")
    impostor = netns.popen_in(node, [sys.executable, "-c", (
        "import os, socket\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind('\\0{daemon.SOCKET_NAME}'); s.listen()\n"
        "print('ready', flush=True)\n"
        "c, _ = s.accept(); print(len(c.recv(1 << 16)), flush=True)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout.readline().strip() == "ready"
        rt = Runtime(cni_path=[shimdir], host_netns=node)
        code, out = run(rt, shimdir, rt.env("ADD", "c1", netns.path(pod), "eth0"), json.dumps(conf(str(tmp_path))).encode())
        assert code == 0 and json.loads(out)["ips"], out  # done by the executable's own Python
        assert impostor.stdout.readline().strip() == "0"  # connected, checked, closed: no byte sent
        assert run(rt, shimdir, rt.env("DEL", "c1", netns.path(pod), "eth0"), json.dumps(conf(str(tmp_path))).encode()) \
            == (0, "")
    finally:
        impostor.kill()
        impostor.wait()


def test_a_daemon_gone_mid_call_is_try_again_later(nss, shimdir):
    """The call reached a daemon that then died: what it did is unknown, so the runtime gets
    the spec's code 11 and exit 1, never a silent second run of the call."""
    node = nss.new("n")
    got = []

    def half_daemon(conn: socket.socket) -> None:
        got.append(daemon.read_request(conn))  # the whole request, then gone without an answer

    with fake_daemon(node, half_daemon):
        rt = Runtime(cni_path=[shimdir], host_netns=node)
        code, out = run(rt, shimdir, rt.env("VERSION"), b'{"cniVersion":"1.0.0"}')
    assert code == 1 and json.loads(out)["code"] == 11, out
    plugin, env, stdin = got[0]
    assert (plugin, env["CNI_COMMAND"], stdin) == ("bridge", "VERSION", b'{"cniVersion":"1.0.0"}')


def test_a_delegate_the_daemon_execs_gets_the_runtimes_environment(nss, shimdir, tmp_path):
    """A delegate that is not netlab's (here a third-party IPAM) is exec'd as the executable
    would exec it: with the runtime's environment, not the daemon's."""
    node, pod = nss.new("n"), nss.new("p")
    ipam_dir = tmp_path / "ipambin"
    ipam_dir.mkdir()
    (ipam_dir / "envipam").write_text(
        "#!/bin/sh\n"
        f"env > {tmp_path}/ipam.env\n"
        'echo \'{"cniVersion":"1.1.0","ips":[{"address":"10.87.0.5/24","gateway":"10.87.0.1"}]}\'\n')
    (ipam_dir / "envipam").chmod(0o755)
    rt = Runtime(cni_path=[shimdir, str(ipam_dir)], host_netns=node)
    rt.extra_env = {"RUNTIME_ONLY": "from-the-runtime"}
    c = {"cniVersion": "1.1.0", "name": "envnet", "type": "netlab-bridge", "bridge": "cni0", "ipam": {"type": "envipam"}}
    with serving(node) as answered:
        code, out = run(rt, shimdir, rt.env("ADD", "c1", netns.path(pod), "eth0"), json.dumps(c).encode())
        assert code == 0, out
        assert len(answered) == 1
        seen = dict(line.split("=", 1) for line in (tmp_path / "ipam.env").read_text().splitlines() if "=" in line)
        assert seen["RUNTIME_ONLY"] == "from-the-runtime" and seen["CNI_COMMAND"] == "ADD"
        assert run(rt, shimdir, rt.env("DEL", "c1", netns.path(pod), "eth0"), json.dumps(c).encode())[0] == 0


def test_a_caller_the_daemon_does_not_serve_is_refused_and_runs_the_call_itself(nss, shimdir, tmp_path):
    """The daemon serves root and its own user; any other caller gets REFUSED, never a silent
    close (which the executable would have to report as code 11). The executable then runs
    the call in its own process, with the stdin it had already read replayed."""
    node, pod = nss.new("n"), nss.new("p")
    with serving(node):
        # Another user, speaking the executable's protocol: REFUSED.
        probe = netns.run_in(node, [sys.executable, "-c", (
            "import os, socket, struct, sys\n"
            "from cni import daemon\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.connect('\\0' + daemon.SOCKET_NAME)\n"
            "s.sendall(daemon.encode_request('bridge', {'CNI_COMMAND': 'VERSION'}, b'{}'))\n"
            "print(struct.unpack('=iI', s.recv(8)))\n")], capture_output=True, text=True,
            cwd=str(daemon.__file__).rsplit("/cni/", 1)[0])
        assert probe.stdout.strip() == f"({daemon.REFUSED}, 0)", probe.stderr
    # A daemon that refuses after reading the whole call: the executable replays stdin to itself.
    got = []

    def refusing(conn: socket.socket) -> None:
        got.append(daemon.read_request(conn))
        conn.sendall(struct.pack("=iI", daemon.REFUSED, 0))

    rt = Runtime(cni_path=[shimdir], host_netns=node)
    stdin = json.dumps(conf(str(tmp_path))).encode()
    with fake_daemon(node, refusing):
        code, out = run(rt, shimdir, rt.env("ADD", "c1", netns.path(pod), "eth0"), stdin)
    assert got and got[0][2] == stdin  # the daemon had the whole call
    assert code == 0 and json.loads(out)["ips"][0]["address"] == "10.86.0.2/24", out  # and the process did it
    assert run(rt, shimdir, rt.env("DEL", "c1", netns.path(pod), "eth0"), stdin) == (0, "")
