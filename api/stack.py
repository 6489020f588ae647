"""The embedded stack behind `cshare up`: Prefect server, the API with its dispatcher, and a
local agent, supervised in the foreground from one process.

Layout under `CSHARE_HOME` (created 0700):

    cshare.db                 the control plane (SQLite, unless CSHARE_DATABASE_URL is set)
    prefect/prefect.db        Prefect's own SQLite database and PREFECT_HOME
    secrets/prefect-auth      the generated PREFECT_SERVER_API_AUTH_STRING (0600)
    secrets/admin-password    the first admin's password, also printed once (0600)
    secrets/agent-token       the admin's personal token the local agent registers with (0600)
    agent/                    the local agent's config and state
    logs/*.log                each child's output
    stack.json                what the first start created (admin email, demo org)
    stack.pid                 PIDs of the running stack (supervisor and children)
    stack.lock                held while a stack runs: one `cshare up` per home

Why children and not threads: each piece is what production runs separately (a Prefect
server, `uvicorn api.app:create_app`, `cshare agent start`), so the embedded stack
exercises the production processes. Each child gets its own session (a terminal Ctrl-C
reaches only the supervisor, which stops them in order: agent, API, Prefect) and, on
Linux, a parent-death signal, so even a SIGKILLed supervisor leaves no orphan behind.
Stopping is by PID: SIGTERM, wait, SIGKILL after a timeout, then any descendant that
outlived its parent (recorded with its start time, so a recycled PID is never hit).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import httpx

VENV_BIN: Final = Path(sys.executable).parent
ADMIN_EMAIL: Final = "admin@cshare.local"
ADMIN_NAME: Final = "admin"
DEMO_ORG_NAME: Final = "Demo"
DEMO_ORG_SLUG: Final = "demo"
DEMO_MACHINE_TYPE: Final = "cpu"
PREFECT_START_TIMEOUT_S: Final = 180.0  # a first start migrates Prefect's database
API_START_TIMEOUT_S: Final = 90.0
AGENT_ONLINE_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1


class StackError(Exception):
    """A problem to report in one sentence (the CLI prints it and exits non-zero)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StackOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    prefect_port: int = 4200
    demo: bool = False
    agent: bool = True
    database_url: str | None = None  # default: SQLite under home
    out: TextIO = field(default=sys.stdout, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.prefect_port}"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening everywhere: talk locally
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------ processes


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of `pid` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (and is the same process, when its start time is given)."""
    now = _start_time(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return sys.platform != "linux"
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return started is None or now == started


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with the supervisor (Linux).
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started: int | None = None
    known: dict[int, int | None] = field(default_factory=dict)  # descendant pid -> start

    @property
    def pid(self) -> int:
        return self.process.pid

    def remember_descendants(self) -> None:
        for pid in descendants(self.pid):
            if pid not in self.known:
                self.known[pid] = _start_time(pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, args: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path
) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,  # the supervisor runs no other threads
        )
    return Child(name, process, log_path, started=_start_time(process.pid))


def stop_child(child: Child, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, SIGKILL; then every recorded descendant still alive, by PID."""
    child.remember_descendants()
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            child.process.wait(timeout=timeout_s)
    leftovers = dict(child.known)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = [pid for pid, start in leftovers.items() if alive(pid, start)]
        if not living:
            return
        for pid in living:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 3
        while time.monotonic() < deadline and any(alive(p, leftovers[p]) for p in living):
            time.sleep(0.1)


# -------------------------------------------------------------------------- helpers


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write `value` to a new 0600 file (created with that mode: never readable by others)."""
    _private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    path.chmod(0o600)


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = make()
    write_secret(path, value)
    return value


def check_port(host: str, port: int, *, what: str, flag: str, env: str) -> None:
    """Fail with a clear message when `port` cannot be bound (someone listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"Port {port} on {host} is already in use, so {what} cannot start "
                f"({exc.strerror}). Stop whatever uses it, or pick another port with "
                f"{flag} N (or the {env} setting)."
            ) from None


def _clean_env() -> dict[str, str]:
    # A developer's PREFECT_* profile must not leak into the embedded stack.
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, child: Child | None, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise StackError(
                f"{what} exited during start-up (code {child.process.returncode}); its log "
                f"{child.log_path} ends with:\n{child.tail()}"
            )
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    log = f" See {child.log_path}." if child is not None else ""
    raise StackError(f"{what} did not become ready within {timeout_s:.0f} s.{log}")


# -------------------------------------------------------------------------- bootstrap


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
    from sqlalchemy import select

    from orgs import accounts, migrate, organizations, settings_doc
    from orgs.config import Settings
    from orgs.context import OrgContext
    from orgs.db import Database
    from orgs.models import Membership, Organization, User

    settings = Settings(home=home, database_url=database_url)
    db = Database(settings.resolved_database_url())
    state_path = home / "stack.json"
    secrets_dir = _private_dir(home / "secrets")
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


# ------------------------------------------------------------------------------ stack


def agent_available() -> bool:
    """Whether this install has `cshare agent start` (the agents package provides it)."""
    from api.cli.main import app

    return any(group.name == "agent" for group in app.registered_groups)


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.o = options
        self.home = _private_dir(options.home.expanduser().resolve())
        self.children: list[Child] = []
        self._stop = threading.Event()
        self._signal: int | None = None
        self._lock_file: TextIO | None = None

    # -- printing ---------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.o.out, flush=True)

    # -- life cycle -------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, wait for a signal or a crash, stop everything. Exit code."""
        self._take_lock()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._check_ports()
            code = self._start_and_supervise()
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._release_lock()
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signal = signum
        self._stop.set()

    def _take_lock(self) -> None:
        lock_path = self.home / "stack.lock"
        fh = lock_path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise StackError(
                f"Another `cshare up` (pid {owner}) is running with CSHARE_HOME={self.home}; "
                "stop it first, or use another CSHARE_HOME."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_file = fh

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            (self.home / "stack.pid").unlink()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _check_ports(self) -> None:
        check_port(
            self.o.host, self.o.port, what="the Compute Share API", flag="--port", env="CSHARE_PORT"
        )
        check_port(
            self.o.host,
            self.o.prefect_port,
            what="the Prefect server",
            flag="--prefect-port",
            env="CSHARE_PREFECT_PORT",
        )

    def _interrupted(self) -> bool:
        return self._stop.is_set()

    def _start_and_supervise(self) -> int:
        auth = read_or_create_secret(
            self.home / "secrets" / "prefect-auth", lambda: secrets.token_urlsafe(32)
        )
        self.say(f"Starting Compute Share in {self.home} ...")
        self._start_prefect(auth)
        if self._interrupted():
            return 130
        boot = bootstrap(self.home, self.o.database_url)
        self._start_api(auth)
        if self._interrupted():
            return 130
        agent_note = self._start_agent(boot)
        if self._interrupted():
            return 130
        if self.o.demo:
            self._demo(boot)
        self._write_pids()
        self._banner(boot, agent_note)
        return self._supervise()

    def _supervise(self) -> int:
        while not self._stop.wait(0.5):
            for child in self.children:
                child.remember_descendants()
                if child.process.poll() is not None:
                    self.say(
                        f"\n{child.name} stopped unexpectedly (exit code "
                        f"{child.process.returncode}); stopping the stack. Its log "
                        f"{child.log_path} ends with:\n{child.tail()}"
                    )
                    return 1
        self.say(f"\nStopping ({signal.Signals(self._signal or signal.SIGINT).name}) ...")
        return 0

    def stop_all(self) -> None:
        """Stop the children in reverse start order (agent, API, Prefect)."""
        for child in reversed(self.children):
            stop_child(child)
        if self.children:
            self.say("Stopped. Run `cshare up` again to resume with the same data.")
        self.children = []

    def _write_pids(self) -> None:
        pids = {
            "supervisor": os.getpid(),
            **{c.name.lower().replace(" ", "_"): c.pid for c in self.children},
        }
        (self.home / "stack.pid").write_text(json.dumps(pids) + "\n")

    # -- the pieces ---------------------------------------------------------------------

    def _start_prefect(self, auth: str) -> Child:
        prefect_home = _private_dir(self.home / "prefect")
        env = _clean_env()
        env.update(
            PREFECT_HOME=str(prefect_home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{prefect_home}/prefect.db",
            PREFECT_SERVER_API_AUTH_STRING=auth,
            # On SQLite the late-runs service fights request handlers for the write lock.
            PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_HOST=self.o.host,
            PREFECT_SERVER_API_PORT=str(self.o.prefect_port),
            PREFECT_UI_API_URL=f"{self.o.prefect_url}/api",
            PREFECT_LOGGING_SERVER_LEVEL="WARNING",
        )
        args = [
            str(VENV_BIN / "prefect"),
            "server",
            "start",
            "--host",
            self.o.host,
            "--port",
            str(self.o.prefect_port),
        ]
        child = spawn(
            "Prefect", args, env=env, log_path=self.home / "logs" / "prefect.log", cwd=prefect_home
        )
        self.children.append(child)
        self.say(f"  Prefect server (pid {child.pid}) on {self.o.prefect_url} ...")
        health = f"{self.o.prefect_url}/api/health"
        wait_until(
            lambda: self._interrupted() or httpx.get(health, timeout=2).status_code == 200,
            timeout_s=PREFECT_START_TIMEOUT_S,
            child=child,
            what="The Prefect server",
        )
        return child

    def _api_env(self, auth: str) -> dict[str, str]:
        env = _clean_env()
        env.update(
            CSHARE_HOME=str(self.home),
            CSHARE_PREFECT_API_URL=f"{self.o.prefect_url}/api",
            CSHARE_PREFECT_AUTH_STRING=auth,
            CSHARE_PREFECT_UI_URL=self.o.prefect_url,
            CSHARE_PUBLIC_URL=self.o.api_url,
            # The embedded stack is the one place the dispatcher must run.
            CSHARE_DISPATCHER_ENABLED="true",
        )
        if self.o.database_url:
            env["CSHARE_DATABASE_URL"] = self.o.database_url
        return env

    def _start_api(self, auth: str) -> Child:
        from orgs.config import get_settings

        proxies = get_settings().trusted_proxies
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.app:create_app",
            "--host",
            self.o.host,
            "--port",
            str(self.o.port),
            "--log-level",
            "info",
            "--no-access-log",
            # X-Forwarded-* only from the proxies the app trusts (uvicorn: loopback).
            *(["--forwarded-allow-ips", proxies] if proxies else ["--no-proxy-headers"]),
        ]
        child = spawn(
            "API",
            args,
            env=self._api_env(auth),
            log_path=self.home / "logs" / "api.log",
            cwd=self.home,
        )
        self.children.append(child)
        self.say(f"  API with dispatcher (pid {child.pid}) on {self.o.api_url} ...")
        ready = f"{self.o.api_url}/readyz"
        wait_until(
            lambda: self._interrupted() or httpx.get(ready, timeout=5).status_code == 200,
            timeout_s=API_START_TIMEOUT_S,
            child=child,
            what="The API",
        )
        return child

    def _start_agent(self, boot: Bootstrap) -> str:
        if not self.o.agent:
            return "no local agent (--no-agent)"
        if not agent_available():
            return "no local agent: this install has no `cshare agent` command yet"
        agent_home = _private_dir(self.home / "agent")
        env = _clean_env()
        env.update(
            CSHARE_API_URL=self.o.api_url,
            CSHARE_TOKEN=boot.agent_token,
            CSHARE_ORG=boot.org_slug,
            CSHARE_CONFIG=str(agent_home / "config.toml"),
            CSHARE_AGENT_HOME=str(agent_home),  # the machine token lives here
        )
        args = [
            str(VENV_BIN / "cshare"),
            "agent",
            "start",
            "--machine-type",
            DEMO_MACHINE_TYPE,
            "--slots",
            str(max(1, min(4, (os.cpu_count() or 2) // 2))),
            # The shipped flows' entrypoints are relative to the folder holding `flows/`.
            "--flows-dir",
            code_dir(),
        ]
        child = spawn(
            "Agent", args, env=env, log_path=self.home / "logs" / "agent.log", cwd=agent_home
        )
        self.children.append(child)
        self.say(f"  local agent (pid {child.pid}) ...")
        headers = {"Authorization": f"Bearer {boot.agent_token}"}
        machines = f"{self.o.api_url}/api/v1/orgs/{boot.org_slug}/machines"

        def online() -> bool:
            if self._interrupted():
                return True
            r = httpx.get(machines, headers=headers, timeout=5)
            items = r.json().get("items", []) if r.status_code == 200 else []
            return any(_is_online(m) for m in items)

        wait_until(online, timeout_s=AGENT_ONLINE_TIMEOUT_S, child=child, what="The local agent")
        return f"local agent online (logs: {child.log_path})"

    def _demo(self, boot: Bootstrap) -> None:
        """Register the shipped flows and submit a few jobs (so the Prefect UI shows runs)."""
        try:
            for line in run_demo(self.o.api_url, boot.agent_token, boot.org_slug):
                self.say(f"  {line}")
        except (httpx.HTTPError, StackError) as exc:
            # The stack itself is fine: say what failed and keep running.
            self.say(f"  --demo could not finish: {exc}")

    def _banner(self, boot: Bootstrap, agent_note: str) -> None:
        pw_file = self.home / "secrets" / "admin-password"
        if boot.admin_password:
            password = f"{boot.admin_password}   (shown once; also in {pw_file}, mode 0600)"
        else:
            password = f"see {pw_file}"
        api = self.o.api_url
        self.say()
        self.say("Compute Share is running. Press Ctrl-C to stop.")
        self.say()
        self.say(f"  API docs:    {api}/docs")
        self.say(
            f"  Prefect UI:  {self.o.prefect_url}   (auth string in "
            f"{self.home / 'secrets' / 'prefect-auth'})"
        )
        self.say(f"  Admin:       {boot.admin_email}")
        self.say(f"  Password:    {password}")
        self.say(f"  Demo org:    {boot.org_slug}")
        self.say(f"  Agent:       {agent_note}")
        self.say(f"  Logs:        {self.home / 'logs'}")
        self.say()
        self.say("Next, in another terminal:")
        self.say(f"  cshare login --url {api} --email {boot.admin_email}")
        self.say(f"  cshare deploy prefect.yaml --org {boot.org_slug}")
        self.say(f"  cshare job submit train --org {boot.org_slug}")
        self.say()


def _is_online(machine: dict[str, Any]) -> bool:
    health = machine.get("health") or machine.get("status_health")
    return bool(health == "online" or machine.get("online") is True)


# Jobs `--demo` submits: a few short trainings and one ETL run.
DEMO_JOBS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("train", {"epochs": 10}),
    ("train", {"epochs": 20, "learning_rate": 0.05}),
    ("train", {"epochs": 30}),
    ("etl", {"rows": 2000}),
)


def code_dir() -> str:
    """The folder holding the `flows` package: the shipped flows' entrypoints are relative
    to it (the repository checkout, or site-packages for a plain install)."""
    import flows.library

    return str(Path(flows.library.__file__).resolve().parents[2])


def run_demo(api_url: str, token: str, org: str) -> Iterator[str]:
    """Register the shipped flows as deployments of `org` and submit `DEMO_JOBS`."""
    from flows.library import SHIPPED_FLOWS

    headers = {"Authorization": f"Bearer {token}"}
    base = f"{api_url}/api/v1/orgs/{org}"
    with httpx.Client(headers=headers, timeout=60) as client:
        for name, entrypoint in SHIPPED_FLOWS.items():
            r = client.post(
                f"{base}/deployments",
                json={
                    "name": name,
                    "entrypoint": entrypoint,
                    "path": code_dir(),
                    "machine_type": DEMO_MACHINE_TYPE,
                    "description": f"Shipped example flow '{name}' (registered by --demo).",
                },
            )
            if r.status_code not in (200, 201):
                raise StackError(f"registering deployment {name}: HTTP {r.status_code} {r.text}")
            yield f"deployment {name} registered"
        for deployment, parameters in DEMO_JOBS:
            r = client.post(
                f"{base}/jobs", json={"deployment": deployment, "parameters": parameters}
            )
            if r.status_code not in (200, 201):
                raise StackError(f"submitting {deployment}: HTTP {r.status_code} {r.text}")
            job = r.json()
            yield f"job {job.get('id')} ({deployment}) submitted: {job.get('state')}"
