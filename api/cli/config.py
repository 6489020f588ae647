"""The CLI's config file: server URL, token, current organization and current project.

Default path `~/.config/cshare/config.toml` (or `$XDG_CONFIG_HOME/cshare/config.toml`);
`CSHARE_CONFIG` moves it, and a path ending in `.json` is read and written as JSON.
`CSHARE_API_URL`, `CSHARE_TOKEN` and `CSHARE_ORG` override the file but are never written
into it. The current project is kept as `org/project`: it applies only while that org
is the one a command acts on. The file holds a secret, so it is written 0600 (its folder
0700), atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from api.cli.output import CliError, UsageProblem

DEFAULT_API_URL = "http://127.0.0.1:8000"
KEYS = ("api_url", "token", "org", "project")


@dataclass(frozen=True)
class Config:
    """What the file holds (never the environment overrides)."""

    api_url: str | None = None
    token: str | None = None
    org: str | None = None
    project: str | None = None  # "org/project"


@dataclass(frozen=True)
class Effective:
    """The values a command uses: environment over file over defaults."""

    api_url: str
    token: str | None
    org: str | None
    path: Path
    project: str | None = None  # "org/project", from the file only
    api_url_from_env: bool = False
    token_from_env: bool = False
    org_from_env: bool = False


def config_path() -> Path:
    override = os.environ.get("CSHARE_CONFIG")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cshare" / "config.toml"


def normalize_api_url(url: str) -> str:
    """`host:port`, `http://host/`, `http://host/api/v1` all mean the same server."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    url = url.removesuffix("/api/v1")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageProblem(f"'{url}' is not a server URL; expected e.g. http://127.0.0.1:8000.")
    return url


def load(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise CliError(f"Cannot read the config file {path}: {exc.strerror}.") from None
    try:
        data: dict[str, Any] = json.loads(text) if _is_json(path) else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"The config file {path} is not valid: {exc}. Fix or delete it.") from None
    values = {k: data[k] for k in KEYS if isinstance(data.get(k), str) and data[k]}
    return Config(**values)


def save(config: Config, path: Path | None = None) -> Path:
    path = path or config_path()
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values = {k: v for k, v in values.items() if v}
    text = json.dumps(values, indent=2) + "\n" if _is_json(path) else _to_toml(values)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Write a private temp file and rename it over the old one: the token is never
    # readable by others, not even for a moment, and a crash leaves the old file intact.
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def update(**changes: str | None) -> Config:
    """Load, change the given keys (None removes one), save; returns the new file config."""
    unknown = set(changes) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    path = config_path()
    new = replace(load(path), **changes)
    save(new, path)
    return new


def effective() -> Effective:
    path = config_path()
    file = load(path)
    env_url = os.environ.get("CSHARE_API_URL") or None
    env_token = os.environ.get("CSHARE_TOKEN") or None
    env_org = os.environ.get("CSHARE_ORG") or None
    return Effective(
        api_url=normalize_api_url(env_url or file.api_url or DEFAULT_API_URL),
        token=env_token or file.token,
        org=env_org or file.org,
        path=path,
        project=file.project,
        api_url_from_env=env_url is not None,
        token_from_env=env_token is not None,
        org_from_env=env_org is not None,
    )


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\t" or (ch >= " " and ch != "\x7f"):
            out.append(ch)
        else:  # other control characters must be escaped in a TOML basic string
            out.append(f"\\u{ord(ch):04x}")
    out.append('"')
    return "".join(out)


def _to_toml(values: dict[str, str]) -> str:
    lines = ["# cshare CLI configuration (holds a secret token: keep it private)"]
    lines += [f"{key} = {_toml_string(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def current_project(cfg: Effective, org: str) -> str | None:
    """The project chosen with `cshare project use` for `org`, if any."""
    if cfg.project is None or "/" not in cfg.project:
        return None
    project_org, name = cfg.project.split("/", 1)
    return name if project_org == org and name else None
