"""A job's code bundle on the machine: fetched once per digest, verified, unpacked into a
read-only cache, and laid out as the job's own working copy. A Git job's commit takes
the same path (`prepare_git`): one read-only tree per (repository, commit) under
`cache/git/` (agents.git_code), then the same per-job hard-link farm.

    cache/objects/<hex>/          the unpacked bundle: files 0444, directories 0555
    cache/objects/<hex>.json      what was verified (path, size, mtime, mode per file);
                                  its mtime is when the entry was last used (eviction)
    cache/locks/<hex>.lock        flock: exclusive while fetching or evicting, shared
                                  while a job builds its copy (an entry in use is never
                                  evicted)

A job gets a fresh directory (`CSHARE_CODE_DIR`) that is a hard-link farm of the cached
tree (a copy where the cache is on another filesystem): building it costs one link per
file, no bytes. Its directories are the job's (it may write new files next to its code);
the linked files stay 0444. A job running as the agent's user could still `chmod` a
linked file and change it: the cache therefore re-checks an entry's recorded stat before
handing it to the next job and fetches it again if anything changed.

HTTP only (the job's own token, `GET /orgs/{org}/jobs/{id}/code`); no server code
(`datasets.bundle_format` is the stdlib-only format shared with the CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import httpx

from agents import git_code
from datasets import bundle_format

log = logging.getLogger("cshare.agent.code")

API_PREFIX: Final = "/api/v1"
TIMEOUT: Final = httpx.Timeout(300.0, connect=10.0)
DEFAULT_MAX_BYTES: Final = 2 << 30
CODE_DIR_NAME: Final = "code"


class CodeFetchError(RuntimeError):
    """The job's code could not be fetched or verified; the job must not start."""


@dataclass(frozen=True)
class PreparedCode:
    code_dir: Path
    digest: str  # a bundle's digest; a Git job's commit
    cached: bool  # True: the bundle (or Git tree) was in the cache already (no download)
    fetch_ms: int  # from asking the cache to the job's copy being ready
    files: int
    repository: str | None = None  # a Git job's repository URL

    def report(self) -> dict[str, Any]:
        """What goes to the job's lineage (`code`), shown by `cshare job show`."""
        if self.repository is not None:
            return {
                "kind": "git",
                "repository": self.repository,
                "commit": self.digest,
                "fetch_ms": self.fetch_ms,
                "cached": self.cached,
            }
        return {
            "kind": "bundle",
            "digest": self.digest,
            "fetch_ms": self.fetch_ms,
            "cached": self.cached,
        }

    def describe(self) -> str:
        """For the job's log: `Code bundle sha256:1a2b3c4d5e6f` / `Git commit <url>@<sha12>`."""
        if self.repository is not None:
            return f"Git commit {self.repository}@{self.digest[:12]}"
        return f"Code bundle {bundle_format.short(self.digest)}"


def max_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    value = (environ if environ is not None else os.environ).get(
        "CSHARE_AGENT_CODE_CACHE_MAX_BYTES", ""
    )
    return int(value) if value.strip().isdecimal() else DEFAULT_MAX_BYTES


def _make_read_only(path: Path) -> None:
    for folder, dirs, files in os.walk(path, topdown=False):
        for name in files:
            (Path(folder) / name).chmod(0o444)
        for name in dirs:
            (Path(folder) / name).chmod(0o555)
    path.chmod(0o555)


def remove_tree(path: Path) -> None:
    """Remove `path` even when its directories are read-only."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, _files in os.walk(path):
            for name in dirs:
                with contextlib.suppress(OSError):
                    (Path(folder) / name).chmod(0o755)
        with contextlib.suppress(OSError):
            path.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class CodeCache:
    """Unpacked bundles by digest, size-capped (least recently used evicted first)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for sub in ("objects", "tmp", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "objects" / bundle_format.digest_hex(digest)

    def _stamp_file(self, digest: str) -> Path:
        return self.path(digest).with_suffix(".json")

    def _lock_file(self, hex_digest: str) -> Path:
        return self.root / "locks" / f"{hex_digest}.lock"

    @staticmethod
    def _stamp(target: Path) -> list[list[Any]]:
        # Plain strings and scandir, not pathlib: this runs at every cached job start.
        stamp: list[list[Any]] = []
        pending = [("", os.fspath(target))]
        while pending:
            rel_dir, folder = pending.pop()
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((rel, entry.path))
                    continue
                st = entry.stat(follow_symlinks=False)
                stamp.append([rel, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)])
        stamp.sort(key=lambda item: item[0])
        return stamp

    def valid(self, digest: str) -> bool:
        """Present, and unchanged since it was verified."""
        try:
            recorded = json.loads(self._stamp_file(digest).read_text())
        except (FileNotFoundError, ValueError):
            return False
        target = self.path(digest)
        return target.is_dir() and recorded == self._stamp(target)

    @contextlib.contextmanager
    def use(self, digest: str, fetch: Any) -> Iterator[tuple[Path, bool]]:
        """The verified unpacked bundle (fetching it with `fetch(file)` when missing) and
        whether it was in the cache already; held in use (shared lock) until the block
        ends. Two jobs asking for one digest at once fetch it once: the second waits."""
        hex_digest = bundle_format.digest_hex(digest)
        with self._lock_file(hex_digest).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                cached = self.valid(digest)
                if cached:
                    os.utime(self._stamp_file(digest))  # used now (for eviction)
                else:
                    self._fetch_into_cache(digest, fetch)
                # Downgrade: other jobs may use it too; eviction (exclusive) must wait.
                fcntl.flock(handle, fcntl.LOCK_SH)
                yield self.path(digest), cached
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _fetch_into_cache(self, digest: str, fetch: Any) -> None:
        self.evict_now(digest)
        work = self.root / "tmp" / uuid.uuid4().hex
        work.mkdir()
        archive = work / "bundle.tar.gz"
        unpacked = work / "tree"
        try:
            with archive.open("wb") as out:
                fetch(out)
            try:
                bundle_format.unpack(archive, unpacked, digest=digest)
            except bundle_format.BundleError as exc:
                raise CodeFetchError(f"code bundle {digest}: {exc}") from None
            _make_read_only(unpacked)
            target = self.path(digest)
            unpacked.rename(target)
            self._stamp_file(digest).write_text(json.dumps(self._stamp(target)))
        finally:
            remove_tree(work)

    def evict_now(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._stamp_file(digest).unlink()
        remove_tree(self.path(digest))

    def entries(self) -> list[tuple[float, str, int]]:
        """(last used, digest, bytes) of every verified entry, least recently used first."""
        found = []
        for stamp in (self.root / "objects").glob("*.json"):
            try:
                used = stamp.stat().st_mtime
                size = sum(int(item[1]) for item in json.loads(stamp.read_text()))
            except (OSError, ValueError, TypeError, IndexError):
                continue
            found.append((used, bundle_format.format_digest(stamp.stem), size))
        return sorted(found)

    def prune(self, keep: Collection[str] = ()) -> list[str]:
        """Evict least recently used entries until the cache fits `max_bytes`; never one
        in `keep` or one a job holds (its lock is taken)."""
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(size for _used, _digest, size in entries)
        evicted: list[str] = []
        for _used, digest, size in entries:
            if total <= self.max_bytes:
                break
            if digest in keep:
                continue
            with self._lock_file(bundle_format.digest_hex(digest)).open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use by a job
                try:
                    self.evict_now(digest)
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            total -= size
            evicted.append(digest)
        if evicted:
            log.info("code cache: evicted %d bundles to stay under %d bytes", len(evicted), total)
        return evicted


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem, or links refused: a read-only copy
        shutil.copyfile(source, dest)
        os.chmod(dest, 0o444)


def link_farm(cached: Path, dest: Path) -> int:
    """`dest` (new) mirrors `cached`: its own directories, hard links to the files.
    Plain strings and scandir, not pathlib: this runs at every job start."""
    count = 0
    dest.mkdir(mode=0o755, parents=True)
    pending = [(os.fspath(cached), os.fspath(dest))]
    while pending:
        source_dir, dest_dir = pending.pop()
        with os.scandir(source_dir) as it:
            for entry in it:
                target = os.path.join(dest_dir, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    os.mkdir(target, 0o755)
                    pending.append((entry.path, target))
                else:
                    _link_or_copy(entry.path, target)
                    count += 1
    return count


@contextlib.contextmanager
def prepare(cache: CodeCache, digest: str, job_dir: Path, fetch: Any) -> Iterator[PreparedCode]:
    """The job's copy of its code under `job_dir/code`, for the block's duration (the
    cache entry stays in use meanwhile); removed afterwards."""
    started = time.perf_counter()
    code_dir = job_dir / CODE_DIR_NAME
    try:
        with cache.use(digest, fetch) as (cached_tree, cached):
            files = link_farm(cached_tree, code_dir)
            prepared = PreparedCode(
                code_dir=code_dir,
                digest=digest,
                cached=cached,
                fetch_ms=round((time.perf_counter() - started) * 1000),
                files=files,
            )
            if not cached:
                cache.prune(keep={digest})
            yield prepared
    finally:
        remove_tree(code_dir)


@contextlib.contextmanager
def prepare_git(
    cache_root: Path, job_dir: Path, source: Mapping[str, Any], max_bytes: int | None = None
) -> Iterator[PreparedCode]:
    """A Git job's copy of its commit under `job_dir/code` (`source`: what
    `GET /orgs/{org}/jobs/{id}/code` answered: repository, commit, credential), the same
    per-job hard-link farm as a bundle's; the tree is fetched once per (repository,
    commit) into `cache_root/git` (agents.git_code) and stays in the cache."""
    started = time.perf_counter()
    repository = str(source.get("repository") or "")
    commit = str(source.get("commit") or "")
    credential = source.get("credential")
    key = git_code.tree_key(repository, commit)
    cached = (cache_root / "git" / key).is_dir()
    code_dir = job_dir / CODE_DIR_NAME
    try:
        try:
            tree = git_code.checkout(
                repository, commit, cache_root, dict(credential) if credential else None
            )
        except git_code.GitCheckoutError as exc:
            raise CodeFetchError(f"Git commit {commit} of {repository}: {exc}") from None
        files = link_farm(tree, code_dir)
        prepared = PreparedCode(
            code_dir=code_dir,
            digest=commit,
            cached=cached,
            fetch_ms=round((time.perf_counter() - started) * 1000),
            files=files,
            repository=repository,
        )
        if not cached and max_bytes is not None:
            git_code.prune(cache_root, max_bytes, keep={key})
        yield prepared
    finally:
        remove_tree(code_dir)


# ----------------------------------------------------------------------------- over HTTP


def _code_url(api_url: str, org: str, job_id: str) -> str:
    base = api_url.rstrip("/").removesuffix(API_PREFIX) + API_PREFIX
    return f"{base}/orgs/{quote(org, safe='')}/jobs/{quote(job_id, safe='')}/code"


def http_git_source(api_url: str, org: str, job_id: str, token: str) -> dict[str, Any]:
    """A Git job's source, with the job's own token: `{kind: git, repository, commit,
    credential}` (the credential only lives in memory and in git's temp files)."""
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "cshare-agent/0.1"}
    try:
        response = httpx.get(_code_url(api_url, org, job_id), headers=headers, timeout=TIMEOUT)
    except httpx.TransportError as exc:
        raise CodeFetchError(f"cannot ask for the job's Git source ({exc})") from None
    if not response.is_success:
        raise CodeFetchError(
            f"cannot ask for the job's Git source: HTTP {response.status_code} "
            f"{response.text[:300]}"
        )
    source: dict[str, Any] = response.json()
    if source.get("kind") != "git":
        raise CodeFetchError("the job's code is not a Git source")
    return source


def http_fetch(api_url: str, org: str, job_id: str, token: str, digest: str) -> Any:
    """A `fetch(file)` for `CodeCache.use`: the job's bundle, with its own token,
    hashed while it streams (the format module verifies it again before unpacking)."""
    url = _code_url(api_url, org, job_id)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "cshare-agent/0.1"}
    want = bundle_format.digest_hex(digest)

    def fetch(out: IO[bytes]) -> None:
        h = hashlib.sha256()
        try:
            with httpx.stream("GET", url, headers=headers, timeout=TIMEOUT) as response:
                if not response.is_success:
                    response.read()
                    raise CodeFetchError(
                        f"cannot fetch the job's code bundle {digest}: HTTP "
                        f"{response.status_code} {response.text[:300]}"
                    )
                for chunk in response.iter_raw(bundle_format.CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except httpx.TransportError as exc:
            raise CodeFetchError(f"code bundle {digest}: download failed ({exc})") from None
        if h.hexdigest() != want:
            raise CodeFetchError(
                f"code bundle {digest}: the download's SHA-256 is sha256:{h.hexdigest()}"
            )

    return fetch
