"""Where an organization's own S3 store may connect: the SSRF guard on every connection.

An org admin names the endpoint, so without a guard they could point the API server at
its own loopback services, at the cloud metadata service (169.254.169.254) or at private
networks, and read the answers back through the store. The rule (`EndpointPolicy`):

- the endpoint is `https://` and every address its host resolves to is public
  (`orgs.netguard.forbidden`), or
- the operator allowed it (`CSHARE_STORE_ENDPOINT_ALLOWLIST`): the host name matches an
  allowed pattern, or every resolved address is in an allowed network. Plain `http://` is
  only for allowed endpoints.

It is checked when the store is saved (a clear 422) and again on every new connection:
`install` makes the boto3 client send through a urllib3 pool whose connections resolve
the host, check every address, and connect to one of those checked addresses (TLS still
verifies and sends SNI for the host name, and the Host header is unchanged), so DNS that
changes after the check (rebinding) reaches nothing, and neither does a store saved
before the operator narrowed the allowlist.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.exceptions import HTTPClientError
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from orgs.netguard import Address, Allowlist, forbidden, resolve
from policies.errors import Forbidden, Invalid


class EndpointRefused(Forbidden):
    """The org store's endpoint is not one the server may connect to (now)."""

    code = "store_endpoint_refused"


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    allowlist: Allowlist

    def addresses(self, scheme: str, host: str, port: int) -> list[Address]:
        """The addresses a connection to `host` may use now; `EndpointRefused` if none."""
        hint = " An operator can allow it with CSHARE_STORE_ENDPOINT_ALLOWLIST."
        found = resolve(host, port)
        if not found:
            raise EndpointRefused(f"The store endpoint host '{host}' cannot be resolved.")
        if self.allowlist.allows_host(host):
            return found
        allowed = [a for a in found if self.allowlist.allows_address(a)]
        if len(allowed) == len(found):
            return found
        if scheme != "https":
            raise EndpointRefused(
                f"The store endpoint '{host}' is plain http://, which only allowed "
                "endpoints may use; use https://." + hint
            )
        bad = [a for a in found if forbidden(a) and a not in allowed]
        if bad:
            raise EndpointRefused(
                f"The store endpoint '{host}' resolves to {bad[0]}, a loopback, "
                "link-local, private, metadata or otherwise internal address." + hint
            )
        return found

    def check_url(self, url: str, *, field: str = "endpoint_url") -> None:
        """At save time: the same rule as a 422 naming `field`."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            self.addresses(parts.scheme, host, port)
        except EndpointRefused as exc:
            raise Invalid(exc.detail, field=field, code=exc.code) from None


class _GuardedConnection:
    """Mixed into botocore's connection classes: `_new_conn` connects only to checked
    addresses (urllib3 would resolve the name itself, after our check)."""

    policy: EndpointPolicy
    guard_scheme: str
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        last: OSError | None = None
        for address in self.policy.addresses(self.guard_scheme, self.host, self.port):
            try:
                return urllib3_connection.create_connection(
                    (str(address), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    cast(Any, self), f"Connection to {self.host} timed out ({exc})."
                ) from None
            except OSError as exc:
                last = exc
        raise NewConnectionError(cast(Any, self), f"Failed to establish a new connection: {last}")


def guarded_session(
    policy: EndpointPolicy, *, timeout: tuple[float, float], pool_size: int
) -> URLLib3Session:
    """A botocore HTTP session whose every connection goes through `policy`. No proxy
    (a proxy would resolve the name itself) and none taken from the environment."""

    def conn(base: type, scheme: str) -> type:
        return type(
            f"Guarded{base.__name__}",
            (_GuardedConnection, base),
            {"policy": policy, "guard_scheme": scheme},
        )

    http_pool = type(
        "GuardedHTTPConnectionPool",
        (AWSHTTPConnectionPool,),
        {"ConnectionCls": conn(AWSHTTPConnection, "http")},
    )
    https_pool = type(
        "GuardedHTTPSConnectionPool",
        (AWSHTTPSConnectionPool,),
        {"ConnectionCls": conn(AWSHTTPSConnection, "https")},
    )
    session = URLLib3Session(
        proxies={},
        timeout=cast(Any, timeout),  # (connect, read): the stubs say int only
        max_pool_connections=pool_size,
    )
    # The pool manager holds this very dict: swapping its classes reroutes every pool.
    vars(session)["_pool_classes_by_scheme"].update({"http": http_pool, "https": https_pool})
    return session


def install(
    client: Any, policy: EndpointPolicy, *, timeout: tuple[float, float], pool_size: int
) -> None:
    """Send every request of the boto3 `client` through a guarded session.

    botocore's `before-send` event lets a handler answer a request itself; ours sends it
    with the guarded session, so the client's own (unguarded) pool is never used.
    """
    session = guarded_session(policy, timeout=timeout, pool_size=pool_size)

    def send(request: Any, **_: Any) -> Any:
        try:
            return session.send(request)
        except HTTPClientError as exc:
            inner = exc.kwargs.get("error")
            if isinstance(inner, EndpointRefused):
                raise inner from None  # not retried: it is a decision, not a fault
            raise

    client.meta.events.register("before-send.s3", send)
