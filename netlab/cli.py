"""`netlab`: the command line. A thin shell over netlab.lab; errors become one clear line."""

from __future__ import annotations

import json
import os
import sys

import click

from netlab.errors import NetlabError, SpecErrors


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a test): never wrap or cut names to 80 columns.
    width = None if stream.isatty() else 250
    return Console(stderr=stderr, highlight=False, width=width)


def _fail(e: NetlabError) -> None:
    if isinstance(e, SpecErrors):
        for err in e.errors:
            click.echo(f"error: {err}", err=True)
        click.echo(f"{len(e.errors)} errors; nothing was created", err=True)
    else:
        prefix = "error: " if e.exit_code == 2 else "netlab: "
        click.echo(f"{prefix}{e}", err=True)
    sys.exit(e.exit_code)


ROOTLESS = {"validate"}


class _Group(click.Group):
    """Turns NetlabError into a message and its exit code, everywhere."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NetlabError as e:
            _fail(e)
        except KeyboardInterrupt:
            click.echo("netlab: interrupted; `netlab down LAB` removes what was made", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netlab")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The Kubernetes network data plane, emulated with real Linux namespaces."""
    wants_help = any(a in ("-h", "--help") for a in sys.argv[1:])
    if ctx.invoked_subcommand not in ROOTLESS and os.geteuid() != 0 and not wants_help:
        from netlab.errors import NeedsRoot

        raise NeedsRoot("netlab needs root to create and enter network namespaces: run it with sudo")


def _progress_printer():
    """A rich progress bar on a terminal, nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=_console(stderr=True), transient=True)
    tasks: dict[str, int] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = prog.add_task(what, total=total)
        prog.update(tasks[what], completed=done, total=total)

    return prog, update


def _topology_files(fn):
    """A command's topology files, as FILE arguments or -f/--filename options (or both).

    `netlab up lab.yaml` is how the lab is first met; `-f` is kubectl's
    spelling, which `apply` and `delete` keep alone.
    """
    fn = click.argument("paths", nargs=-1, type=click.Path(dir_okay=False), metavar="[FILE]...")(fn)
    return click.option("-f", "--filename", "files", multiple=True, type=click.Path(dir_okay=False),
                        help="Topology file (repeatable): one Lab and its Pods, Services, EndpointSlices.")(fn)


def _files(files: tuple[str, ...], paths: tuple[str, ...]) -> list[str]:
    every = [*files, *paths]
    if not every:
        name = click.get_current_context().info_name
        raise click.UsageError(f"no topology file: give one, as in `netlab {name} lab.yaml` (or -f lab.yaml)")
    return every


@cli.command()
@_topology_files
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the pods.")
def up(files: tuple[str, ...], paths: tuple[str, ...], timeout: float) -> None:
    """Build a lab from topology files (idempotent)."""
    from netlab import lab

    every = _files(files, paths)
    prog, update = _progress_printer()
    if prog:
        with prog:
            res = lab.up(every, update, timeout)
    else:
        res = lab.up(every, None, timeout)
    if res.created:
        click.echo(f"lab {res.lab} is up: {len(res.changes)} changes, {res.pods} pods in {res.seconds:.1f}s")
    elif res.changes:
        click.echo(f"lab {res.lab} updated: " + "; ".join(res.changes[:10]) + (" ..." if len(res.changes) > 10 else ""))
    else:
        click.echo(f"lab {res.lab} is up to date: nothing changed")


@cli.command()
@_topology_files
def validate(files: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """Check topology files without creating anything (no root needed)."""
    from netlab.spec.topology import load_topology

    topo = load_topology(_files(files, paths))
    click.echo(f"lab {topo.lab.name}: {len(topo.lab.nodes)} nodes, {len(topo.pods)} pods, "
               f"{len(topo.objects)} other objects: valid")


@cli.command()
@click.argument("lab_name", required=False, metavar="[LAB]")
def down(lab_name: str | None) -> None:
    """Remove a lab: its processes, namespaces, links and files."""
    from netlab import lab

    name, removed = lab.down(lab_name)
    click.echo(f"lab {name} is down: removed {', '.join(removed) or 'nothing (already gone)'}")


@cli.command()
@click.argument("lab_name", required=False, metavar="[LAB]")
def cleanup(lab_name: str | None) -> None:
    """Remove every object any netlab lab made on this machine (or only LAB's), and nothing else.

    Labs are found by their namespaces (netlab.LAB) and state dirs
    (/run/netlab/LAB/); only their processes are ended.
    """
    from netlab import lab

    out = lab.cleanup(lab_name)
    if not out:
        click.echo("nothing to clean up")
    for name, removed in out.items():
        click.echo(f"{name}: removed {', '.join(removed) or 'nothing'}")


@cli.command()
@click.argument("lab_name", required=False, metavar="[LAB]")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json", "yaml"]), default="table", show_default=True)
def status(lab_name: str | None, output: str) -> None:
    """Nodes, pods and services of a lab."""
    from netlab import lab

    st = lab.status(lab_name)
    if output == "json":
        click.echo(json.dumps(st, indent=2))
        return
    if output == "yaml":
        import yaml

        click.echo(yaml.safe_dump(st, sort_keys=False), nl=False)
        return
    from netlab.render import status_tables

    console = _console()
    for table in status_tables(st, wide=output == "wide"):
        console.print(table)


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("-l", "--lab", "lab_name", help="The lab (default: the only one).")
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(lab_name: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the namespace of a node, pod ([NS/]POD) or client, as `ip netns exec`."""
    from netlab import lab, netns

    lab.require_root()
    ns = lab.target_netns(lab_name, target)
    fd = os.open(netns.path(ns), os.O_RDONLY)
    if netns._libc.setns(fd, 0x40000000) != 0:
        raise NetlabError(f"cannot enter {ns}")
    os.close(fd)
    try:
        os.execvp(command[0], list(command))
    except FileNotFoundError:
        raise NetlabError(f"{command[0]}: command not found") from None


@cli.command()
@click.option("-l", "--lab", "lab_name", help="The lab (default: the only one).")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.Path(dir_okay=False))
def apply(lab_name: str | None, files: tuple[str, ...]) -> None:
    """Create or update Nodes, Pods, Services and EndpointSlices in a running lab."""
    from netlab import lab

    changes = lab.apply(lab_name, list(files))
    click.echo("\n".join(f"{c} configured" for c in changes) or "nothing changed")


@cli.command()
@click.option("-l", "--lab", "lab_name", help="The lab (default: the only one).")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Delete a Node's pods with it (else a Node with pods is refused).")
def delete(lab_name: str | None, files: tuple[str, ...], force: bool) -> None:
    """Delete the Nodes, Pods, Services and EndpointSlices named in FILE from a running lab."""
    from netlab import lab

    removed = lab.delete(lab_name, list(files), force)
    click.echo("\n".join(f"{r} deleted" for r in removed) or "nothing to delete")


@cli.group()
def node() -> None:
    """Add nodes to a running lab, or remove them."""


@node.command("add")
@click.option("-l", "--lab", "lab_name", help="The lab (default: the only one).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A node label (repeatable).")
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds to wait for the node to be ready.")
@click.argument("name")
def node_add(lab_name: str | None, labels: tuple[str, ...], timeout: float, name: str) -> None:
    """Add node NAME: next node address and pod subnet, its flanneld and kube-proxy; wait until it is ready."""
    from netlab import lab

    res = lab.node_add(lab_name, name, labels, timeout)
    n = res.node
    if res.created:
        click.echo(f"node {name} added to lab {res.lab}: {n.ip}, podCIDR {n.pod_cidr}, ready in {res.seconds:.1f}s")
    elif res.changes:
        click.echo(f"node {name} updated in lab {res.lab}: " + "; ".join(res.changes))
    else:
        click.echo(f"node {name} is already in lab {res.lab} ({n.ip}, podCIDR {n.pod_cidr}): nothing changed")


@node.command("remove")
@click.option("-l", "--lab", "lab_name", help="The lab (default: the only one).")
@click.option("--force", is_flag=True, help="Delete the node's pods with it (else a node with pods is refused).")
@click.argument("name")
def node_remove(lab_name: str | None, force: bool, name: str) -> None:
    """Remove node NAME: stop its agents, release its lease, remove its pods and namespace; peers forget it."""
    from netlab import lab

    res = lab.node_remove(lab_name, name, force)
    pods = f", {len(res.pods)} pod(s) deleted with it" if res.pods else ""
    click.echo(f"node {name} removed from lab {res.lab} ({res.node.ip}, podCIDR {res.node.pod_cidr}){pods}"
               f" in {res.seconds:.1f}s")


@cli.command()
@click.argument("lab_name", required=False, metavar="[LAB]")
@click.option("-o", "--output", type=click.Choice(["dot", "mermaid"]), default="dot", show_default=True)
def graph(lab_name: str | None, output: str) -> None:
    """The lab's topology as Graphviz dot or Mermaid."""
    from netlab import lab
    from netlab.render import to_dot, to_mermaid

    st = lab.status(lab_name)
    click.echo(to_dot(st) if output == "dot" else to_mermaid(st))


@cli.command()
@click.argument("lab_name", required=False, metavar="[LAB]")
def check(lab_name: str | None) -> None:
    """Connectivity check: every pod to every other pod (TCP and UDP), and every node to its pods."""
    from netlab import lab
    from netlab.check import run_checks
    from netlab.render import check_table

    lab.require_root()
    st = lab.status(lab_name)
    results = run_checks(st)
    _console().print(check_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        raise NetlabError(f"{len(failed)} of {len(results)} checks failed")


def _register_plugins() -> None:
    """Command groups that other packages of netlab provide."""
    try:
        from cni.cli import cni
    except ImportError:
        return
    cli.add_command(cni)


_register_plugins()


def main() -> None:
    cli(prog_name="netlab")


if __name__ == "__main__":
    main()
