"""The content-addressed upload logic shared by the cloud object stores (Azure Blob, GCS).

Each backend gives a few key-level primitives (`_put_bytes`, `_put_chunks`, `_copy`,
`_get`, `_head_size`, `_delete_key`); this class turns them into the `Storage`
contract exactly as `datasets.s3` does for S3:

- an object smaller than one part is hashed in memory and written once, to its final key;
- a larger one streams in parts (the backend's own block/resumable upload). With an
  announced checksum it goes straight to the final key, and the chunk iterator raises
  `ChecksumMismatch` after the last byte when the hash differs, which aborts the upload
  before it is committed; without one it goes to `tmp/<uuid>` and is copied server-side
  to its hash once known (then the temporary object is deleted).
"""

from __future__ import annotations

import hashlib
import uuid
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from datasets.storage import (
    DEFAULT_CHUNK,
    ChecksumMismatch,
    ObjectMissing,
    PutResult,
    Storage,
    object_key,
)
from datasets.wire import Reader

DEFAULT_PART = 8 * 1024 * 1024


class ObjectStorage(Storage):
    """`Storage` over a flat key/object API (see the module docstring)."""

    where: str = ""  # "container 'x'" / "bucket 'x'", for messages

    def __init__(self, *, prefix: str, part_size: int, chunk_size: int) -> None:
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.chunk_size = chunk_size or DEFAULT_CHUNK

    # ------------------------------------------------------------------ primitives

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _put_chunks(self, key: str, chunks: Iterator[bytes]) -> None:
        """Write everything `chunks` yields as one object; if the iterator raises,
        nothing is committed under `key` and the exception propagates."""

    @abstractmethod
    def _copy(self, source: str, target: str) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> Iterator[bytes]:
        """The object's bytes; `ObjectMissing` at once when absent."""

    @abstractmethod
    def _head_size(self, key: str) -> int | None: ...

    @abstractmethod
    def _delete_key(self, key: str) -> None:
        """Remove `key`; an absent key is not an error."""

    # ------------------------------------------------------------------ the interface

    def key(self, sha256: str) -> str:
        return self.prefix + object_key(sha256)

    def _read(self, reader: Reader, digest: Any, size: int) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = reader.read(min(self.chunk_size, size - got))
            if not chunk:
                break
            digest.update(chunk)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def _verify(sha: str, expected: str | None) -> None:
        if expected is not None and expected != sha:
            raise ChecksumMismatch(
                f"The upload's SHA-256 is {sha}, not the announced {expected}.",
                field="X-Content-SHA256",
            )

    def put_stream(self, reader: Reader, *, expected_sha256: str | None = None) -> PutResult:
        digest = hashlib.sha256()
        first = self._read(reader, digest, self.part_size)
        if len(first) < self.part_size:
            sha = digest.hexdigest()
            self._verify(sha, expected_sha256)
            if self._head_size(self.key(sha)) == len(first):
                return PutResult(sha, len(first), created=False)
            self._put_bytes(self.key(sha), first)
            return PutResult(sha, len(first), created=True)

        if expected_sha256 is not None and self._head_size(self.key(expected_sha256)) is not None:
            # Already stored: the bytes are still received and checked, not sent again.
            size = len(first)
            while part := self._read(reader, digest, self.chunk_size):
                size += len(part)
            sha = digest.hexdigest()
            self._verify(sha, expected_sha256)
            return PutResult(sha, size, created=False)

        sent = [0]

        def chunks() -> Iterator[bytes]:
            body = first
            while body:
                sent[0] += len(body)
                yield body
                body = self._read(reader, digest, self.part_size)
            # Raising here, before the iterator ends, aborts the upload uncommitted.
            self._verify(digest.hexdigest(), expected_sha256)

        if expected_sha256 is not None:
            self._put_chunks(self.key(expected_sha256), chunks())
            return PutResult(expected_sha256, sent[0], created=True)
        tmp = f"{self.prefix}tmp/{uuid.uuid4().hex}"
        try:
            self._put_chunks(tmp, chunks())
            sha = digest.hexdigest()
            if self._head_size(self.key(sha)) == sent[0]:
                return PutResult(sha, sent[0], created=False)
            self._copy(tmp, self.key(sha))
            return PutResult(sha, sent[0], created=True)
        finally:
            self._delete_key(tmp)  # a leftover tmp object is garbage, never data

    def open(self, sha256: str) -> Iterator[bytes]:
        return self._get(self.key(sha256))

    def exists(self, sha256: str) -> bool:
        return self._head_size(self.key(sha256)) is not None

    def size(self, sha256: str) -> int:
        found = self._head_size(self.key(sha256))
        if found is None:
            raise ObjectMissing(f"No object {sha256} in {self.where}.")
        return found

    def delete(self, sha256: str) -> None:
        self._delete_key(self.key(sha256))
