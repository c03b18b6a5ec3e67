"""A whole lab as the user wrote it: one Lab, its Pods, and any other objects.

Cross-document checks live here (one Lab across all files, duplicate pods,
pods on unknown nodes, full node subnets), and so does scheduling: a pod
without `nodeName` goes to the node with the fewest pods, as
kube-scheduler's default spreading would place it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from netlab import names
from netlab.errors import SpecError, SpecErrors
from netlab.spec.lab import LabSpec, PodSpec, parse_lab, parse_node, parse_pod
from netlab.spec.source import Document, load_files

# Other kinds register a validator returning the object to store (normalized).
# The service proxy registers Service and EndpointSlice.
Validator = Callable[[Document], dict]
_VALIDATORS: dict[str, Validator] = {}


def register_kind(kind: str, validator: Validator) -> None:
    _VALIDATORS[kind] = validator


def validate_node(doc: Document) -> dict:
    """A Node for `netlab apply`/`delete`: the object as the API server stores it, minus what netlab assigns."""
    node = parse_node(doc)
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": dict(node.labels)}}


register_kind("Node", validate_node)


def _load_plugins() -> None:
    """Kinds validated by other packages (imported lazily: `status` needs none of them)."""
    if "Service" in _VALIDATORS:
        return
    try:
        from proxy import model
    except ImportError:  # pragma: no cover - the proxy package is part of netlab
        return
    for kind, fn in (("Service", "validate_service"), ("EndpointSlice", "validate_endpointslice")):
        if hasattr(model, fn):
            register_kind(kind, getattr(model, fn))


@dataclass
class ApiObject:
    """A Kubernetes object other than Pod, validated and normalized."""

    kind: str
    namespace: str | None
    name: str
    body: dict
    doc: Document


@dataclass
class Topology:
    lab: LabSpec
    pods: list[PodSpec] = field(default_factory=list)
    objects: list[ApiObject] = field(default_factory=list)

    def placement(self) -> dict[str, str]:
        """pod key -> node name (every pod is placed once validated)."""
        return {p.key: p.node for p in self.pods if p.node}


def max_pods_per_node(lab: LabSpec) -> int:
    """host-local's usable addresses in a node subnet: minus network, gateway and broadcast."""
    return (1 << (32 - lab.pod_network.subnet_len)) - 3


def parse_objects(docs: Iterable[Document]) -> tuple[list[PodSpec], list[ApiObject], list[SpecError]]:
    """Pods and other objects of `docs` (no Lab), each validated on its own."""
    _load_plugins()
    pods: list[PodSpec] = []
    objects: list[ApiObject] = []
    errors: list[SpecError] = []
    for doc in docs:
        try:
            kind = doc.kind
            if not isinstance(doc.data, dict) or not kind:
                raise doc.error((), "not a Kubernetes object: it has no kind", "add kind: Pod (or Lab, Service, ...)")
            if kind == "Pod":
                pods.append(parse_pod(doc))
            elif kind in _VALIDATORS:
                body = _VALIDATORS[kind](doc)
                meta = body.get("metadata", {})
                objects.append(ApiObject(kind, meta.get("namespace"), meta["name"], body, doc))
            elif kind == "Lab":
                raise doc.error(("kind",), "a Lab cannot be applied here", "use netlab up -f for Lab documents")
            else:
                known = ", ".join(["Lab", "Pod", *sorted(_VALIDATORS)])
                raise doc.error(("kind",), f"unknown kind {kind!r}", f"netlab understands: {known}")
        except SpecErrors as e:
            errors.extend(e.errors)
        except SpecError as e:
            errors.append(e)
    errors.extend(_duplicates(pods, objects))
    return pods, objects, errors


def _duplicates(pods: list[PodSpec], objects: list[ApiObject]) -> list[SpecError]:
    errors = []
    seen: dict[tuple[str, str], str] = {}
    for p in pods:
        k = ("Pod", p.key)
        if k in seen:
            errors.append(SpecError(p.source, "metadata.name", f"duplicate Pod {p.key} (also at {seen[k]})",
                                    "give every pod its own name"))
        seen[k] = p.source
    for o in objects:
        k = (o.kind, f"{o.namespace}/{o.name}")
        where = o.doc.where(())
        if k in seen:
            errors.append(o.doc.error(("metadata", "name"), f"duplicate {o.kind} {k[1]} (also at {seen[k]})"))
        seen[k] = where
    return errors


def schedule(lab: LabSpec, pods: list[PodSpec], existing: dict[str, int] | None = None) -> list[PodSpec]:
    """Place pods without nodeName on the least-loaded node (ties: node order)."""
    load = {n.name: 0 for n in lab.nodes}
    for node, count in (existing or {}).items():
        if node in load:
            load[node] += count
    for p in pods:
        if p.node in load:
            load[p.node] += 1
    out = []
    for p in pods:
        if p.node is None:
            node = min(load, key=lambda n: load[n])
            load[node] += 1
            p = PodSpec(p.namespace, p.name, node, p.labels, p.containers, p.restart_policy, p.source)
        out.append(p)
    return out


def check_pods_fit(lab: LabSpec, pods: list[PodSpec], docs_by_source: dict[str, Document] | None = None) -> list[SpecError]:
    """Pods on unknown nodes, node subnets too small, names too long for a netns."""
    errors = []
    node_names = {n.name for n in lab.nodes}
    per_node: dict[str, int] = {}
    cap = max_pods_per_node(lab)
    for p in pods:
        if p.node not in node_names:
            errors.append(SpecError(p.source, "spec.nodeName", f"pod {p.key} is on node {p.node!r}, which the lab does not have",
                                    f"use one of: {', '.join(sorted(node_names))}"))
            continue
        per_node[p.node] = per_node.get(p.node, 0) + 1
        if per_node[p.node] == cap + 1:
            errors.append(SpecError(p.source, "spec.nodeName",
                                    f"node {p.node} is full: its /{lab.pod_network.subnet_len} pod subnet holds {cap} pods",
                                    "spread pods over more nodes or use a shorter SubnetLen"))
        ns_name = names.pod_netns(lab.name, p.node, p.namespace, p.name)
        if len(ns_name) > 255:
            errors.append(SpecError(p.source, "metadata.name", f"pod {p.key}: its namespace name would be {len(ns_name)} characters",
                                    "use a shorter pod name"))
    return errors


def load_topology(paths: list[str]) -> Topology:
    """Read and validate a lab's files; raise SpecError(s) before anything is created."""
    docs = load_files(paths)
    labs = [d for d in docs if d.kind == "Lab"]
    if not labs:
        where = paths[0] if paths else "<no files>"
        raise SpecError(where, "", "no Lab document found", "add a document with apiVersion: netlab/v1alpha1, kind: Lab")
    errors: list[SpecError] = []
    if len(labs) > 1:
        errors.append(labs[1].error(("kind",), f"a second Lab document (the first is at {labs[0].where(())})",
                                    "one lab per `netlab up`; split them into separate files"))
    try:
        lab = parse_lab(labs[0])
    except SpecErrors as e:
        raise SpecErrors(e.errors + errors) from None
    except SpecError as e:
        raise SpecErrors([e] + errors) if errors else e from None
    pods, objects, obj_errors = parse_objects(d for d in docs if d.kind != "Lab")
    errors.extend(obj_errors)
    for o in [o for o in objects if o.kind == "Node"]:
        errors.append(o.doc.error(("kind",), "a Node document cannot be part of the lab's files",
                                  "list it in the Lab's spec.nodes, or add it to the running lab with "
                                  "`netlab apply -f` or `netlab node add`"))
        objects.remove(o)
    pods = schedule(lab, pods)
    errors.extend(check_pods_fit(lab, pods))
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    return Topology(lab, pods, objects)


def pod_object(lab: LabSpec, pod: PodSpec) -> dict[str, Any]:
    """The Pod as the API server stores it (status is the kubelet's to fill)."""
    containers = []
    for c in pod.containers:
        cd: dict[str, Any] = {"name": c.name, "image": "netlab/netexec" if not c.command else "netlab/command"}
        if c.command:
            cd["command"] = list(c.command)
        if c.args:
            cd["args"] = list(c.args)
        if c.env:
            cd["env"] = [{"name": k, "value": v} for k, v in c.env]
        if c.ports:
            cd["ports"] = [
                {k: v for k, v in (("containerPort", p.container_port), ("protocol", p.protocol),
                                   ("name", p.name), ("hostPort", p.host_port)) if v is not None}
                for p in c.ports
            ]
        containers.append(cd)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": dict(pod.labels)},
        "spec": {"nodeName": pod.node, "restartPolicy": pod.restart_policy, "containers": containers},
        "status": {"phase": "Pending"},
    }
