"""Pure parts of the CNI plugins: configs, plans, formats. No root, no kernel."""

import ipaddress
import os

import pytest

from cni import iptables, libcni, registry, skel, subnet_env
from cni.errors import CNIError
from cni.plugins import bridge, flannel, hostlocal


def test_subnet_env_renders_flannels_format_and_parses_back():
    text = subnet_env.render("10.244.0.0/16", "10.244.1.0/24", 1450, True)
    assert text == "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    assert subnet_env.parse(text) == {"network": "10.244.0.0/16", "networks": ["10.244.0.0/16"], "subnet": "10.244.1.0/24",
                                     "mtu": 1450, "ipmasq": True}
    assert subnet_env.render("10.244.0.0/16", "10.244.7.1/24", 1500, False).splitlines()[1:] == [
        "FLANNEL_SUBNET=10.244.7.1/24", "FLANNEL_MTU=1500", "FLANNEL_IPMASQ=false"]
    with pytest.raises(ValueError):
        subnet_env.render("10.244.0.0/16", "10.245.1.0/24", 1450, True)
    with pytest.raises(ValueError, match="line 2"):
        subnet_env.parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=big\n")


def test_flannel_delegate_is_what_flannel_builds():
    env = subnet_env.parse(subnet_env.render("10.244.0.0/16", "10.244.1.0/24", 1450, True))
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel", "dataDir": "/x/lib/flannel",
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    d = flannel.build_delegate(conf, env)
    assert d == {
        "hairpinMode": True, "isDefaultGateway": True, "name": "cbr0", "type": "bridge",
        "ipMasq": False, "mtu": 1450, "isGateway": True, "cniVersion": "1.1.0",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                 "routes": [{"dst": "10.244.0.0/16"}], "dataDir": "/x/lib/networks"},
    }
    env["ipmasq"] = False
    assert flannel.build_delegate(conf, env)["ipMasq"] is True
    # An explicit delegate value wins, as hasKey() makes flannel keep it.
    conf["delegate"]["mtu"] = 1400
    assert flannel.build_delegate(conf, env)["mtu"] == 1400


def test_hostlocal_config_defaults_and_errors():
    cfg = hostlocal.parse_config({"name": "n", "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}})
    (r,) = cfg.range_sets[0]
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    assert cfg.dir == "/var/lib/cni/networks/n"
    for ipam, msg in [
        ({"ranges": [[{"subnet": "10.1.0.5/24"}]]}, "host bits"),
        ({"ranges": [[{"subnet": "10.1.0.0/31"}]]}, "too small"),
        ({"ranges": []}, "no IP ranges"),
        ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]}, "overlaps"),
        ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]]}, "not in network"),
    ]:
        with pytest.raises(CNIError, match=msg) as e:
            hostlocal.parse_config({"name": "n", "ipam": ipam})
        assert e.value.code == 7


def test_hostlocal_iteration_is_round_robin_and_wraps():
    cfg = hostlocal.parse_config({"name": "n", "ipam": {"ranges": [[
        {"subnet": "10.1.0.0/29"}, {"subnet": "10.2.0.0/29", "rangeStart": "10.2.0.4"}]]}})
    ranges = cfg.range_sets[0]
    order = [str(ip) for ip, _ in hostlocal._iterate(ranges, ipaddress.ip_address("10.1.0.5"))]
    assert order == ["10.1.0.6", "10.2.0.4", "10.2.0.5", "10.2.0.6", "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    assert [str(ip) for ip, _ in hostlocal._iterate(ranges, None)][0] == "10.1.0.1"


def test_hostlocal_store_layout_and_gc(tmp_path):
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "host-local",
            "ipam": {"dataDir": str(tmp_path), "ranges": [[{"subnet": "10.9.0.0/29"}]]}}
    ips = []
    for i in range(5):
        r = hostlocal.add(conf, skel.Args("ADD", container_id=f"c{i}", ifname="eth0"))
        ips.append(r["ips"][0]["address"])
    assert ips == ["10.9.0.2/29", "10.9.0.3/29", "10.9.0.4/29", "10.9.0.5/29", "10.9.0.6/29"]
    d = tmp_path / "net1"
    assert (d / "10.9.0.2").read_bytes() == b"c0\r\neth0"
    assert (d / "last_reserved_ip.0").read_text() == "10.9.0.6"
    assert (d / "lock").exists()
    with pytest.raises(CNIError, match="no IP addresses available"):
        hostlocal.add(conf, skel.Args("ADD", container_id="full", ifname="eth0"))
    with pytest.raises(CNIError, match="duplicate allocation"):
        hostlocal.add(conf, skel.Args("ADD", container_id="c1", ifname="eth0"))
    hostlocal.delete(conf, skel.Args("DEL", container_id="c1", ifname="eth0"))
    hostlocal.delete(conf, skel.Args("DEL", container_id="c1", ifname="eth0"))  # idempotent
    # Round robin: the freed .3 is not reused before the range wraps.
    assert hostlocal.add(conf, skel.Args("ADD", container_id="c9", ifname="eth0"))["ips"][0]["address"] == "10.9.0.3/29"
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "eth0"}, {"containerID": "c9", "ifname": "eth0"}]})
    hostlocal.gc(gc, skel.Args("GC"))
    assert sorted(p.name for p in d.iterdir()) == ["10.9.0.2", "10.9.0.3", "last_reserved_ip.0", "lock"]


def test_hostlocal_requested_ip_and_args(tmp_path):
    conf = {"name": "n", "ipam": {"dataDir": str(tmp_path), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}
    r = hostlocal.add(conf, skel.Args("ADD", container_id="a", ifname="eth0", args="IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.9.0.77"))
    assert r["ips"][0]["address"] == "10.9.0.77/24"
    with pytest.raises(CNIError) as e:
        hostlocal.add(conf, skel.Args("ADD", container_id="b", ifname="eth0", args="K8S_POD_NAME=x"))
    assert e.value.code == 4
    with pytest.raises(CNIError, match="gateway"):
        hostlocal.add(conf, skel.Args("ADD", container_id="c", ifname="eth0", args="IP=10.9.0.1"))
    assert sorted(os.listdir(tmp_path / "n")) == ["10.9.0.77", "last_reserved_ip.0", "lock"]


def test_bridge_gateways_as_calc_gateways():
    cfg = bridge.parse_config({"name": "n", "isDefaultGateway": True, "ipam": {"type": "host-local"}})
    assert cfg.is_gateway
    ips, routes, gws = bridge.plan_gateways(cfg, {"ips": [{"address": "10.1.0.5/24"}], "routes": [{"dst": "10.0.0.0/8"}]})
    assert ips == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}]
    assert routes == [{"dst": "10.0.0.0/8"}, {"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert gws == [("10.1.0.1", 24)]
    with pytest.raises(CNIError) as e:
        bridge.parse_config({"name": "n", "hairpinMode": True, "promiscMode": True})
    assert e.value.code == 7
    with pytest.raises(CNIError):
        bridge.parse_config({"name": "n", "mtu": "1500"})


def test_ipmasq_rules_named_as_the_reference():
    # Chain and comment as the reference bridge wrote them for this name/ID (captured from /usr/lib/cni/bridge).
    ch, rules, jump = iptables.masq_rules("10.244.1.0/24", "10.244.1.2", "mynet", "abc123")
    assert ch == "CNI-70a29d9dc18bc4d652ea5d59"
    c = '"name: \\"mynet\\" id: \\"abc123\\""'
    assert rules == [f"-A {ch} -d 10.244.1.0/24 -m comment --comment {c} -j ACCEPT",
                     f"-A {ch} ! -d 224.0.0.0/4 -m comment --comment {c} -j MASQUERADE"]
    assert jump == f"-A POSTROUTING -s 10.244.1.2/32 -m comment --comment {c} -j {ch}"


def test_versions_and_results():
    r = {"interfaces": [{"name": "eth0"}], "ips": [{"interface": 0, "address": "10.0.0.2/24"}, {"address": "fd00::2/64"}]}
    old = skel.to_version(r, "0.4.0")
    assert old["cniVersion"] == "0.4.0" and [i["version"] for i in old["ips"]] == ["4", "6"]
    assert skel.to_internal(old) == dict(r, dns={})
    assert "version" not in skel.to_version(r, "1.1.0")["ips"][0]
    for v, code in [("0.2.0", 1), ("9.9.9", 1), ("1.1.0", None)]:
        if code is None:
            assert skel.conf_version({"cniVersion": v}) == v
        else:
            with pytest.raises(CNIError) as e:
                skel.conf_version({"cniVersion": v})
            assert e.value.code == code
    for bad in ["../etc", "a/b", "", ".hidden", "a b"]:
        with pytest.raises(CNIError) as e:
            skel.validate_container_id(bad)
        assert e.value.code == 4
        with pytest.raises(CNIError) as e:
            skel.validate_network_name(bad)
        assert e.value.code == 7
    with pytest.raises(CNIError):
        skel.validate_ifname("x" * 16)


def test_registry_and_conflist_building():
    assert registry.short("netlab-flannel") == registry.short("flannel") == "flannel"
    assert registry.short("macvlan") is None and registry.exe_name("bridge") == "netlab-bridge"
    c = libcni.build_one({"type": "portmap", "capabilities": {"portMappings": True}}, "cbr0", "1.1.0", {"ips": []},
                         {"portMappings": [{"hostPort": 80}], "bandwidth": {}})
    assert c == {"type": "portmap", "capabilities": {"portMappings": True}, "name": "cbr0", "cniVersion": "1.1.0",
                 "prevResult": {"ips": []}, "runtimeConfig": {"portMappings": [{"hostPort": 80}]}}
    assert "runtimeConfig" not in libcni.build_one({"type": "bridge"}, "n", "1.1.0", None, {"portMappings": []})


def test_sysctl_keys_dotted_or_as_a_path():
    """An interface name with a dot (a VLAN, eth0.100) survives only in the path form."""
    from cni.hostns import _rel

    assert _rel("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert _rel("net/ipv4/conf/eth0.100/route_localnet") == "/proc/sys/net/ipv4/conf/eth0.100/route_localnet"


def test_chain_names_use_sha512_as_the_reference():
    """utils.FormatChainName: CNI- and the first 24 hex digits of sha512(name + id)."""
    import hashlib

    from cni.iptables import chain_name

    want = "CNI-" + hashlib.sha512(b"mynetctr1").hexdigest()[:24]
    assert chain_name("mynet", "ctr1") == want
    assert chain_name("mynet", "ctr1", "CNI-DN-") == "CNI-DN-" + hashlib.sha512(b"mynetctr1").hexdigest()[:21]
