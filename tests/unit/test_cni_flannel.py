"""netlab-flannel's delegate config against flannel's own CNI plugin, field for field.

There is no reference binary to compare with: Debian's
containernetworking-plugins does not ship flannel (it lives in
flannel-io/cni-plugin), so these tests encode what that plugin's source
builds -- flannel.go (loadFlannelSubnetEnv, cmdAdd) and flannel_linux.go
(doCmdAdd, getDelegateIPAM) -- and compare build_delegate with it:

- delegate["name"] = the network name; "type" defaults to "bridge";
- "ipMasq" = !FLANNEL_IPMASQ and "mtu" = FLANNEL_MTU unless the delegate has them;
- "isGateway" = true for a bridge delegate unless set;
- "cniVersion" = the flannel config's, when it has one;
- "runtimeConfig" = the flannel config's, when not null;
- "ipam" = the flannel config's ipam, "type" defaulting to host-local,
  "ranges" = [[{subnet: FLANNEL_SUBNET}]] then [[{subnet: FLANNEL_IPV6_SUBNET}]],
  "routes" = the ipam's own routes (re-encoded as types.Route) then one
  {dst} per FLANNEL_NETWORK entry, then per FLANNEL_IPV6_NETWORK entry;
- a delegate with "name" or "ipam", or a non-string "type", is refused.

Explained differences: flannel's errors are plain Go errors (code 999
through skel); netlab gives them the spec's code 7 (invalid config).
flannel reads FLANNEL_IPMASQ as `== "true"`, anything else false; netlab
refuses a value other than true/false (flanneld writes only those).
flannel's CHECK is a no-op (cmdCheck: "TODO: implement"); netlab's
replays the saved delegate config's CHECK, so a broken pod is reported.
netlab's two additions (netlab-bridge counts as a bridge; the IPAM
dataDir follows a flannel dataDir) are tested separately below.
The exec path is tested in tests/integration/test_cni_exec.py.
"""

import pytest

from cni import subnet_env
from cni.errors import CNIError
from cni.plugins import flannel


def flannel_go(conf: dict, env: dict) -> dict:
    """flannel-io/cni-plugin's cmdAdd + doCmdAdd + getDelegateIPAM, transcribed (the oracle)."""
    delegate = dict(conf.get("delegate") or {})
    if conf.get("runtimeConfig") is not None:
        delegate["runtimeConfig"] = conf["runtimeConfig"]
    delegate["name"] = conf["name"]
    if "type" not in delegate:
        delegate["type"] = "bridge"
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not env["ipmasq"]
    if "mtu" not in delegate:
        delegate["mtu"] = env["mtu"]
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    if conf.get("cniVersion", "") != "":
        delegate["cniVersion"] = conf["cniVersion"]
    ipam = dict(conf.get("ipam") or {})
    if "type" not in ipam:
        ipam["type"] = "host-local"
    ranges = []
    if env.get("subnet"):
        ranges.append([{"subnet": env["subnet"]}])
    if env.get("subnet6"):
        ranges.append([{"subnet": env["subnet6"]}])
    ipam["ranges"] = ranges
    rtes = [{k: v for k, v in r.items() if k in ("dst", "gw") and v} for r in ipam.get("routes", [])]
    rtes += [{"dst": n} for n in env.get("networks", [])]
    rtes += [{"dst": n} for n in env.get("networks6", [])]
    ipam["routes"] = rtes
    delegate["ipam"] = ipam
    return delegate


ENV4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
ENVS = {
    "ipv4": ENV4,
    "ipmasq-false": ENV4.replace("IPMASQ=true", "IPMASQ=false"),
    "dual-stack": ENV4 + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n",
    "ipv6-only": "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
    # flanneld writes every network of a multi-network config, comma-separated; repeats count once.
    "multi-network": ENV4.replace("10.244.0.0/16", "10.244.0.0/16,10.250.0.0/16,10.244.0.0/16"),
}
CONFS = {
    "minimal": {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel"},
    "k8s-manifest": {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
                     "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
    "delegate-overrides": {"name": "cbr0", "type": "flannel",
                           "delegate": {"ipMasq": True, "mtu": 1400, "isGateway": False, "promiscMode": True}},
    "other-delegate-type": {"cniVersion": "1.0.0", "name": "n", "type": "flannel", "delegate": {"type": "ipvlan", "master": "eth0"}},
    "ipam-routes-and-type": {"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                             "ipam": {"type": "static-ish", "routes": [{"dst": "192.168.0.0/16", "gw": "10.244.1.254"},
                                                                       {"dst": "172.16.0.0/12", "gw": ""}]}},
    "runtime-config": {"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                       "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]}},
    "runtime-config-null": {"cniVersion": "1.0.0", "name": "n", "type": "flannel", "runtimeConfig": None},
}


@pytest.mark.parametrize("env_name", sorted(ENVS))
@pytest.mark.parametrize("conf_name", sorted(CONFS))
def test_delegate_is_field_for_field_what_flannel_builds(conf_name, env_name):
    env = subnet_env.parse(ENVS[env_name])
    conf = CONFS[conf_name]
    assert flannel.build_delegate(conf, env) == flannel_go(conf, env)


def test_subnet_env_read_as_flannel_reads_it():
    env = subnet_env.parse(ENVS["multi-network"])
    assert env["networks"] == ["10.244.0.0/16", "10.250.0.0/16"] and env["network"] == "10.244.0.0/16"
    # net.ParseCIDR: FLANNEL_SUBNET's host bits dropped, as the range's subnet.
    assert env["subnet"] == "10.244.1.0/24"
    six = subnet_env.parse(ENVS["ipv6-only"])
    assert (six["subnet6"], six["networks6"], "subnet" in six) == ("fd00:10:244:1::/64", ["fd00:10:244::/56"], False)


@pytest.mark.parametrize("text,missing", [
    (ENVS["ipv6-only"], None),  # IPv6 alone satisfies subnetEnv.missing()
    ("FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_IPMASQ=true\n", "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU"),
])
def test_missing_keys_named_as_flannel_names_them(tmp_path, text, missing):
    path = tmp_path / "subnet.env"
    path.write_text(text)
    if missing is None:
        assert flannel.load_env(str(path))["mtu"] == 1430
        return
    with pytest.raises(CNIError) as e:
        flannel.load_env(str(path))
    # flannel: fmt.Errorf("%v is missing %v", fn, m); netlab: code 11, flanneld may not have written it all yet.
    assert (e.value.code, e.value.msg) == (11, f"{path} is missing {missing}")


@pytest.mark.parametrize("delegate,msg", [
    ({"name": "x"}, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
    ({"ipam": {"type": "host-local"}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ({"type": 7}, "'delegate' dictionary, if present, must have (string) 'type' field"),
])
def test_delegate_refused_as_flannel_refuses_it(delegate, msg):
    env = subnet_env.parse(ENV4)
    with pytest.raises(CNIError) as e:
        flannel.build_delegate({"cniVersion": "1.0.0", "name": "n", "delegate": delegate}, env)
    assert (e.value.code, e.value.msg) == (7, msg)


def test_netlab_additions():
    env = subnet_env.parse(ENV4)
    # netlab-bridge is netlab's bridge: it gets flannel's bridge default, isGateway true.
    d = flannel.build_delegate({"cniVersion": "1.0.0", "name": "n", "delegate": {"type": "netlab-bridge"}}, env)
    assert d["isGateway"] is True and d == dict(flannel_go({"cniVersion": "1.0.0", "name": "n", "delegate": {"type": "bridge"}}, env),
                                                type="netlab-bridge")
    # A flannel dataDir moves host-local's beside it (a lab node's own /var/lib/cni); an explicit one stays.
    conf = {"cniVersion": "1.0.0", "name": "n", "dataDir": "/x/lib/flannel"}
    assert flannel.build_delegate(conf, env)["ipam"]["dataDir"] == "/x/lib/networks"
    conf["ipam"] = {"dataDir": "/y"}
    assert flannel.build_delegate(conf, env)["ipam"]["dataDir"] == "/y"
