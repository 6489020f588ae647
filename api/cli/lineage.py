"""`cshare lineage DATASET[@VERSION] | --job ID`: where a result came from and what used it,
as a text tree (rich), JSON, or Graphviz DOT (`--dot | dot -Tsvg > lineage.svg`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.datasets import human_size, parse_ref
from api.cli.jobs import describe_code
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import UsageProblem


def lineage(
    ref: Annotated[
        str | None, typer.Argument(metavar="DATASET[@VERSION]", help="Default version: latest.")
    ] = None,
    job: Annotated[str | None, typer.Option("--job", help="Start from this job instead.")] = None,
    dot: Annotated[bool, typer.Option("--dot", help="Print Graphviz DOT.")] = False,
    depth: Annotated[int, typer.Option("--depth", min=0, max=50, help="Hops each way.")] = 10,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Which jobs produced a dataset version (and from what), and which jobs and outputs
    used it; or a job's inputs, outputs and how it ran."""
    if (ref is None) == (job is None):
        raise UsageProblem("Give either DATASET[@VERSION] or --job ID.")
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        if job is not None:
            graph = client.get(
                f"/orgs/{seg(slug)}/jobs/{seg(job)}/lineage", params={"depth": depth}
            )
        else:
            assert ref is not None
            name, version = parse_ref(ref)
            params: dict[str, Any] = {"dataset": name, "depth": depth}
            if version != "latest":
                params["version"] = version
            graph = client.get(f"/orgs/{seg(slug)}/lineage", params=params)
    if json_:
        output.print_json(graph)
    elif dot:
        typer.echo(to_dot(graph))
    else:
        Console(highlight=False, soft_wrap=True).print(to_tree(graph))
        if graph.get("truncated"):
            output.note("The graph was cut at its size limit; lower --depth to see less.")


def label(node: dict[str, Any]) -> str:
    if node.get("type") == "job":
        who = node.get("user") or "?"
        what = node.get("deployment") or "job"
        return f"job {str(node.get('job_id', ''))[:8]} {what} by {who} [{node.get('state')}]"
    if node.get("hidden"):
        return "a dataset version you may not read"
    extra = " (deleted)" if node.get("tombstoned") else ""
    return (
        f"{node.get('dataset')}@{node.get('version')} {human_size(node.get('size'))} "
        f"sha256 {str(node.get('sha256', ''))[:12]}{extra}"
    )


def to_tree(graph: dict[str, Any]) -> Tree:
    """The root, then 'came from' (upstream) and 'used by' (downstream) branches."""
    nodes = {n["id"]: n for n in graph.get("nodes", [])}
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for e in graph.get("edges", []):
        parents.setdefault(e["target"], []).append(e["source"])
        children.setdefault(e["source"], []).append(e["target"])
    root = graph["root"]
    tree = Tree(Text(label(nodes.get(root, {"id": root})), style="bold"))

    def grow(branch: Tree, node_id: str, links: dict[str, list[str]], seen: set[str]) -> None:
        for other in sorted(links.get(node_id, [])):
            text = Text(label(nodes.get(other, {"id": other})))
            if other in seen:
                branch.add(text + Text(" (see above)", style="dim"))
                continue
            grow(branch.add(text), other, links, seen | {other})

    if parents.get(root):
        grow(tree.add(Text("came from", style="cyan")), root, parents, {root})
    if children.get(root):
        grow(tree.add(Text("used by / produced", style="green")), root, children, {root})
    if not parents.get(root) and not children.get(root):
        tree.add(Text("no recorded jobs yet", style="dim"))
    job = graph.get("job")
    if isinstance(job, dict):
        facts = tree.add(Text("run", style="magenta"))
        code = job.get("code") or {}
        for key, value in (
            ("deployment", job.get("deployment")),
            ("entrypoint", job.get("entrypoint")),
            ("code", _code_text(code)),
            ("image", _image(job.get("image"))),
            ("machine", (job.get("machine") or {}).get("name")),
            ("parameters", job.get("parameters")),
            ("duration", f"{job['duration_s']:.1f} s" if job.get("duration_s") else None),
            ("used", _used((job.get("resources") or {}).get("used") or {})),
            ("state", job.get("state")),
        ):
            if value not in (None, "", {}):
                facts.add(Text(f"{key}: {value}"))
    return tree


def _used(used: dict[str, Any]) -> str | None:
    """`12.3 s wall, 4.1 CPU s, peak 210 MB` (what the machine measured)."""
    parts = []
    if used.get("wall_s") is not None:
        parts.append(f"{float(used['wall_s']):.1f} s wall")
    if used.get("cpu_s") is not None:
        parts.append(f"{float(used['cpu_s']):.1f} CPU s")
    if used.get("max_rss_mb") is not None:
        parts.append(f"peak {float(used['max_rss_mb']):.0f} MB")
    return ", ".join(parts) or None


def _code_text(code: dict[str, Any]) -> str | None:
    if code.get("kind") in ("bundle", "git"):
        return describe_code(code)
    value = code.get("git_commit") or code.get("bundle_sha256")
    return str(value) if value else None


def _image(image: Any) -> str | None:
    """`ref@sha256:...` of a container job's {ref, digest}; a reported string as is."""
    if isinstance(image, dict):
        return "@".join(str(v) for v in (image.get("ref"), image.get("digest")) if v) or None
    return str(image) if image else None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def to_dot(graph: dict[str, Any]) -> str:
    lines = ["digraph lineage {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for n in graph.get("nodes", []):
        shape = "ellipse" if n.get("type") == "job" else "box"
        style = ', style="bold"' if n["id"] == graph.get("root") else ""
        lines.append(f"  {_quote(n['id'])} [label={_quote(label(n))}, shape={shape}{style}];")
    for e in graph.get("edges", []):
        lines.append(
            f"  {_quote(e['source'])} -> {_quote(e['target'])} [label={_quote(e['kind'])}];"
        )
    lines.append("}")
    return "\n".join(lines)
