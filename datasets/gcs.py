"""Google Cloud Storage through Google's `google-cloud-storage` client (the JSON API:
resumable uploads, server-side rewrite, V4 signed URLs). See docs/datastores.md for why
not obstore here (its GCS client speaks the XML API, which the GCS emulator lacks).

An organization's store signs with the service account key its admins gave (kept
sealed), or sends anonymous requests; it never falls back to the server's Application
Default Credentials or the metadata server: the client is always built with explicit
credentials and an explicit project.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.oauth2 import service_account

from datasets.blobstore import DEFAULT_PART, ObjectStorage
from datasets.storage import DEFAULT_CHUNK, ObjectMissing, StorageError

T = TypeVar("T")
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105  (a URL, not a secret)
_RESUMABLE_UNIT = 256 * 1024  # resumable upload chunks are multiples of this
_FAILURES = (
    api_exceptions.GoogleAPIError,
    google.auth.exceptions.GoogleAuthError,
    requests.RequestException,
)


@dataclass(frozen=True, slots=True)
class GcsKeys:
    """The JSON of the org's service account key; never in a repr."""

    service_account_json: str = field(repr=False)


def credentials_of(keys: GcsKeys | None) -> Credentials:
    if keys is None:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    info = json.loads(keys.service_account_json)
    # The key names the URL tokens are fetched from: only Google's own, never an
    # address an org admin chose (it would be fetched by the server).
    info["token_uri"] = TOKEN_URI
    return service_account.Credentials.from_service_account_info(  # type: ignore[no-any-return,no-untyped-call]
        info, scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
    )


class GcsStorage(ObjectStorage):
    kind = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        keys: GcsKeys | None = None,
        part_size: int = DEFAULT_PART,
        chunk_size: int = DEFAULT_CHUNK,
        connect_timeout: float = 5.0,
        max_attempts: int = 5,
    ) -> None:
        part = max(_RESUMABLE_UNIT, part_size // _RESUMABLE_UNIT * _RESUMABLE_UNIT)
        super().__init__(prefix=prefix, part_size=part, chunk_size=chunk_size)
        self.bucket_name = bucket
        self.endpoint_url = endpoint_url
        self.where = f"bucket '{bucket}'"
        self.timeout = (connect_timeout, 60.0)
        self.max_attempts = max_attempts
        try:
            credentials = credentials_of(keys)
            project = getattr(credentials, "project_id", None) or "cshare"
            self.client = storage.Client(
                project=project,
                credentials=credentials,
                client_options={"api_endpoint": endpoint_url or DEFAULT_ENDPOINT},
            )
        except (ValueError, KeyError, *_FAILURES) as exc:
            raise StorageError(f"Cannot set up the GCS client: {type(exc).__name__}.") from None
        self.bucket = self.client.bucket(bucket)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except api_exceptions.NotFound:
            raise
        except _FAILURES as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            raise StorageError(
                f"GCS refused to {what} in bucket '{self.bucket_name}': {message}"
            ) from None

    def _put_bytes(self, key: str, data: bytes) -> None:
        blob = self.bucket.blob(key)
        self._call(
            "write an object",
            lambda: blob.upload_from_string(data, timeout=self.timeout),
        )

    def _put_chunks(self, key: str, chunks: Iterator[bytes]) -> None:
        # A resumable upload is finalised only by `close()`; an exception inside the
        # `with` leaves the session unfinished (invisible, expired by GCS after a week).
        blob = self.bucket.blob(key, chunk_size=self.part_size)

        def upload() -> None:
            with blob.open("wb", timeout=self.timeout[1], ignore_flush=True) as out:
                for chunk in chunks:
                    out.write(chunk)

        self._call("write an object", upload)

    def _copy(self, source: str, target: str) -> None:
        src, dst = self.bucket.blob(source), self.bucket.blob(target)

        def rewrite() -> None:
            token, _done, _total = dst.rewrite(src, timeout=self.timeout)
            while token is not None:  # large objects are rewritten in several calls
                token, _done, _total = dst.rewrite(src, token=token, timeout=self.timeout)

        self._call("copy an object", rewrite)

    def _head_size(self, key: str) -> int | None:
        found = self._call(
            "look up an object", lambda: self.bucket.get_blob(key, timeout=self.timeout)
        )
        return None if found is None else int(found.size or 0)

    def _get(self, key: str) -> Iterator[bytes]:
        found = self._call(
            "read an object", lambda: self.bucket.get_blob(key, timeout=self.timeout)
        )
        if found is None:
            raise ObjectMissing(f"No object {key} in {self.where}.")
        return self._chunks(found)

    def _chunks(self, blob: storage.Blob) -> Iterator[bytes]:
        try:
            # Ranged reads of a part each (the generation is pinned by the reader),
            # handed on in chunks of at most `chunk_size`.
            with blob.open("rb", chunk_size=self.part_size, timeout=self.timeout) as reader:
                while data := reader.read(self.chunk_size):
                    yield data
        except _FAILURES as exc:
            raise StorageError(f"Cannot read from GCS bucket '{self.bucket_name}': {exc}") from None

    def _delete_key(self, key: str) -> None:
        with contextlib.suppress(api_exceptions.NotFound):
            self._call(
                "delete an object", lambda: self.bucket.blob(key).delete(timeout=self.timeout)
            )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bucket": self.bucket_name,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
        }
