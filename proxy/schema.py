"""Unknown fields in a Service or EndpointSlice: the API server's strict field validation.

`kubectl apply` asks for `fieldValidation=Strict` (its default since
Kubernetes 1.27), and the API server then refuses an object with a field its
schema does not declare: `strict decoding error: unknown field
"spec.sessionAfinity"`. Without it a typo is silently dropped and the user
gets a Service that does something else than they wrote. Here each unknown
field is one SpecError at its own file:line, with the closest known name as
the hint.

The schemas are the field names of core/v1 Service and discovery/v1
EndpointSlice (k8s.io/api). A value of `None` is a field whose contents are
free (labels, annotations) or not checked further (managedFields,
ownerReferences, targetRef).
"""

from __future__ import annotations

from typing import Any, Union

from netlab.errors import SpecError, closest
from netlab.spec.source import Document, Path, path_text

# A mapping's known fields; a one-element list is "a list of these".
Schema = Union[dict[str, Any], list, None]

OBJECT_META: dict[str, Schema] = {
    k: None for k in ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                      "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
                      "annotations", "ownerReferences", "finalizers", "managedFields")
}

SERVICE_PORT: dict[str, Schema] = {k: None for k in ("name", "protocol", "appProtocol", "port", "targetPort",
                                                     "nodePort")}

SERVICE: dict[str, Schema] = {
    "apiVersion": None,
    "kind": None,
    "metadata": OBJECT_META,
    "spec": {
        **{k: None for k in ("selector", "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity",
                             "loadBalancerIP", "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy",
                             "healthCheckNodePort", "publishNotReadyAddresses", "ipFamilies", "ipFamilyPolicy",
                             "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy",
                             "trafficDistribution")},
        "ports": [SERVICE_PORT],
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": None}},
    },
    "status": {
        "loadBalancer": {"ingress": [{k: None for k in ("ip", "hostname", "ipMode", "ports")}]},
        "conditions": None,
    },
}

ENDPOINTSLICE: dict[str, Schema] = {
    "apiVersion": None,
    "kind": None,
    "metadata": OBJECT_META,
    "addressType": None,
    "endpoints": [{
        **{k: None for k in ("addresses", "hostname", "targetRef", "deprecatedTopology", "nodeName", "zone")},
        "conditions": {k: None for k in ("ready", "serving", "terminating")},
        "hints": {"forZones": None, "forNodes": None},
    }],
    "ports": [{k: None for k in ("name", "protocol", "port", "appProtocol")}],
}


def unknown_fields(doc: Document, schema: Schema) -> list[SpecError]:
    """One error per field of `doc` that `schema` does not declare (values of the wrong type are the validator's)."""
    errors: list[SpecError] = []

    def walk(value: Any, sch: Schema, path: Path) -> None:
        if sch is None:
            return
        if isinstance(sch, list):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    walk(item, sch[0], path + (i,))
            return
        if not isinstance(value, dict):
            return
        for key, sub in value.items():
            if key in sch:
                walk(sub, sch[key], path + (key,))
                continue
            near = closest(str(key), sch)
            hint = f"did you mean {near}?" if near else f"known fields here: {', '.join(sorted(sch))}"
            errors.append(doc.error(path + (key,), f'unknown field "{path_text(path + (key,))}"', hint))

    walk(doc.data, schema, ())
    return errors
