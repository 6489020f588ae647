"""Logging for the long-running commands (`server`, `agent start`, `up`): one setup,
agents/logsetup.py, with the format from `--log-format` or the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.cli.output import UsageProblem

if TYPE_CHECKING:
    from agents.logsetup import LogFormat


def setup(log_format: str | None) -> LogFormat:
    """Configure this process's logging; returns the format used (children get it too)."""
    # Imported here: the other commands start without pydantic.
    from pydantic import ValidationError

    from agents.logsetup import configure
    from orgs.config import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "CSHARE_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UsageProblem(f"{where}: {first['msg']}") from None
    chosen: LogFormat = "json" if (log_format or settings.log_format) == "json" else "text"
    configure(chosen, settings.log_level)
    return chosen
