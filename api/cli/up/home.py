"""Files under CSHARE_HOME: private folders and the secrets written there (0700 / 0600)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write `value` to a new 0600 file (created with that mode: never readable by others)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    path.chmod(0o600)


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = make()
    write_secret(path, value)
    return value
