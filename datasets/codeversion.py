"""Which code a job ran: the git commit (and whether the checkout had local changes), or,
outside git, a checksum of the code bundle.

Standard library only and importing nothing else of this project, like `datasets.wire`:
the agent calls it on the machine, where the flow's code is, and reports the result for
the job's lineage (`POST /orgs/{org}/jobs/{id}/lineage`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache"})
MAX_FILES = 20_000


def _git(path: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def bundle_sha256(path: Path) -> tuple[str, int, bool]:
    """A checksum over the files under `path` (relative names and contents, sorted),
    their count, and whether the count limit cut it short."""
    digest = hashlib.sha256()
    count = 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            if count >= MAX_FILES:
                return digest.hexdigest(), count, True
            file = Path(folder) / name
            rel = file.relative_to(path).as_posix()
            content = hashlib.sha256()
            try:
                with file.open("rb") as f:
                    while data := f.read(1 << 20):
                        content.update(data)
            except OSError:
                continue
            digest.update(f"{content.hexdigest()} {rel}\n".encode())
            count += 1
    return digest.hexdigest(), count, False


def code_version(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`{"source": "git", "git_commit", "git_dirty"}` when `path` is in a git checkout,
    else `{"source": "bundle", "bundle_sha256", "files"}`."""
    root = Path(path)
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        return {"source": "git", "git_commit": commit, "git_dirty": bool(status)}
    sha, files, truncated = bundle_sha256(root)
    result: dict[str, Any] = {"source": "bundle", "bundle_sha256": sha, "files": files}
    if truncated:
        result["truncated"] = True
    return result
