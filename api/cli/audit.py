"""`cshare audit`: the organization's audit log, newest first."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.options import JsonOpt, OrgOpt

PAGE_SIZE = 100


def _target(event: dict[str, Any]) -> str:
    kind, ident = event.get("target_type") or "", event.get("target_id") or ""
    return f"{kind}:{ident}" if kind and ident else str(kind or ident)


def _actor(event: dict[str, Any]) -> Any:
    actor = event.get("actor")
    if isinstance(actor, dict):  # tolerate a richer actor object
        return actor.get("name") or actor.get("id")
    return actor or event.get("actor_name")


def audit(
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action, e.g. member.role_changed or member.*"),
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this user's actions.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=100_000, help="At most this many events.")
    ] = 50,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show the organization's audit log (admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    items: list[dict[str, Any]] = []
    cursor: Any = None
    seen: set[str] = set()
    with connect(cfg) as client:
        # Follow next_cursor until `limit` events are collected or the log ends.
        while len(items) < limit:
            page = client.get(
                f"/orgs/{seg(slug)}/audit",
                params={
                    "limit": min(PAGE_SIZE, limit - len(items)),
                    "cursor": cursor,
                    "action": action,
                    "actor": actor,
                },
            )
            items.extend(page.get("items", []))
            cursor = page.get("next_cursor")
            if cursor is None or str(cursor) in seen:  # a repeated cursor would loop
                break
            seen.add(str(cursor))
    items = items[:limit]
    if json_:
        output.print_json({"items": items, "next_cursor": cursor})
        return
    output.table(
        ["TIME", "ACTOR", "ACTION", "TARGET", "ID"],
        (
            [output.when(e.get("at")), _actor(e), e.get("action"), _target(e), e.get("id")]
            for e in items
        ),
        title=f"Audit log of {slug}",
        empty="No audit events match.",
    )
    if cursor is not None:
        output.note("More events exist: raise --limit to see them.")
