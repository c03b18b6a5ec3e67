"""Views of a lab's status: rich tables, Graphviz dot, Mermaid. Pure functions of the status dict."""

from __future__ import annotations

from typing import Any

_PHASE_STYLE = {"Running": "green", "Pending": "yellow", "Failed": "red", "Succeeded": "blue"}


def labels(items: dict[str, str]) -> str:
    """k=v,k2=v2 as kubectl's --show-labels prints them; '-' for none."""
    return ",".join(f"{k}={v}" for k, v in sorted(items.items())) or "-"


def status_tables(st: dict[str, Any], wide: bool = False) -> list:
    from rich.table import Table

    store = st.get("store", {}).get("type", "embedded")
    title = f"lab {st['lab']}  (backend {st['backend']}, proxy {st['proxyMode']}, store {store})"
    nodes = Table(title=title, title_justify="left")
    for col in ("NODE", "READY", "IP", "POD CIDR", "PODS", "LABELS") + (("NETNS",) if wide else ()):
        nodes.add_column(col)
    for n in st["nodes"]:
        count = sum(1 for p in st["pods"] if p["node"] == n["name"])
        ready = "[green]yes[/]" if n.get("ready") else "[red]no[/]"
        nodes.add_row(n["name"], ready, n["ip"], n["podCIDR"], str(count), labels(n.get("labels", {})),
                      *((n["netns"],) if wide else ()))
    pods = Table(title_justify="left")
    cols = ["NAMESPACE", "POD", "NODE", "IP", "PHASE", "RESTARTS"] + (["LABELS", "NETNS"] if wide else [])
    for col in cols:
        pods.add_column(col)
    for p in st["pods"]:
        phase = f"[{_PHASE_STYLE.get(p['phase'], 'white')}]{p['phase']}[/]"
        row = [p["namespace"], p["name"], p["node"], p["ip"] or "-", phase, str(p.get("restarts", 0))]
        if wide:
            row += [labels(p.get("labels", {})), p["netns"]]
        pods.add_row(*row)
    out = [nodes, pods]
    if st["services"]:
        svcs = Table(title_justify="left")
        for col in ("NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"):
            svcs.add_column(col)
        for s in st["services"]:
            ports = ",".join(
                f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
                for p in s["ports"]
            )
            eps = s["endpoints"]
            shown = ",".join(eps[:3]) + (f" +{len(eps) - 3} more" if len(eps) > 3 else "")
            svcs.add_row(s["namespace"], s["name"], s["type"], s["clusterIP"] or "None",
                         ",".join(s["loadBalancerIPs"]) or "<none>", ports, shown or "<none>")
        out.append(svcs)
    if st.get("clients"):
        cl = Table(title_justify="left")
        for col in ("CLIENT", "IP") + (("NETNS",) if wide else ()):
            cl.add_column(col)
        for c in st["clients"]:
            cl.add_row(c["name"], c["ip"], *((c["netns"],) if wide else ()))
        out.append(cl)
    return out


def _id(*parts: str) -> str:
    return "_".join(p.replace("-", "_").replace(".", "_").replace("/", "_") for p in parts)


def to_dot(st: dict[str, Any]) -> str:
    lab = st["lab"]
    lines = [f'graph "{lab}" {{', "  compound=true; rankdir=TB;", '  node [shape=box, fontname="monospace"];',
             f'  underlay [label="underlay bridge\\n(netns {st["netns"]})", shape=ellipse];']
    for n in st["nodes"]:
        nid = _id("node", n["name"])
        lines.append(f"  subgraph cluster_{nid} {{")
        lines.append(f'    label="{n["name"]}  {n["ip"]}\\npod CIDR {n["podCIDR"]}";')
        lines.append(f'    {nid}_eth0 [label="eth0\\n{n["ip"]}"];')
        lines.append(f'    {nid}_cni0 [label="cni0"];')
        for p in st["pods"]:
            if p["node"] == n["name"]:
                pid = _id("pod", p["namespace"], p["name"])
                lines.append(f'    {pid} [label="{p["namespace"]}/{p["name"]}\\n{p["ip"] or "-"}", shape=component];')
                lines.append(f"    {nid}_cni0 -- {pid};")
        lines.append("  }")
        lines.append(f"  underlay -- {nid}_eth0;")
    for c in st.get("clients", []):
        cid = _id("client", c["name"])
        lines.append(f'  {cid} [label="client {c["name"]}\\n{c["ip"]}", shape=house];')
        lines.append(f"  underlay -- {cid};")
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(st: dict[str, Any]) -> str:
    lines = ["flowchart TB", f'  underlay(["underlay bridge ({st["netns"]})"])']
    for n in st["nodes"]:
        nid = _id("node", n["name"])
        lines.append(f'  subgraph {nid}["{n["name"]} {n["ip"]} ({n["podCIDR"]})"]')
        lines.append(f'    {nid}_cni0["cni0"]')
        for p in st["pods"]:
            if p["node"] == n["name"]:
                pid = _id("pod", p["namespace"], p["name"])
                lines.append(f'    {pid}["{p["namespace"]}/{p["name"]} {p["ip"] or "-"}"]')
                lines.append(f"    {nid}_cni0 --- {pid}")
        lines.append("  end")
        lines.append(f"  underlay --- {nid}")
    for c in st.get("clients", []):
        cid = _id("client", c["name"])
        lines.append(f'  {cid}{{{{"client {c["name"]} {c["ip"]}"}}}}')
        lines.append(f"  underlay --- {cid}")
    return "\n".join(lines)


def check_table(results: list) -> Any:
    from rich.table import Table

    t = Table(title="connectivity", title_justify="left")
    for col in ("FROM", "TO", "PROTO", "RESULT", "ANSWER"):
        t.add_column(col)
    for r in results:
        t.add_row(r.source, r.target, r.proto, "[green]ok[/]" if r.ok else "[red]FAIL[/]", r.answer)
    return t
