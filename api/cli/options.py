"""Options shared by the commands."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

OrgOpt = Annotated[
    str | None,
    typer.Option(
        "--org",
        help="Organization slug (default: CSHARE_ORG, else the current org).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Server URL to use and remember (default: CSHARE_API_URL, else the config).",
        show_default=False,
    ),
]


class LogFormatChoice(StrEnum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[
    LogFormatChoice | None,
    typer.Option(
        "--log-format",
        help="How log lines look: text (for people) or json (one object per line). "
        "Default: CSHARE_LOG_FORMAT, else text.",
        show_default=False,
    ),
]
