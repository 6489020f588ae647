"""The `cshare` CLI against the real API served by uvicorn on a free local port.

Commands run through typer's CliRunner (same process, so the config path, env and
module constants can be set per call) and, where it matters, as the installed
`.venv/bin/cshare` executable in a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.cli import audit as audit_cmd
from api.cli import config as cli_config
from api.cli.lookup import invitation_code
from api.cli.main import app
from orgs.config import get_settings
from orgs.db import Database
from tests.support import serve_in_thread

CSHARE_BIN = Path(sys.executable).parent / "cshare"
# Wide enough that rich tables never wrap an id or a name in the middle.
WIDE = "240"


@pytest.fixture
def server_url(sqlite_database: Database) -> Iterator[str]:
    app_ = create_app(get_settings(), sqlite_database)
    with serve_in_thread(app_) as url:
        yield url.removesuffix("/api/v1")


@dataclass
class Cli:
    """One person's CLI: their own config file, talking to the test server."""

    config: Path
    url: str
    runner: CliRunner

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str | None]:
        base: dict[str, str | None] = {
            "CSHARE_CONFIG": str(self.config),
            "CSHARE_API_URL": self.url,
            "CSHARE_TOKEN": None,
            "CSHARE_ORG": None,
            "COLUMNS": WIDE,
        }
        return {**base, **(extra or {})}

    def __call__(
        self,
        *args: str,
        code: int = 0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Any:
        result = self.runner.invoke(app, list(args), input=input, env=self.env(env))
        assert result.exit_code == code, (
            f"cshare {' '.join(args)} -> {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
        )
        return result

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self(*args, "--json", env=env).stdout)

    def saved(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())


@pytest.fixture
def make_cli(tmp_path: Path, server_url: str) -> Any:
    def make(name: str) -> Cli:
        return Cli(tmp_path / name / "cshare" / "config.toml", server_url, CliRunner())

    return make


def signup(cli: Cli, name: str) -> None:
    result = cli(
        "signup",
        "--email",
        f"{name}@example.test",
        "--name",
        name,
        "--password-stdin",
        input=f"pw-{name}-secret\n",
    )
    assert f"Signed up as {name}" in result.stdout


def run_binary(cli: Cli, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CSHARE_")}
    full_env.update({k: v for k, v in cli.env(env).items() if v is not None})
    return subprocess.run(
        [str(CSHARE_BIN), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the story


def test_signup_org_invite_roles_audit_settings_logout(
    make_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = make_cli("alice"), make_cli("bob")

    # Alice signs up with flags; the token is saved privately and never printed.
    signup(alice, "alice")
    saved = alice.saved()
    assert mode(alice.config) == 0o600
    assert mode(alice.config.parent) == 0o700
    assert saved["api_url"] == alice.url and saved["token"]
    who = alice("whoami")
    assert "alice <alice@example.test>" in who.stdout
    assert saved["token"] not in who.stdout + who.stderr

    # Bob signs up interactively: prompts, hidden password typed twice.
    result = bob("signup", input="bob@example.test\nbob\npw-bob-secret\npw-bob-secret\n")
    assert "Signed up as bob" in result.stdout
    assert "pw-bob-secret" not in result.stdout

    # Org create -> use.
    created = alice.json("org", "create", "Acme Research", "--slug", "acme", "--description", "R&D")
    assert created["slug"] == "acme" and created["role"] == "owner"
    alice("org", "use", "acme")
    assert alice.saved()["org"] == "acme"
    assert mode(alice.config) == 0o600
    listed = alice("org", "list")
    assert "acme" in listed.stdout and "Acme Research" in listed.stdout

    # Invite; Bob accepts with the full link and lands in the org.
    invite = alice.json("invite", "create", "--role", "member", "--max-uses", "1")
    assert invite["link"].endswith(invite["code"])
    accepted = bob("invite", "accept", invite["link"])
    assert "joined 'acme' as member" in accepted.stdout
    assert bob.saved()["org"] == "acme"  # his first org becomes current
    invites = alice.json("invite", "list")
    assert [(i["state"], i["uses"]) for i in invites["items"]] == [("used_up", 1)]
    assert invite["code"] not in alice("invite", "list").stdout

    # Both are members: the table and the JSON agree.
    table = alice("member", "list")
    assert "alice" in table.stdout and "bob" in table.stdout
    members = {m["user"]["name"]: m["role"] for m in alice.json("member", "list")["items"]}
    assert members == {"alice": "owner", "bob": "member"}

    # Role change by user name (resolved through the members list).
    assert "bob is now admin" in alice("member", "role", "bob", "admin").stdout
    members = {m["user"]["name"]: m["role"] for m in alice.json("member", "list")["items"]}
    assert members["bob"] == "admin"

    # The audit log shows what happened, newest first; filters go to the server.
    log = alice("audit")
    assert "member.role_changed" in log.stdout and "alice" in log.stdout
    changed = alice.json("audit", "--action", "member.role_changed")["items"]
    assert len(changed) == 1 and changed[0]["after"] == {"role": "admin"}
    # Small pages: the CLI follows next_cursor until --limit events are collected.
    monkeypatch.setattr(audit_cmd, "PAGE_SIZE", 1)
    page = alice.json("audit", "--limit", "3")
    ids = [e["id"] for e in page["items"]]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True) and page["next_cursor"]
    monkeypatch.setattr(audit_cmd, "PAGE_SIZE", 100)

    # A limits document with a misspelt key: the server's detail names it; exit 1.
    bad = tmp_path / "bad-limits.yaml"
    bad.write_text("organization:\n  limits:\n    max_concurent_jobs_per_user: 5\n")
    result = alice("org", "settings", "set", str(bad), code=1)
    assert "max_concurent_jobs_per_user" in result.stderr
    assert result.stderr.startswith("Error: ")
    assert result.stdout == ""

    good = tmp_path / "limits.yaml"
    good.write_text(
        "organization:\n  limits:\n    max_concurrent_jobs_per_user: 5\n"
        "  machine_types:\n    gpu: {max_scale: 4, per_user_quota: 1}\n"
    )
    assert "updated (version" in alice("org", "settings", "set", str(good)).stdout
    limits_yaml = alice("org", "settings", "get", "--yaml").stdout
    assert "max_concurrent_jobs_per_user: 5" in limits_yaml and "gpu:" in limits_yaml
    # What `get --yaml` prints, `set` reads back.
    roundtrip = tmp_path / "roundtrip.yaml"
    roundtrip.write_text(limits_yaml)
    alice("org", "settings", "set", str(roundtrip))
    settings_json = tmp_path / "settings.json"
    settings_json.write_text(json.dumps({"machines": {"approval_required": False}}))
    body = alice.json("org", "settings", "set", str(settings_json))
    assert body["machines"]["approval_required"] is False
    assert body["limits"]["organization"]["limits"]["max_concurrent_jobs_per_user"] == 5

    # The installed executable, as a real subprocess.
    proc = run_binary(alice, "member", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {m["user"]["name"] for m in json.loads(proc.stdout)["items"]} == {"alice", "bob"}
    proc = run_binary(alice, "whoami")
    assert proc.returncode == 0 and "alice" in proc.stdout, proc.stderr

    # Logout revokes and forgets the token; whoami then fails with exit 1.
    token = alice.saved()["token"]
    assert "Logged out" in alice("logout").stdout
    assert "token" not in alice.saved()
    assert mode(alice.config) == 0o600
    result = alice("whoami", code=1)
    assert "not signed in" in result.stderr
    # The old token was revoked on the server, not only forgotten.
    result = alice("whoami", code=1, env={"CSHARE_TOKEN": token})
    assert "Error:" in result.stderr and "cshare login" in result.stderr
    proc = run_binary(alice, "whoami")
    assert proc.returncode == 1 and "not signed in" in proc.stderr


# --------------------------------------------------------------------------- more commands


def test_login_tokens_and_env_overrides(make_cli: Any) -> None:
    alice = make_cli("alice")
    signup(alice, "alice")
    alice("logout")
    alice("login", "--email", "alice@example.test", "--password-stdin", input="pw-alice-secret\n")
    assert alice.saved()["token"]

    result = alice(
        "login", "--email", "alice@example.test", "--password-stdin", input="nope\n", code=1
    )
    assert result.stderr.startswith("Error: ")

    # A personal token is printed once at creation, listed without its secret, and works.
    created = alice("token", "create", "ci", "--expires-in-days", "7")
    secret = created.stdout.split("Token: ", 1)[1].split()[0]
    listed = alice("token", "list")
    assert "ci" in listed.stdout and secret not in listed.stdout
    other = make_cli("ci-runner")
    other("login", "--token-stdin", input=secret + "\n")
    assert other.saved()["token"] == secret
    assert "alice" in other("whoami").stdout

    # CSHARE_TOKEN / CSHARE_ORG override the file and are never written into it.
    alice("org", "create", "Env Org", "--slug", "env-org")
    shown = alice.json("org", "show", env={"CSHARE_ORG": "env-org"})
    assert shown["slug"] == "env-org"
    assert "org" not in alice.saved()
    assert "alice" in alice("whoami", env={"CSHARE_TOKEN": secret}).stdout
    assert alice.saved()["token"] != secret

    # Revoke by name: the token stops working.
    alice("token", "revoke", "ci")
    other("whoami", code=1)
    alice("token", "revoke", "ci", code=1)  # no active token of that name any more


def test_account_notifications(make_cli: Any) -> None:
    alice = make_cli("alice")
    signup(alice, "alice")
    shown = alice.json("account", "notifications", "show")
    assert shown["job_email"] == "failures" and shown["email"] == "alice@example.test"
    result = alice("account", "notifications", "set", "--email", "all")
    assert "whenever your job ends" in result.stdout
    assert alice.json("account", "notifications", "show")["job_email"] == "all"
    assert alice.json("account", "notifications", "set", "--email", "OFF")["job_email"] == "off"
    alice("account", "notifications", "set", "--email", "sometimes", code=2)


def test_org_update_transfer_leave_delete(make_cli: Any) -> None:
    alice, bob = make_cli("alice"), make_cli("bob")
    signup(alice, "alice")
    signup(bob, "bob")
    alice("org", "create", "Lab", "--slug", "lab", "--use")
    code = alice.json("invite", "create")["code"]
    bob("invite", "accept", code)

    alice("org", "update", code=2)  # nothing to change is a usage error
    assert alice.json("org", "update", "--description", "Wet lab")["description"] == "Wet lab"
    # A member may not: the server's detail on stderr, exit 1.
    denied = bob("org", "update", "--name", "Mine", code=1)
    assert denied.stderr.startswith("Error: ")

    # Transfer to a user given by name; Alice becomes admin, Bob owner.
    alice("org", "transfer", "bob", "--yes")
    members = {m["user"]["name"]: m["role"] for m in alice.json("member", "list")["items"]}
    assert members == {"alice": "admin", "bob": "owner"}
    alice("org", "transfer", "nobody", "--yes", code=1)

    alice("org", "leave", "--yes")
    assert "org" not in alice.saved()
    alice("org", "show", "--org", "lab", code=1)  # not visible any more: 404

    # Delete asks for the name; a wrong answer deletes nothing.
    wrong = bob("org", "delete", "lab", input="Not Lab\n", code=1)
    assert "does not match" in wrong.stderr
    bob("org", "delete", "lab", "--confirm", "Lab")
    assert "org" not in bob.saved()
    assert bob.json("org", "list")["items"] == []


def test_member_remove_and_invite_revoke(make_cli: Any) -> None:
    alice, bob = make_cli("alice"), make_cli("bob")
    signup(alice, "alice")
    signup(bob, "bob")
    alice("org", "create", "Team", "--slug", "team", "--use")
    first = alice.json("invite", "create", "--expires-in-hours", "2")
    alice("invite", "revoke", first["id"])
    bob("invite", "accept", first["code"], code=1)
    second = alice.json("invite", "create", "--role", "admin")
    bob("invite", "accept", f"{second['link']}/accept")  # a link with /accept works too
    bob_id = next(
        m["user"]["id"] for m in alice.json("member", "list")["items"] if m["user"]["name"] == "bob"
    )
    alice("member", "remove", bob_id, "--yes")  # by id
    assert {m["user"]["name"] for m in alice.json("member", "list")["items"]} == {"alice"}


def test_usage_and_connection_errors(make_cli: Any, tmp_path: Path) -> None:
    alice = make_cli("alice")
    signup(alice, "alice")
    result = alice("member", "list", code=2)
    assert "No organization selected" in result.stderr
    alice("member", "role", "bob", "emperor", "--org", "x", code=2)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = alice("whoami", code=3, env={"CSHARE_API_URL": dead})
    assert dead in result.stderr and "Cannot reach" in result.stderr

    missing = alice("org", "settings", "set", str(tmp_path / "missing.yaml"), "--org", "x", code=2)
    assert "Cannot read" in missing.stderr

    # A validation error shows the server's detail and the field.
    result = alice("org", "create", "x" * 101, code=1)
    assert "(field: name)" in result.stderr
    # stdin carries the password, so the other answers must come as flags.
    alice("signup", "--password-stdin", input="pw\n", code=2)

    # Logging out while the server is down still forgets the token, and says so.
    result = alice("logout", code=3, env={"CSHARE_API_URL": dead})
    assert "may still be valid" in result.stderr
    assert "token" not in alice.saved()


def test_db_upgrade_subprocess(make_cli: Any, tmp_path: Path) -> None:
    cli = make_cli("operator")
    db_path = tmp_path / "ops.db"
    proc = run_binary(cli, "db", "upgrade", "--json", CSHARE_DATABASE_URL=f"sqlite:///{db_path}")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["revision"] and db_path.exists()


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    "given",
    [
        "abc123",
        " abc123 ",
        "http://127.0.0.1:8000/invitations/abc123",
        "https://cshare.example/invitations/abc123/",
        "https://cshare.example/api/v1/invitations/abc123/accept",
        "https://cshare.example/join?code=abc123",
    ],
)
def test_invitation_code_from_code_or_link(given: str) -> None:
    assert invitation_code(given) == "abc123"


def test_config_file_toml_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CSHARE_API_URL", "CSHARE_TOKEN", "CSHARE_ORG"):
        monkeypatch.delenv(var, raising=False)
    tricky = 'tok"en\\with\tcontrol\x01and ünïcode'
    for name in ("config.toml", "config.json"):
        path = tmp_path / name
        monkeypatch.setenv("CSHARE_CONFIG", str(path))
        cli_config.update(api_url="http://h:1", token=tricky, org="o")
        assert mode(path) == 0o600
        assert cli_config.load() == cli_config.Config("http://h:1", tricky, "o")
        eff = cli_config.effective()
        assert (eff.api_url, eff.token, eff.org) == ("http://h:1", tricky, "o")
    assert json.loads((tmp_path / "config.json").read_text())["org"] == "o"
    assert cli_config.normalize_api_url("localhost:8000/api/v1/") == "http://localhost:8000"
