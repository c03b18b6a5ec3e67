"""netlab.controllers: admission (clusterIP/nodePort), EndpointSlices from Pods, LoadBalancer IPs."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import pytest

from netlab import store as st
from netlab.controllers import EndpointSliceController, LoadBalancerController, admit_service, assign, desired_slices
from netlab.controllers import loop
from netlab.errors import SpecError
from netlab.store_etcd import EtcdError
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


class Flaky:
    """A store that fails each of the calls named in `failures` once per listed error, then answers."""

    def __init__(self, store, **failures) -> None:
        self._store = store
        self.failures = {name: list(errors) for name, errors in failures.items()}

    def __getattr__(self, name):
        real = getattr(self._store, name)
        errors = self.failures.get(name)

        def call(*args, **kwargs):
            if errors:
                raise errors.pop(0)
            return real(*args, **kwargs)

        return call

    @property
    def failed_all(self) -> bool:
        return not any(self.failures.values())


def outage() -> list[Exception]:
    return [EtcdError("etcd at 192.168.56.1:2379 unreachable"), sqlite3.OperationalError("database is locked"),
            st.Compacted("revision 3 is compacted"), RuntimeError("connection reset by peer")]


@contextlib.contextmanager
def running(controller):
    stop = threading.Event()
    t = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join(5)
        assert not t.is_alive()


def wait_for(cond, thread, limit: float = 10.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert thread.is_alive(), "the controller's loop ended"
        assert time.monotonic() - t0 < limit, "timed out"
        time.sleep(0.01)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(loop, "BACKOFF_START", 0.01)


def endpoints(store) -> list[str]:
    return sorted(a for kv in store.list(st.ENDPOINTSLICES)[0] for e in kv.value["endpoints"] for a in e["addresses"])


def test_the_endpointslice_controller_outlives_store_errors_and_misses_no_change(store, quick):
    put(store, svc("web", selector={"app": "web"}))
    store.put(st.PODS + "default/p1", pod("p1", "10.244.1.2"))
    flaky = Flaky(store, revision=outage(), list=outage())
    with running(EndpointSliceController(flaky, poll_interval=0.01)) as t:
        wait_for(lambda: flaky.failed_all and endpoints(store) == ["10.244.1.2"], t)
        flaky.failures["events_since"] = outage()
        store.put(st.PODS + "default/p2", pod("p2", "10.244.1.3"))  # written while the watch fails
        wait_for(lambda: flaky.failed_all and endpoints(store) == ["10.244.1.2", "10.244.1.3"], t)
        flaky.failures["put"] = outage()  # a reconcile that fails is retried, not dropped
        store.put(st.PODS + "default/p3", pod("p3", "10.244.1.4"))
        wait_for(lambda: flaky.failed_all and endpoints(store) == ["10.244.1.2", "10.244.1.3", "10.244.1.4"], t)


def ingress(store) -> list[str]:
    kv = store.get(st.object_key("Service", "default", "lb"))
    return [i["ip"] for i in kv.value.get("status", {}).get("loadBalancer", {}).get("ingress", [])]


def test_the_load_balancer_controller_outlives_store_errors(store, quick):
    flaky = Flaky(store, revision=outage(), list=outage())
    with running(LoadBalancerController(flaky, "nllb-unit", "192.168.50.240/28", poll_interval=0.01)) as t:
        wait_for(lambda: flaky.failed_all, t)
        flaky.failures["events_since"] = outage()
        put(store, svc("lb", type="LoadBalancer"))
        wait_for(lambda: flaky.failed_all and ingress(store) == ["192.168.50.241"], t)
