"""How a `git` subprocess gets a repository's credential without it touching argv or logs.

Standard library only: the control plane (`flows.git_sources`, resolving refs) and the
machine (`agents.git_code`, fetching commits) both use it, like `datasets.wire`.

A credential is plain data (`material`): `{"kind": "ssh", "private_key": "..."}` or
`{"kind": "token", "user": "x-access-token", "token": "..."}`. `git_env` writes it into a
fresh 0700 temp directory for the duration of one `with` block and removes it after:

- ssh: the key in a 0600 file, `GIT_SSH_COMMAND` with that identity only, no agent, no
  user ssh config, and a throwaway known_hosts (`accept-new`: the host key is learned on
  first contact, so a key change between two calls in one block is refused);
- token: a `GIT_ASKPASS` script that prints the user name and the token read from 0600
  files (git asks after the server's 401; the token is never in argv or the env).

The env is clean: no user or system git config, no terminal prompts, only the https,
http, ssh and git protocols (no `ext::`), no proxies from the caller's environment.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

DEFAULT_TOKEN_USER = "x-access-token"  # noqa: S105  (GitHub's user name for tokens)
ALLOWED_PROTOCOLS = "https:http:ssh:git"

_ASKPASS = """#!/bin/sh
# git calls this with a prompt ("Username for ...", "Password for ..."); answers come from
# 0600 files next to it, so the token is neither in argv nor in any environment.
case "$1" in
  Username*) cat "$(dirname "$0")/user" ;;
  *) cat "$(dirname "$0")/token" ;;
esac
"""


class BadCredential(ValueError):
    """The credential material is not one of the two shapes above."""


def check_material(material: Mapping[str, str] | None) -> None:
    if material is None:
        return
    kind = material.get("kind")
    if kind == "ssh":
        if not material.get("private_key"):
            raise BadCredential("An ssh credential needs its private_key.")
    elif kind == "token":
        if not material.get("token"):
            raise BadCredential("A token credential needs its token.")
    else:
        raise BadCredential("A Git credential's kind is 'ssh' or 'token'.")


def base_env(home: Path) -> dict[str, str]:
    """The environment every git call runs with: nothing from the caller's git setup."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
        # No credential at all: ask nobody (an empty answer fails fast, never a prompt).
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": ssh_command(home / "known_hosts", None),
    }
    return env


def ssh_command(known_hosts: Path, key_file: Path | None, *, host_name: str | None = None) -> str:
    """`ssh` for git: this key only (or none), batch mode, a throwaway known_hosts;
    `host_name` makes ssh connect to that (checked) address whatever the URL's host
    resolves to later."""
    args = [
        "ssh",
        "-F",
        os.devnull,
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "ConnectTimeout=15",
    ]
    if key_file is not None:
        args += ["-i", str(key_file)]
    else:
        args += ["-o", "IdentityFile=none"]
    if host_name is not None:
        args += ["-o", f"HostName={host_name}"]
    return shlex.join(args)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextmanager
def git_env(
    material: Mapping[str, str] | None,
    *,
    temp_root: Path | None = None,
    ssh_host_name: str | None = None,
    extra_config: Mapping[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """The env for git calls made inside the block, with `material` usable; every file
    holding it is removed when the block ends (also on errors). `extra_config` becomes
    `-c`-like settings through GIT_CONFIG_COUNT/KEY/VALUE (never argv)."""
    check_material(material)
    work = Path(tempfile.mkdtemp(prefix="cshare-git-", dir=temp_root))
    try:
        env = base_env(work)
        key_file: Path | None = None
        if material is not None and material.get("kind") == "ssh":
            key_file = work / "key"
            key = material["private_key"]
            _write_private(key_file, key if key.endswith("\n") else key + "\n")
        env["GIT_SSH_COMMAND"] = ssh_command(
            work / "known_hosts", key_file, host_name=ssh_host_name
        )
        if material is not None and material.get("kind") == "token":
            _write_private(work / "user", material.get("user") or DEFAULT_TOKEN_USER)
            _write_private(work / "token", material["token"])
            askpass = work / "askpass"
            _write_private(askpass, _ASKPASS)
            askpass.chmod(0o700)
            env["GIT_ASKPASS"] = str(askpass)
        config = dict(extra_config or {})
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (key_name, value) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"] = key_name
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        yield env
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scrub(text: str, material: Mapping[str, str] | None) -> str:
    """`text` (git's stderr) with the token or key blanked, should git ever echo it."""
    if material is None:
        return text
    for name in ("token", "private_key"):
        secret = material.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text
