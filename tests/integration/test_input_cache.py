"""The agent's input cache on a real directory: least recently used entries are evicted
to stay under its size bound; this job's inputs, entries another process holds, and the
inputs of jobs already running are never taken away."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agents.materialize import InputCache, materialize, release

SIZE = 1000


def _version(name: str) -> tuple[dict[str, Any], bytes]:
    data = os.urandom(SIZE)
    entry = {
        "name": name,
        "dataset": name,
        "version": 1,
        "kind": "file",
        "filename": f"{name}.bin",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return entry, data


class _Server:
    """What the API would send, counting downloads."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.downloads: list[str] = []

    @contextlib.contextmanager
    def open_download(self, entry: Mapping[str, Any]) -> Iterator[Iterator[bytes]]:
        self.downloads.append(str(entry["name"]))
        yield iter([self.bodies[str(entry["sha256"])]])


def _serving(names: str) -> tuple[_Server, dict[str, tuple[dict[str, Any], bytes]]]:
    server = _Server()
    versions = {n: _version(n) for n in names}
    for entry, data in versions.values():
        server.bodies[entry["sha256"]] = data
    return server, versions


def _run_job(tmp: Path, job: str, cache: InputCache, server: _Server, *entries: Any) -> Path:
    job_dir = tmp / job
    materialize(list(entries), job_dir, cache, open_download=server.open_download)
    return job_dir


def _cached(cache: InputCache) -> set[str]:
    return {sha for _used, sha, _size in cache.entries()}


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    server, versions = _serving("abc")
    a, b, c = (versions[n][0] for n in "abc")
    cache = InputCache(tmp_path / "cache", max_bytes=int(2.5 * SIZE))
    jobs: list[Path] = []
    try:
        jobs.append(_run_job(tmp_path, "j1", cache, server, a))
        jobs.append(_run_job(tmp_path, "j2", cache, server, b))
        assert _cached(cache) == {a["sha256"], b["sha256"]}
        jobs.append(_run_job(tmp_path, "j3", cache, server, c))  # over the bound: a goes
        assert _cached(cache) == {b["sha256"], c["sha256"]}
        # j1 is still running: its input is a hard link, untouched by the eviction.
        assert (jobs[0] / "inputs" / "a" / "a.bin").read_bytes() == versions["a"][1]
        jobs.append(_run_job(tmp_path, "j4", cache, server, b))  # b used again: cached
        assert server.downloads == ["a", "b", "c"]
        jobs.append(_run_job(tmp_path, "j5", cache, server, a))  # a again: c is now oldest
        assert server.downloads == ["a", "b", "c", "a"]
        assert _cached(cache) == {a["sha256"], b["sha256"]}
    finally:
        for job_dir in jobs:
            release(job_dir)


def test_a_jobs_own_inputs_and_held_entries_are_kept(tmp_path: Path) -> None:
    server, versions = _serving("abc")
    a, b, c = (versions[n][0] for n in "abc")
    cache = InputCache(tmp_path / "cache", max_bytes=SIZE)  # room for one
    jobs: list[Path] = []
    try:
        jobs.append(_run_job(tmp_path, "j1", cache, server, a))
        # Another process is fetching or checking `a` (it holds its lock): not evicted,
        # and both of this job's inputs stay although they exceed the bound together.
        with (tmp_path / "cache" / "locks" / f"{a['sha256']}.lock").open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            jobs.append(_run_job(tmp_path, "j2", cache, server, b, c))
            fcntl.flock(held, fcntl.LOCK_UN)
        assert _cached(cache) == {a["sha256"], b["sha256"], c["sha256"]}
        # Once free, the next job's pruning takes the oldest ones not its own.
        jobs.append(_run_job(tmp_path, "j3", cache, server, c))
        assert _cached(cache) == {c["sha256"]}
    finally:
        for job_dir in jobs:
            release(job_dir)


def test_no_bound_keeps_everything(tmp_path: Path) -> None:
    server = _Server()
    cache = InputCache(tmp_path / "cache")
    jobs = []
    try:
        for n in "abcd":
            entry, data = _version(n)
            server.bodies[entry["sha256"]] = data
            jobs.append(_run_job(tmp_path, f"j{n}", cache, server, entry))
        assert len(cache.entries()) == 4
        assert cache.prune() == []
    finally:
        for job_dir in jobs:
            release(job_dir)
