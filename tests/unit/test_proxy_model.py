"""proxy.model: Service/EndpointSlice validation and the proxier's view."""

import pytest

from netlab.errors import SpecError
from netlab.spec.source import load_text
from proxy.model import (
    Endpoint,
    NodeContext,
    ServicePortName,
    build_state,
    load_objects,
    validate_endpointslice,
    validate_service,
)

SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
"""

SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.2]
  nodeName: n1
- addresses: [10.244.2.2]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n2
"""


def test_service_defaults_as_the_api_server_fills_them():
    (svc,) = [validate_service(d) for d in load_text(SVC, "s.yaml")]
    spec = svc["spec"]
    assert spec["ports"][0]["protocol"] == "TCP"
    assert spec["ports"][1]["targetPort"] == 53
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800
    assert spec["clusterIPs"] == ["10.96.0.10"]


def test_state_from_objects():
    services, slices = load_objects(load_text(SVC + "---\n" + SLICE, "x.yaml"))
    st = build_state(services, slices, NodeContext(node_name="n1"))
    http = ServicePortName("default", "web", "http", "TCP")
    assert str(http) == "default/web:http"
    sp = st.services[http]
    assert (sp.cluster_ip, sp.port, sp.node_port, sp.session_affinity_client_ip) == ("10.96.0.10", 80, 30080, True)
    assert st.endpoints_of(http) == (
        Endpoint("10.244.1.2", 8080, True, True, False, "n1", "", True),
        Endpoint("10.244.2.2", 8080, False, True, True, "n2", "", False),
    )
    # The UDP port has no slice port: no endpoints.
    assert st.endpoints_of(ServicePortName("default", "web", "dns", "UDP")) == ()


def test_changed_from_names_only_what_changed():
    services, slices = load_objects(load_text(SVC + "---\n" + SLICE, "x.yaml"))
    a = build_state(services, slices, NodeContext(node_name="n1"))
    slices[0]["endpoints"].pop()
    b = build_state(services, slices, NodeContext(node_name="n1"))
    assert b.changed_from(a) == {ServicePortName("default", "web", "http", "TCP")}
    assert b.changed_from(None) is None


def test_headless_and_unallocated_services_get_no_rules():
    text = SVC.replace("clusterIP: 10.96.0.10", "clusterIP: None").replace("NodePort", "ClusterIP")
    text = text.replace(", nodePort: 30080", "")
    services, _ = load_objects(load_text(text, "h.yaml"))
    assert build_state(services, [], NodeContext()).services == {}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("metadata: {name: Web}\nspec: {ports: [{port: 80}]}\n",
         "b.yaml:3: metadata.name: invalid Service name 'Web'"),
        ("metadata: {name: web}\nspec:\n  ports:\n  - port: 80\n  - port: 81\n",
         "b.yaml:6: spec.ports[0].name: Required value (every port of a multi-port Service needs a name)"),
        ("metadata: {name: web}\nspec:\n  ports:\n  - port: 70000\n",
         "b.yaml:6: spec.ports[0].port: must be between 1 and 65535, inclusive, got 70000"),
        ("metadata: {name: web}\nspec:\n  ports:\n  - {port: 80, protocol: tcp}\n",
         "b.yaml:6: spec.ports[0].protocol: Unsupported value: 'tcp' (supported values: TCP, UDP, SCTP)"),
        ("metadata: {name: web}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
         "b.yaml:5: spec.clusterIP: must be a valid IP address, got '10.96.0.300'"),
        ("metadata: {name: web}\nspec:\n  ports: [{port: 80, nodePort: 30001}]\n",
         "b.yaml:5: spec.ports[0].nodePort: may not be used when `type` is 'ClusterIP'"),
        ("metadata: {name: web}\nspec:\n  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n",
         "b.yaml:5: spec.externalTrafficPolicy: may only be set for externally-accessible services"),
        ("metadata: {name: web}\nspec:\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n",
         "b.yaml:7: spec.ports[1]: Duplicate value: port 80/TCP"),
        ("metadata: {name: web}\nspec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n"
         "    clientIP: {timeoutSeconds: 0}\n  ports: [{port: 80}]\n",
         "b.yaml:7: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be in the range"),
        ("metadata: {name: web}\nspec: {}\n", "b.yaml:4: spec.ports: Required value"),
        ("metadata: {name: web}\nspec:\n  ports: [{port: 80, targetPort: 'not valid'}]\n",
         "b.yaml:5: spec.ports[0].targetPort: invalid targetPort 'not valid'"),
    ],
)
def test_bad_services_are_rejected_with_file_line_field(text, expected):
    doc = load_text("apiVersion: v1\nkind: Service\n" + text, "b.yaml")[0]
    with pytest.raises(SpecError) as e:
        validate_service(doc)
    assert str(e.value).startswith(expected), str(e.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("addressType: IPv4\nendpoints:\n- addresses: [10.0.0.300]\n",
         "e.yaml:6: endpoints[0].addresses[0]: must be a valid IPv4 address"),
        ("addressType: IPv4\nendpoints:\n- addresses: ['fd00::1']\n",
         "e.yaml:6: endpoints[0].addresses[0]: must be an IPv4 address, got 'fd00::1' (match addressType)"),
        ("addressType: IPv5\n", "e.yaml:4: addressType: Unsupported value: 'IPv5'"),
        ("endpoints: []\n", "e.yaml:1: addressType: Required value (set addressType)"),
        ("addressType: IPv4\nendpoints:\n- addresses: []\n",
         "e.yaml:6: endpoints[0].addresses: must contain at least 1"),
        ("addressType: IPv4\nports: [{port: 0}]\n", "e.yaml:5: ports[0].port: must be between 1 and 65535"),
        ("addressType: IPv4\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {ready: 'yes'}\n",
         "e.yaml:7: endpoints[0].conditions.ready: expected true or false"),
    ],
)
def test_bad_endpointslices_are_rejected(text, expected):
    doc = load_text("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n" + text, "e.yaml")[0]
    with pytest.raises(SpecError) as e:
        validate_endpointslice(doc)
    assert str(e.value).startswith(expected), str(e.value)


def test_wrong_api_version_is_named():
    doc = load_text("apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n", "e.yaml")[0]
    with pytest.raises(SpecError, match="unsupported apiVersion 'discovery.k8s.io/v1beta1'.*use discovery.k8s.io/v1"):
        validate_endpointslice(doc)


def test_ipvs_scheduler_annotation_reaches_every_port_of_the_service():
    text = SVC.replace("metadata: {name: web, namespace: default}",
                       "metadata:\n  name: web\n  annotations: {kube-router.io/service.scheduler: sh}")
    services, slices = load_objects(load_text(text, "s.yaml"))
    st = build_state(services, slices, NodeContext())
    assert {sp.ipvs_scheduler for sp in st.services.values()} == {"sh"}
    plain = build_state(*load_objects(load_text(SVC, "s.yaml")), NodeContext())
    assert {sp.ipvs_scheduler for sp in plain.services.values()} == {""}


@pytest.mark.parametrize(
    "annotations, expected",
    [
        ("{kube-router.io/service.scheduler: fastest}",
         "a.yaml:4: metadata.annotations.kube-router.io/service.scheduler: unknown IPVS scheduler 'fastest': "
         "use one of rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq (or drop the annotation"),
        ("{kube-router.io/service.scheduler: RR}", "a.yaml:4: metadata.annotations.kube-router.io/service.scheduler: "
         "unknown IPVS scheduler 'RR'"),
        ("{example.com/replicas: 3}", "a.yaml:4: metadata.annotations.example.com/replicas: annotation value must "
         "be a string, got 3 (quote it in YAML)"),
    ],
)
def test_bad_ipvs_scheduler_annotation_is_rejected(annotations, expected):
    doc = load_text("apiVersion: v1\nkind: Service\nmetadata:\n"
                    f"  annotations: {annotations}\n  name: web\nspec:\n  ports: [{{port: 80}}]\n", "a.yaml")[0]
    with pytest.raises(SpecError) as e:
        validate_service(doc)
    assert str(e.value).startswith(expected), str(e.value)


def test_check_ipvs_scheduler_names_kube_proxys_schedulers():
    from proxy.model import IPVS_SCHEDULERS, check_ipvs_scheduler

    for name in ("rr", "wrr", "lc", "wlc", "dh", "sh", "sed", "nq"):
        assert name in IPVS_SCHEDULERS and check_ipvs_scheduler(name) == name
    for bad in ("", "mh", "round-robin"):
        with pytest.raises(ValueError, match="unknown IPVS scheduler"):
            check_ipvs_scheduler(bad)
