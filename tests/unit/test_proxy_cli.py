"""netlab-proxy's command line: flags that pick a mode's behaviour (no kernel touched)."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from proxy.cli import parser


def test_ipvs_scheduler_flag_as_kube_proxys():
    base = ["--spec", "/nonexistent", "--mode", "ipvs", "--netns", "nltest-never-created"]
    assert parser().parse_args(base).ipvs_scheduler == ""  # blank: the default, rr
    for name in ("rr", "wrr", "lc", "wlc", "dh", "sh", "sed", "nq"):
        assert parser().parse_args(base + ["--ipvs-scheduler", name]).ipvs_scheduler == name


def test_ipvs_scheduler_flag_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--spec", "/x", "--ipvs-scheduler", "fastest"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ipvs-scheduler: unknown IPVS scheduler 'fastest': use one of rr, wrr, lc, wlc" in err


def test_ipvs_backend_gets_the_scheduler():
    from proxy.ipvs import make_backend

    args = parser().parse_args(["--spec", "/x", "--mode", "ipvs", "--netns", "nltest-never-created",
                                "--ipvs-scheduler", "wlc"])
    assert make_backend(args).scheduler == "wlc"  # the backend touches the kernel only on its first sync
    args = parser().parse_args(["--spec", "/x", "--mode", "ipvs", "--netns", "nltest-never-created"])
    assert make_backend(args).scheduler == "rr"


def test_service_cluster_ip_range_flag_as_kube_apiservers():
    base = ["--spec", "/x", "--mode", "nftables"]
    assert parser().parse_args(base).service_cluster_ip_range == ()
    assert parser().parse_args(base + ["--service-cluster-ip-range", "10.96.0.0/12"]).service_cluster_ip_range == (
        ip_network("10.96.0.0/12"),)
    dual = parser().parse_args(base + ["--service-cluster-ip-range", "10.96.0.0/12, fd00:10:96::/112"])
    assert dual.service_cluster_ip_range == (ip_network("10.96.0.0/12"), ip_network("fd00:10:96::/112"))


@pytest.mark.parametrize("value, message", [
    ("10.96.0.1/12", "'10.96.0.1/12' is not a CIDR: 10.96.0.1/12 has host bits set (did you mean 10.96.0.0/12?)"),
    ("10.96.0.0/33", "'10.96.0.0/33' is not a CIDR"),
    ("services", "'services' is not a CIDR"),
    ("", "'': give one CIDR, or two (one IPv4, one IPv6) separated by a comma"),
    ("10.96.0.0/16,10.97.0.0/16", "'10.96.0.0/16,10.97.0.0/16': two CIDRs must be one IPv4 and one IPv6 (dual-stack)"),
    ("10.96.0.0/16,fd00::/112,10.97.0.0/16", "'10.96.0.0/16,fd00::/112,10.97.0.0/16': give one CIDR, or two"),
])
def test_service_cluster_ip_range_flag_rejects_what_kube_apiserver_would(capsys, value, message):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--spec", "/x", "--service-cluster-ip-range", value])
    assert e.value.code == 2
    assert f"argument --service-cluster-ip-range: {message}" in capsys.readouterr().err


def test_nftables_backend_drops_unallocated_addresses_of_the_ipv4_service_cidr():
    """The flag reaches kube-proxy's cluster-ips-check rule; the IPv4 proxier keeps the IPv4 CIDR."""
    from proxy.nft_walker import NftWalker, parse
    from proxy.nftables import full_text, make_backend
    from tests.packet_flows import TOPOLOGY, flow_state, local_addresses

    base = ["--spec", "/x", "--mode", "nftables", "--netns", "nltest-never-created"]
    backend = make_backend(parser().parse_args(base + ["--service-cluster-ip-range",
                                                       f"{TOPOLOGY.service_cidr},fd00:10:96::/112"]))
    assert backend.service_cidr == TOPOLOGY.service_cidr  # the backend touches the kernel only on its first sync
    assert make_backend(parser().parse_args(base)).service_cidr is None
    text = full_text(flow_state(), backend.service_cidr).text
    rule = f'ip daddr {{ {TOPOLOGY.service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"'
    assert rule in text and rule not in full_text(flow_state(), None).text
    # A pod's connection to an address of the range that no Service holds.
    client, unallocated = TOPOLOGY.source_ip("client"), str(ip_network(TOPOLOGY.service_cidr)[1])
    assert unallocated not in {s.cluster_ip for s in flow_state().services.values()}

    def verdicts(text: str) -> set[str]:
        return {o.verdict for o in NftWalker(parse(text), local_addresses()).trace(client, unallocated, "TCP", 80)}

    assert verdicts(text) == {"DROP"}
    assert "DROP" not in verdicts(full_text(flow_state(), None).text)
