"""Strict field validation of Services and EndpointSlices (kubectl's fieldValidation=Strict)."""

from __future__ import annotations

import pytest

from netlab.errors import SpecError, SpecErrors
from netlab.spec.source import load_text
from proxy.model import load_objects, validate_endpointslice, validate_service
from tests.packet_flows import OBJECTS

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {any-label: x}
  annotations: {any.io/thing: y}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, protcol: TCP}]
  sessionAfinity: ClientIP
"""

SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {redy: true}
"""


def test_every_unknown_field_is_an_error_at_its_line_with_the_closest_name():
    (doc,) = load_text(SERVICE, "svc.yaml")
    with pytest.raises(SpecErrors) as e:
        validate_service(doc)
    got = {(err.where, err.field, err.hint) for err in e.value.errors}
    assert got == {
        ("svc.yaml:9", "spec.ports[0].protcol", "did you mean protocol?"),
        ("svc.yaml:10", "spec.sessionAfinity", "did you mean sessionAffinity?"),
    }
    assert 'unknown field "spec.sessionAfinity"' in str(e.value)


def test_unknown_fields_and_an_invalid_value_are_reported_together():
    (doc,) = load_text(SERVICE.replace("port: 80,", "port: 70000,"), "svc.yaml")
    with pytest.raises(SpecErrors) as e:
        validate_service(doc)
    fields = [err.field for err in e.value.errors]
    assert fields == ["spec.ports[0].protcol", "spec.sessionAfinity", "spec.ports[0].port"]


def test_an_endpointslice_nested_unknown_field():
    (doc,) = load_text(SLICE, "s.yaml")
    with pytest.raises(SpecError) as e:
        validate_endpointslice(doc)
    assert (e.value.where, e.value.field, e.value.hint) == ("s.yaml:10", "endpoints[0].conditions.redy",
                                                            "did you mean ready?")


def test_not_strict_reads_what_was_admitted_already():
    """The proxy loop reads the store leniently, as client-go decodes: unknown fields are ignored."""
    (svc,) = load_text(SERVICE, "svc.yaml")
    (sl,) = load_text(SLICE, "s.yaml")
    assert validate_service(svc, strict=False)["spec"]["sessionAffinity"] == "None"
    assert validate_endpointslice(sl, strict=False)["endpoints"][0]["conditions"] == {"redy": True}


def test_the_flow_tables_objects_are_all_known_fields():
    services, slices = load_objects(load_text(OBJECTS, "flows.yaml"))
    assert services and slices
