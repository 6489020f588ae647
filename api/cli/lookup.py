"""Turning what a person types (a name, an id, a link) into what the API wants."""

from __future__ import annotations

import sys
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from api.cli.client import Client, seg
from api.cli.output import CliError, UsageProblem


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def member_id(client: Client, org: str, user: str) -> tuple[str, dict[str, Any] | None]:
    """A member's user id from an id or a user name (through `GET /orgs/{org}/members`).

    Returns the id and the member row when it was looked up.
    """
    if is_uuid(user):
        return str(uuid.UUID(user)), None
    members = client.list_all(f"/orgs/{seg(org)}/members")
    exact = [m for m in members if m.get("user", {}).get("name") == user]
    if not exact:  # user names are compared as typed first, then ignoring case
        exact = [
            m for m in members if str(m.get("user", {}).get("name", "")).lower() == user.lower()
        ]
    if len(exact) == 1:
        return str(exact[0]["user"]["id"]), exact[0]
    if not exact:
        raise CliError(
            f"No member named '{user}' in '{org}'.",
            hint=f"See `cshare member list --org {org}`; a user id works too.",
        )
    raise CliError(f"Several members are named '{user}' in '{org}'; give the user id instead.")


def invitation_code(value: str) -> str:
    """The code from a bare code or from the link `invite create` printed.

    Accepts `.../invitations/CODE`, `.../invitations/CODE/accept`, `...?code=CODE` and
    similar, so a person can paste whatever they were sent.
    """
    value = value.strip()
    if "/" not in value and "?" not in value:
        if not value:
            raise UsageProblem("The invitation code is empty.")
        return value
    parts = urlsplit(value if "://" in value else "http://x/" + value.lstrip("/"))
    query = parse_qs(parts.query)
    for key in ("code", "invite", "invitation"):
        if query.get(key):
            return query[key][0]
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[-1] == "accept":
        segments.pop()
    if not segments:
        raise UsageProblem(f"No invitation code found in '{value}'.")
    return segments[-1]


def read_secret_stdin(what: str) -> str:
    """One line from stdin (a password or token piped in), without its newline."""
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UsageProblem(f"Expected the {what} on standard input, got nothing.")
    return line
