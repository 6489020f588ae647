"""The first start of `cshare up`: migrate, create the admin, the demo org and the local
agent's token (straight through the services; idempotent)."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from api.cli.up.home import private_dir, write_secret

ADMIN_EMAIL: Final = "admin@cshare.local"
ADMIN_NAME: Final = "admin"
DEMO_ORG_NAME: Final = "Demo"
DEMO_ORG_SLUG: Final = "demo"


@dataclass(frozen=True)
class Bootstrap:
    admin_email: str
    admin_password: str | None  # only on the first start
    org_slug: str
    agent_token: str
    first_start: bool


def bootstrap(home: Path, database_url: str | None) -> Bootstrap:
    """Migrate the control plane and, on the first start, create the admin and demo org.

    Runs in the supervisor before the API starts, straight through the services (the
    password never crosses HTTP). Idempotent: a second start finds what the first made.
    """
    # Each migration's line (and alembic's plugin set-up, logged at import) is noise on
    # the console of `cshare up`.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from sqlalchemy import select

    from orgs import accounts, migrate, organizations, settings_doc
    from orgs.config import Settings
    from orgs.context import OrgContext
    from orgs.db import Database
    from orgs.models import Membership, Organization, User

    settings = Settings(home=home, database_url=database_url)
    db = Database(settings.resolved_database_url())
    state_path = home / "stack.json"
    secrets_dir = private_dir(home / "secrets")
    try:
        migrate.upgrade(db.engine)
        with db.session() as s:
            admin = s.scalars(select(User).where(User.email == ADMIN_EMAIL)).first()
            password: str | None = None
            first = admin is None
            if admin is None:
                password = secrets.token_urlsafe(12)
                admin, _ = accounts.signup(s, email=ADMIN_EMAIL, name=ADMIN_NAME, password=password)
                write_secret(secrets_dir / "admin-password", password)
            org = s.scalars(select(Organization).where(Organization.slug == DEMO_ORG_SLUG)).first()
            if org is None:
                org = organizations.create(
                    s,
                    admin,
                    name=DEMO_ORG_NAME,
                    slug=DEMO_ORG_SLUG,
                    description="Created by `cshare up` for trying things out.",
                )
                membership = s.scalars(
                    select(Membership).where(
                        Membership.org_id == org.id, Membership.user_id == admin.id
                    )
                ).one()
                # The local agent's machine must take work at once: a one-machine demo org
                # does not need an approval step.
                settings_doc.update(
                    OrgContext(admin, org, membership),
                    s,
                    changes={"machines": {"approval_required": False}},
                )
            token_path = secrets_dir / "agent-token"
            token = token_path.read_text().strip() if token_path.exists() else ""
            if not token or accounts_token_invalid(s, token):
                issued = accounts.create_personal_token(
                    s, admin, name="cshare up: local agent", expires_in_days=None
                )
                token = issued.token
                write_secret(token_path, token)
    finally:
        db.dispose()
    state = {"admin_email": ADMIN_EMAIL, "org": DEMO_ORG_SLUG}
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    return Bootstrap(ADMIN_EMAIL, password, DEMO_ORG_SLUG, token, first)


def accounts_token_invalid(session: Any, token: str) -> bool:
    from orgs import accounts
    from policies.errors import Unauthenticated

    try:
        accounts.authenticate(session, token)
    except Unauthenticated:
        return True
    session.rollback()  # authenticate may have touched last_used_at; nothing to keep
    return False
