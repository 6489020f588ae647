"""Secrets: argon2id passwords and random bearer tokens stored as SHA-256 hashes.

Tokens carry 256 random bits, so a fast hash is enough to store them safely (there is
nothing to brute-force); passwords are low-entropy and get the memory-hard hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from orgs.config import get_settings

TOKEN_KINDS = {"session": "cs_s", "personal": "cs_p", "machine": "cs_m", "invite": "cs_i"}


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def _current_hasher() -> PasswordHasher:
    s = get_settings()
    return _hasher(s.argon2_time_cost, s.argon2_memory_kib)


def hash_password(password: str) -> str:
    return str(_current_hasher().hash(password))


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return bool(_current_hasher().verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


# A valid hash to verify against when the account does not exist, so that a wrong email
# and a wrong password take the same time.
@lru_cache(maxsize=1)
def dummy_password_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def new_token(kind: str) -> str:
    """A fresh secret like `cs_p_<43 url-safe chars>` (256 bits)."""
    return f"{TOKEN_KINDS[kind]}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    """The part shown in listings so people can tell tokens apart (never enough to use)."""
    return token[:12]


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
