"""The server key that encrypts org secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256).

Where the keys come from:
- `CSHARE_SECRETS_KEY`: one or more urlsafe-base64 32-byte keys, comma-separated. The
  first encrypts; every one decrypts (MultiFernet), so a key can be rotated in: put the
  new key first, run `cshare db rotate-secrets`, then drop the old one.
- unset: a key file `CSHARE_HOME/secrets/secrets.key`, made (0600, in a 0700 folder)
  on first use. Fine for one server; replicas must share `CSHARE_SECRETS_KEY` instead.

Errors name the key's position or file, never key material nor a secret's value.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from orgs.config import Settings
from policies.errors import Unavailable

KEY_FILE = Path("secrets") / "secrets.key"


class SecretsKeyError(Unavailable):
    """The server's secrets key is missing, malformed or does not open a stored secret.

    A configuration problem of the server (HTTP 503): the operator must fix the key.
    """

    code = "secrets_key"


def key_file(settings: Settings) -> Path:
    return settings.home / KEY_FILE


def _parse(keys: str) -> list[Fernet]:
    entries = [k.strip() for k in keys.split(",")]
    fernets: list[Fernet] = []
    for position, entry in enumerate(entries, start=1):
        if not entry:
            continue
        try:
            fernets.append(Fernet(entry.encode("ascii")))
        except (ValueError, UnicodeEncodeError):
            raise SecretsKeyError(
                f"CSHARE_SECRETS_KEY entry {position} is not a urlsafe-base64 32-byte key "
                "(make one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`).",
            ) from None
    if not fernets:
        raise SecretsKeyError("CSHARE_SECRETS_KEY is set but holds no key.")
    return fernets


def _read_or_make_key_file(path: Path) -> bytes:
    """The key in `path`, made on first use. Several processes starting at once end up
    with the same key: the file appears whole (written aside, then hard-linked) or not."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets.key.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()


@lru_cache(maxsize=8)
def _keyring(keys: str | None, home: Path) -> MultiFernet:
    if keys is not None:
        return MultiFernet(_parse(keys))
    path = home / KEY_FILE
    try:
        raw = _read_or_make_key_file(path)
        return MultiFernet([Fernet(raw)])
    except OSError as exc:
        raise SecretsKeyError(
            f"Cannot read or create the secrets key file {path}: {exc.strerror}."
        ) from None
    except ValueError:
        raise SecretsKeyError(
            f"The secrets key file {path} does not hold a urlsafe-base64 32-byte key."
        ) from None


def keyring(settings: Settings) -> MultiFernet:
    raw = settings.secrets_key.get_secret_value() if settings.secrets_key else ""
    return _keyring(raw.strip() or None, settings.home)


def encrypt(settings: Settings, value: str) -> str:
    return keyring(settings).encrypt(value.encode("utf-8")).decode("ascii")


def _cannot_open(label: str) -> SecretsKeyError:
    return SecretsKeyError(
        f"Secret {label} cannot be decrypted with the configured secrets key(s): "
        "CSHARE_SECRETS_KEY (or the key file) is not the key it was stored with. Add the "
        "old key after the new one in CSHARE_SECRETS_KEY."
    )


def decrypt(settings: Settings, token: str, *, label: str) -> str:
    """The plaintext of `token`; `label` names the secret in the error (never its value)."""
    try:
        return keyring(settings).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise _cannot_open(label) from None


def reencrypt(settings: Settings, token: str, *, label: str) -> str:
    """`token` encrypted again with the first key (rotation)."""
    try:
        return keyring(settings).rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise _cannot_open(label) from None
