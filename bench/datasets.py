"""Streaming throughput and memory of dataset upload/download through the API.

    python -m bench.datasets [--size-mb 1024] [--backends local,s3] [--dir PATH] [--rounds 3]

Starts the API (uvicorn, a subprocess on 127.0.0.1, SQLite) and, for the S3 backend, a
moto S3 server (another subprocess, so its memory is not counted as the API's). Then,
per backend, `--rounds` rounds (default 3) of: a plain copy, a plain copy with fsync, one
upload and one download of a `--size-mb` file of random bytes through
`POST .../versions` and `GET .../download`, streamed from and to disk in 1 MiB chunks.
Each row is the best of its rounds, against the best plain copy of the same rounds.
The header also gives one SHA-256 pass over the file: the server and the client each
make one over every byte (stored content is addressed and verified by it), so no
transfer here can take less than one such pass.

Memory: the API process's peak RSS during each transfer (`VmHWM` in /proc/<pid>/status,
reset before each transfer through /proc/<pid>/clear_refs) minus its RSS just before.
The upload announces its checksum (`X-Content-SHA256`), as the CLI does. Prints a
Markdown table. Targets: RSS growth < 100 MB; throughput >= 50% of the plain copy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import api_env, api_server, free_port, process
from datasets.wire import receive_version, sha256_file

CHUNK = 1024 * 1024
RSS_TARGET_MB = 100.0
THROUGHPUT_TARGET = 0.5
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Row:
    backend: str
    op: str
    seconds: float
    size: int
    rss_growth_mb: float | None
    baseline_s: float  # the plain copy, best of the same rounds
    durable_baseline_s: float  # the plain copy then fsync, best of the same rounds
    hash_s: float  # one SHA-256 pass over the file, best of the same rounds

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.seconds

    @property
    def ratio(self) -> float:
        return self.baseline_s / self.seconds

    @property
    def durable_ratio(self) -> float:
        return self.durable_baseline_s / self.seconds


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            left -= len(block)


def renew_head(path: Path) -> tuple[str, float]:
    """Overwrite the file's first bytes with random ones; returns its new SHA-256 and
    how long that one hashing pass took (each side of a transfer makes one)."""
    with path.open("r+b") as f:
        f.write(os.urandom(32))
    start = time.perf_counter()
    digest = sha256_file(path)
    return digest, time.perf_counter() - start


def plain_copy(src: Path, dst: Path, *, durable: bool = False) -> float:
    """`shutil.copyfile`; `durable`: and fsync, as the local store does before a version
    is committed (the copy is then on the disk, not only in the page cache)."""
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if durable:
        with dst.open("rb") as f:
            os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(CHUNK):
            yield data


def measured(pid: int, action: object) -> tuple[float, float | None]:
    """(seconds, API peak RSS growth in MB) of `action()`."""
    can_reset = reset_peak(pid)
    before = status_kb(pid, "VmRSS")
    start = time.perf_counter()
    action()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    peak = status_kb(pid, "VmHWM")
    return elapsed, ((peak - before) / 1024 if can_reset else None)


def run_backend(
    name: str,
    api: str,
    pid: int,
    token: str,
    slug: str,
    src: Path,
    work: Path,
    rounds: int,
    s3: dict[str, str] | None,
) -> list[Row]:
    headers = {"Authorization": f"Bearer {token}"}
    size = src.stat().st_size
    timeout = httpx.Timeout(600.0, connect=10.0)
    with httpx.Client(base_url=api, headers=headers, timeout=timeout) as http:
        store = {"kind": "s3", **s3} if s3 else {"kind": "default"}
        r = http.put(f"/orgs/{slug}/datastore", json=store)
        r.raise_for_status()
        dataset = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        http.post(f"/orgs/{slug}/datasets", json={"name": dataset}).raise_for_status()
        # Warm-up: every code path loaded (and pools filled) before memory is measured.
        warm = f"{dataset}-warm"
        http.post(f"/orgs/{slug}/datasets", json={"name": warm}).raise_for_status()
        http.post(
            f"/orgs/{slug}/datasets/{warm}/versions",
            content=os.urandom(12 * CHUNK),
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
        http.get(f"/orgs/{slug}/datasets/{warm}/versions/1/download").raise_for_status()

        def upload() -> None:
            r = http.post(
                f"/orgs/{slug}/datasets/{dataset}/versions",
                content=file_chunks(src),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                    "X-Content-SHA256": digest,
                },
            )
            r.raise_for_status()
            assert r.status_code == 201 and r.json()["sha256"] == digest, r.text

        def download() -> None:
            # As `cshare dataset download` receives it: verified while written.
            target = work / f"down-{name}.bin"
            latest = f"/orgs/{slug}/datasets/{dataset}/versions/latest/download"
            with http.stream("GET", latest) as r:
                r.raise_for_status()
                got = receive_version("file", r.iter_raw(CHUNK), target)
            assert got == digest and target.stat().st_size == size
            target.unlink()

        # Rounds, each a plain copy, a durable copy, an upload and a download one after
        # the other, so both sides meet the same page-cache and disk state; the best of
        # each is kept (this machine is shared and noisy).
        times: dict[str, list[float]] = {
            "copy": [],
            "durable": [],
            "hash": [],
            "up": [],
            "down": [],
        }
        peaks: dict[str, list[float]] = {"up": [], "down": []}
        for _ in range(rounds):
            # New content each round: the stores keep one copy of identical bytes, so a
            # repeated upload would skip work a first one does.
            digest, hashed = renew_head(src)
            times["hash"].append(hashed)
            times["copy"].append(plain_copy(src, work / "copy.bin"))
            times["durable"].append(plain_copy(src, work / "copy.bin", durable=True))
            for op, action in (("up", upload), ("down", download)):
                seconds, rss = measured(pid, action)
                times[op].append(seconds)
                if rss is not None:
                    peaks[op].append(rss)
    copy, durable, hashed = min(times["copy"]), min(times["durable"]), min(times["hash"])
    return [
        Row(name, label, min(times[op]), size, max(peaks[op], default=None), copy, durable, hashed)
        for op, label in (("up", "upload"), ("down", "download"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--backends", default="local,s3")
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (same disk).")
    parser.add_argument("--rounds", type=int, default=3, help="Best of this many rounds.")
    # moto keeps every object in memory (a 1 GiB upload held several copies of itself and
    # a third round got 503s): one round against it by default.
    parser.add_argument("--s3-rounds", type=int, default=1)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    size = args.size_mb * 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="cshare-bench-ds-", dir=args.dir) as tmp:
        work = Path(tmp)
        home = work / "home"
        src = work / "source.bin"
        print(f"writing {args.size_mb} MiB of random bytes to {src} ...", file=sys.stderr)
        make_file(src, size)

        # The moto server is on loopback, and the org store signs with these keys: both
        # only by the operator's leave (orgs.config: store_endpoint_allowlist, ...).
        env = api_env(
            home,
            **AWS_ENV,
            CSHARE_STORE_ENDPOINT_ALLOWLIST="127.0.0.1",
            CSHARE_STORE_ALLOW_SERVER_CREDENTIALS="true",
        )
        with contextlib.ExitStack() as stack:
            s3: dict[str, str] | None = None
            if "s3" in backends:
                moto_port = free_port()
                moto_url = f"http://127.0.0.1:{moto_port}"
                moto = [
                    sys.executable,
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(moto_port),
                ]
                stack.enter_context(process(moto, env, moto_url))
                bucket = "bench-datasets"
                import boto3

                boto3.client(
                    "s3",
                    endpoint_url=moto_url,
                    region_name="us-east-1",
                    aws_access_key_id="bench",
                    aws_secret_access_key="bench",
                ).create_bucket(Bucket=bucket)
                s3 = {"bucket": bucket, "endpoint_url": moto_url, "region": "us-east-1"}
            api_url, pid = stack.enter_context(api_server(env))
            api = api_url + "/api/v1"
            r = httpx.post(
                f"{api}/auth/signup",
                json={"email": "bench@bench.test", "name": "bench", "password": "bench-password"},
            )
            r.raise_for_status()
            token = r.json()["token"]
            r = httpx.post(
                f"{api}/orgs", json={"name": "Bench"}, headers={"Authorization": f"Bearer {token}"}
            )
            r.raise_for_status()
            slug = r.json()["slug"]
            rows: list[Row] = []
            for backend in backends:
                rows += run_backend(
                    backend,
                    api,
                    pid,
                    token,
                    slug,
                    src,
                    work,
                    args.s3_rounds if backend == "s3" else args.rounds,
                    s3 if backend == "s3" else None,
                )

    copy = min(row.baseline_s for row in rows)
    durable = min(row.durable_baseline_s for row in rows)
    hashed = min(row.hash_s for row in rows)
    print(
        f"\n{args.size_mb} MiB file, best of {args.rounds} rounds (S3: {args.s3_rounds}); "
        "on the same disk a plain "
        f"`shutil.copyfile` took {copy:.2f} s ({size / 1e6 / copy:.0f} MB/s), and "
        f"{durable:.2f} s ({size / 1e6 / durable:.0f} MB/s) with fsync; one SHA-256 pass "
        f"over the file (each end of a transfer makes one) took {hashed:.2f} s "
        f"({size / 1e6 / hashed:.0f} MB/s)\n"
    )
    print(
        "| backend | transfer | seconds | MB/s | vs plain copy | vs copy + fsync "
        "| API peak RSS growth |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    ok = True
    for row in rows:
        rss = "n/a" if row.rss_growth_mb is None else f"{row.rss_growth_mb:.1f} MB"
        print(
            f"| {row.backend} | {row.op} | {row.seconds:.2f} | {row.mb_s:.0f} | "
            f"{row.ratio * 100:.0f}% | {row.durable_ratio * 100:.0f}% | {rss} |"
        )
        if row.rss_growth_mb is not None and row.rss_growth_mb >= RSS_TARGET_MB:
            ok = False
        if row.backend == "local" and row.ratio < THROUGHPUT_TARGET:
            ok = False
    print(
        f"\nTargets: RSS growth < {RSS_TARGET_MB:.0f} MB; local throughput >= "
        f"{THROUGHPUT_TARGET:.0%} of the plain copy -> {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
