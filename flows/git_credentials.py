"""A project's credentials for its private Git repository: an SSH deploy key, an HTTPS
token. Both are org secrets (`orgs.secrets`, sealed; named by the project's id, see
`flows.projects.deploy_key_secret`), set by the project's creator or an admin, and never
read back: a deploy key shows only its public half and fingerprint, a token only its user.

`generate_deploy_key` makes an ed25519 key pair (OpenSSH format) whose public key the user
pastes into GitHub/GitLab as a read-only deploy key; `import_deploy_key` stores a key the
user already has (ed25519, ECDSA or RSA >= 2048 bits, without a passphrase).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy.orm import Session

from flows.models import Project
from flows.projects import deploy_key_secret, get_project, token_secret
from orgs import secrets
from orgs.config import Settings
from orgs.context import OrgContext
from policies.errors import Conflict, Invalid, NotFound
from policies.permissions import Permission

MAX_TOKEN: Final = 4096
MAX_USER: Final = 128

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class DeployKey:
    """What may be shown about a deploy key: its public half."""

    public_key: str  # "ssh-ed25519 AAAA... cshare:org/project"
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    key_type: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    user: str
    updated_at: datetime


def _managed_project(ctx: OrgContext, session: Session, name: str) -> Project:
    project = get_project(session, ctx.org, name, viewer=ctx.viewer)
    ctx.require_own_or(project.created_by, Permission.projects_manage_all)
    return project


def fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _public_line(key: PrivateKey, comment: str) -> str:
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}"


def _comment(ctx: OrgContext, project: Project) -> str:
    return f"cshare:{ctx.org.slug}/{project.name}"


def _private_text(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def load_private_key(text: str) -> PrivateKey:
    """The key in `text` (OpenSSH or PEM); `Invalid(field="private_key")` saying why not.
    The messages never quote the key."""
    data = text.strip().encode() + b"\n"
    key: object
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise Invalid(
            "The private key is protected by a passphrase; store a key without one "
            "(`ssh-keygen -p -N '' -f KEY` removes it from a copy).",
            field="private_key",
            code="invalid_private_key",
        ) from None
    except (ValueError, UnicodeError):
        raise Invalid(
            "Not a private key in OpenSSH or PEM format (like the file `ssh-keygen` writes, "
            "not the .pub one).",
            field="private_key",
            code="invalid_private_key",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise Invalid(
            f"RSA keys need at least 2048 bits; this one has {key.key_size}.",
            field="private_key",
            code="invalid_private_key",
        )
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise Invalid(
            "Deploy keys are ed25519, ECDSA or RSA keys.",
            field="private_key",
            code="invalid_private_key",
        )
    return key


def _key_type(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ecdsa"
    return "rsa"


def _shown(ctx: OrgContext, project: Project, key: PrivateKey, when: datetime) -> DeployKey:
    line = _public_line(key, _comment(ctx, project))
    return DeployKey(line, fingerprint(line), _key_type(key), when)


def _store_key(
    ctx: OrgContext,
    session: Session,
    project: Project,
    key: PrivateKey,
    *,
    settings: Settings,
    replace: bool,
) -> DeployKey:
    name = deploy_key_secret(project)
    if not replace and secrets.info(session, ctx.org.id, name) is not None:
        raise Conflict(
            f"Project '{project.name}' already has a deploy key; replacing it cuts off "
            "the key pasted into the Git host. Use --replace (`replace: true`) to do so.",
            code="deploy_key_exists",
        )
    info = secrets.store(ctx, session, name, _private_text(key), settings=settings)
    return _shown(ctx, project, key, info.updated_at)


def generate_deploy_key(
    ctx: OrgContext, session: Session, project_name: str, *, settings: Settings, replace: bool
) -> DeployKey:
    """A new ed25519 deploy key for the project; returns its public half. Commits."""
    project = _managed_project(ctx, session, project_name)
    key = ed25519.Ed25519PrivateKey.generate()
    return _store_key(ctx, session, project, key, settings=settings, replace=replace)


def import_deploy_key(
    ctx: OrgContext,
    session: Session,
    project_name: str,
    private_key: str,
    *,
    settings: Settings,
    replace: bool,
) -> DeployKey:
    """Store the user's own private key as the project's deploy key. Commits."""
    project = _managed_project(ctx, session, project_name)
    key = load_private_key(private_key)
    return _store_key(ctx, session, project, key, settings=settings, replace=replace)


def _no_key(project: Project) -> NotFound:
    return NotFound(
        f"Project '{project.name}' has no deploy key; make one with "
        f"`cshare project deploy-key generate {project.name}`.",
        code="deploy_key_not_found",
    )


def show_deploy_key(
    ctx: OrgContext, session: Session, project_name: str, *, settings: Settings
) -> DeployKey:
    """The project's deploy key's public half (any member may see it)."""
    project = get_project(session, ctx.org, project_name, viewer=ctx.viewer)
    name = deploy_key_secret(project)
    info = secrets.info(session, ctx.org.id, name)
    if info is None:
        raise _no_key(project)
    key = load_private_key(secrets.reveal(session, ctx.org.id, name, settings=settings))
    return _shown(ctx, project, key, info.updated_at)


def delete_deploy_key(ctx: OrgContext, session: Session, project_name: str) -> None:
    project = _managed_project(ctx, session, project_name)
    try:
        secrets.remove(ctx, session, deploy_key_secret(project))
    except NotFound:
        raise _no_key(project) from None


# ------------------------------------------------------------------------ tokens


def set_git_token(
    ctx: OrgContext,
    session: Session,
    project_name: str,
    token: str,
    *,
    user: str | None,
    settings: Settings,
) -> TokenInfo:
    """Store the HTTPS token (with the user name the Git host wants) for the project's
    repository. Commits."""
    project = _managed_project(ctx, session, project_name)
    token = token.strip()
    if not token or len(token) > MAX_TOKEN or any(c.isspace() for c in token):
        raise Invalid(
            f"The token is 1 to {MAX_TOKEN} characters without spaces.",
            field="token",
            code="invalid_git_token",
        )
    user = (user or "").strip() or "x-access-token"
    if len(user) > MAX_USER or any(c.isspace() or c in ":@" for c in user):
        raise Invalid(
            "The user name may have no spaces, ':' or '@' (GitHub: x-access-token, "
            "GitLab: oauth2 or the deploy token's user name).",
            field="user",
            code="invalid_git_user",
        )
    value = json.dumps({"user": user, "token": token})
    info = secrets.store(ctx, session, token_secret(project), value, settings=settings)
    return TokenInfo(user, info.updated_at)


def show_git_token(
    ctx: OrgContext, session: Session, project_name: str, *, settings: Settings
) -> TokenInfo:
    """Whether the project has a token, and its user name (never the token)."""
    project = get_project(session, ctx.org, project_name, viewer=ctx.viewer)
    info = secrets.info(session, ctx.org.id, token_secret(project))
    if info is None:
        raise _no_token(project)
    stored = json.loads(secrets.reveal(session, ctx.org.id, info.name, settings=settings))
    return TokenInfo(str(stored.get("user") or ""), info.updated_at)


def _no_token(project: Project) -> NotFound:
    return NotFound(
        f"Project '{project.name}' has no Git token; set one with "
        f"`cshare project git-token set {project.name} --token-stdin`.",
        code="git_token_not_found",
    )


def delete_git_token(ctx: OrgContext, session: Session, project_name: str) -> None:
    project = _managed_project(ctx, session, project_name)
    try:
        secrets.remove(ctx, session, token_secret(project))
    except NotFound:
        raise _no_token(project) from None
