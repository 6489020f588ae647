"""A local stand-in for GitHub's OAuth app endpoints and REST API, with their shapes:
GET /login/oauth/authorize, POST /login/oauth/access_token, GET /api/v3/user and
/api/v3/user/emails (GitHub Enterprise Server's API path). It checks what GitHub checks:
the client's id and secret, the code's redirect URI, and PKCE's verifier (S256).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

CLIENT_ID = "Iv1.testclient"
CLIENT_SECRET = "github-test-secret-0123456789"


@dataclass
class GitHubUser:
    id: int
    login: str
    emails: list[dict[str, Any]]


@dataclass
class FakeGitHub:
    base: str = ""
    # Who "is signed in at GitHub" when the browser reaches /login/oauth/authorize.
    user: GitHubUser | None = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, GitHubUser] = field(default_factory=dict)

    def provider_config(self, name: str = "github") -> dict[str, Any]:
        return {
            "name": name,
            "kind": "github",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorize_url": f"{self.base}/login/oauth/authorize",
            "token_url": f"{self.base}/login/oauth/access_token",
            "api_url": f"{self.base}/api/v3",
        }


def _handler(gh: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/login/oauth/authorize":
                assert gh.user is not None
                assert q["client_id"] == CLIENT_ID
                code = secrets.token_hex(10)
                gh.codes[code] = {**q, "user": gh.user}
                target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()
                return
            auth = self.headers.get("Authorization", "")
            user = gh.tokens.get(auth.removeprefix("Bearer ").removeprefix("token "))
            if user is None:
                self._json(401, {"message": "Bad credentials"})
            elif url.path == "/api/v3/user":
                self._json(200, {"id": user.id, "login": user.login, "type": "User"})
            elif url.path == "/api/v3/user/emails":
                self._json(200, user.emails)
            else:
                self._json(404, {"message": "Not Found"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/login/oauth/access_token":
                self._json(404, {"message": "Not Found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            else:
                cid, secret = form.get("client_id", ""), form.get("client_secret", "")
            grant = gh.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if (cid, secret) != (CLIENT_ID, CLIENT_SECRET) or grant is None:
                self._json(200, {"error": "bad_verification_code"})  # GitHub answers 200
                return
            if grant.get("code_challenge") != challenge or grant["redirect_uri"] != form.get(
                "redirect_uri"
            ):
                self._json(200, {"error": "bad_verification_code"})
                return
            token = "gho_" + secrets.token_hex(16)
            gh.tokens[token] = grant["user"]
            self._json(200, {"access_token": token, "token_type": "bearer", "scope": "user:email"})

    return Handler


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    gh = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gh))
    gh.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gh
    server.shutdown()
    server.server_close()
