"""`cshare db ...`: operator commands run next to the control plane's database.

They read the server's settings (CSHARE_DATABASE_URL, CSHARE_HOME), not the CLI config,
and import the server code lazily so the client commands stay light.
"""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli import output
from api.cli.options import JsonOpt
from api.cli.output import CliError

app = typer.Typer(help="Database maintenance (operators, on the server).", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(metavar="REVISION", help="Target revision.")] = "heads",
    json_: JsonOpt = False,
) -> None:
    """Apply the schema migrations to the configured database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from orgs import migrate
    from orgs.config import get_settings
    from orgs.db import Database, normalize_url

    url = get_settings().resolved_database_url()
    shown = make_url(normalize_url(url)).render_as_string(hide_password=True)
    db = Database(url)
    try:
        migrate.upgrade(db.engine, revision)
        with db.engine.connect() as conn:
            # Unmerged branches leave several heads (each applied); name them all.
            heads = MigrationContext.configure(conn).get_current_heads()
            current = ", ".join(sorted(heads)) or None
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise CliError(f"Upgrading {shown} failed: {type(exc).__name__}: {reason}") from None
    finally:
        db.dispose()
    if json_:
        output.print_json({"database": shown, "revision": current})
    else:
        output.say(f"Database {shown} is at revision {current}.")


@app.command("rotate-secrets")
def rotate_secrets(json_: JsonOpt = False) -> None:
    """Re-encrypt every org secret (and data store key, and two-factor secret) with the
    first key of CSHARE_SECRETS_KEY.

    Put the new key first (`CSHARE_SECRETS_KEY=new,old`), run this, then drop the old key.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from datasets import stores as datastores
    from orgs import secrets, two_factor
    from orgs.config import get_settings
    from orgs.db import Database
    from policies.errors import DomainError

    settings = get_settings()
    db = Database(settings.resolved_database_url())
    try:
        with db.session(write=True) as session:
            stores = datastores.reseal_credentials(session, settings)  # committed below
            stores += two_factor.reseal(session, settings)  # people's TOTP secrets too
            count = secrets.rotate_all(session, settings) + stores
    except DomainError as exc:
        raise CliError(f"Nothing was changed: {exc.detail}") from None
    except SQLAlchemyError as exc:
        raise CliError(f"Rotating the secrets failed: {type(exc).__name__}.") from None
    finally:
        db.dispose()
    if json_:
        output.print_json({"reencrypted": count})
    else:
        output.say(f"Re-encrypted {count} secret(s) with the first key.")
