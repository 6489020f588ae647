"""S3 storage through boto3: AWS or any S3-compatible endpoint (MinIO, Ceph, moto...).

Two trust levels. The installation's default store (`CSHARE_DATASET_STORE_URL`) is the
operator's: credentials come from the usual AWS sources of the API process (environment,
shared config/credentials files and an optional named profile, instance or container
roles). An organization's own store is `isolated`: it signs with the keys its admins
stored (`S3Keys`), or not at all, and never reads the server's AWS environment, files
or instance metadata; its connections go through the endpoint guard
(`datasets.endpoints`).

Uploads stream: the body is cut into parts of `part_size` bytes, hashed in order, and sent
as a multipart upload with at most `concurrency` parts in flight, so memory stays near
`(concurrency + 1) * part_size` whatever the object's size. The object's key is its hash,
unknown until the last byte, so:

- when the sender announced the checksum, the multipart upload goes straight to the final
  key and is completed only if the hash matches (an uncompleted multipart upload is
  invisible, and aborted on any failure);
- otherwise it goes to `tmp/<uuid>`, then is copied server-side to the final key.

Objects smaller than one part are hashed in memory and written once, to the final key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from datasets import endpoints
from datasets.storage import (
    DEFAULT_CHUNK,
    ChecksumMismatch,
    ObjectMissing,
    PutResult,
    Storage,
    StorageError,
    object_key,
)
from datasets.wire import Reader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIN_PART = 5 * 1024 * 1024  # S3's smallest allowed part (all but the last)
DEFAULT_PART = 8 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Keys:
    """An organization's own access key; the secret parts never appear in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _isolated_session(region: str | None) -> botocore.session.Session:
    """A botocore session that reads no AWS_* variable, no ~/.aws file and no profile:
    every session variable keeps only its built-in default."""
    base = botocore.session.Session()
    variables = {
        name: (None, None, default, convert)
        for name, (_config, _env, default, convert) in base.session_var_map.items()
    }
    variables["config_file"] = (None, None, os.devnull, None)
    variables["credentials_file"] = (None, None, os.devnull, None)
    variables["region"] = (None, None, region or "us-east-1", None)
    session = botocore.session.Session(session_vars=variables)
    session.set_config_variable("ignore_configured_endpoint_urls", True)
    return session


def _missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3Storage(Storage):
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        part_size: int = DEFAULT_PART,
        concurrency: int = 4,
        chunk_size: int = DEFAULT_CHUNK,
        connect_timeout: float = 5.0,
        max_attempts: int = 5,
        keys: S3Keys | None = None,
        isolated: bool = False,
        guard: endpoints.EndpointPolicy | None = None,
    ) -> None:
        """`isolated`: sign with `keys` or not at all (never the server's credentials);
        `guard`: check every connection's address (see `datasets.endpoints`)."""
        if isolated and profile is not None:
            raise ValueError("an isolated store cannot use a profile of the server")
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes (S3's minimum)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.chunk_size = chunk_size
        # What an error message must never repeat (an endpoint may echo what it got).
        self._secrets = (
            tuple(v for v in (keys.access_key_id, keys.secret_access_key, keys.session_token) if v)
            if keys
            else ()
        )
        self.signed = keys is not None or not isolated
        pool_size = self.concurrency * 2 + 4
        config = Config(
            # Path-style for custom endpoints: MinIO and friends rarely have the
            # wildcard DNS that virtual-hosted buckets need.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=60,
            max_pool_connections=pool_size,
            signature_version=None if self.signed else UNSIGNED,
        )
        try:
            if isolated:
                session = boto3.session.Session(botocore_session=_isolated_session(region))
            else:
                session = boto3.session.Session(profile_name=profile, region_name=region)
            self.client: S3Client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=config,
                aws_access_key_id=keys.access_key_id if keys else None,
                aws_secret_access_key=keys.secret_access_key if keys else None,
                aws_session_token=keys.session_token if keys else None,
            )
        except BotoCoreError as exc:  # e.g. an unknown profile (no secret in these)
            raise StorageError(self._redact(f"Cannot set up the S3 client: {exc}.")) from None
        if guard is not None:
            endpoints.install(
                self.client, guard, timeout=(connect_timeout, 60.0), pool_size=pool_size
            )

    # ------------------------------------------------------------------ helpers

    def key(self, sha256: str) -> str:
        return self.prefix + object_key(sha256)

    def _error(self, what: str, exc: ClientError | BotoCoreError) -> StorageError:
        """A failed S3 call as a sentence for people, without the store's keys."""
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code', '?')} {err.get('Message', '')}".strip()
            text = f"S3 refused to {what} in bucket '{self.bucket}': {detail}."
        else:
            text = f"Cannot {what} in S3 bucket '{self.bucket}': {exc}."
        return StorageError(self._redact(text))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(what, exc) from None

    def part_size_for(self, number: int) -> int:
        """Part `number`'s size (1-based): doubles every 1000 parts, up to 512 MiB.

        The total size is unknown while streaming, and S3 allows 10,000 parts; growing
        parts keep memory small for ordinary objects and still reach ~2.5 TB.
        """
        return min(self.part_size << ((number - 1) // 1000), max(self.part_size, 512 << 20))

    def _read_part(self, reader: Reader, digest: Any, size: int) -> bytes:
        """Up to `size` bytes from `reader`, hashed in stream order."""
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

    # ------------------------------------------------------------------ the interface

    def put_stream(self, reader: Reader, *, expected_sha256: str | None = None) -> PutResult:
        digest = hashlib.sha256()
        first = self._read_part(reader, digest, self.part_size)
        if len(first) < self.part_size:  # the whole object fits in one part
            sha = digest.hexdigest()
            self._verify(sha, expected_sha256)
            if self._exists_with_size(sha, len(first)):
                return PutResult(sha, len(first), created=False)
            self._call(
                "write an object",
                lambda: self.client.put_object(Bucket=self.bucket, Key=self.key(sha), Body=first),
            )
            return PutResult(sha, len(first), created=True)

        direct = expected_sha256 is not None
        if direct and self._exists(expected_sha256 or ""):
            # Already stored: the bytes must still be received and checked (a checksum
            # alone proves nothing about having the data), but need not be sent again.
            size = len(first)
            while part := self._read_part(reader, digest, self.chunk_size):
                size += len(part)
            sha = digest.hexdigest()
            self._verify(sha, expected_sha256)
            return PutResult(sha, size, created=False)

        target = self.key(expected_sha256) if direct and expected_sha256 else self._tmp_key()
        size, sha = self._multipart(target, first, reader, digest, expected_sha256)
        if direct:
            return PutResult(sha, size, created=True)
        return self._commit_tmp(target, sha, size)

    def _verify(self, sha: str, expected: str | None) -> None:
        if expected is not None and expected != sha:
            raise ChecksumMismatch(
                f"The upload's SHA-256 is {sha}, not the announced {expected}.",
                field="X-Content-SHA256",
            )

    def _tmp_key(self) -> str:
        return f"{self.prefix}tmp/{uuid.uuid4().hex}"

    def _multipart(
        self, key: str, first: bytes, reader: Reader, digest: Any, expected: str | None
    ) -> tuple[int, str]:
        """Upload `first` + the rest of `reader` as a multipart upload to `key`, completed
        only when every part is in and the checksum (if `expected`) matches."""
        upload_id = self._call(
            "start an upload",
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"],
        )
        slots = threading.BoundedSemaphore(self.concurrency)
        errors: list[BaseException] = []

        def send(number: int, body: bytes) -> CompletedPartTypeDef:
            try:
                etag = self._call(
                    "upload a part",
                    lambda: self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )["ETag"],
                )
                return {"ETag": etag, "PartNumber": number}
            except BaseException as exc:
                errors.append(exc)
                raise
            finally:
                slots.release()

        try:
            futures: list[Future[CompletedPartTypeDef]] = []
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
                size, number, body = 0, 1, first
                while body:
                    # Blocks while `concurrency` parts are in flight: bounded memory.
                    slots.acquire()
                    if errors:
                        slots.release()
                        raise errors[0]
                    futures.append(pool.submit(send, number, body))
                    size += len(body)
                    number += 1
                    body = self._read_part(reader, digest, self.part_size_for(number))
            parts = [f.result() for f in futures]
            sha = digest.hexdigest()
            self._verify(sha, expected)
            self._call(
                "finish an upload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
            return size, sha
        except BaseException:
            # Nothing of an uncompleted upload is visible; aborting frees its parts.
            # What cannot be aborted, a bucket lifecycle rule should expire.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _commit_tmp(self, tmp_key: str, sha: str, size: int) -> PutResult:
        try:
            if self._exists_with_size(sha, size):
                return PutResult(sha, size, created=False)
            # Managed copy: multipart server-side copy beyond 5 GB, no bytes through here.
            self._call(
                "copy an object",
                lambda: self.client.copy(
                    {"Bucket": self.bucket, "Key": tmp_key},
                    self.bucket,
                    self.key(sha),
                    Config=TransferConfig(
                        multipart_threshold=self.part_size * 8,
                        multipart_chunksize=max(self.part_size, 64 * 1024 * 1024),
                        max_concurrency=self.concurrency,
                    ),
                ),
            )
            return PutResult(sha, size, created=True)
        finally:
            # A leftover tmp object is garbage, never read as data.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.bucket, Key=tmp_key)

    def _head(self, sha256: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise self._error("look up an object", exc) from None
        except BotoCoreError as exc:
            raise self._error("look up an object", exc) from None
        return int(head["ContentLength"])

    def _exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def _exists_with_size(self, sha256: str, size: int) -> bool:
        # A same-named object of another size is damaged: overwrite it with good bytes.
        return self._head(sha256) == size

    def open(self, sha256: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(f"No object {sha256} in bucket '{self.bucket}'.") from None
            raise self._error("read an object", exc) from None
        except BotoCoreError as exc:
            raise self._error("read an object", exc) from None
        return self._chunks(body)

    def _chunks(self, body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(self.chunk_size)
        except BotoCoreError as exc:
            raise self._error("read an object", exc) from None
        finally:
            body.close()

    def exists(self, sha256: str) -> bool:
        return self._exists(sha256)

    def size(self, sha256: str) -> int:
        found = self._head(sha256)
        if found is None:
            raise ObjectMissing(f"No object {sha256} in bucket '{self.bucket}'.")
        return found

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)
        self._call(
            "delete an object", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "profile": self.profile,
        }

    def check(self) -> None:
        self._call("find the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
        super().check()
