"""spec.store: embedded (default), netlab's own etcd, a user's etcd; validated with file:line; the URLs every
process of the lab gets, and what lab.json records."""

import pytest

from netlab import lab as labmod
from netlab.errors import SpecError, SpecErrors
from netlab.plan import plan_lab
from netlab.spec.lab import StoreSpec
from netlab.spec.topology import load_topology
from netlab.store_etcd import parse_url
from tests.unit.test_spec_lab import LAB, errors_of, write


def lab_of(tmp_path, store: str):
    return load_topology([write(tmp_path, LAB + "  nodes: 2\n" + (f"  store: {store}\n" if store else ""))]).lab


def test_default_is_embedded_and_records_as_before(tmp_path):
    lab = lab_of(tmp_path, "")
    assert lab.store == StoreSpec(where=lab.store.where) and lab.store.type == "embedded" and not lab.store.owned
    assert "store" not in lab.to_dict()  # a lab recorded before spec.store compares equal
    plan = plan_lab(lab)
    assert plan.store_url == plan.daemon_store_url == "sqlite:///run/netlab/t/store.db"
    assert labmod.store_record(plan) == {"type": "embedded", "url": "sqlite:///run/netlab/t/store.db",
                                         "daemonUrl": "sqlite:///run/netlab/t/store.db", "managed": False}
    assert labmod.store_url(None, "t") == "sqlite:///run/netlab/t/store.db"
    assert labmod.store_status(plan) == {"type": "embedded", "path": "/run/netlab/t/store.db"}
    assert lab_of(tmp_path, "{type: embedded}").to_dict() == lab.to_dict()


def test_own_etcd_listens_on_the_underlay_gateway(tmp_path):
    lab = lab_of(tmp_path, "{type: etcd}")
    assert lab.store.owned and lab.to_dict()["store"] == {"type": "etcd"}
    plan = plan_lab(lab)
    # netlab's commands reach it through the lab namespace; the daemons over the underlay, as flanneld's
    # --etcd-endpoints on a real node.
    assert plan.store_url == "etcd://192.168.56.1:2379?netns=netlab.t"
    assert plan.daemon_store_url == "etcd://192.168.56.1:2379"
    assert labmod.store_record(plan) == {"type": "etcd", "url": "etcd://192.168.56.1:2379?netns=netlab.t",
                                         "daemonUrl": "etcd://192.168.56.1:2379", "managed": True,
                                         "dataDir": "/run/netlab/t/etcd"}
    (_, flanneld), (_, proxy) = labmod.node_daemons(plan, plan.nodes[0])
    assert flanneld[flanneld.index("--store") + 1] == proxy[proxy.index("--store") + 1] == "etcd://192.168.56.1:2379"
    assert labmod.store_status(plan) == {"type": "etcd", "managed": True, "endpoints": ["http://192.168.56.1:2379"],
                                         "netns": "netlab.t"}
    # The record says where: `netlab status` and the other verbs open what `up` recorded.
    assert labmod.store_url({"store": labmod.store_record(plan)}, "t") == plan.store_url


def test_users_etcd_is_reached_from_the_host_or_a_named_namespace(tmp_path):
    lab = lab_of(tmp_path, "{type: etcd, endpoints: ['http://10.0.0.5:2379', '10.0.0.6:2379', 'etcd-3']}")
    assert lab.store.endpoints == ("10.0.0.5:2379", "10.0.0.6:2379", "etcd-3:2379") and not lab.store.owned
    assert lab.to_dict()["store"] == {"type": "etcd", "endpoints": ["http://10.0.0.5:2379", "http://10.0.0.6:2379",
                                                                    "http://etcd-3:2379"]}
    plan = plan_lab(lab)
    url = "etcd://10.0.0.5:2379,10.0.0.6:2379,etcd-3:2379?netns=/proc/1/ns/net"
    assert plan.store_url == plan.daemon_store_url == url
    assert parse_url(url) == ([("10.0.0.5", 2379), ("10.0.0.6", 2379), ("etcd-3", 2379)], "/proc/1/ns/net")
    assert labmod.store_record(plan, keep_config=True)["keepConfig"] is True
    lab = lab_of(tmp_path, "{type: etcd, endpoints: [http://127.0.0.1:23790], netns: etcd-ns}")
    assert plan_lab(lab).daemon_store_url == "etcd://127.0.0.1:23790?netns=etcd-ns"
    assert lab.to_dict()["store"]["netns"] == "etcd-ns"


def test_store_round_trips_through_the_record(tmp_path):
    from netlab.spec.lab import parse_lab
    from netlab.spec.source import load_text

    for store in ("{type: etcd}", "{type: etcd, endpoints: [http://10.0.0.5:2379], netns: x}"):
        lab = lab_of(tmp_path, store)
        again = parse_lab(load_text(
            "apiVersion: netlab/v1alpha1\nkind: Lab\nmetadata: {name: t}\nspec: " + __import__("json").dumps(
                {k: v for k, v in lab.to_dict().items() if k != "name"}), "y.yaml")[0])
        assert again.to_dict() == lab.to_dict() and again.store.endpoints == lab.store.endpoints


BAD = [
    ("etcd", "lab.yaml:6: spec.store: must be a mapping, not the string 'etcd' (write store: {type: etcd})"),
    ("{type: etdc}", "lab.yaml:6: spec.store.type: unknown store type 'etdc' (did you mean 'etcd'?"),
    ("{typ: etcd}", "lab.yaml:6: spec.store.typ: unknown field 'typ' in the store (did you mean 'type'?)"),
    ("{endpoints: [http://10.0.0.5:2379]}", "lab.yaml:6: spec.store.endpoints: endpoints are for an etcd store"),
    ("{type: etcd, endpoints: http://10.0.0.5:2379}",
     "lab.yaml:6: spec.store.endpoints: must be a non-empty list of etcd client URLs"),
    ("{type: etcd, endpoints: []}", "lab.yaml:6: spec.store.endpoints: must be a non-empty list of etcd client URLs"),
    ("{type: etcd, endpoints: [https://10.0.0.5:2379]}",
     "lab.yaml:6: spec.store.endpoints[0]: 'https://10.0.0.5:2379': TLS endpoints are not supported"),
    ("{type: etcd, endpoints: [unix:///run/etcd.sock]}",
     "lab.yaml:6: spec.store.endpoints[0]: 'unix:///run/etcd.sock': unknown scheme 'unix'"),
    ("{type: etcd, endpoints: ['http://10.0.0.5:99999']}",
     "lab.yaml:6: spec.store.endpoints[0]: 'http://10.0.0.5:99999' is not an etcd client URL"),
    ("{type: etcd, endpoints: ['http://10.0.0.500:2379']}",
     "lab.yaml:6: spec.store.endpoints[0]: 'http://10.0.0.500:2379': 10.0.0.500 is not an IPv4 address"),
    ("{type: etcd, endpoints: [http://10.0.0.5:2379, '10.0.0.5:2379']}",
     "lab.yaml:6: spec.store.endpoints[1]: endpoint '10.0.0.5:2379' is listed twice"),
    ("{type: etcd, netns: x}", "lab.yaml:6: spec.store.netns: netns says where a user-run etcd's endpoints are reached"),
    ("{type: etcd, endpoints: [http://10.0.0.5:2379], netns: ../x}",
     "lab.yaml:6: spec.store.netns: '../x' is not a network namespace name"),
]


@pytest.mark.parametrize("store,expected", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_store_names_file_line_field(tmp_path, store, expected):
    errs = errors_of(tmp_path, LAB + "  nodes: 2\n" + f"  store: {store}\n")
    assert any(e.startswith(expected) for e in errs), errs


def test_store_errors_are_exit_2(tmp_path):
    with pytest.raises((SpecError, SpecErrors)) as e:
        lab_of(tmp_path, "{type: cassandra}")
    assert e.value.exit_code == 2


def test_etcd_not_installed_is_a_spec_error_before_anything_is_made(tmp_path, monkeypatch):
    import shutil

    lab = lab_of(tmp_path, "{type: etcd}")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpecError) as e:
        labmod.check_store(lab, None)
    assert lab.store.where.endswith("lab.yaml:6")
    assert str(e.value) == (f"{lab.store.where}: spec.store.type: etcd is not installed (Debian: apt-get install"
                            " etcd-server) (install it, or use store: {type: embedded})")


def test_user_etcd_namespace_must_exist(tmp_path):
    lab = lab_of(tmp_path, "{type: etcd, endpoints: [http://127.0.0.1:2379], netns: nlf-surely-not-there}")
    with pytest.raises(SpecError, match=r"lab.yaml:6: spec.store.netns: there is no network namespace"):
        labmod.check_store(lab, None)


def test_down_removes_exactly_the_labs_keys_from_a_users_etcd(tmp_path):
    """The keys `down` names (and removes) on a user's etcd: the lab's objects, its nodes' leases, its config."""
    plan = plan_lab(lab_of(tmp_path, "{type: etcd, endpoints: [http://10.0.0.5:2379]}"))
    record = {"spec": plan.lab.to_dict(), "nodes": labmod.membership(plan), "store": labmod.store_record(plan, False)}
    assert labmod.lab_key_prefixes(record) == [
        "/registry/pods/", "/registry/services/specs/", "/registry/endpointslices/", "/registry/minions/",
        "/registry/netlab.io/labs/t", "/coreos.com/network/subnets/10.244.1.0-24",
        "/coreos.com/network/subnets/10.244.2.0-24", "/coreos.com/network/config"]
    record["store"] = labmod.store_record(plan, True)  # the config was there before the lab: it stays
    assert "/coreos.com/network/config" not in labmod.lab_key_prefixes(record)
