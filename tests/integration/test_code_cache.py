"""The agent's code bundle cache (agents.code_cache) on a real filesystem: verify and
unpack once per digest (also when two jobs ask at once), read-only entries, a fresh
hard-link farm per job, tamper detection, and least-recently-used eviction that never
takes an entry in use."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from agents import code_cache
from agents.code_cache import CodeCache, CodeFetchError, prepare
from datasets import bundle_format


def make_bundle(tmp_path: Path, text: str, size: int = 0) -> tuple[bytes, str]:
    root = tmp_path / f"src-{abs(hash((text, size)))}"
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "flow.py").write_text("import helper\n")
    (root / "helper.py").write_text(text)
    (root / "pkg" / "data.bin").write_bytes(b"d" * size)
    out = io.BytesIO()
    packed = bundle_format.pack(root, ["flow.py", "helper.py", "pkg/data.bin"], out)
    return out.getvalue(), packed.digest


class Fetcher:
    def __init__(self, data: bytes, delay_s: float = 0.0) -> None:
        self.data = data
        self.delay_s = delay_s
        self.calls = 0

    def __call__(self, out: IO[bytes]) -> None:
        self.calls += 1
        time.sleep(self.delay_s)
        out.write(self.data)


def test_fetch_once_then_cached_and_read_only(tmp_path: Path) -> None:
    data, digest = make_bundle(tmp_path, "V = 1\n")
    cache = CodeCache(tmp_path / "cache")
    fetch = Fetcher(data)
    with prepare(cache, digest, tmp_path / "job1", fetch) as first:
        assert not first.cached and first.files == 3
        assert (first.code_dir / "helper.py").read_text() == "V = 1\n"
        # A hard link to the cache, read-only; the job's directories are its own.
        cached_file = cache.path(digest) / "helper.py"
        assert os.stat(first.code_dir / "helper.py").st_ino == os.stat(cached_file).st_ino
        assert (cached_file.stat().st_mode & 0o777) == 0o444
        assert (cache.path(digest).stat().st_mode & 0o777) == 0o555
        (first.code_dir / "out.txt").write_text("a job may write next to its code")
        if os.geteuid() != 0:  # permission bits do not stop root
            with pytest.raises(PermissionError):
                (first.code_dir / "helper.py").write_text("no")
    assert not (tmp_path / "job1" / "code").exists()  # removed with the job
    with prepare(cache, digest, tmp_path / "job2", fetch) as second:
        assert second.cached and fetch.calls == 1
        assert not (second.code_dir / "out.txt").exists()  # fresh per job
        assert second.report()["cached"] is True


def test_two_jobs_at_once_fetch_once(tmp_path: Path) -> None:
    data, digest = make_bundle(tmp_path, "V = 1\n")
    cache = CodeCache(tmp_path / "cache")
    fetch = Fetcher(data, delay_s=0.3)
    results: list[bool] = []

    def job(n: int) -> None:
        with prepare(CodeCache(tmp_path / "cache"), digest, tmp_path / f"j{n}", fetch) as p:
            results.append(p.cached)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetch.calls == 1
    assert sorted(results) == [False, True]
    assert cache.valid(digest)


def test_a_wrong_or_broken_download_is_refused(tmp_path: Path) -> None:
    _data, digest = make_bundle(tmp_path, "V = 1\n")
    other, _ = make_bundle(tmp_path, "V = 2\n")
    cache = CodeCache(tmp_path / "cache")
    with (
        pytest.raises(CodeFetchError, match="checksum"),
        prepare(cache, digest, tmp_path / "job", Fetcher(other)),
    ):
        pass
    assert not cache.path(digest).exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert not (tmp_path / "job" / "code").exists()


def test_a_tampered_entry_is_fetched_again(tmp_path: Path) -> None:
    data, digest = make_bundle(tmp_path, "V = 1\n")
    cache = CodeCache(tmp_path / "cache")
    fetch = Fetcher(data)
    with prepare(cache, digest, tmp_path / "job1", fetch) as p:
        linked = p.code_dir / "helper.py"
        linked.chmod(0o644)  # the job's user can do this to a hard link...
        linked.write_text("V = 'evil'\n")  # ...and so change the cached bytes
    with prepare(cache, digest, tmp_path / "job2", fetch) as again:
        assert not again.cached and fetch.calls == 2
        assert (again.code_dir / "helper.py").read_text() == "V = 1\n"


def test_lru_eviction_never_takes_one_in_use(tmp_path: Path) -> None:
    size = 100_000
    bundles = [make_bundle(tmp_path, f"V = {n}\n", size) for n in range(3)]
    cache = CodeCache(tmp_path / "cache", max_bytes=int(2.5 * size))
    (d0, g0), (d1, g1), (d2, g2) = bundles
    with prepare(cache, g0, tmp_path / "a", Fetcher(d0)):
        # g0 is in use by a running job while two more arrive.
        with prepare(cache, g1, tmp_path / "b", Fetcher(d1)):
            pass
        time.sleep(0.01)
        with prepare(cache, g2, tmp_path / "c", Fetcher(d2)):
            pass
        assert cache.valid(g0)  # in use: kept, although least recently used
        assert not cache.valid(g1)  # evicted instead
        assert cache.valid(g2)


def test_the_cache_size_comes_from_the_environment() -> None:
    assert code_cache.max_bytes_from_env({}) == 2 << 30
    assert code_cache.max_bytes_from_env({"CSHARE_AGENT_CODE_CACHE_MAX_BYTES": "1000"}) == 1000
