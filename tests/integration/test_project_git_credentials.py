"""A project's Git credentials (deploy key, HTTPS token) through the API and the CLI, on
both backends: who may set them, that no answer carries the private key or the token,
that another org can neither see nor use them, and that the stored ones open the real
servers of tests/git_servers.py (sshd with the generated key, http-backend with the
token)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from agents.git_code import checkout
from flows import git_sources
from flows.git_credentials import load_private_key
from flows.models import Project
from orgs import secrets
from orgs.config import get_settings
from orgs.models import Organization
from policies.errors import Invalid
from tests.git_servers import GitHttp, GitSshd
from tests.integration.test_cli import (  # noqa: F401  (fixtures used by name)
    Cli,
    make_cli,
    server_url,
    signup,
)
from tests.support import ApiClient, Person

pytestmark = pytest.mark.timeout(120)


class Team:
    """An org with an owner, an admin and two members; `alice` makes project `vision`."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.owner = api.signup()
        self.admin = api.signup()
        self.alice = api.signup()
        self.bob = api.signup()
        self.slug = api.create_org(self.owner)
        api.add_member(self.slug, self.owner, self.admin, "admin")
        api.add_member(self.slug, self.owner, self.alice, "member")
        api.add_member(self.slug, self.owner, self.bob, "member")
        self.texts: list[str] = []  # every answer, to check no secret ever shows

    def url(self, project: str, what: str) -> str:
        return f"/orgs/{self.slug}/projects/{project}/{what}"

    def call(self, method: str, path: str, who: Person, **kw: Any) -> Any:
        r = self.api.request(method, path, who, **kw)
        self.texts.append(r.text)
        return r

    def project(self, name: str, who: Person) -> None:
        r = self.call("POST", f"/orgs/{self.slug}/projects", who, json={"name": name})
        assert r.status_code == 201, r.text

    def org(self) -> Organization:
        with self.api.db.session() as s:
            org = s.scalars(select(Organization).where(Organization.slug == self.slug)).one()
            s.expunge(org)
            return org


def _ssh_keygen(tmp_path: Path, *args: str) -> tuple[str, str, str]:
    """A key made by OpenSSH itself: (private, public line, fingerprint as it prints)."""
    path = tmp_path / f"key-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ssh-keygen", "-q", *args, "-f", str(path)], check=True)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    return path.read_text(), (tmp_path / f"{path.name}.pub").read_text().strip(), fingerprint


def _public(private: str) -> str:
    return (
        load_private_key(private)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def test_deploy_key_and_token_rules(api: ApiClient, tmp_path: Path) -> None:
    team = Team(api)
    team.project("vision", team.alice)
    key_url, token_url = team.url("vision", "deploy-key"), team.url("vision", "git-token")

    r = team.call("GET", key_url, team.bob)
    assert (r.status_code, r.json()["error"]) == (404, "deploy_key_not_found")
    assert "deploy-key generate vision" in r.json()["detail"]

    # The creator generates it: the public half, OpenSSH style, with a fingerprint.
    r = team.call("POST", key_url, team.alice, json={})
    assert r.status_code == 201, r.text
    key = r.json()
    assert set(key) == {"public_key", "fingerprint", "key_type", "updated_at"}
    assert key["public_key"].startswith("ssh-ed25519 AAAA")
    assert key["public_key"].endswith(f"cshare:{team.slug}/vision")
    assert key["fingerprint"].startswith("SHA256:") and key["key_type"] == "ed25519"
    pub_file = tmp_path / "served.pub"
    pub_file.write_text(key["public_key"] + "\n")
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub_file)], check=True, capture_output=True, text=True
    )
    assert printed.stdout.split()[1] == key["fingerprint"]  # what GitHub will show

    # Any member sees the public half; only the creator or an admin changes it.
    assert team.call("GET", key_url, team.bob).json()["public_key"] == key["public_key"]
    r = team.call("POST", key_url, team.bob, json={"replace": True})
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert team.call("DELETE", key_url, team.bob).status_code == 403
    r = team.call("POST", key_url, team.alice, json={})
    assert (r.status_code, r.json()["error"]) == (409, "deploy_key_exists")
    r = team.call("POST", key_url, team.admin, json={"replace": True})
    assert r.status_code == 201 and r.json()["public_key"] != key["public_key"]

    # The user's own key (made by ssh-keygen): same fingerprint as OpenSSH prints.
    private, public, fingerprint = _ssh_keygen(tmp_path, "-t", "ed25519", "-N", "")
    r = team.call("POST", key_url, team.alice, json={"private_key": private, "replace": True})
    assert r.status_code == 201, r.text
    assert r.json()["fingerprint"] == fingerprint
    assert r.json()["public_key"].split()[:2] == public.split()[:2]
    rsa_private, _pub, rsa_fp = _ssh_keygen(tmp_path, "-t", "rsa", "-b", "2048", "-N", "")
    r = team.call("POST", key_url, team.alice, json={"private_key": rsa_private, "replace": True})
    assert (r.status_code, r.json()["key_type"], r.json()["fingerprint"]) == (201, "rsa", rsa_fp)
    locked, _pub, _fp = _ssh_keygen(tmp_path, "-t", "ed25519", "-N", "a passphrase")
    for bad, says in (
        (locked, "passphrase"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI just the public one", "OpenSSH or PEM"),
        ("garbage", "OpenSSH or PEM"),
    ):
        r = team.call("POST", key_url, team.alice, json={"private_key": bad, "replace": True})
        assert (r.status_code, r.json()["error"]) == (422, "invalid_private_key"), r.text
        assert says in r.json()["detail"]
    assert team.call("GET", key_url, team.bob).json()["fingerprint"] == rsa_fp  # unchanged

    # The token: set by the creator, shown as its user name only.
    token = f"glpat-{uuid.uuid4().hex}"
    r = team.call("PUT", token_url, team.alice, json={"token": token, "user": "oauth2"})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"user", "updated_at"} and r.json()["user"] == "oauth2"
    assert team.call("GET", token_url, team.bob).json()["user"] == "oauth2"
    assert team.call("PUT", token_url, team.bob, json={"token": "x"}).status_code == 403
    for body, field in (({"token": "has space"}, "token"), ({"token": "t", "user": "a:b"}, "user")):
        r = team.call("PUT", token_url, team.alice, json=body)
        assert r.status_code == 422 and field in r.json()["detail"].lower(), r.text

    # Stored as the org's secrets (sealed), listed by name for admins, values never.
    with api.db.session() as s:
        project = s.scalars(select(Project).where(Project.name == "vision")).one()
        org = s.get(Organization, project.org_id)
        assert org is not None
        names = {git_sources.deploy_key_secret(project), git_sources.token_secret(project)}
        stored, _total = secrets.list_secrets(s, org.id)
        assert {i.name for i in stored} == names
        cred = git_sources.credential_for(s, org, project)
        assert cred is not None and cred.kind == "ssh"
        assert _public(cred.secret) == _public(rsa_private)  # the key stored last
        https = git_sources.credential_for(s, org, project, url="https://h.example/t/r.git")
        assert https is not None and (https.kind, https.user, https.secret) == (
            "token",
            "oauth2",
            token,
        )
        assert git_sources.credential_for(s, org, project, url="git://h.example/r.git") is None
    listed = team.call("GET", f"/orgs/{team.slug}/secrets", team.admin).json()
    assert {i["name"] for i in listed["items"]} == names

    # `default` is nobody's own: only admins give it credentials.
    team.project("default", team.alice)
    r = team.call("POST", team.url("default", "deploy-key"), team.alice, json={})
    assert r.status_code == 403
    assert (
        team.call("POST", team.url("default", "deploy-key"), team.admin, json={}).status_code == 201
    )

    # Deleting credentials and the project: the secrets go too.
    assert team.call("DELETE", token_url, team.admin).status_code == 204
    assert team.call("GET", token_url, team.bob).json()["error"] == "git_token_not_found"
    assert team.call("DELETE", token_url, team.admin).status_code == 404
    assert team.call("DELETE", f"/orgs/{team.slug}/projects/vision", team.alice).status_code == 204
    with api.db.session() as s:
        stored, _total = secrets.list_secrets(s, team.org().id)
        assert not names & {i.name for i in stored}

    for text in team.texts:
        assert "PRIVATE KEY" not in text and token not in text
        assert private.splitlines()[1] not in text and rsa_private.splitlines()[1] not in text


def test_other_orgs_cannot_see_or_use_a_projects_key(api: ApiClient) -> None:
    a, b = Team(api), Team(api)
    a.project("vision", a.alice)
    b.project("vision", b.alice)  # the same name in org B: its own, keyless project
    assert a.call("POST", a.url("vision", "deploy-key"), a.alice, json={}).status_code == 201
    a.call("PUT", a.url("vision", "git-token"), a.alice, json={"token": "tok-a"})

    for method, what, body in (
        ("GET", "deploy-key", None),
        ("POST", "deploy-key", {"replace": True}),
        ("DELETE", "deploy-key", None),
        ("GET", "git-token", None),
        ("PUT", "git-token", {"token": "x"}),
        ("DELETE", "git-token", None),
    ):
        kw = {"json": body} if body is not None else {}
        r = api.request(method, a.url("vision", what), b.owner, **kw)
        assert (r.status_code, r.json()["error"]) == (404, "org_not_found"), (method, what)
    r = api.get(b.url("vision", "deploy-key"), b.owner)
    assert (r.status_code, r.json()["error"]) == (404, "deploy_key_not_found")
    r = api.get(b.url("vision", "git-token"), b.owner)
    assert (r.status_code, r.json()["error"]) == (404, "git_token_not_found")

    with api.db.session() as s:
        project_a = s.scalars(
            select(Project).join(Organization).where(Organization.slug == a.slug)
        ).one()
        org_b = s.scalars(select(Organization).where(Organization.slug == b.slug)).one()
        project_b = s.scalars(select(Project).where(Project.org_id == org_b.id)).one()
        # Org B's context with org A's project: nothing (a bug upstream must not leak it).
        assert git_sources.credential_for(s, org_b, project_a) is None
        assert git_sources.credential_for(s, org_b, project_b) is None


def test_stored_credentials_open_the_real_servers(
    sqlite_api: ApiClient, git_sshd: GitSshd, git_http: GitHttp, tmp_path: Path
) -> None:
    api, team = sqlite_api, Team(sqlite_api)
    team.project("vision", team.alice)
    settings = get_settings().model_copy(update={"git_host_allowlist": "127.0.0.1/32"})

    # SSH: the generated key, pasted into the server (here: its authorized_keys).
    ssh_repo = git_sshd.repo("vision")
    ssh_sha = ssh_repo.commit({"flow.py": "WHERE = 'ssh'\n"})
    ssh_url = git_sshd.url(ssh_repo)
    key = team.call("POST", team.url("vision", "deploy-key"), team.alice, json={}).json()
    with api.db.session() as s:
        org = s.scalars(select(Organization).where(Organization.slug == team.slug)).one()
        project = s.scalars(select(Project).where(Project.org_id == org.id)).one()
        cred = git_sources.credential_for(s, org, project, url=ssh_url, settings=settings)
    assert cred is not None and cred.kind == "ssh"
    with pytest.raises(Invalid) as err:
        git_sources.resolve(ssh_url, "main", cred, settings=settings)
    assert err.value.code == "git_auth_failed"  # not yet added to the Git host
    git_sshd.authorize(key["public_key"])
    assert git_sources.resolve(ssh_url, "main", cred, settings=settings) == ssh_sha
    tree = checkout(ssh_url, ssh_sha, tmp_path / "cache", cred.material())
    assert (tree / "flow.py").read_text() == "WHERE = 'ssh'\n"
    with pytest.raises(Invalid) as err:
        git_sources.resolve(ssh_url, "main", None, settings=settings)
    assert err.value.code == "git_auth_failed"

    # HTTPS: the token, with the user name the server wants.
    http_repo = git_http.repo("vision")
    http_sha = http_repo.commit({"flow.py": "WHERE = 'https'\n"})
    http_url = git_http.url(http_repo)
    r = team.call(
        "PUT",
        team.url("vision", "git-token"),
        team.alice,
        json={"token": git_http.token, "user": git_http.user},
    )
    assert r.status_code == 200, r.text
    with api.db.session() as s:
        org = s.scalars(select(Organization).where(Organization.slug == team.slug)).one()
        project = s.scalars(select(Project).where(Project.org_id == org.id)).one()
        token = git_sources.credential_for(s, org, project, url=http_url, settings=settings)
    assert token is not None and token.kind == "token"
    assert git_sources.resolve(http_url, "main", token, settings=settings) == http_sha
    tree = checkout(http_url, http_sha, tmp_path / "cache", token.material())
    assert (tree / "flow.py").read_text() == "WHERE = 'https'\n"


def test_cli_round_trip(make_cli: Any, tmp_path: Path) -> None:  # noqa: F811
    alice: Cli = make_cli("alice")
    signup(alice, "alice")
    alice("org", "create", "Git Org", "--slug", "git-org")
    alice("org", "use", "git-org")
    alice("project", "create", "vision", "--use")
    outputs: list[str] = []

    r = alice("project", "deploy-key", "generate")  # the current project
    outputs.append(r.stdout + r.stderr)
    public = r.stdout.strip()
    assert public.startswith("ssh-ed25519 ") and public.endswith("cshare:git-org/vision")
    assert "deploy key" in r.stderr.lower() and "SHA256:" in r.stderr
    r = alice("project", "deploy-key", "generate", "vision", code=1)
    assert "--replace" in r.stderr
    shown = alice.json("project", "deploy-key", "show", "vision")
    assert shown["public_key"] == public

    private, _pub, fingerprint = _ssh_keygen(tmp_path, "-t", "ed25519", "-N", "")
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(private)
    r = alice(
        "project",
        "deploy-key",
        "generate",
        "vision",
        "--private-key-file",
        str(key_file),
        "--replace",
        "--json",
    )
    outputs.append(r.stdout + r.stderr)
    assert json.loads(r.stdout)["fingerprint"] == fingerprint

    token = f"ghp_{uuid.uuid4().hex}"
    r = alice("project", "git-token", "set", "vision", "--token-stdin", input=token + "\n")
    outputs.append(r.stdout + r.stderr)
    assert "x-access-token" in r.stdout
    r = alice("project", "git-token", "set", "vision", code=2)
    assert "--token-stdin" in r.stderr
    outputs.append(alice("project", "git-token", "show", "vision").stdout)
    outputs.append(alice("project", "git-token", "delete", "vision", "--yes").stdout)
    outputs.append(alice("project", "deploy-key", "delete", "--yes").stdout)
    r = alice("project", "deploy-key", "show", "vision", code=1)
    assert "no deploy key" in r.stderr
    for text in outputs:
        assert token not in text and "PRIVATE KEY" not in text
        assert private.splitlines()[1] not in text
