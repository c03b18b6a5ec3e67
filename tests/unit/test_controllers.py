"""netlab.controllers: admission (clusterIP/nodePort), EndpointSlices from Pods, LoadBalancer IPs."""

from __future__ import annotations

import pytest

from netlab import store as st
from netlab.controllers import EndpointSliceController, admit_service, assign, desired_slices
from netlab.errors import SpecError
from netlab.spec.source import load_text
from proxy.model import validate_endpointslice, validate_service


@pytest.fixture
def store(tmp_path):
    s = st.SqliteStore(str(tmp_path / "store.db"))
    yield s
    s.close()


def svc(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80, "protocol": "TCP", "targetPort": 8080}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def put(store, obj):
    store.put(st.object_key("Service", "default", obj["metadata"]["name"]), obj)
    return obj


def test_cluster_ips_and_node_ports_are_allocated_and_kept(store):
    a = put(store, admit_service(store, svc("a", type="NodePort"), "10.96.0.0/16"))
    b = put(store, admit_service(store, svc("b", type="NodePort"), "10.96.0.0/16"))
    assert a["spec"]["clusterIP"] == "10.96.0.1" and b["spec"]["clusterIP"] == "10.96.0.2"
    assert a["spec"]["ports"][0]["nodePort"] == 30000 and b["spec"]["ports"][0]["nodePort"] == 30001
    # Re-applying the same object keeps what was allocated.
    again = admit_service(store, svc("a", type="NodePort"), "10.96.0.0/16")
    assert again["spec"]["clusterIP"] == "10.96.0.1" and again["spec"]["ports"][0]["nodePort"] == 30000


@pytest.mark.parametrize(
    "spec, field, message",
    [
        ({"clusterIP": "10.96.0.1"}, "spec.clusterIP", "provided IP is already allocated"),
        ({"clusterIP": "10.97.0.1"}, "spec.clusterIP", "provided IP is not in the valid range"),
        ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}, "spec.ports[0].nodePort",
         "provided port is already allocated"),
        ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}, "spec.ports[0].nodePort",
         "The range of valid ports is 30000-32767"),
    ],
)
def test_clashes_are_rejected_with_the_api_servers_words(store, spec, field, message):
    put(store, admit_service(store, svc("a", type="NodePort"), "10.96.0.0/16"))
    with pytest.raises(SpecError) as e:
        admit_service(store, svc("b", **spec), "10.96.0.0/16")
    assert e.value.field == field and message in e.value.message


def test_cluster_ip_is_immutable(store):
    put(store, admit_service(store, svc("a"), "10.96.0.0/16"))
    doc = load_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.96.0.9\n"
                    "  ports: [{port: 80}]\n", "a.yaml")[0]
    with pytest.raises(SpecError, match=r"a.yaml:5: spec.clusterIP: field is immutable"):
        admit_service(store, validate_service(doc), "10.96.0.0/16", where=doc)


def pod(name, ip, phase="Running", node="n1", labels=None, ports=None):
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "web"}, "uid": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_slices_select_pods_and_mark_readiness_by_phase():
    s = svc("web", selector={"app": "web"})
    pods = [pod("p1", "10.244.1.2"), pod("p2", "10.244.1.3", phase="Pending"),
            pod("other", "10.244.1.4", labels={"app": "db"}), pod("noip", None)]
    (sl,) = desired_slices(s, pods).values()
    assert sl["metadata"]["labels"] == {"kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert [(e["addresses"][0], e["conditions"]["ready"], e["nodeName"]) for e in sl["endpoints"]] == [
        ("10.244.1.2", True, "n1"), ("10.244.1.3", False, "n1")]
    assert sl["ports"] == [{"name": "", "protocol": "TCP", "port": 8080}]
    # What the controller writes passes the API server's validation.
    validate_endpointslice(load_text(__import__("json").dumps(sl), "s.json")[0])


def test_named_target_ports_resolve_per_pod():
    s = svc("web", selector={"app": "web"}, ports=[{"port": 80, "protocol": "TCP", "targetPort": "http"}])
    pods = [pod("p1", "10.244.1.2", ports=[{"name": "http", "containerPort": 8080}]),
            pod("p2", "10.244.1.3", ports=[{"name": "http", "containerPort": 9090}])]
    slices = desired_slices(s, pods)
    assert sorted(sl["ports"][0]["port"] for sl in slices.values()) == [8080, 9090]


def test_controller_reconciles_and_leaves_foreign_slices(store):
    put(store, svc("web", selector={"app": "web"}))
    store.put(st.PODS + "default/p1", pod("p1", "10.244.1.2"))
    foreign = st.ENDPOINTSLICES + "default/mine"
    store.put(foreign, {"metadata": {"name": "mine", "namespace": "default", "labels": {}}})
    c = EndpointSliceController(store)
    assert c.reconcile() == 1
    assert c.reconcile() == 0  # nothing changed: no writes
    store.delete(st.PODS + "default/p1")
    c.reconcile()
    kvs = {kv.key: kv.value for kv in store.list(st.ENDPOINTSLICES)[0]}
    assert foreign in kvs
    (managed,) = [v for k, v in kvs.items() if k != foreign]
    assert managed["endpoints"] == []


def test_load_balancer_ips_from_the_pool_stay_stable():
    services = {
        "k/a": svc("a", type="LoadBalancer"),
        "k/b": svc("b", type="LoadBalancer", loadBalancerIP="192.168.50.243"),
        "k/c": svc("c"),
    }
    got = assign(services, "192.168.50.240/28")
    assert got == {"k/a": ["192.168.50.241"], "k/b": ["192.168.50.243"]}
    services["k/a"]["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.50.241"}]}}
    services["k/d"] = svc("d", type="LoadBalancer")
    assert assign(services, "192.168.50.240/28")["k/a"] == ["192.168.50.241"]
    assert assign(services, "192.168.50.240/28")["k/d"] == ["192.168.50.242"]
