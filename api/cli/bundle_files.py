"""Which files of a project travel in its code bundle (`cshare deploy`).

The project root is the nearest ancestor of the entrypoint holding `prefect.yaml`,
`pyproject.toml` or `.git`. Files ignored by a `.gitignore` (the root's and nested ones,
git's rules through `pathspec`) or by a `.cshareignore` at the root are left out, and so
are `.git`, `__pycache__` and virtual environments, always. The pure packing lives in
`datasets.bundle_format` (shared with the agent).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pathspec

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MARKERS",
    "BundleTooLarge",
    "Selection",
    "max_bytes_from_env",
    "project_root",
    "select_files",
]

MARKERS: Final = ("prefect.yaml", "pyproject.toml", ".git")
ALWAYS_SKIPPED: Final = frozenset({".git", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache"})
DEFAULT_MAX_BYTES: Final = 100 * 1024 * 1024
LARGEST_SHOWN: Final = 10


class BundleTooLarge(ValueError):
    def __init__(self, total: int, limit: int, largest: list[tuple[int, str]]) -> None:
        listing = "\n".join(f"  {_human(size):>10}  {path}" for size, path in largest)
        super().__init__(
            f"The project's files add up to {_human(total)}, more than the bundle limit of "
            f"{_human(limit)} (CSHARE_BUNDLE_MAX_BYTES). The largest files:\n{listing}\n"
            "Leave them out with .gitignore or .cshareignore, or raise the limit."
        )
        self.total = total
        self.limit = limit
        self.largest = largest


@dataclass(frozen=True)
class Selection:
    root: Path
    files: list[str]  # relative, '/'-separated, sorted
    total_bytes: int


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def max_bytes_from_env() -> int:
    value = os.environ.get("CSHARE_BUNDLE_MAX_BYTES", "").strip()
    return int(value) if value.isdecimal() else DEFAULT_MAX_BYTES


def project_root(start: Path) -> Path:
    """The nearest ancestor of `start` (a file or directory) holding a project marker;
    `start`'s own directory when none does."""
    here = start.resolve()
    folder = here if here.is_dir() else here.parent
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in MARKERS):
            return candidate
    return folder


def _spec(path: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file kept, nested `.gitignore`s applied to their
    own subtree, ignored directories not descended into."""
    root_specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    for name in (".gitignore", ".cshareignore"):
        spec = _spec(root / name)
        if spec is not None:
            root_specs.append(("", spec))
    stack: list[tuple[Path, list[tuple[str, pathspec.GitIgnoreSpec]]]] = [(root, root_specs)]
    while stack:
        folder, specs = stack.pop()
        rel_folder = folder.relative_to(root).as_posix()
        rel_folder = "" if rel_folder == "." else rel_folder
        if rel_folder:
            nested = _spec(folder / ".gitignore")
            if nested is not None:
                specs = [*specs, (rel_folder + "/", nested)]
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and (entry.name in ALWAYS_SKIPPED or _is_venv(Path(entry.path))):
                continue
            if _ignored(specs, rel, is_dir):
                continue
            if is_dir:
                stack.append((Path(entry.path), specs))
            elif entry.is_file(follow_symlinks=False):
                yield rel, Path(entry.path)
            elif entry.is_symlink() and _inside(root, Path(entry.path)):
                yield rel, Path(entry.path)  # a link to a file of the project: its content


def _is_venv(folder: Path) -> bool:
    return (folder / "pyvenv.cfg").is_file()


def _inside(root: Path, link: Path) -> bool:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return target.is_file() and target.is_relative_to(root.resolve())


def _ignored(specs: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
    ignored = False
    for base, spec in specs:
        if base and not rel.startswith(base):
            continue
        sub = rel[len(base) :] + ("/" if is_dir else "")
        result = spec.check_file(sub)
        if result.include is not None:
            ignored = bool(result.include)
    return ignored


def select_files(root: Path, *, max_bytes: int | None = None) -> Selection:
    """The files of the project at `root` that go in its bundle; BundleTooLarge (listing
    the largest files) when they add up to more than `max_bytes`."""
    limit = max_bytes_from_env() if max_bytes is None else max_bytes
    found = [(rel, path.stat().st_size) for rel, path in _walk(root)]
    total = sum(size for _rel, size in found)
    if total > limit:
        largest = sorted(((size, rel) for rel, size in found), reverse=True)[:LARGEST_SHOWN]
        raise BundleTooLarge(total, limit, largest)
    return Selection(root, sorted(rel for rel, _size in found), total)
