"""`cshare account 2fa ...`, `cshare login` with a code, the members list's 2FA column and
the warning when requiring it: the CLI in-process (CliRunner) against the real API served
by uvicorn (see test_cli)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.integration.test_cli import make_cli, server_url, signup

__all__ = ["make_cli", "server_url"]  # the fixtures, shared with test_cli

RECOVERY = re.compile(r"\b[a-z2-9]{5}-[a-z2-9]{5}\b")


def test_enable_login_tokens_members_disable(
    make_cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The server runs in this process: fix the secret it makes, to compute the app's code.
    secret = pyotp.random_base32()
    monkeypatch.setattr(pyotp, "random_base32", lambda: secret)
    totp = pyotp.TOTP(secret)
    alice, bob = make_cli("alice"), make_cli("bob")
    signup(alice, "alice")
    signup(bob, "bob")
    assert "off" in alice("account", "2fa", "status").stdout

    r = alice("account", "2fa", "enable", input=totp.now() + "\n")
    assert "▀" in r.stdout or "█" in r.stdout  # the QR code, in block characters
    assert secret in r.stdout
    codes = RECOVERY.findall(r.stdout)
    assert len(codes) == 10
    assert "10 recovery codes left" in alice("account", "2fa", "status").stdout

    # Signing in asks for the code after the password (here: a recovery code); with the
    # password on stdin there is nobody to ask, so --code is needed.
    r = alice(
        "login",
        "--email",
        "alice@example.test",
        "--password-stdin",
        input="pw-alice-secret\n",
        code=2,
    )
    assert "--code" in r.stderr
    r = alice(
        "login",
        "--email",
        "alice@example.test",
        "--password-stdin",
        "--code",
        codes[0],
        input="pw-alice-secret\n",
    )
    assert "Logged in as alice" in r.stdout
    r = alice(
        "login",
        "--email",
        "alice@example.test",
        "--password-stdin",
        "--code",
        codes[0],
        input="pw-alice-secret\n",
        code=1,
    )
    assert "not right, or was used already" in r.stderr
    # That session passed two-factor just now: it may create a token.
    assert "Token:" in alice("token", "create", "ci").stdout
    r = alice("account", "2fa", "verify", "--code", "000000", code=1)
    assert "not right" in r.stderr

    # The owner sees who has two-factor; requiring it warns about the others.
    alice("org", "create", "Acme", "--slug", "acme", "--use")
    invite = alice.json("invite", "create", "--role", "member")
    bob("invite", "accept", invite["code"])
    r = alice("member", "list")
    assert "2FA" in r.stdout
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert " on " in lines["alice"] and " off " in lines["bob"]
    assert "2FA" not in bob("member", "list", "--org", "acme").stdout
    settings = tmp_path / "security.json"
    settings.write_text(json.dumps({"security": {"require_2fa": True}}))
    r = alice("org", "settings", "set", str(settings))
    assert "1 member(s) without it" in r.stderr
    r = bob("member", "list", "--org", "acme", code=1)
    assert "Enable two-factor authentication to access Acme" in r.stderr

    # Turning it off needs a code.
    alice("account", "2fa", "disable", "--code", "123456", code=1)
    alice("account", "2fa", "disable", "--code", codes[1])
    assert "off" in alice("account", "2fa", "status").stdout
