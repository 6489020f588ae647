"""How quantities read for people, the same in the CLI and the web console (the API's JSON
keeps raw numbers: seconds, MB)."""

from __future__ import annotations

from typing import Final

NONE: Final = "—"


def duration(seconds: float | None) -> str:
    """Compute time and run times: `45 s`, `2 min`, `1 h 05 min`, `1,234 h`.

    Minutes below an hour, hours and minutes up to 100 h (a bill is read in hours, so no
    days), whole hours beyond. Rounded to the nearest unit shown."""
    if seconds is None:
        return NONE
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 100 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest:02d} min"
    return f"{round(seconds / 3600):,} h"


def memory_mb(mb: float | None) -> str:
    """Memory as machines report it (`memory_mb`: MiB, i.e. MemTotal / 1024) in GiB with
    one decimal: `23.5 GiB`, `0.5 GiB`."""
    if mb is None or isinstance(mb, bool):
        return NONE
    return f"{float(mb) / 1024:,.1f} GiB"
