"""``app flows ...``: create, publish, version, build and inspect flows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec

from app.cli.common import container, fail, read_graph, run_async
from app.domain.builds import BuildStatus
from app.domain.flows import Flow
from app.domain.graph import default_registry, validate_graph
from app.infra.plugins import load_node_types

_GRAPH_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)


@click.group(name="flows")
def flows_group() -> None:
    """Manage flows."""


@flows_group.command(name="create")
@click.option("--name", required=True)
@click.option("--owner", "owner_id", required=True, help="The owner's user id.")
@click.option("--graph", "graph_file", required=True, type=_GRAPH_FILE, help="The graph, JSON.")
@click.option("--online", is_flag=True, help="Publish it at once.")
@run_async
async def create(name: str, owner_id: str, graph_file: Path, online: bool) -> None:
    """Create a flow; prints its id."""
    graph = read_graph(graph_file)
    async with container() as c:
        flow = await c.catalog.create(name=name, owner_id=owner_id, graph=graph, online=online)
    click.echo(flow.id)


@flows_group.command(name="publish")
@click.argument("flow_id")
@run_async
async def publish(flow_id: str) -> None:
    """Put a flow online."""
    async with container() as c:
        await c.catalog.set_online(flow_id, True)
    click.echo(f"flow {flow_id} is online", err=True)


@flows_group.command(name="unpublish")
@click.argument("flow_id")
@run_async
async def unpublish(flow_id: str) -> None:
    """Take a flow offline."""
    async with container() as c:
        await c.catalog.set_online(flow_id, False)
    click.echo(f"flow {flow_id} is offline", err=True)


@flows_group.command(name="delete")
@click.argument("flow_id")
@run_async
async def delete(flow_id: str) -> None:
    """Delete a flow and its versions."""
    async with container() as c:
        await c.catalog.delete(flow_id)
    click.echo(f"flow {flow_id} deleted", err=True)


@flows_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@run_async
async def list_flows(as_json: bool) -> None:
    """A header, then one tab-separated line per flow: id, status, owner, name."""
    async with container() as c:
        flows = await c.catalog.list()
    if as_json:
        summaries = [{k: v for k, v in _public(flow).items() if k != "graph"} for flow in flows]
        click.echo(msgspec.json.format(msgspec.json.encode(summaries), indent=2).decode())
        return
    click.echo("ID\tSTATUS\tOWNER\tNAME")
    for flow in flows:
        click.echo(f"{flow.id}\t{_status(flow)}\t{flow.owner_id}\t{flow.name}")


@flows_group.command(name="show")
@click.argument("flow_id")
@run_async
async def show(flow_id: str) -> None:
    """The flow as JSON (its status spelt as ``list`` spells it)."""
    async with container() as c:
        flow = await c.catalog.get(flow_id)
    click.echo(msgspec.json.format(msgspec.json.encode(_public(flow)), indent=2).decode())


@flows_group.group(name="version")
def version_group() -> None:
    """Manage a flow's versions."""


@version_group.command(name="add")
@click.argument("flow_id")
@click.option("--graph", "graph_file", required=True, type=_GRAPH_FILE)
@click.option("--name", default=None)
@click.option("--current", is_flag=True, help="Make it the flow's current graph.")
@run_async
async def add_version(flow_id: str, graph_file: Path, name: str | None, current: bool) -> None:
    """Save a new version of a flow; prints its id."""
    graph = read_graph(graph_file)
    async with container() as c:
        version = await c.catalog.add_version(flow_id, graph=graph, name=name, make_current=current)
    click.echo(version.id)


@flows_group.command(name="build")
@click.argument("flow_id")
@click.option("--version", "version_id", type=int, default=None, help="Build this version.")
@click.option("--graph", "graph_file", type=_GRAPH_FILE, default=None, help="Build a draft.")
@run_async
async def build(flow_id: str, version_id: int | None, graph_file: Path | None) -> None:
    """Validate and record a build for debug connections; prints its status."""
    draft = read_graph(graph_file) if graph_file is not None else None
    async with container() as c:
        record = await c.catalog.build(flow_id, version_id=version_id, draft=draft)
    click.echo(record.status.value)
    if record.status is not BuildStatus.SUCCESS:
        raise fail("build failed:\n  " + "\n  ".join(record.problems))


@flows_group.command(name="validate")
@click.argument("graph_file", type=_GRAPH_FILE)
def validate(graph_file: Path) -> None:
    """Check a graph file without storing anything."""
    registry = default_registry()
    load_node_types(registry)
    problems = validate_graph(read_graph(graph_file), registry)
    if problems:
        raise fail("invalid graph:\n  " + "\n  ".join(problems))
    click.echo("valid")


def _status(flow: Flow) -> str:
    """The one spelling of a flow's status in the CLI (the wire's 2 is bisheng's number)."""
    return "online" if flow.is_online else "offline"


def _public(flow: Flow) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.structs.asdict(flow)
    fields["status"] = _status(flow)
    return fields
