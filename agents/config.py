"""Where an agent keeps its machine token, so a restart never registers the machine twice.

One file per (API URL, organization, machine name) under the agent's state directory:
`$CSHARE_AGENT_HOME`, else `$XDG_STATE_HOME/cshare/agent`, else
`~/.local/state/cshare/agent`. The token is a secret: the directory is 0700 and each
file 0600, written through a private temporary file and an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["MachineCredentials", "delete", "load", "path_for", "save", "state_dir"]


@dataclass(frozen=True)
class MachineCredentials:
    api_url: str
    org: str
    name: str
    machine_id: str
    machine_token: str
    machine_type: str


def state_dir() -> Path:
    override = os.environ.get("CSHARE_AGENT_HOME")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cshare" / "agent"


def path_for(api_url: str, org: str, name: str, base: Path | None = None) -> Path:
    # Hashed: the file name must not depend on what characters a URL may hold.
    key = hashlib.sha256(f"{api_url.rstrip('/')}\n{org}\n{name}".encode()).hexdigest()[:24]
    return (base or state_dir()) / "machines" / f"{key}.json"


def load(api_url: str, org: str, name: str, base: Path | None = None) -> MachineCredentials | None:
    path = path_for(api_url, org, name, base)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"The agent's token file {path} is unreadable ({exc}).") from None
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a token must stay private
    try:
        return MachineCredentials(**{k: str(data[k]) for k in MachineCredentials.__annotations__})
    except KeyError as exc:
        raise ValueError(f"The agent's token file {path} lacks {exc}.") from None


def save(creds: MachineCredentials, base: Path | None = None) -> Path:
    path = path_for(creds.api_url, creds.org, creds.name, base)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".machine-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(creds), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def delete(api_url: str, org: str, name: str, base: Path | None = None) -> None:
    path_for(api_url, org, name, base).unlink(missing_ok=True)
