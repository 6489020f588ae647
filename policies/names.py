"""The one rule every name shares: no bidirectional control characters.

Names (organizations, users, machines, deployments, datasets, file names and paths
inside uploaded archives) are shown to other people. Characters that reorder text
(U+202A-U+202E embeddings and overrides, U+2066-U+2069 isolates, U+200E/U+200F and
U+061C marks) let a name display as something it is not ("Trojan Source"), so they are
refused everywhere, before any other rule, with an error naming the field. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

from policies.errors import Invalid

BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
CODE: Final = "bidi_control"


def has_bidi(text: str) -> bool:
    return not BIDI_CONTROLS.isdisjoint(text)


def refuse_bidi(text: str, *, field: str) -> str:
    """`text` unchanged, or `Invalid(field)` when it holds a bidirectional control."""
    if isinstance(text, str) and has_bidi(text):
        found = next(c for c in text if c in BIDI_CONTROLS)
        raise Invalid(
            f"{field} may not contain bidirectional control characters "
            f"(found U+{ord(found):04X}): they make text display as something it is not.",
            field=field,
            code=CODE,
        )
    return text
