"""`cshare account 2fa`: turn two-factor on (QR code in the terminal), off, see its state,
and confirm a code in the current session (needed before `cshare token create`)."""

from __future__ import annotations

import io
from typing import Annotated, Any

import segno
import typer

from api.cli import output
from api.cli.client import connect
from api.cli.options import JsonOpt

app = typer.Typer(help="Two-factor authentication (TOTP) for your account.", no_args_is_help=True)

CodeOpt = Annotated[
    str | None,
    typer.Option("--code", help="The current code (asked for when not given)."),
]


def terminal_qr(uri: str) -> str:
    """The otpauth URI as a QR code of block characters (two rows per line)."""
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def _code(given: str | None, prompt: str) -> str:
    return given or typer.prompt(prompt)


@app.command("status")
def status(json_: JsonOpt = False) -> None:
    """Whether two-factor is on, and how many recovery codes are left."""
    with connect() as client:
        body = client.get("/me/2fa")
    if json_:
        output.print_json(body)
    elif body.get("enabled"):
        output.say(
            f"Two-factor authentication is on (since {output.when(body.get('enabled_at'))}); "
            f"{body.get('recovery_codes_left')} recovery codes left."
        )
    else:
        output.say("Two-factor authentication is off (`cshare account 2fa enable`).")


@app.command("enable")
def enable(json_: JsonOpt = False) -> None:
    """Show a QR code (and the secret) for your authenticator app, then ask for its code."""
    with connect() as client:
        setup = client.post("/me/2fa/setup")
        if not json_:
            typer.echo(terminal_qr(str(setup["otpauth_uri"])))
            output.say(f"Secret (if your app cannot scan): {setup['secret']}")
        code = typer.prompt("Code from the app")
        body: dict[str, Any] = client.post("/me/2fa/confirm", json={"code": code})
    codes = [str(c) for c in body.get("recovery_codes", [])]
    if json_:
        output.print_json({"enabled": True, "recovery_codes": codes})
        return
    output.say("Two-factor authentication is on. Recovery codes (each works once):")
    for c in codes:
        output.say(f"  {c}")
    output.note("Shown once: store them somewhere safe, away from your device.")


@app.command("disable")
def disable(code: CodeOpt = None, json_: JsonOpt = False) -> None:
    """Turn two-factor off; needs a current code (or a recovery code)."""
    given = _code(code, "Current code (or a recovery code)")
    with connect() as client:
        client.delete("/me/2fa", json={"code": given})
    if json_:
        output.print_json({"enabled": False})
    else:
        output.say("Two-factor authentication is off.")


@app.command("verify")
def verify(code: CodeOpt = None, json_: JsonOpt = False) -> None:
    """Confirm a code in this session (creating a token needs one in the last 10 minutes)."""
    given = _code(code, "Current code")
    with connect() as client:
        client.post("/me/2fa/verify", json={"code": given})
    if json_:
        output.print_json({"verified": True})
    else:
        output.say("Code confirmed: for 10 minutes this session may create tokens.")
