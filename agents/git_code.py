"""A job's code from a Git repository, on the machine: one read-only checkout per
(repository, commit), fetched once and shared by every job pinned to that commit.

`checkout(url, commit, cache_dir, credential_material)` returns the tree. It fetches
exactly that commit (`git fetch --depth 1 origin <sha>`: GitHub, GitLab and git's
protocol v2 serve any commit; an older server that only hands out ref tips gets one full
fetch of its branches and tags, then the commit must be among them), checks HEAD is the
commit, drops `.git` (a job gets the files, not a repository it could push from, and no
remote URL) and makes the tree read-only. The credential exists only while git runs, in
a temp directory inside the cache that is removed after (`datasets.gitauth`).

Layout under `cache_dir`: `git/<url digest>-<commit>/` (trees), `git/stamps/` (each
tree's size; its mtime is when a job last used it, for `prune`), `git/locks/`, and
`git/tmp/` (work in progress, renamed into place when complete: a tree that exists is
whole). Standard library and the `git` command only: no server code here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Final

from datasets import gitauth

COMMIT_RE: Final = re.compile(r"^[0-9a-f]{40}$")
FETCH_TIMEOUT_S: Final = 600.0


class GitCheckoutError(RuntimeError):
    """The commit could not be fetched; the message says why (never with the secret)."""


def tree_key(url: str, commit: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return f"{digest}-{commit}"


def _git(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    material: Mapping[str, str] | None,
    *,
    what: str,
) -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=FETCH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitCheckoutError(f"{what}: no answer within {FETCH_TIMEOUT_S:g} s.") from None
    if done.returncode != 0:
        message = gitauth.scrub(done.stderr, material).strip().splitlines()
        raise GitCheckoutError(f"{what}: {'; '.join(message[-3:]) or 'git failed'}")
    return done.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_read_only(root: Path) -> None:
    """Files 0444 (0555 if executable), directories below `root` 0555 (`root` itself
    after its rename: moving a directory needs it writable). Symlinks are left alone:
    chmod would follow them out of the tree."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            path.chmod(0o555 if mode & stat.S_IXUSR else 0o444)
        for name in dirs:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(0o555)


def _remove(path: Path) -> None:
    """Remove a tree even when it is read-only."""
    if not path.exists():
        return
    for folder, dirs, _files in os.walk(path):
        Path(folder).chmod(0o755)
        for name in dirs:
            sub = Path(folder) / name
            if not sub.is_symlink():
                sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def _fetch(
    repo: Path, url: str, commit: str, material: Mapping[str, str] | None, temp_root: Path
) -> None:
    with gitauth.git_env(material, temp_root=temp_root) as env:
        _git(["init", "-q"], env, repo, material, what="git init")
        _git(["remote", "add", "--", "origin", url], env, repo, material, what="git remote add")
        try:
            _git(
                ["fetch", "-q", "--depth", "1", "--no-tags", "origin", commit],
                env,
                repo,
                material,
                what=f"Fetching commit {commit} from {url}",
            )
        except GitCheckoutError as first:
            # A server that hands out ref tips only: everything, then look for it.
            try:
                _git(
                    [
                        "fetch",
                        "-q",
                        "--no-tags",
                        "origin",
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                    env,
                    repo,
                    material,
                    what=f"Fetching {url}",
                )
            except GitCheckoutError:
                raise first from None
            try:
                _git(["cat-file", "-e", f"{commit}^{{commit}}"], env, repo, material, what="")
            except GitCheckoutError:
                raise GitCheckoutError(
                    f"Commit {commit} is not in {url} (not on any branch or tag there)."
                ) from None
        _git(
            ["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
            env,
            repo,
            material,
            what=f"Checking out {commit}",
        )
        head = _git(["rev-parse", "HEAD"], env, repo, material, what="git rev-parse").strip()
    if head != commit:
        raise GitCheckoutError(f"The checkout of {url} is at {head}, not {commit}.")


def checkout(
    url: str,
    commit: str,
    cache_dir: Path,
    credential_material: Mapping[str, str] | None = None,
) -> Path:
    """The read-only tree of `commit` of the repository at `url`, fetched if not cached.

    Two jobs asking at once fetch once (a lock per tree); `GitCheckoutError` says what
    went wrong."""
    commit = commit.strip().lower()
    if not COMMIT_RE.fullmatch(commit):
        raise GitCheckoutError(f"'{commit}' is not a full 40-digit commit sha.")
    gitauth.check_material(credential_material)
    if not url or url.startswith("-") or any(c.isspace() for c in url):
        raise GitCheckoutError(f"'{url}' is not a Git repository URL.")
    root = cache_dir / "git"
    for sub in ("locks", "tmp", "stamps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    key = tree_key(url, commit)
    tree = root / key
    if tree.is_dir():
        _used(root, key)
        return tree
    with _locked(root / "locks" / f"{key}.lock"):
        if tree.is_dir():  # fetched by another job while we waited
            _used(root, key)
            return tree
        # Left by an agent that died mid-fetch (we hold this tree's lock: nobody else
        # works on it now).
        for stale in (root / "tmp").glob(f"{key}-*"):
            _remove(stale)
        work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root / "tmp"))
        try:
            repo = work / "repo"
            repo.mkdir()
            _fetch(repo, url, commit, credential_material, work)
            _remove(repo / ".git")
            _make_read_only(repo)
            size = sum(p.lstat().st_size for p in repo.rglob("*"))
            (root / "stamps" / f"{key}.json").write_text(json.dumps({"bytes": size}))
            repo.rename(tree)
            tree.chmod(0o555)
        finally:
            _remove(work)
    return tree


def _used(root: Path, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(root / "stamps" / f"{key}.json")


def entries(cache_dir: Path) -> list[tuple[float, str, int]]:
    """(last used, tree key, bytes) of every cached tree, least recently used first."""
    found = []
    for stamp in (cache_dir / "git" / "stamps").glob("*.json"):
        try:
            found.append(
                (stamp.stat().st_mtime, stamp.stem, int(json.loads(stamp.read_text())["bytes"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found)


def prune(cache_dir: Path, max_bytes: int, keep: Collection[str] = ()) -> list[str]:
    """Remove least recently used trees until the cache holds at most `max_bytes`; never
    those in `keep` (running jobs' trees) nor one being fetched. Returns their keys."""
    root = cache_dir / "git"
    found = entries(cache_dir)
    total = sum(size for _used_at, _key, size in found)
    evicted: list[str] = []
    for _used_at, key, size in found:
        if total <= max_bytes:
            break
        if key in keep:
            continue
        with (root / "locks" / f"{key}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                (root / "stamps" / f"{key}.json").unlink(missing_ok=True)
                _remove(root / key)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        total -= size
        evicted.append(key)
    return evicted
