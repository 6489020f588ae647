"""A project's Git credentials: /orgs/{org}/projects/{name}/deploy-key and .../git-token.

Set and deleted by the project's creator or an admin (the domain decides, through
policies); any member sees the deploy key's public half (to paste into the Git host) and
whether a token is set with which user name. No route returns a private key or a token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep, SettingsDep
from flows import git_credentials
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["projects"])

View = Annotated[OrgContext, Depends(Requires(Permission.deployments_view))]
# Members manage their own projects' credentials; the domain asks for manage-all otherwise.
Manage = Annotated[OrgContext, Depends(Requires(Permission.projects_create))]
ProjectPath = Annotated[str, Path(max_length=64)]
BASE = "/orgs/{org}/projects/{name}"


class DeployKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    private_key: str | None = Field(
        None,
        max_length=16 * 1024,
        description="Your own private key (OpenSSH or PEM, no passphrase); "
        "without it a new ed25519 key is generated.",
    )
    replace: bool = Field(False, description="Replace the project's existing deploy key.")


class DeployKeyOut(BaseModel):
    public_key: str
    fingerprint: str
    key_type: str
    updated_at: datetime


class GitTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(max_length=git_credentials.MAX_TOKEN)
    user: str | None = Field(
        None,
        max_length=git_credentials.MAX_USER,
        description="The user name sent with the token (GitHub: x-access-token, the "
        "default; GitLab: oauth2 or the deploy token's user name).",
    )


class GitTokenOut(BaseModel):
    user: str
    updated_at: datetime


def _key_out(key: git_credentials.DeployKey) -> DeployKeyOut:
    return DeployKeyOut(
        public_key=key.public_key,
        fingerprint=key.fingerprint,
        key_type=key.key_type,
        updated_at=key.updated_at,
    )


@router.post(f"{BASE}/deploy-key", status_code=status.HTTP_201_CREATED)
def create_deploy_key(
    name: ProjectPath,
    body: DeployKeyIn,
    ctx: Manage,
    session: SessionDep,
    settings: SettingsDep,
) -> DeployKeyOut:
    """Generate the project's SSH deploy key (or store the one given); answers its public
    half, to add as a read-only deploy key on GitHub/GitLab. 409 if it has one already
    and `replace` is not set."""
    if body.private_key is None:
        key = git_credentials.generate_deploy_key(
            ctx, session, name, settings=settings, replace=body.replace
        )
    else:
        key = git_credentials.import_deploy_key(
            ctx, session, name, body.private_key, settings=settings, replace=body.replace
        )
    return _key_out(key)


@router.get(f"{BASE}/deploy-key")
def get_deploy_key(
    name: ProjectPath, ctx: View, session: SessionDep, settings: SettingsDep
) -> DeployKeyOut:
    """The deploy key's public half and fingerprint."""
    return _key_out(git_credentials.show_deploy_key(ctx, session, name, settings=settings))


@router.delete(f"{BASE}/deploy-key", status_code=status.HTTP_204_NO_CONTENT)
def delete_deploy_key(name: ProjectPath, ctx: Manage, session: SessionDep) -> Response:
    git_credentials.delete_deploy_key(ctx, session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(f"{BASE}/git-token")
def set_git_token(
    name: ProjectPath,
    body: GitTokenIn,
    ctx: Manage,
    session: SessionDep,
    settings: SettingsDep,
) -> GitTokenOut:
    """Store the HTTPS token for the project's repository (the answer never has it)."""
    info = git_credentials.set_git_token(
        ctx, session, name, body.token, user=body.user, settings=settings
    )
    return GitTokenOut(user=info.user, updated_at=info.updated_at)


@router.get(f"{BASE}/git-token")
def get_git_token(
    name: ProjectPath, ctx: View, session: SessionDep, settings: SettingsDep
) -> GitTokenOut:
    """Whether the project has a token, and its user name; never the token."""
    info = git_credentials.show_git_token(ctx, session, name, settings=settings)
    return GitTokenOut(user=info.user, updated_at=info.updated_at)


@router.delete(f"{BASE}/git-token", status_code=status.HTTP_204_NO_CONTENT)
def delete_git_token(name: ProjectPath, ctx: Manage, session: SessionDep) -> Response:
    git_credentials.delete_git_token(ctx, session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
