"""An organization's logo and contact e-mail (its profile).

A logo is what a member's browser will render, so it is checked by its content, never
by a name or a declared type: PNG, JPEG or WebP only (no SVG: it is a document that
can carry script), at most `MAX_BYTES`. The bytes must start with the format's magic
and decode completely with Pillow; they are then re-encoded as a PNG of at most
`MAX_SIDE` pixels a side, so what is stored and served is an image we wrote (no
metadata, nothing appended after the image, no polyglot). Served with a fixed
`image/png` type and `X-Content-Type-Options: nosniff` (api/routers/org_profile.py).

Without Pillow (it is a dependency; the fallback is for a trimmed install) the bytes
are kept as uploaded after strict structure checks (`_strict_check`) and served with the
type their magic says.
"""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs import audit
from orgs.accounts import normalize_email
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import OrgLogo
from policies.errors import Invalid, TooLarge
from policies.permissions import Permission

try:  # Pillow decodes and re-encodes; see the module docstring for the fallback.
    from PIL import Image, UnidentifiedImageError
except ImportError:  # pragma: no cover - Pillow is a dependency
    Image = None  # type: ignore[assignment]
    UnidentifiedImageError = OSError  # type: ignore[assignment,misc]

MAX_BYTES: Final = 1 << 20
MAX_SIDE: Final = 512
# Refuse before decoding: a small file may claim a huge canvas (a decompression bomb).
MAX_PIXELS: Final = 4096 * 4096

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
FORMATS: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_NAMES: Final = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}

UNSUPPORTED = (
    "A logo must be a PNG, JPEG or WebP image (checked by its content; SVG and other "
    "formats are not accepted)."
)


@dataclass(frozen=True, slots=True)
class Logo:
    content: bytes
    content_type: str
    width: int
    height: int


def sniff(data: bytes) -> str | None:
    """The format the leading bytes say (png, jpeg, webp), or None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _invalid(detail: str = UNSUPPORTED) -> Invalid:
    return Invalid(detail, field="logo", code="unsupported_image")


def prepare(data: bytes) -> Logo:
    """Check `data` and return the logo to store (see the module docstring)."""
    if len(data) > MAX_BYTES:
        raise TooLarge(
            f"A logo may be at most {MAX_BYTES} bytes (1 MB); this one is {len(data)}.",
            used=len(data),
            limit=MAX_BYTES,
            code="logo_too_large",
        )
    kind = sniff(data)
    if kind is None:
        raise _invalid()
    if Image is None:  # pragma: no cover - exercised only without Pillow
        width, height = _strict_check(kind, data)
        return Logo(data, FORMATS[kind], width, height)
    return _reencode(kind, data)


def _reencode(kind: str, data: bytes) -> Logo:
    try:
        with Image.open(io.BytesIO(data), formats=list(_PIL_NAMES)) as img:
            if _PIL_NAMES.get(str(img.format)) != kind:
                raise _invalid("The image's content does not match its format.")
            if img.width * img.height > MAX_PIXELS:
                raise _invalid(f"A logo may have at most {MAX_PIXELS} pixels.")
            img.load()  # decodes everything: a truncated or corrupt image fails here
            frame = img.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise _invalid("The file is not a valid PNG, JPEG or WebP image.") from None
    frame.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    frame.save(out, format="PNG", optimize=True)
    return Logo(out.getvalue(), "image/png", frame.width, frame.height)


def _strict_check(kind: str, data: bytes) -> tuple[int, int]:  # pragma: no cover
    """Structure checks when Pillow is missing: every PNG chunk's CRC up to IEND at the
    very end; a JPEG ending in EOI with a frame header; a WebP RIFF size that matches."""
    if kind == "png":
        pos, size = len(PNG_MAGIC), None
        while pos + 12 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            ctype = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length] or b"\0" * 4)
            if len(body) != length or zlib.crc32(ctype + body) != crc:
                raise _invalid("The PNG is corrupt.")
            if ctype == b"IHDR":
                size = struct.unpack(">II", body[:8])
            pos += 12 + length
            if ctype == b"IEND":
                if pos != len(data) or size is None:
                    raise _invalid("The PNG has data after its end.")
                return int(size[0]), int(size[1])
        raise _invalid("The PNG is truncated.")
    if kind == "jpeg":
        if not data.endswith(b"\xff\xd9") or (b"\xff\xc0" not in data and b"\xff\xc2" not in data):
            raise _invalid("The JPEG is truncated or has no frame.")
        return 0, 0
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 != len(data):
        raise _invalid("The WebP's size does not match its header.")
    return 0, 0


def set_logo(ctx: OrgContext, session: Session, data: bytes) -> OrgLogo:
    """Replace the organization's logo (admins); audited."""
    ctx.require(Permission.org_update)
    logo = prepare(data)
    digest = hashlib.sha256(logo.content).hexdigest()
    row = session.get(OrgLogo, ctx.org.id)
    before = {"sha256": row.sha256} if row is not None else None
    if row is None:
        row = OrgLogo(org_id=ctx.org.id)
        session.add(row)
    row.content, row.content_type, row.sha256 = logo.content, logo.content_type, digest
    row.width, row.height = logo.width, logo.height
    row.updated_at, row.updated_by = utcnow(), ctx.user.id
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="org.logo_set",
        target_type="organization",
        target_id=ctx.org.id,
        before=before,
        after={"sha256": digest, "bytes": len(logo.content), "uploaded_bytes": len(data)},
    )
    session.commit()
    return row


def delete_logo(ctx: OrgContext, session: Session) -> None:
    """Remove the logo (admins); idempotent, audited when there was one."""
    ctx.require(Permission.org_update)
    row = session.get(OrgLogo, ctx.org.id)
    if row is None:
        return
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="org.logo_removed",
        target_type="organization",
        target_id=ctx.org.id,
        before={"sha256": row.sha256},
    )
    session.delete(row)
    session.commit()


def get_logo(ctx: OrgContext, session: Session) -> OrgLogo | None:
    ctx.require(Permission.org_view)
    return session.get(OrgLogo, ctx.org.id)


def has_logo(session: Session, org_id: uuid.UUID) -> bool:
    return session.scalar(select(OrgLogo.org_id).where(OrgLogo.org_id == org_id)) is not None


def set_contact_email(ctx: OrgContext, session: Session, email: str | None) -> None:
    """Set (or clear, with None or "") the contact e-mail; staged and audited, no commit."""
    ctx.require(Permission.org_update)
    try:
        value = normalize_email(email) if email and email.strip() else None
    except Invalid:
        raise Invalid(
            "contact_email is not a valid e-mail address.", field="contact_email"
        ) from None
    if value == ctx.org.contact_email:
        return
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="org.contact_email_changed",
        target_type="organization",
        target_id=ctx.org.id,
        before={"contact_email": ctx.org.contact_email},
        after={"contact_email": value},
    )
    ctx.org.contact_email = value
