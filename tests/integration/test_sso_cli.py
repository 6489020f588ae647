"""`cshare login --sso corp` as a real subprocess against a real server and a real OIDC
provider: it prints a URL and a code, a browser signs in and approves, the CLI saves the
session token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.sso_config import SsoProvider
from tests.oidc_server import OidcServer, sign_in_at_provider
from tests.prefect_server import REPO_ROOT
from tests.support import serve_in_thread

CLI = "import sys; from api.cli.main import app; sys.argv[0] = 'cshare'; app()"


def test_cli_login_sso(
    sqlite_database: Database,
    oidc_factory: Callable[..., OidcServer],
    tmp_path: Path,
) -> None:
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    gateway: Any = None
    with serve_in_thread(create_app(settings, sqlite_database, gateway)) as url:
        base = url.removesuffix("/api/v1")
        oidc = oidc_factory(
            [f"{base}/sso/corp/callback"],
            {"erin": {"email": "erin@corp.test", "email_verified": True}},
        )
        settings.public_url = base
        settings.sso_providers = [SsoProvider(**oidc.provider_config())]
        config = tmp_path / "config.json"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CSHARE_CONFIG": str(config)}
        env.pop("CSHARE_TOKEN", None)
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "login", "--sso", "corp", "--url", base],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            printed = ""
            while "Then approve" not in printed:
                line = proc.stdout.readline()
                assert line, f"the CLI stopped: {printed} {proc.stderr and proc.stderr.read()}"
                printed += line
            link = re.search(r"(http://\S+/auth\?\S+)", printed)
            code = re.search(r"code ([A-Z]{4}-[A-Z]{4})", printed)
            assert link and code, printed
            with httpx.Client() as at_provider:
                query = sign_in_at_provider(
                    at_provider, link.group(1), "erin", f"{base}/sso/corp/callback"
                )
            with httpx.Client(base_url=base, follow_redirects=True) as browser:
                r = browser.get("/sso/corp/callback", params=query)
                assert code.group(1) in r.text, r.text
                r = browser.post(
                    "/sso/approve", data={"csrf_token": browser.cookies["cshare_csrf"]}
                )
                assert r.status_code == 200, r.text
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "Logged in as erin <erin@corp.test>" in printed + out
        saved = config.read_text()
        assert '"token": "cs_s_' in saved, saved
