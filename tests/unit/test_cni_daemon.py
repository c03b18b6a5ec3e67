"""The daemon's wire format and the shim's build inputs, without root or namespaces."""

from __future__ import annotations

import socket
import subprocess

from cni import cli, daemon


def test_a_request_reads_back_as_sent():
    a, b = socket.socketpair()
    with a, b:
        env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=web-0;IgnoreUnknown=1", "EMPTY": "", "X": "a=b"}
        a.sendall(daemon.encode_request("bridge", env, b'{"cniVersion":"1.1.0"}'))
        assert daemon.read_request(b) == ("bridge", env, b'{"cniVersion":"1.1.0"}')


def test_a_request_not_from_the_executable_is_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            daemon.read_request(b)
        except ValueError as e:
            assert "not a netlab CNI call" in str(e)
        else:
            raise AssertionError("read a request without the magic")


def test_c_string_literals_survive_the_compiler(tmp_path):
    """What install bakes into the executable (interpreter path, fallback code) reaches it unchanged."""
    text = 'print("a\\\\b")\n# ?? trigraph-ish, tab\there, ünïcode, quote " and backslash \\'
    src = tmp_path / "t.c"
    src.write_text(f'#include <stdio.h>\nint main(void) {{ fputs({cli.c_string(text)}, stdout); return 0; }}\n')
    subprocess.run([cli.compiler(), "-o", str(tmp_path / "t"), str(src)], check=True)
    assert subprocess.run([str(tmp_path / "t")], capture_output=True).stdout == text.encode()


def test_a_caller_that_sends_nothing_does_not_hold_a_worker(monkeypatch):
    """A connection that never sends its call is dropped after the read timeout, so a few idle
    connections from anyone in the namespace cannot take the daemon's workers."""
    import threading
    import time

    monkeypatch.setattr(daemon, "READ_TIMEOUT", 0.2)
    a, b = socket.socketpair()
    with a, b:
        t = threading.Thread(target=daemon.handle, args=(b,))
        start = time.monotonic()
        t.start()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - start < 2
        assert a.recv(16) == b""  # closed, unanswered
