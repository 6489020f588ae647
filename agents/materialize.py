"""Materialise a job's dataset inputs on the machine, before its flow starts.

Each pinned input version is fetched once per machine into a cache keyed by its
checksum, verified (a file's SHA-256, a directory's manifest SHA-256), and exposed
read-only under the job's working directory:

    <job dir>/inputs/<name>/<filename>     a file version
    <job dir>/inputs/<name>/...            a directory version
    <job dir>/inputs/.cshare-inputs.json   name -> path, read by flows.runtime.input_path

Files are hard links to the cache (a copy where the cache is on another filesystem), mode
0444; directories 0555. Permission bits do not stop root, so when the agent runs as root
the inputs directory is also bind-mounted read-only onto itself (a write then fails with
EROFS); `release` undoes that. A job running as the same user could still `chmod` a
hard-linked file back: the cache therefore records each entry's (size, mtime, mode) when
verified and re-verifies an entry whose stat changed before handing it to another job.

HTTP only; no server code (`datasets.wire` is the stdlib-only wire format shared with
the server). Entry points for the agent:

    prepared = materialize_job(api_url, org, job_id, job_token, job_dir, cache_dir)
    env.update(prepared.env)        # CSHARE_INPUTS_DIR, CSHARE_JOB_TOKEN, ...
    ... run the flow ...
    release(job_dir)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from datasets import codeversion, wire

log = logging.getLogger("cshare.agent.materialize")

API_PREFIX = "/api/v1"
INDEX_FILE = ".cshare-inputs.json"
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class MaterializeError(RuntimeError):
    """An input could not be fetched or verified; the job must not start."""


@dataclass(frozen=True)
class Prepared:
    inputs_dir: Path
    paths: dict[str, Path]
    env: dict[str, str] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)  # names downloaded (not from cache)


# ----------------------------------------------------------------------------- cache


class InputCache:
    """Verified dataset versions by checksum: `objects/ab/<sha256>` (file or directory)
    and `objects/ab/<sha256>.json` (what was verified, to notice tampering; its mtime is
    when the entry was last used).

    `max_bytes`: after each job's inputs are ready, the least recently used entries are
    evicted until the cache fits (never this job's, never one another process holds).
    Jobs already running keep their inputs: those are hard links (or copies).
    """

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for sub in ("objects", "tmp", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def _stamp_file(self, sha256: str) -> Path:
        return self.path(sha256).with_suffix(".json")

    @contextlib.contextmanager
    def _lock(self, sha256: str) -> Iterator[None]:
        # One fetch per checksum at a time on this machine: parallel jobs wait, then reuse.
        with (self.root / "locks" / f"{sha256}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _stamp(self, target: Path) -> list[list[Any]]:
        if target.is_file():
            items = [("", target)]
        else:
            items = sorted(
                (p.relative_to(target).as_posix(), p) for p in target.rglob("*") if p.is_file()
            )
        stamp = []
        for rel, p in items:
            st = p.stat()
            stamp.append([rel, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)])
        return stamp

    def valid(self, sha256: str) -> bool:
        """Present, and unchanged since it was verified."""
        target = self.path(sha256)
        try:
            recorded = json.loads(self._stamp_file(sha256).read_text())
        except (FileNotFoundError, ValueError):
            return False
        return target.exists() and recorded == self._stamp(target)

    def ensure(self, entry: Mapping[str, Any], fetch: Any) -> tuple[Path, bool]:
        """The verified cache path of `entry` (fetching it with `fetch()` if needed) and
        whether it was fetched now."""
        sha = str(entry["sha256"])
        if not wire.is_sha256(sha):
            raise MaterializeError(f"input {entry.get('name')!r}: bad checksum {sha[:80]!r}")
        with self._lock(sha):
            if self.valid(sha):
                os.utime(self._stamp_file(sha))  # used now (for eviction)
                return self.path(sha), False
            self.evict(sha)
            tmp = self.root / "tmp" / uuid.uuid4().hex
            try:
                with fetch() as body:
                    actual = wire.receive_version(str(entry["kind"]), body, tmp)
                if actual != sha:
                    raise MaterializeError(
                        f"input {entry.get('name')!r}: checksum {actual} instead of {sha}"
                    )
                _make_read_only(tmp)
                target = self.path(sha)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(target)
                self._stamp_file(sha).write_text(json.dumps(self._stamp(target)))
                return target, True
            finally:
                _remove_tree(tmp)

    @contextlib.contextmanager
    def _try_lock(self, sha256: str) -> Iterator[bool]:
        with (self.root / "locks" / f"{sha256}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> list[tuple[float, str, int]]:
        """(last used, sha256, bytes) of every verified entry, least recently used first."""
        found = []
        for stamp in (self.root / "objects").glob("*/*.json"):
            try:
                used = stamp.stat().st_mtime
                size = sum(int(item[1]) for item in json.loads(stamp.read_text()))
            except (OSError, ValueError, TypeError, IndexError):
                continue
            found.append((used, stamp.stem, size))
        return sorted(found)

    def prune(self, keep: Collection[str] = ()) -> list[str]:
        """Evict least recently used entries until the cache fits `max_bytes`."""
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(size for _used, _sha, size in entries)
        evicted: list[str] = []
        for _used, sha, size in entries:
            if total <= self.max_bytes:
                break
            if sha in keep:
                continue
            with self._try_lock(sha) as locked:
                if locked:
                    self.evict(sha)
                    total -= size
                    evicted.append(sha)
        if evicted:
            log.info(
                "input cache: evicted %d entries to stay under %d bytes",
                len(evicted),
                self.max_bytes,
            )
        return evicted

    def evict(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._stamp_file(sha256).unlink()
        _remove_tree(self.path(sha256))


def _make_read_only(path: Path) -> None:
    if path.is_file():
        path.chmod(0o444)
        return
    for folder, dirs, files in os.walk(path, topdown=False):
        for name in files:
            (Path(folder) / name).chmod(0o444)
        for name in dirs:
            (Path(folder) / name).chmod(0o555)
    path.chmod(0o555)


def _make_writable(path: Path) -> None:
    if not path.exists() or path.is_symlink():
        return
    if path.is_dir():
        path.chmod(0o755)
        for folder, dirs, _files in os.walk(path):
            for name in dirs:
                (Path(folder) / name).chmod(0o755)


def _remove_tree(path: Path) -> None:
    """Remove `path` even when its directories are read-only (file modes do not matter
    for unlinking; only the directories' do)."""
    if path.is_dir() and not path.is_symlink():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ----------------------------------------------------------------------------- exposing


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem, or links refused: a read-only copy
        shutil.copyfile(source, dest)
        dest.chmod(0o444)


def _expose(cached: Path, entry: Mapping[str, Any], dest: Path) -> Path:
    """Put a read-only view of `cached` under `dest` (the input's own folder)."""
    dest.mkdir(parents=True)
    if entry["kind"] == "directory":
        for folder, _dirs, files in os.walk(cached):
            rel = Path(folder).relative_to(cached)
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                _link_or_copy(Path(folder) / name, dest / rel / name)
        _make_read_only(dest)
        return dest
    name = wire.safe_path(str(entry.get("filename") or "")) or str(entry["name"])
    if "/" in name:
        name = str(entry["name"])
    _link_or_copy(cached, dest / name)
    dest.chmod(0o555)
    return dest / name


def _read_only_mount(path: Path) -> bool:
    """Bind-mount `path` read-only onto itself (root only: permission bits do not stop
    root). False when it is not possible here."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    steps = (
        ["mount", "--bind", str(path), str(path)],
        ["mount", "-o", "remount,bind,ro", str(path)],
    )
    for args in steps:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            if args[1] == "-o":
                subprocess.run(["umount", str(path)], capture_output=True, check=False)
            log.warning(
                "running as root and cannot mount %s read-only (%s): the job could write "
                "to its inputs",
                path,
                done.stderr.strip(),
            )
            return False
    return True


def materialize(
    inputs: Sequence[Mapping[str, Any]],
    job_dir: Path,
    cache: InputCache,
    *,
    open_download: Any,
) -> Prepared:
    """Fetch (or reuse) and expose every input under `job_dir/inputs`, read-only.

    `open_download(entry)` returns a context manager yielding the body's chunks; the
    bytes are verified against `entry["sha256"]` whatever the server says.
    """
    inputs_dir = job_dir / "inputs"
    inputs_dir.mkdir(parents=True, exist_ok=False)
    paths: dict[str, Path] = {}
    index: dict[str, Any] = {}
    fetched: list[str] = []
    try:
        for entry in inputs:
            name = str(entry["name"])
            if wire.safe_path(name) != name or "/" in name or name.startswith("."):
                raise MaterializeError(f"input name {name!r} is not usable as a folder name")
            cached, new = cache.ensure(entry, lambda entry=entry: open_download(entry))
            if new:
                fetched.append(name)
            path = _expose(cached, entry, inputs_dir / name)
            paths[name] = path
            index[name] = {
                "path": path.relative_to(inputs_dir).as_posix(),
                "dataset": entry.get("dataset"),
                "version": entry.get("version"),
                "kind": entry.get("kind"),
                "sha256": entry.get("sha256"),
            }
        cache.prune(keep={str(entry["sha256"]) for entry in inputs})
        (inputs_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
        (inputs_dir / INDEX_FILE).chmod(0o444)
        inputs_dir.chmod(0o555)
    except BaseException:
        _remove_tree(inputs_dir)  # no half-prepared inputs: the job must not start
        raise
    _read_only_mount(inputs_dir)
    return Prepared(inputs_dir=inputs_dir, paths=paths, fetched=fetched)


def release(job_dir: Path) -> None:
    """Undo `materialize`: unmount if mounted, then remove the inputs view (the cache
    keeps the bytes for the next job)."""
    inputs_dir = job_dir / "inputs"
    for _ in range(8):  # a bind mount onto itself may have been made more than once
        if not _mounted(inputs_dir):
            break
        subprocess.run(["umount", str(inputs_dir)], capture_output=True, check=False)
    _remove_tree(inputs_dir)


def _mounted(path: Path) -> bool:
    """Is `path` a mount point? (`os.path.ismount` misses a bind mount onto itself: same
    device, and not the parent's inode.)"""
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            # Spaces and the like are octal escapes there (`\040`).
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == target:
                return True
    return False


# ----------------------------------------------------------------------------- over HTTP


def report_run(
    api_url: str,
    org: str,
    job_id: str,
    token: str,
    *,
    code_dir: Path | None = None,
    code: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    resources_used: Mapping[str, Any] | None = None,
    image: str | None = None,
) -> None:
    """Record on the job's lineage what only the machine knows: the code version of
    `code_dir` (git commit and dirty flag, or the bundle's checksum; or `code` as
    given: a fetched bundle's digest and fetch time), the machine, the
    image, the resources used. Failures are logged, never raised: lineage must not fail
    a run that otherwise succeeded."""
    body: dict[str, Any] = {}
    if code is not None:
        body["code"] = dict(code)
    elif code_dir is not None:
        body["code"] = codeversion.code_version(code_dir)
    if machine is not None:
        body["machine"] = dict(machine)
    if resources_used is not None:
        body["resources_used"] = dict(resources_used)
    if image is not None:
        body["image"] = image
    base = api_url.rstrip("/").removesuffix(API_PREFIX) + API_PREFIX
    url = f"{base}/orgs/{quote(org, safe='')}/jobs/{quote(job_id, safe='')}/lineage"
    try:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if not r.is_success:
            log.warning("lineage report for job %s refused: %s %s", job_id, r.status_code, r.text)
    except httpx.HTTPError as exc:
        log.warning("lineage report for job %s failed: %s", job_id, exc)


def materialize_job(
    api_url: str,
    org: str,
    job_id: str,
    token: str,
    job_dir: Path,
    cache_dir: Path,
    cache_max_bytes: int | None = None,
) -> Prepared:
    """Ask the API for the job's inputs (the job user's access is checked again there),
    materialise them, and return the environment the flow needs (`flows.runtime`).

    `token` is the job token handed out at claim (`CSHARE_JOB_TOKEN`).
    """
    base = api_url.rstrip("/").removesuffix(API_PREFIX) + API_PREFIX
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "cshare-agent/0.1"}
    with httpx.Client(base_url=base, timeout=TIMEOUT, headers=headers) as http:
        r = http.get(f"/orgs/{quote(org, safe='')}/jobs/{quote(job_id, safe='')}/inputs")
        if not r.is_success:
            raise MaterializeError(
                f"cannot list the job's inputs: HTTP {r.status_code} {r.text[:300]}"
            )
        inputs = r.json()["items"]

        @contextlib.contextmanager
        def open_download(entry: Mapping[str, Any]) -> Iterator[Iterator[bytes]]:
            try:
                with http.stream("GET", str(entry["download_path"])) as response:
                    if not response.is_success:
                        response.read()
                        raise MaterializeError(
                            f"input {entry['name']!r}: HTTP {response.status_code} "
                            f"{response.text[:300]}"
                        )
                    yield response.iter_raw(wire.CHUNK)
            except httpx.TransportError as exc:
                # A cut stream: the connection dropped, or the server refused to finish
                # sending bytes that failed its own checksum.
                raise MaterializeError(
                    f"input {entry['name']!r}: download failed ({exc})"
                ) from None

        cache = InputCache(cache_dir, cache_max_bytes)
        prepared = materialize(inputs, job_dir, cache, open_download=open_download)
    env = {
        "CSHARE_API_URL": api_url.rstrip("/").removesuffix(API_PREFIX),
        "CSHARE_ORG": org,
        "CSHARE_JOB_ID": job_id,
        "CSHARE_JOB_TOKEN": token,
        "CSHARE_INPUTS_DIR": str(prepared.inputs_dir),
    }
    return Prepared(prepared.inputs_dir, prepared.paths, env, prepared.fetched)
