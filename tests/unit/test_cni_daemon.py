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
