"""portmap's pure half: options, the container's addresses, rule plans and restore texts. No root.

The expected rule lines are the reference 1.1.1's (/usr/lib/cni/portmap),
as iptables-save printed them in tests/integration/test_cni_portmap.py.
"""

import ipaddress

import pytest

from cni import iptables
from cni.errors import CNIError
from cni.plugins import portmap

DN = "CNI-DN-eef784aaf756ba01525d1"  # what the reference named the chain of network "pmnet", container "pmctr"
COMMENT = '"dnat name: \\"pmnet\\" id: \\"pmctr\\""'


def conf(**kw) -> dict:
    pms = kw.pop("pms", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    c = {"name": "pmnet", "type": "portmap", "runtimeConfig": {"portMappings": pms}}
    c.update(kw)
    return c


def v4(addr: str = "10.66.1.2/24"):
    return ipaddress.ip_interface(addr)


def test_chain_name_is_the_references_formula():
    assert portmap.dn_chain("pmnet", "pmctr") == DN
    assert portmap.sn_chain("pmnet", "pmctr").startswith("CNI-SN-") and len(portmap.sn_chain("pmnet", "pmctr")) == 28


def test_defaults_are_the_references():
    cfg = portmap.parse(conf(pms=[{"hostPort": 80, "containerPort": 8080}]))
    assert (cfg.snat, cfg.masq_all, cfg.mark_bit, cfg.external_chain) == (True, False, 13, None)
    assert cfg.mappings == [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}]
    # null is Go's nil: the default, and not "both given".
    cfg = portmap.parse(conf(markMasqBit=None, externalSetMarkChain="KUBE-MARK-MASQ", snat=None))
    assert (cfg.snat, cfg.mark_bit, cfg.external_chain) == (True, 13, "KUBE-MARK-MASQ")
    assert portmap.parse(conf(pms=None)).mappings == []
    assert portmap.parse({"name": "n"}).mappings == []


@pytest.mark.parametrize("extra, code, msg", [
    ({"markMasqBit": 32}, 7, "failed to parse config: MasqMarkBit must be between 0 and 31"),
    ({"markMasqBit": -1}, 7, "failed to parse config: MasqMarkBit must be between 0 and 31"),
    ({"markMasqBit": 14, "externalSetMarkChain": "X"}, 7, "failed to parse config: Cannot specify externalSetMarkChain and markMasqBit"),
    ({"pms": [{"hostPort": 80, "containerPort": 0}]}, 7, "failed to parse config: Invalid container port number: 0"),
    ({"pms": [{"hostPort": -1, "containerPort": 80}]}, 7, "failed to parse config: Invalid host port number: -1"),
    ({"pms": [{"hostPort": 70000, "containerPort": 80}]}, 7, "failed to parse config: Invalid host port number: 70000"),
    ({"pms": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}, 7, "Invalid protocol 'icmp'"),
    ({"pms": [{"hostPort": 80, "containerPort": 80, "hostIP": "node1"}]}, 7, "Invalid hostIP 'node1'"),
    ({"markMasqBit": "13"}, 6, "cannot unmarshal string into Go struct field PortMapConf.markMasqBit of type int"),
    ({"markMasqBit": 13.5}, 6, "cannot unmarshal number"),
    ({"snat": "no"}, 6, "PortMapConf.snat of type bool"),
    ({"conditionsV4": "-s 10.0.0.0/8"}, 6, "PortMapConf.conditionsV4 of type []string"),
    ({"conditionsV6": [1]}, 6, "PortMapConf.conditionsV6 of type []string"),
    ({"pms": [{"hostPort": "80", "containerPort": 80}]}, 6, "PortMapEntry.hostPort of type int"),
    ({"pms": {"hostPort": 80}}, 6, "portMappings"),
])
def test_invalid_options(extra, code, msg):
    with pytest.raises(CNIError) as e:
        portmap.parse(conf(**extra))
    assert e.value.code == code
    assert msg in e.value.msg


def test_container_ips_as_parse_config_picks_them():
    prev = {"interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"},
                           {"name": "net1", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.1.0.1/24", "interface": 0},  # host side: skipped
                    {"address": "10.2.0.5/24", "interface": 3},  # another sandbox interface: skipped
                    {"address": "10.66.1.2/24", "interface": 2},
                    {"address": "10.66.1.3/24", "interface": 2},  # not the first of its family
                    {"address": "fd00::2/64"}]}  # no interface index: taken
    got = portmap.container_ips(prev, "eth0")
    assert {k: str(v) for k, v in got.items()} == {4: "10.66.1.2/24", 6: "fd00::2/64"}
    assert portmap.container_ips({"ips": []}, "eth0") == {}
    for bad in ({"ips": [{"address": "10.1.2.3"}, {"address": "x"}]}, {"ips": [{}]}, {"ips": ["10.0.0.1/24"]}, {"ips": {}}):
        with pytest.raises(CNIError) as e:
            portmap.container_ips(bad, "eth0")
        assert (e.value.code, e.value.msg) == (6, "could not parse prevResult")


def test_split_ports_at_multiports_limit():
    assert portmap.split_ports(list(range(1, 16))) == [",".join(str(i) for i in range(1, 16))]
    assert portmap.split_ports(list(range(1, 18))) == [",".join(str(i) for i in range(1, 16)), "16,17"]
    assert portmap.split_ports([]) == []


def test_mark_as_go_formats_it():
    assert portmap.mark(13) == "0x2000/0x2000"
    assert portmap.mark(0) == "0x1/0x1"
    assert portmap.mark(31) == "0x80000000/0x80000000"


def test_plan_ipv4_is_the_references_layout():
    cfg = portmap.parse(conf(pms=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                  {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.99.1"},
                                  {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "fd00:99::1"},
                                  {"hostPort": 9000, "containerPort": 90, "protocol": "tcp", "hostIP": "0.0.0.0"}]))
    p = portmap.plan(cfg, "pmctr", v4())
    assert p.rules == [
        f"-A {DN} -s 10.66.1.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.66.1.2:80",
        f"-A {DN} -s 10.66.1.0/24 -d 192.168.99.1/32 -p udp -m udp --dport 5353 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -s 127.0.0.1/32 -d 192.168.99.1/32 -p udp -m udp --dport 5353 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -d 192.168.99.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.66.1.2:53",
        f"-A {DN} -s 10.66.1.0/24 -p tcp -m tcp --dport 9000 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 9000 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p tcp -m tcp --dport 9000 -j DNAT --to-destination 10.66.1.2:90",
    ]
    # Every mapping's port is in the jump, whatever its hostIP's family (fillDnatRules groups them all).
    assert p.jumps == [
        f"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment {COMMENT} -m multiport --dports 8080,8443,9000 -j {DN}",
        f"-A CNI-HOSTPORT-DNAT -p udp -m comment --comment {COMMENT} -m multiport --dports 5353 -j {DN}",
    ]
    assert p.route_localnet and p.shared_chains == ["CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-DNAT"]


def test_plan_ipv6():
    cfg = portmap.parse(conf(pms=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                  {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "FD00:99::1"},
                                  {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.99.1"}]))
    p = portmap.plan(cfg, "pmctr", ipaddress.ip_interface("fd00:66::2/64"))
    assert p.rules == [
        f"-A {DN} -s fd00:66::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:66::2]:80",
        f"-A {DN} -s fd00:66::/64 -d fd00:99::1/128 -p tcp -m tcp --dport 8443 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -d fd00:99::1/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [fd00:66::2]:443",
    ]
    assert not p.route_localnet  # route_localnet is IPv4's


def test_plan_options():
    pms = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    p = portmap.plan(portmap.parse(conf(pms=pms, snat=False)), "pmctr", v4())
    assert p.rules == [f"-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.66.1.2:80"]
    assert p.shared_chains == ["CNI-HOSTPORT-DNAT"] and not p.route_localnet
    p = portmap.plan(portmap.parse(conf(pms=pms, masqAll=True)), "pmctr", v4())
    assert p.rules[0] == f"-A {DN} -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK" and len(p.rules) == 2
    p = portmap.plan(portmap.parse(conf(pms=pms, externalSetMarkChain="KUBE-MARK-MASQ")), "pmctr", v4())
    assert p.rules[0].endswith("-j KUBE-MARK-MASQ") and p.shared_chains == ["CNI-HOSTPORT-DNAT"] and p.route_localnet
    p = portmap.plan(portmap.parse(conf(pms=pms, markMasqBit=5)), "pmctr", v4())
    assert ("-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE", False) in p.shared_rules
    p = portmap.plan(portmap.parse(conf(pms=pms, conditionsV4=["!", "-d", "192.168.1.0/24"], conditionsV6=["-i", "x"])), "pmctr", v4())
    assert p.jump_args == [["-p", "tcp", "-m", "comment", "--comment", 'dnat name: "pmnet" id: "pmctr"', "-m", "multiport",
                            "--dports", "8080", "!", "-d", "192.168.1.0/24", "-j", DN]]
    assert not p.jumps_canonical


def test_plan_groups_protocols_as_given_and_dedups_rules_as_insert_unique():
    pms = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 8080, "containerPort": 81, "protocol": "tcp"},
           {"hostPort": 53, "containerPort": 53, "protocol": "UDP"}]
    p = portmap.plan(portmap.parse(conf(pms=pms)), "pmctr", v4())
    # "UDP" sorts before "tcp" (Go's sort.Strings), and is printed lower case by iptables.
    assert [j.split(" --dports ")[1] for j in p.jumps] == [f"53 -j {DN}", f"8080,8080 -j {DN}"]
    assert p.jumps[0].startswith("-A CNI-HOSTPORT-DNAT -p udp ")
    assert [r.split(" -j ")[1] for r in p.rules] == ["CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-SETMARK", "DNAT --to-destination 10.66.1.2:80",
                                                      "DNAT --to-destination 10.66.1.2:81", "CNI-HOSTPORT-SETMARK",
                                                      "CNI-HOSTPORT-SETMARK", "DNAT --to-destination 10.66.1.2:53"]
    many = [{"hostPort": 9000 + i, "containerPort": 80, "protocol": "tcp"} for i in range(17)]
    assert len(portmap.plan(portmap.parse(conf(pms=many)), "pmctr", v4()).jumps) == 2


def test_long_comment_trimmed_as_the_reference():
    p = portmap.plan(portmap.parse(conf()), "c" * 300, v4())
    c = p.jump_args[0][5]
    assert len(c) == 255 and c.endswith("...")


def test_restore_text_fresh_then_upsert():
    p = portmap.plan(portmap.parse(conf()), "pmctr", v4())
    text = portmap.restore_text(p, ["*nat", ":PREROUTING ACCEPT [0:0]", "COMMIT"])
    lines = text.splitlines()
    assert lines[:5] == ["*nat", ":CNI-HOSTPORT-SETMARK - [0:0]", ":CNI-HOSTPORT-MASQ - [0:0]", ":CNI-HOSTPORT-DNAT - [0:0]", f":{DN} - [0:0]"]
    assert '-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ' in lines
    assert p.jumps[0] in lines and text.endswith("\nCOMMIT\n")
    # What that text leaves, as iptables-save prints it: a second ADD adds nothing shared, keeps the jump.
    saved = ["*nat", ":CNI-HOSTPORT-SETMARK - [0:0]", ":CNI-HOSTPORT-MASQ - [0:0]", ":CNI-HOSTPORT-DNAT - [0:0]", f":{DN} - [0:0]"]
    saved += [r for r, _ in p.shared_rules] + p.rules + ["-A CNI-HOSTPORT-DNAT -p tcp -j OTHER"] + p.jumps + ["COMMIT"]
    again = portmap.restore_text(p, saved).splitlines()
    assert again == ["*nat", f":{DN} - [0:0]"] + p.rules + ["COMMIT"]
    # A changed mapping: the old jump is replaced where it was (rule 2 of CNI-HOSTPORT-DNAT).
    p2 = portmap.plan(portmap.parse(conf(pms=[{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}])), "pmctr", v4())
    changed = portmap.restore_text(p2, saved).splitlines()
    assert changed[-3:] == ["-D " + p.jumps[0][3:], "-I CNI-HOSTPORT-DNAT 2 " + p2.jumps[0][len("-A CNI-HOSTPORT-DNAT "):], "COMMIT"]


def test_check_text():
    p = portmap.plan(portmap.parse(conf()), "pmctr", v4())
    assert portmap.check_text(p, ["*nat"]) == f"chain {DN} not found in iptables table nat"
    saved = [f":{DN} - [0:0]"] + p.rules + p.jumps
    assert portmap.check_text(p, saved) is None
    assert "not found in table nat" in portmap.check_text(p, saved[:-1])
    assert "DNAT --to-destination" in portmap.check_text(p, [f":{DN} - [0:0]"] + p.rules[:2] + p.jumps)


def test_teardown_text_removes_jumps_and_chains_only():
    saved = ["*nat", ":CNI-HOSTPORT-DNAT - [0:0]", f":{DN} - [0:0]",
             f"-A CNI-HOSTPORT-DNAT -p tcp -j {DN}", f"-A {DN} -p tcp -j X{DN}", "-A CNI-HOSTPORT-DNAT -p tcp -j OTHER"]
    text = iptables.teardown_text(saved, "nat", [DN, "CNI-SN-absent"])
    assert text.splitlines() == ["*nat", f"-D CNI-HOSTPORT-DNAT -p tcp -j {DN}", f"-F {DN}", f"-X {DN}", "COMMIT"]
    assert iptables.teardown_text(saved, "nat", ["CNI-SN-absent"]) is None


def test_restore_arg_quoting():
    assert iptables.arg("10.0.0.0/8") == "10.0.0.0/8"
    assert iptables.arg("two words") == '"two words"'
    assert iptables.arg('say "hi"') == '"say \\"hi\\""'
    assert iptables.arg("") == '""'


def test_plugin_module_imports_stay_light():
    """The plugin path's start-up: portmap and iptables import no subprocess/json/re/socket themselves."""
    import ast
    import inspect

    for mod in (portmap, iptables):
        tree = ast.parse(inspect.getsource(mod))
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not top & {"json", "re", "dataclasses", "socket", "subprocess", "typing", "shlex", "logging"}, mod.__name__
