"""A real OpenID Connect provider for the SSO tests: npm's `oidc-provider`, run by
tests/oidc/provider.mjs under node on 127.0.0.1 (its development login form accepts any
login; the accounts' e-mails are given by the test).

The package is installed with `npm ci` (tests/oidc/package-lock.json) into a cache
directory on first use (`CSHARE_TEST_CACHE`, default ~/.cache/cshare-tests), then reused.
Without node or npm the tests skip with the reason, except under CI=true where they fail.
"""

from __future__ import annotations

import fcntl
import hashlib
import html.parser
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

HERE = Path(__file__).resolve().parent / "oidc"
IN_CI = os.environ.get("CI", "").lower() == "true"
CLIENT_ID = "cshare-test"
CLIENT_SECRET = "cshare-test-secret-0123456789abcdef"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason + " (CI=true requires it)")
    pytest.skip(reason)


def install_dir() -> Path:
    """Where `oidc-provider` is installed: one directory per lockfile content."""
    lock = (HERE / "package-lock.json").read_bytes()
    base = Path(os.environ.get("CSHARE_TEST_CACHE") or Path.home() / ".cache" / "cshare-tests")
    return base / f"oidc-provider-{hashlib.sha256(lock).hexdigest()[:12]}"


def ensure_installed() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _missing(
            "node and npm are needed to run the test OIDC provider (apt-get install nodejs npm)"
        )
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may get here at once: one installs, the others wait.
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "node_modules" / "oidc-provider" / "package.json").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(HERE / name, target / name)
            done = subprocess.run(
                [str(npm), "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                _missing(f"npm ci of oidc-provider failed: {done.stderr.strip()[-500:]}")
        shutil.copy(HERE / "provider.mjs", target / "provider.mjs")  # always the current one
    return target


@dataclass
class OidcServer:
    issuer: str
    process: subprocess.Popen[str]
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def provider_config(self, name: str = "corp", **extra: Any) -> dict[str, Any]:
        """The operator's `CSHARE_SSO_PROVIDERS` entry for this server."""
        return {
            "name": name,
            "kind": "oidc",
            "display_name": "Corp ID",
            "discovery_url": self.discovery_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            **extra,
        }


def start_oidc(redirect_uris: list[str], accounts: dict[str, dict[str, Any]]) -> OidcServer:
    directory = ensure_installed()
    env = {
        **os.environ,
        "OIDC_PORT": "0",
        "OIDC_CLIENTS": json.dumps(
            [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": redirect_uris,
                }
            ]
        ),
        "OIDC_ACCOUNTS": json.dumps(accounts),
    }
    process = subprocess.Popen(
        [str(shutil.which("node")), "provider.mjs"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY ") or not line:
            break
    if not line.startswith("READY "):
        stop(process)
        raise RuntimeError("the test OIDC provider did not start")
    server = OidcServer(issuer=line.split()[1], process=process)
    httpx.get(server.discovery_url, timeout=10).raise_for_status()
    return server


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def oidc_factory() -> Iterator[Callable[..., OidcServer]]:
    """Start providers with given redirect URIs and accounts; stopped at the end."""
    started: list[OidcServer] = []

    def factory(redirect_uris: list[str], accounts: dict[str, dict[str, Any]]) -> OidcServer:
        server = start_oidc(redirect_uris, accounts)
        started.append(server)
        return server

    yield factory
    for server in started:
        stop(server.process)


# ------------------------------------------------------------------ driving its pages


@dataclass
class _Form:
    action: str = ""
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(action=a.get("action", "")))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")


def sign_in_at_provider(
    http: httpx.Client, authorize_url: str, login: str, stop_at: str
) -> dict[str, str]:
    """Walk the provider's login and consent pages like a browser would, until it
    redirects to `stop_at`; returns that redirect's query (code, state)."""
    url = authorize_url
    response = http.get(url)
    for _ in range(20):
        if response.is_redirect:
            url = urljoin(url, response.headers["location"])
            if url.startswith(stop_at):
                return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            response = http.get(url)
            continue
        parser = _FormParser()
        parser.feed(response.text)
        assert parser.forms, f"no form on the provider's page {url}: {response.text[:300]}"
        form = parser.forms[0]
        if "login" in form.fields:
            form.fields.update(login=login, password="any")
        url = urljoin(url, form.action or url)
        response = http.post(url, data=form.fields)
    raise AssertionError("the provider never redirected back")
