"""What a dataset name, a version reference (`NAME@3`) and a file name may be. (Paths
inside a directory version: `datasets.wire.safe_path`, shared with the clients.)

Names end up in URLs, in file names on machines (`inputs/<name>/...`) and in CLI output,
so they are deliberately narrow: ASCII letters, digits, `.`, `_`, `-`, starting with a
letter or digit, at most 128 characters, never containing `..`.
"""

from __future__ import annotations

import re
import unicodedata

from policies.errors import Invalid
from policies.names import refuse_bidi

NAME_MAX = 128
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = (
    "Dataset names are 1-128 characters: letters, digits, '.', '_' and '-', starting with "
    "a letter or digit, without '..', slashes or control characters."
)
COMPONENT_MAX = 255


def _control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") for c in text)


def validate_name(name: str, *, field: str = "name") -> str:
    """`name` if it is a valid dataset name, else `Invalid` naming `field`."""
    refuse_bidi(name, field=field)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        # `fullmatch`, not `match`: `$` would accept a trailing newline.
        raise Invalid(NAME_RULE, field=field, code="invalid_name")
    return name


def parse_ref(ref: str, *, field: str = "dataset") -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION` -> (name, version or None for the latest)."""
    name, sep, version = ref.partition("@")
    validate_name(name, field=field)
    if not sep:
        return name, None
    if version in ("", "latest"):
        return name, None
    if not version.isdecimal() or not 1 <= int(version) <= 2**31 - 1:
        raise Invalid(
            f"'{ref}': the version after '@' is a positive number (or 'latest').",
            field=field,
            code="invalid_version",
        )
    return name, int(version)


def validate_filename(filename: str, *, field: str = "filename") -> str:
    """A single file name (no directory part) for a file version."""
    refuse_bidi(filename, field=field)
    if (
        not filename
        or len(filename) > COMPONENT_MAX
        or filename in (".", "..")
        or "/" in filename
        or "\\" in filename
        or _control(filename)
    ):
        raise Invalid(
            "File names are 1-255 printable characters, without slashes, and not '.' or '..'.",
            field=field,
            code="invalid_filename",
        )
    return filename
