"""Request rate limits (the `limits` library): sign-ins, sign-ups, new personal tokens.

A coarse cap on how fast one client may call these routes at all, on top of the
sign-in throttle (`orgs.login_throttle`), which is what stops password guessing and is
shared by every replica through the database. These counters live in
`CSHARE_RATE_LIMIT_STORAGE`: in-process by default (each replica counts on its own),
or a shared `limits` storage such as Redis.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from orgs.config import Settings
from policies.errors import TooManyAttempts

Action = Literal["login", "signup", "tokens"]

_WHAT: dict[Action, str] = {
    "login": "sign-in attempts",
    "signup": "sign-ups",
    "tokens": "new tokens",
}


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage))
        rules: dict[Action, str] = {
            "login": settings.rate_limit_login,
            "signup": settings.rate_limit_signup,
            "tokens": settings.rate_limit_tokens,
        }
        self._items: dict[Action, list[RateLimitItem]] = {
            action: parse_many(text) if text else [] for action, text in rules.items()
        }

    def hit(self, action: Action, key: str) -> None:
        """Count one request by `key` (an address or a user id); refuse it past a limit."""
        for item in self._items[action]:
            if not self._limiter.hit(item, action, key):
                reset = self._limiter.get_window_stats(item, action, key).reset_time
                seconds = max(1, math.ceil(reset - time.time()))
                raise TooManyAttempts(
                    f"Too many {_WHAT[action]} (at most {item}); try again in {seconds} seconds.",
                    retry_after_s=seconds,
                )
