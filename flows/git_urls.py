"""A project's Git repository URL rule and the names of its Git credentials' org secrets.

Apart from flows.projects so that flows.git_sources (which flows.deployments uses to pin
a commit) does not import the projects module, which imports deployments.
"""

from __future__ import annotations

import re
from typing import Final

from flows.models import Project
from policies.errors import Invalid
from policies.names import refuse_bidi

__all__ = ["MAX_GIT_URL", "deploy_key_secret", "token_secret", "validate_git_url"]

MAX_GIT_URL: Final = 1024
# https://host[:port]/path, git://host[:port]/path (git daemon, public read-only),
# ssh://[user@]host[:port]/path, or scp-like user@host:path.
_HTTPS_RE: Final = re.compile(r"^(?:https|git)://[A-Za-z0-9.-]+(?::\d{1,5})?/[^\s?#]+$")
_SSH_URL_RE: Final = re.compile(r"^ssh://(?:[\w.-]+@)?[A-Za-z0-9.-]+(?::\d{1,5})?/[^\s?#]+$")
_SCP_RE: Final = re.compile(r"^[\w.-]+@[A-Za-z0-9.-]+:(?!/)[^\s?#]+$")


def validate_git_url(url: str) -> str:
    """An https://, git:// or SSH (`git@host:path`, `ssh://...`) repository
    URL; not fetched here.

    Credentials inside the URL are refused: private repositories get a deploy key or a
    token stored as an org secret, never a password that every listing would show.
    """
    url = url.strip()
    refuse_bidi(url, field="git_url")
    if len(url) > MAX_GIT_URL:
        raise Invalid(f"Git URLs may have at most {MAX_GIT_URL} characters.", field="git_url")
    if url.startswith(("https://", "git://")) and "@" in url.split("/", 3)[2]:
        raise Invalid(
            "The Git URL must not contain a user name or token; private repositories get "
            "a deploy key or token stored as an org secret.",
            field="git_url",
        )
    if not (_HTTPS_RE.fullmatch(url) or _SSH_URL_RE.fullmatch(url) or _SCP_RE.fullmatch(url)):
        raise Invalid(
            "The Git URL must be https://host/path, git://host/path, "
            "ssh://[user@]host/path or user@host:path (e.g. git@github.com:team/repo.git).",
            field="git_url",
        )
    return url


def deploy_key_secret(project: Project) -> str:
    """The org secret holding the project's SSH deploy key (named by id: a project made
    later under the same name does not inherit it)."""
    return f"PROJECT_{project.id.hex.upper()}_GIT_SSH_KEY"


def token_secret(project: Project) -> str:
    """The org secret holding the project's HTTPS token (JSON: user and token)."""
    return f"PROJECT_{project.id.hex.upper()}_GIT_TOKEN"
