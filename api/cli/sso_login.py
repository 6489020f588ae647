"""`cshare login --sso PROVIDER`: sign in through a browser, by polling (api/routers/sso.py).

The CLI prints a URL and a code; the person opens the URL anywhere (this machine or
another), signs in at the provider and approves the code; the CLI polls until the
server hands it the session token.
"""

from __future__ import annotations

import time
from typing import Any

from api.cli import output
from api.cli.client import Client
from api.cli.output import CliError


def sso_login(client: Client, provider: str, *, quiet: bool = False) -> dict[str, Any]:
    """The poll's final body (`token`, `expires_at`), after the browser's approval."""
    started = client.post(f"/auth/sso/{provider}/start", auth=False)
    say = output.note if quiet else output.say
    say(f"Open this URL in a browser and sign in with {provider}:\n\n  {started['url']}\n")
    say(f"Then approve the sign-in if the page shows the code {started['user_code']}.")
    deadline = time.monotonic() + float(started.get("expires_in", 600))
    interval = max(1.0, float(started.get("interval", 2)))
    while time.monotonic() < deadline:
        body = client.post("/auth/sso/poll", json={"poll_token": started["poll_token"]}, auth=False)
        if isinstance(body, dict) and body.get("status") == "done" and body.get("token"):
            return body
        time.sleep(interval)
    raise CliError("The sign-in was not approved in time.", hint="Run the command again.")
