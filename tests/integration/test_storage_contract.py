"""One contract for every storage backend: local disk (a temp directory), S3 (moto's
server over HTTP, see tests/s3_server.py), Azure Blob (Azurite, tests/azurite_server.py)
and Google Cloud Storage (gcp-storage-emulator, tests/gcs_server.py). Each test runs on
every one.

The contract (datasets.storage.Storage): objects are named by their SHA-256; `put_stream`
reads in bounded chunks and commits only complete, verified content; identical content
is stored once; a failed or mismatching upload leaves nothing behind; `open` streams an
object back and fails at once for a missing one; `delete` is idempotent.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import obstore
import pytest

from datasets.azure import AzureKeys, AzureStorage
from datasets.gcs import GcsStorage
from datasets.local import LocalStorage
from datasets.s3 import MIN_PART, S3Storage
from datasets.storage import ChecksumMismatch, ObjectMissing, Storage, object_key
from tests.azurite_server import ACCOUNT, ACCOUNT_KEY
from tests.s3_server import S3_REGION

PART = MIN_PART  # the smallest S3 allows, so "larger than a part" stays small


@dataclass
class Backend:
    storage: Storage
    count_objects: Callable[[], int]  # committed objects
    leftovers: Callable[[], int]  # temporary files/objects and open multipart uploads
    damage: Callable[[str, bytes], None]  # overwrite an object's bytes behind its back


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "store"
    storage = LocalStorage(root, chunk_size=64 * 1024)

    def count(sub: str) -> int:
        base = root / sub
        return sum(1 for p in base.rglob("*") if p.is_file()) if base.exists() else 0

    def damage(sha: str, data: bytes) -> None:
        path = root / object_key(sha)
        path.chmod(0o644)
        path.write_bytes(data)

    return Backend(storage, lambda: count("objects"), lambda: count("tmp"), damage)


def _s3(endpoint: str, bucket: str) -> Backend:
    storage = S3Storage(
        bucket,
        prefix="team/data",
        endpoint_url=endpoint,
        region=S3_REGION,
        part_size=PART,
        concurrency=3,
        chunk_size=256 * 1024,
    )
    client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION)

    def count(prefix: str) -> int:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)

    def leftovers() -> int:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return count("team/data/tmp/") + len(uploads)

    def damage(sha: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=storage.key(sha), Body=data)

    return Backend(storage, lambda: count("team/data/objects/"), leftovers, damage)


def _azure(endpoint: str, container: str) -> Backend:
    storage = AzureStorage(
        ACCOUNT,
        container,
        prefix="team/data",
        endpoint_url=endpoint,
        keys=AzureKeys(account_key=ACCOUNT_KEY),
        part_size=PART,
        concurrency=3,
        chunk_size=256 * 1024,
    )

    def count(prefix: str) -> int:
        return sum(len(page) for page in obstore.list(storage.store, prefix=prefix))

    def damage(sha: str, data: bytes) -> None:
        obstore.put(storage.store, storage.key(sha), data)

    # Uncommitted blocks of an aborted upload are never a blob (Azure drops them).
    return Backend(
        storage, lambda: count("team/data/objects/"), lambda: count("team/data/tmp/"), damage
    )


def _gcs(endpoint: str, bucket: str) -> Backend:
    storage = GcsStorage(
        bucket, prefix="team/data", endpoint_url=endpoint, part_size=PART, chunk_size=256 * 1024
    )

    def count(prefix: str) -> int:
        return sum(1 for _ in storage.client.list_blobs(bucket, prefix=prefix))

    def damage(sha: str, data: bytes) -> None:
        storage.bucket.blob(storage.key(sha)).upload_from_string(data)

    return Backend(
        storage, lambda: count("team/data/objects/"), lambda: count("team/data/tmp/"), damage
    )


@pytest.fixture(params=["local", "s3", "azure", "gcs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    if request.param == "azure":
        return _azure(
            request.getfixturevalue("azurite_endpoint"), request.getfixturevalue("azure_container")
        )
    if request.param == "gcs":
        return _gcs(request.getfixturevalue("gcs_endpoint"), request.getfixturevalue("gcs_bucket"))
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    return _s3(endpoint, bucket)


class BytesReader:
    """Hands out `data` in pieces of at most `piece` bytes (whatever read() asks)."""

    def __init__(self, data: bytes, piece: int = 10_000) -> None:
        self.data = memoryview(data)
        self.piece = piece

    def read(self, size: int = -1, /) -> bytes:
        n = self.piece if size < 0 else min(size, self.piece)
        out, self.data = self.data[:n], self.data[n:]
        return bytes(out)


class GeneratedReader:
    """`total` pseudo-random bytes produced on the fly (never held whole), the same
    stream whatever sizes are read, hashed as handed out; optionally raising after
    `fail_after` bytes."""

    SEGMENT = 128 * 1024

    def __init__(self, total: int, *, fail_after: int | None = None) -> None:
        self.total = total
        self.sent = 0
        self.fail_after = fail_after
        self.digest = hashlib.sha256()
        self._noise = hashlib.sha512(b"seed").digest() * (self.SEGMENT // 64)

    def _segment(self, index: int) -> bytes:
        # Every segment differs (a repeated pattern would hide part-ordering bugs).
        return (index.to_bytes(8, "big") + self._noise)[: self.SEGMENT]

    def read(self, size: int = -1, /) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionResetError("the client went away")
        n = min(self.SEGMENT if size < 0 else size, self.total - self.sent)
        out = bytearray()
        while len(out) < n:
            index, offset = divmod(self.sent + len(out), self.SEGMENT)
            out += self._segment(index)[offset : offset + n - len(out)]
        self.sent += n
        self.digest.update(out)
        return bytes(out)


def read_all(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


def test_put_then_open_returns_the_same_bytes(backend: Backend) -> None:
    data = os.urandom(300_000)
    result = backend.storage.put_stream(BytesReader(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.created
    assert backend.storage.exists(result.sha256)
    assert backend.storage.size(result.sha256) == len(data)
    assert read_all(backend.storage.open(result.sha256)) == data
    assert backend.leftovers() == 0


def test_empty_object(backend: Backend) -> None:
    result = backend.storage.put_stream(BytesReader(b""))
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert result.size == 0
    assert read_all(backend.storage.open(result.sha256)) == b""


def test_identical_content_is_stored_once(backend: Backend) -> None:
    data = os.urandom(50_000)
    first = backend.storage.put_stream(BytesReader(data))
    second = backend.storage.put_stream(BytesReader(data, piece=777))
    assert (first.sha256, first.size) == (second.sha256, second.size)
    assert first.created and not second.created
    assert backend.count_objects() == 1
    assert backend.leftovers() == 0


def test_delete_is_idempotent(backend: Backend) -> None:
    result = backend.storage.put_stream(BytesReader(b"to be deleted"))
    backend.storage.delete(result.sha256)
    assert not backend.storage.exists(result.sha256)
    with pytest.raises(ObjectMissing):
        backend.storage.open(result.sha256)
    backend.storage.delete(result.sha256)  # absent: not an error
    assert backend.count_objects() == 0


def test_missing_object(backend: Backend) -> None:
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not backend.storage.exists(sha)
    with pytest.raises(ObjectMissing):
        backend.storage.open(sha)  # at once, not on the first chunk
    with pytest.raises(ObjectMissing):
        backend.storage.size(sha)


@pytest.mark.parametrize("size", [1000, PART + 1000], ids=["small", "multipart"])
def test_announced_checksum_mismatch_stores_nothing(backend: Backend, size: int) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    reader = GeneratedReader(size)
    with pytest.raises(ChecksumMismatch):
        backend.storage.put_stream(reader, expected_sha256=wrong)
    assert not backend.storage.exists(reader.digest.hexdigest())
    assert not backend.storage.exists(wrong)
    assert backend.count_objects() == 0
    assert backend.leftovers() == 0


@pytest.mark.parametrize("fail_after", [1000, PART * 2 + 5], ids=["first-part", "third-part"])
def test_interrupted_upload_stores_nothing(backend: Backend, fail_after: int) -> None:
    reader = GeneratedReader(PART * 4, fail_after=fail_after)
    with pytest.raises(ConnectionResetError):
        backend.storage.put_stream(reader)
    assert backend.count_objects() == 0
    assert backend.leftovers() == 0


@pytest.mark.parametrize("announce", [False, True], ids=["unannounced", "announced"])
def test_large_object_streams_in_parts(backend: Backend, announce: bool) -> None:
    """Larger than two multipart parts, produced and checked on the fly."""
    total = PART * 2 + 123_457
    expected = GeneratedReader(total)
    while expected.read(1 << 20):
        pass
    sha = expected.digest.hexdigest()
    result = backend.storage.put_stream(
        GeneratedReader(total), expected_sha256=sha if announce else None
    )
    assert (result.sha256, result.size, result.created) == (sha, total, True)
    digest, got = hashlib.sha256(), 0
    for chunk in backend.storage.open(sha):
        assert len(chunk) <= 1 << 20  # streamed in bounded chunks
        digest.update(chunk)
        got += len(chunk)
    assert (digest.hexdigest(), got) == (sha, total)
    assert backend.count_objects() == 1
    assert backend.leftovers() == 0
    again = backend.storage.put_stream(GeneratedReader(total), expected_sha256=sha)
    assert not again.created
    assert backend.count_objects() == 1


def test_damaged_object_is_replaced_by_a_good_upload(backend: Backend) -> None:
    data = os.urandom(20_000)
    sha = backend.storage.put_stream(BytesReader(data)).sha256
    backend.damage(sha, b"short and wrong")
    result = backend.storage.put_stream(BytesReader(data))
    assert result.created  # the wrong-sized object was not taken for the real one
    assert read_all(backend.storage.open(sha)) == data


def test_check_writes_and_reads_back(backend: Backend) -> None:
    backend.storage.check()
