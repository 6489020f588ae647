"""Your account: signup, login, logout, whoami, personal tokens (`cshare token`) and
your own notifications (`cshare account notifications`)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import Client, connect, seg
from api.cli.lookup import is_uuid, read_secret_stdin
from api.cli.options import JsonOpt, UrlOpt
from api.cli.output import ApiError, CliError, UsageProblem
from api.cli.sso_login import sso_login

EmailOpt = Annotated[str | None, typer.Option("--email", help="Your email address.")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def _server(url: str | None) -> str:
    return config.normalize_api_url(url) if url else config.effective().api_url


def _remember(api_url: str, token: str) -> None:
    """Save the token with the server that issued it; a new server drops the current org."""
    saved = config.load()
    org = saved.org if saved.api_url in (None, api_url) else None
    config.update(api_url=api_url, token=token, org=org)
    if config.effective().token_from_env:
        output.note("Note: CSHARE_TOKEN is set and overrides the saved token.")


def signup(
    email: EmailOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Your user name.")] = None,
    password_stdin: PasswordStdinOpt = False,
    url: UrlOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an account on the server and sign in."""
    api_url = _server(url)
    if password_stdin and not (email and name):
        # stdin carries the password, so there is nobody to answer the prompts.
        raise UsageProblem("--password-stdin needs --email and --name.")
    email = email or typer.prompt("Email")
    name = name or typer.prompt("Name")
    if password_stdin:
        password = read_secret_stdin("password")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with Client(api_url) as client:
        body = client.post(
            "/auth/signup", json={"email": email, "name": name, "password": password}, auth=False
        )
    _remember(api_url, body["token"])
    if json_:
        output.print_json(body)  # the token is shown here, once, as it was just created
        return
    user = body.get("user", {})
    output.say(f"Signed up as {user.get('name')} <{user.get('email')}> on {api_url}.")
    output.say(f"Your session token is saved in {config.config_path()}.")


def login(
    email: EmailOpt = None,
    password_stdin: PasswordStdinOpt = False,
    token_stdin: Annotated[
        bool,
        typer.Option("--token-stdin", help="Sign in with a personal token read from stdin."),
    ] = False,
    code: Annotated[
        str | None,
        typer.Option(
            "--code",
            help="The two-factor code (or a recovery code), if your account has two-factor "
            "on; asked for otherwise.",
        ),
    ] = None,
    url: UrlOpt = None,
    json_: JsonOpt = False,
    sso: Annotated[
        str | None,
        typer.Option("--sso", help="Sign in through this provider, in a browser."),
    ] = None,
) -> None:
    """Sign in with your email and password (or a personal token, or --sso) and save the
    token."""
    api_url = _server(url)
    body: dict[str, Any]
    if sso:
        with Client(api_url) as client:
            body = sso_login(client, sso, quiet=json_)
        token = body["token"]
    elif token_stdin:
        token = read_secret_stdin("token")
        body = {}
    else:
        if password_stdin and not email:
            raise UsageProblem("--password-stdin needs --email.")
        email = email or typer.prompt("Email")
        if password_stdin:
            password = read_secret_stdin("password")
        else:
            password = typer.prompt("Password", hide_input=True)
        with Client(api_url) as client:
            try:
                body = client.post(
                    "/auth/login", json={"email": email, "password": password}, auth=False
                )
            except ApiError as exc:
                if exc.code != "2fa_required" or not isinstance(exc.body, dict):
                    raise
                # The password was right; the server wants the second factor.
                if not code and password_stdin:  # stdin is spent: nobody to prompt
                    raise UsageProblem(
                        "This account has two-factor on: give the code with --code."
                    ) from None
                code = code or typer.prompt("Two-factor code (or a recovery code)")
                body = client.post(
                    "/auth/login/2fa",
                    json={"ticket": exc.body.get("ticket", ""), "code": code},
                    auth=False,
                )
        token = body["token"]
    with Client(api_url, token) as client:
        me = client.get("/me")  # also checks a pasted token before saving it
    _remember(api_url, token)
    if json_:
        output.print_json({**body, "user": me})
        return
    output.say(f"Logged in as {me.get('name')} <{me.get('email')}> on {api_url}.")


def logout(json_: JsonOpt = False) -> None:
    """Revoke the saved token on the server and forget it."""
    cfg = config.effective()
    if not cfg.token:
        if json_:
            output.print_json({"logged_out": False, "revoked": False})
        else:
            output.say("You are not signed in.")
        return
    revoked = False
    problem: CliError | None = None
    try:
        with connect(cfg) as client:
            client.post("/auth/logout")
        revoked = True
    except ApiError as exc:
        if exc.status != 401:  # 401: already expired or revoked, which is the goal
            problem = exc
    except CliError as exc:
        problem = exc
    # Forget the token whatever the server said: the person asked to be signed out here.
    # A different saved token stays when CSHARE_TOKEN was the one revoked.
    saved = config.load().token
    if saved and (saved == cfg.token or not cfg.token_from_env):
        config.update(token=None)
    if problem is not None:
        problem.hint = "The token was removed from the config but may still be valid."
        raise problem
    if json_:
        output.print_json({"logged_out": True, "revoked": revoked})
    else:
        output.say("Logged out.")
    if cfg.token_from_env:
        output.note("CSHARE_TOKEN is still set in your environment; unset it.")


def whoami(json_: JsonOpt = False) -> None:
    """Show who you are signed in as, on which server, in which organization."""
    cfg = config.effective()
    with connect(cfg) as client:
        me = client.get("/me")
    if json_:
        output.print_json(me)
        return
    output.say(f"{me.get('name')} <{me.get('email')}>")
    output.say(f"user id: {me.get('id')}")
    output.say(f"server:  {cfg.api_url}")
    org = cfg.org or "none (`cshare org use SLUG`)"
    output.say(f"org:     {org}" + (" (from CSHARE_ORG)" if cfg.org_from_env else ""))


# --------------------------------------------------------------------------- tokens

token_app = typer.Typer(help="Personal API tokens (for scripts and CI).", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name to recognise the token by.")],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", min=1, help="Lifetime (server default 90).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a personal token; it is shown once."""
    payload: dict[str, Any] = {"name": name}
    if expires_in_days is not None:
        payload["expires_in_days"] = expires_in_days
    with connect() as client:
        body = client.post("/me/tokens", json=payload)
    if json_:
        output.print_json(body)
        return
    info = body.get("info", {})
    output.secret(
        "Token",
        body["token"],
        "Shown once: store it now (for example as CSHARE_TOKEN). "
        f"Revoke it with `cshare token revoke {info.get('id')}`.",
    )


def _token_status(token: dict[str, Any]) -> str:
    if token.get("revoked_at"):
        return "revoked"
    expires = token.get("expires_at")
    if expires and datetime.fromisoformat(str(expires)) <= datetime.now(UTC):
        return "expired"
    return "active"


@token_app.command("list")
def token_list(json_: JsonOpt = False) -> None:
    """List your tokens (never their secrets)."""
    with connect() as client:
        body = client.get("/me/tokens")
    if json_:
        output.print_json(body)
        return
    output.table(
        ["ID", "NAME", "KIND", "PREFIX", "EXPIRES", "LAST USED", "STATUS"],
        (
            [
                t.get("id"),
                t.get("name"),
                t.get("kind"),
                t.get("prefix"),
                output.when(t.get("expires_at"), minutes=False) or "never",
                output.when(t.get("last_used_at"), minutes=False),
                _token_status(t),
            ]
            for t in body.get("items", [])
        ),
        empty="No tokens.",
    )


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(metavar="TOKEN", help="The token's id, or its name.")],
    json_: JsonOpt = False,
) -> None:
    """Revoke one of your tokens."""
    with connect() as client:
        token_id = token
        if not is_uuid(token):
            items = client.get("/me/tokens").get("items", [])
            live = [t for t in items if t.get("name") == token and _token_status(t) == "active"]
            if len(live) != 1:
                problem = "No active token" if not live else "Several active tokens"
                raise CliError(f"{problem} named '{token}'.", hint="Use the id from `token list`.")
            token_id = str(live[0]["id"])
        client.delete(f"/me/tokens/{seg(token_id)}")
    if json_:
        output.print_json({"revoked": token_id})
    else:
        output.say(f"Token {token_id} revoked.")


# --------------------------------------------------------------------- your account

account_app = typer.Typer(help="Your account's settings.", no_args_is_help=True)
notifications_app = typer.Typer(
    help="Your own notifications (e-mail when your job ends).", no_args_is_help=True
)
account_app.add_typer(notifications_app, name="notifications")


class JobEmail(StrEnum):
    off = "off"
    failures = "failures"
    all = "all"


def _show_notifications(body: dict[str, Any], json_: bool) -> None:
    if json_:
        output.print_json(body)
        return
    when = {
        "off": "never",
        "failures": "when your job fails or crashes",
        "all": "whenever your job ends",
    }.get(str(body.get("job_email")), str(body.get("job_email")))
    output.say(f"E-mail {when} (job_email: {body.get('job_email')}), to {body.get('email')}.")
    if not body.get("email_available"):
        output.note("This server has no SMTP settings: no e-mail is sent until it does.")


@notifications_app.command("show")
def notifications_show(json_: JsonOpt = False) -> None:
    """Show when you get an e-mail about your jobs."""
    with connect() as client:
        body = client.get("/me/notifications")
    _show_notifications(body, json_)


@notifications_app.command("set")
def notifications_set(
    email: Annotated[
        JobEmail,
        typer.Option(
            "--email",
            help="E-mail me when my job ends: off, failures (failed or crashed), all.",
            case_sensitive=False,
        ),
    ],
    json_: JsonOpt = False,
) -> None:
    """Choose when you get an e-mail about your jobs."""
    with connect() as client:
        body = client.put("/me/notifications", json={"job_email": email.value})
    _show_notifications(body, json_)
