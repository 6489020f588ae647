"""Azure Blob Storage through obstore (Rust's `object_store`: block uploads in parallel,
streamed reads, SAS signing). See docs/datastores.md for why this library.

obstore's constructors also read `AZURE_*` variables of the process. An organization's
store must never sign with the server's identity, so every setting that decides where
requests go and how they are signed is given explicitly here: the account, the endpoint,
and either the org's own account key or SAS token, or no signature at all (with
`skip_signature`, obstore fetches no token from anywhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import AzureStore

from datasets.blobstore import DEFAULT_PART, ObjectStorage
from datasets.storage import DEFAULT_CHUNK, ObjectMissing, StorageError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AzureKeys:
    """The org's account key or SAS token (one of them); never in a repr."""

    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)


def default_endpoint(account: str) -> str:
    return f"https://{account}.blob.core.windows.net"


class AzureStorage(ObjectStorage):
    kind = "azure"

    def __init__(
        self,
        account: str,
        container: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        keys: AzureKeys | None = None,
        part_size: int = DEFAULT_PART,
        concurrency: int = 4,
        chunk_size: int = DEFAULT_CHUNK,
        connect_timeout: float = 5.0,
        max_attempts: int = 5,
    ) -> None:
        super().__init__(prefix=prefix, part_size=part_size, chunk_size=chunk_size)
        self.account = account
        self.container = container
        self.endpoint_url = endpoint_url
        self.concurrency = max(1, concurrency)
        self.where = f"container '{container}'"
        self._secrets = tuple(v for v in (keys.account_key, keys.sas_token) if v) if keys else ()
        # The blob endpoint is `<endpoint>` for the account; an emulator's (Azurite)
        # includes the account as its first path segment.
        endpoint = (endpoint_url or default_endpoint(account)).rstrip("/")
        config: dict[str, Any] = {
            "account_name": account,
            "endpoint": endpoint,
            "use_emulator": False,
            "use_fabric_endpoint": False,
            "use_azure_cli": False,
        }
        if keys and keys.account_key:
            config["account_key"] = keys.account_key
        elif keys and keys.sas_token:
            config["sas_key"] = keys.sas_token.lstrip("?")
        else:
            config["skip_signature"] = True
        try:
            self.store = AzureStore(
                container,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": endpoint.startswith("http://"),
                    "connect_timeout": timedelta(seconds=connect_timeout),
                    "timeout": timedelta(seconds=300),
                },
                retry_config={
                    "max_retries": max(0, max_attempts - 1),
                    "retry_timeout": timedelta(seconds=60),
                },
            )
        except BaseError as exc:
            raise StorageError(self._redact(f"Cannot set up the Azure client: {exc}")) from None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text.split("\n\nDebug source:", 1)[0]

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (NotFoundError, FileNotFoundError):
            raise
        except BaseError as exc:
            text = f"Azure refused to {what} in container '{self.container}': {exc}"
            raise StorageError(self._redact(text)) from None

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._call("write an object", lambda: obstore.put(self.store, key, data))

    def _put_chunks(self, key: str, chunks: Iterator[bytes]) -> None:
        self._call(
            "write an object",
            lambda: obstore.put(
                self.store,
                key,
                chunks,
                chunk_size=self.part_size,
                max_concurrency=self.concurrency,
            ),
        )

    def _copy(self, source: str, target: str) -> None:
        self._call("copy an object", lambda: obstore.copy(self.store, source, target))

    def _head_size(self, key: str) -> int | None:
        try:
            return int(
                self._call("look up an object", lambda: obstore.head(self.store, key))["size"]
            )
        except (NotFoundError, FileNotFoundError):
            return None

    def _get(self, key: str) -> Iterator[bytes]:
        try:
            result = self._call("read an object", lambda: obstore.get(self.store, key))
        except (NotFoundError, FileNotFoundError):
            raise ObjectMissing(f"No object {key} in {self.where}.") from None
        return self._chunks(result.stream(min_chunk_size=self.chunk_size))

    def _chunks(self, stream: Any) -> Iterator[bytes]:
        try:
            for buffer in stream:
                data = memoryview(buffer)
                for start in range(0, len(data), self.chunk_size):
                    yield bytes(data[start : start + self.chunk_size])
        except BaseError as exc:
            raise StorageError(self._redact(f"Cannot read from Azure: {exc}")) from None

    def _delete_key(self, key: str) -> None:
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            self._call("delete an object", lambda: obstore.delete(self.store, key))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "account": self.account,
            "container": self.container,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
        }
