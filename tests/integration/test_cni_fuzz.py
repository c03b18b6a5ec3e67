"""Bad input, fuzzed: every case ends in the spec's error object, exit 1, nothing left behind.

Inputs are a valid flannel call with one thing broken (hypothesis picks
what and how), each with the code the spec assigns; plus unstructured
environments and stdin. The in-process runs go through cni.main.execute,
the function the executables run, with the thread inside a node namespace
(never the caller's); a sample also goes through real exec.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import cli, main, subnet_env
from cni.netlink import RtNetlink
from netlab import netns
from tests.integration.test_cni_support import Namespaces

KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 999}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    nss = Namespaces()
    tmp = tmp_path_factory.mktemp("fuzz")
    try:
        node, pod = nss.new("node"), nss.new("pod")
        (tmp / "subnet.env").write_text(subnet_env.render("10.244.0.0/16", "10.244.5.0/24", 1450, True))
        bindir = tmp / "bin"
        cli.install(str(bindir))
        yield {"node": node, "pod": pod, "tmp": tmp, "bin": str(bindir)}
    finally:
        nss.close()


def base(world) -> tuple[dict, dict]:
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "netlab-flannel",
            "subnetFile": str(world["tmp"] / "subnet.env"), "dataDir": str(world["tmp"] / "lib" / "flannel"),
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "fuzz", "CNI_NETNS": netns.path(world["pod"]),
           "CNI_IFNAME": "eth0", "CNI_PATH": world["bin"], "PATH": os.environ["PATH"]}
    return conf, env


bad_id = st.one_of(st.sampled_from(["../../etc/passwd", "../x", "a/b", ".hidden", "-x", "a b", "x\n"]),
                   st.text(min_size=1).filter(lambda s: not s[0].isalnum() or any(not (c.isascii() and (c.isalnum() or c in "_.-")) for c in s)))
bad_ifname = st.one_of(st.sampled_from(["", ".", "..", "a/b", "a:b", "a b", "x" * 16]),
                       st.text(min_size=16, max_size=40, alphabet="abcdef"))
bad_version = st.one_of(st.sampled_from(["0.2.0", "0.1.0", "2.0.0", "1.1", "x"]), st.text(min_size=1, max_size=8))


def mutation():
    """(what is broken, how, the code the spec wants)."""
    return st.one_of(
        st.tuples(st.just("unset"), st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]), st.just(4)),
        st.tuples(st.just("command"), st.text(min_size=1, max_size=10).filter(lambda s: s not in main._REQUIRED and "\0" not in s), st.just(4)),
        st.tuples(st.just("containerid"), bad_id.filter(lambda s: "\0" not in s), st.just(4)),
        st.tuples(st.just("ifname"), bad_ifname.filter(lambda s: "\0" not in s), st.just(4)),
        st.tuples(st.just("netns"), st.sampled_from(["/run/netns/nltest-cni-none", "/etc/hostname", "/", "relative"]), st.just(4)),
        st.tuples(st.just("stdin"), st.binary(max_size=40).filter(lambda b: not _is_obj(b)), st.just(6)),
        st.tuples(st.just("version"), bad_version.filter(lambda v: v not in ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")), st.just(1)),
        st.tuples(st.just("name"), bad_id.filter(lambda s: s.strip() != ""), st.just(7)),
        st.tuples(st.just("mtu"), st.one_of(st.text(max_size=5), st.booleans(), st.integers(max_value=67).filter(lambda v: v != 0), st.integers(min_value=65536)), st.just(7)),
        st.tuples(st.just("subnetfile"), st.just("missing"), st.just(11)),
    )


def _is_obj(b: bytes) -> bool:
    try:
        return isinstance(json.loads(b), dict)
    except ValueError:
        return False


def apply(conf: dict, env: dict, m) -> tuple[dict, bytes]:
    kind, value, _code = m
    stdin = None
    if kind == "unset":
        env.pop(value)
    elif kind == "command":
        env["CNI_COMMAND"] = value
    elif kind == "containerid":
        env["CNI_CONTAINERID"] = value
    elif kind == "ifname":
        env["CNI_IFNAME"] = value
    elif kind == "netns":
        env["CNI_NETNS"] = value
    elif kind == "stdin":
        stdin = value
    elif kind == "version":
        conf["cniVersion"] = value
    elif kind == "name":
        conf["name"] = value
    elif kind == "mtu":
        conf["delegate"]["mtu"] = value
    elif kind == "subnetfile":
        conf["subnetFile"] = conf["subnetFile"] + ".missing"
    return env, stdin if stdin is not None else json.dumps(conf).encode()


def leftovers(world) -> list[str]:
    left = []
    with netns.entered(world["node"]):
        nl = RtNetlink.open()
        try:
            left += [l.name for l in nl.links() if l.name.startswith("veth")]
        finally:
            nl.close()
    for root, _d, files in os.walk(world["tmp"]):
        for f in files:
            if f[0].isdigit() or f == "fuzz" or root.endswith("flannel"):
                left.append(os.path.join(root, f))
    # Nothing may appear outside the data dirs (path traversal).
    for f in os.listdir(world["tmp"]):
        if f not in ("subnet.env", "bin", "lib"):
            left.append(f)
    return left


def check_error(code: int, out: str, want: int | None) -> dict:
    assert code == 1, out
    err = json.loads(out)
    assert isinstance(err["msg"], str) and err["msg"]
    assert err["code"] in KNOWN_CODES
    if want is not None:
        assert err["code"] == want, err
    return err


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(m=mutation())
def test_broken_calls_get_the_right_error_and_leave_nothing(world, m):
    conf, env = base(world)
    env, stdin = apply(conf, env, m)
    with netns.entered(world["node"]):
        code, out = main.execute("flannel", env, stdin)
    check_error(code, out, m[2])
    assert leftovers(world) == []


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(env=st.dictionaries(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]),
                           st.one_of(st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "eth0", "", "../.."]), st.text(max_size=12))),
       stdin=st.one_of(st.binary(max_size=64), st.recursive(
           st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
               st.sampled_from(["cniVersion", "name", "type", "ipam", "delegate", "subnetFile", "dataDir", "prevResult", "runtimeConfig"]), c, max_size=5)),
           max_leaves=10).map(lambda o: json.dumps(o).encode())),
       plugin=st.sampled_from(["bridge", "host-local", "flannel", "portmap", "loopback"]))
def test_unstructured_input_never_crashes(world, env, stdin, plugin):
    env = {k: v.replace("\0", "") for k, v in env.items()}
    env["CNI_NETNS"] = "/run/netns/nltest-cni-none"  # never a real pod: nothing may be wired
    with netns.entered(world["node"]):
        code, out = main.execute(plugin, env, stdin)
    if code == 1:
        check_error(code, out, None)
    else:
        assert code == 0 and (out == "" or isinstance(json.loads(out), dict))
    assert leftovers(world) == []


@pytest.mark.parametrize("kind,value,want", [
    ("containerid", "../../../tmp/escape", 4),
    ("name", "../../escape", 7),
    ("stdin", b"{not json", 6),
    ("version", "0.2.0", 1),
    ("unset", "CNI_NETNS", 4),
])
def test_exec_errors_as_a_runtime_sees_them(world, kind, value, want):
    from cni.runtime import Runtime

    conf, env = base(world)
    env, stdin = apply(conf, env, (kind, value, want))
    rt = Runtime(cni_path=[world["bin"]], host_netns=world["node"])
    r = rt.exec_raw(os.path.join(world["bin"], "netlab-flannel"), env, stdin)
    check_error(r.code, r.stdout, want)
    assert leftovers(world) == []
