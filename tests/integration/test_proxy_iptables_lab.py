"""Services in a whole lab: admission, EndpointSlice and LoadBalancer controllers, kube-proxy per node."""

from __future__ import annotations

import time

from netlab import lab, names
from netlab import store as st
from netlab.check import http_get
from tests.integration.conftest import pod


def wait_until(cond, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except OSError as e:
            value, last = None, e
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


SERVICE = """---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_load_balancer_service_across_nodes(labs):
    name = labs.name()
    path = labs.lab_yaml(
        name, "nodes: 2\nclients: [{name: ext}]",
        pod("web-1", "node1") + pod("web-2", "node2") + pod("client", "node1", labels="{app: client}") + SERVICE,
    )
    labs.up(path)
    store = lab.store_for(name)
    key = st.object_key("Service", "default", "web")
    svc = wait_until(lambda: (kv := store.get(key)) and kv.value.get("status", {}).get("loadBalancer") and kv.value,
                     what="LB ingress assigned")
    cluster_ip = svc["spec"]["clusterIP"]
    lb_ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
    client_ns = names.pod_netns(name, "node1", "default", "client")
    ext_ns = names.client_netns(name, "ext")

    def spread(ns: str, ip: str) -> set[str]:
        return {http_get(ns, ip, "/hostname", port=80) for _ in range(20)}

    # ClusterIP from a pod: both endpoints (one per node), the pod's own address seen.
    wait_until(lambda: spread(client_ns, cluster_ip) == {"web-1", "web-2"}, what="both endpoints via clusterIP")
    client_ip = next(p["ip"] for p in lab.status(name)["pods"] if p["name"] == "client")
    assert {http_get(client_ns, cluster_ip, "/clientip", port=80).rsplit(":", 1)[0] for _ in range(20)} == {client_ip}
    # The LoadBalancer IP from the external client (routed via a node, as BGP would): masqueraded.
    wait_until(lambda: spread(ext_ns, lb_ip) == {"web-1", "web-2"}, what="both endpoints via the LB IP")
    seen = {http_get(ext_ns, lb_ip, "/clientip", port=80).rsplit(":", 1)[0] for _ in range(20)}
    ext_ip = next(c["ip"] for c in lab.status(name)["clients"] if c["name"] == "ext")
    assert ext_ip and ext_ip not in seen and len(seen) >= 1
