"""The HTTP client the commands use: base URL + `/api/v1`, bearer token, timeouts, and
error responses turned into `ApiError` (the server's `detail` and `field`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from api.cli import config
from api.cli.output import ApiError, CliError, ConnectionProblem, UsageProblem

API_PREFIX = "/api/v1"
# Connecting should be quick; a request may do real work (password hashing, a migration
# on first start), so reading gets longer.
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
USER_AGENT = "cshare-cli/0.1.0"

LOGIN_HINT = "Run `cshare login` (or `cshare signup`), or set CSHARE_TOKEN."


def seg(value: str) -> str:
    """One path segment, quoted so that a slug, id or code can never change the path."""
    return quote(value, safe="")


class Client:
    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url
        self.token = token
        self._http = httpx.Client(
            base_url=api_url + API_PREFIX,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        """Send one request; returns the decoded JSON body (None for an empty one)."""
        hdrs = dict(headers or {})
        if auth:
            if not self.token:
                raise CliError("You are not signed in.", hint=LOGIN_HINT)
            hdrs["Authorization"] = f"Bearer {self.token}"
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=clean, content=content, headers=hdrs
            )
        except httpx.TimeoutException:
            raise ConnectionProblem(
                f"The Compute Share API at {self.api_url} did not answer in time."
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionProblem(
                f"Cannot reach the Compute Share API at {self.api_url} ({reason}).",
                hint="Is the server running (`cshare server`)? "
                "Set its URL with CSHARE_API_URL or `cshare login --url URL`.",
            ) from None
        if response.is_success:
            return _decode(response)
        raise _api_error(response)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def list_all(self, path: str, *, page_size: int = 500) -> list[dict[str, Any]]:
        """Every item of an offset-paginated list (`{items, total, limit, offset}`)."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.get(path, params={"limit": page_size, "offset": offset})
            batch = list(page.get("items", []))
            items.extend(batch)
            offset += len(batch)
            total = page.get("total")
            if not batch or (isinstance(total, int) and offset >= total):
                return items


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _api_error(response: httpx.Response) -> ApiError:
    status = response.status_code
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = field = None
    code = ""
    if isinstance(body, dict):
        raw = body.get("detail")
        detail = raw if isinstance(raw, str) else None
        field = body.get("field") if isinstance(body.get("field"), str) else None
        code = str(body.get("error") or "")
    if not detail:
        # Not our API's error shape (a proxy page, say): show the start of the text.
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        detail = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    hint = LOGIN_HINT if status == 401 else None
    request_id = response.headers.get("X-Request-ID")
    if status >= 500 and request_id:
        # What an operator greps the server's logs for.
        hint = f"Request id {request_id} (the server's logs have its lines)."
    return ApiError(status, detail, code=code, field=field, body=body, hint=hint)


@contextmanager
def connect(cfg: config.Effective | None = None) -> Iterator[Client]:
    cfg = cfg or config.effective()
    with Client(cfg.api_url, cfg.token) as client:
        yield client


def require_org(cfg: config.Effective, org: str | None) -> str:
    """The org a command acts on: `--org`, else CSHARE_ORG, else the current org."""
    slug = org or cfg.org
    if not slug:
        raise UsageProblem(
            "No organization selected.",
            hint="Pass --org SLUG, set CSHARE_ORG, or run `cshare org use SLUG`.",
        )
    return slug


def read_org(org: str | None, *parts: str, every_page: bool = False) -> tuple[str, Any]:
    """GET `/orgs/<the selected org>/<parts>` (each part one quoted segment).

    Returns (slug, answer). `every_page`: every page of a list, as `{"items", "total"}`,
    which is also what `--json` prints for it.
    """
    cfg = config.effective()
    slug = require_org(cfg, org)
    path = "/".join(["/orgs", seg(slug), *map(seg, parts)])
    with connect(cfg) as client:
        if every_page:
            items = client.list_all(path)
            return slug, {"items": items, "total": len(items)}
        return slug, client.get(path)
