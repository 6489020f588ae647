"""The supervisor: start Prefect, the API and the local agent in order, restart any that
crashes (with backoff), keep the status file current, and stop them in reverse order on
a signal (see api.cli.up)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import httpx

from api.cli.up.bootstrap import Bootstrap, bootstrap
from api.cli.up.demo import DEMO_MACHINE_TYPE, code_dir, run_demo
from api.cli.up.errors import StackError
from api.cli.up.home import private_dir, read_or_create_secret
from api.cli.up.postgres import EmbeddedPostgres
from api.cli.up.prefect_env import PrefectConfig, prefect_env
from api.cli.up.processes import Child, check_port, clean_env, start_time, wait_until
from api.cli.up.restarts import RestartPolicy
from api.cli.up.status import StackState, StackStatus, iso, utcnow, write_status
from api.cli.up.supervised import ChildSpec, Supervised

VENV_BIN: Final = Path(sys.executable).parent
PREFECT_START_TIMEOUT_S: Final = 180.0  # a first start migrates Prefect's database
API_START_TIMEOUT_S: Final = 90.0
AGENT_ONLINE_TIMEOUT_S: Final = 60.0
POSTGRES_START_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True)
class StackOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    prefect_port: int = 4200
    demo: bool = False
    agent: bool = True
    database_url: str | None = None  # default: the embedded PostgreSQL (api.cli.up.postgres)
    prefect_database_url: str | None = None  # default: the same server's `prefect` database
    sqlite: bool = False  # SQLite files under home for both (small trials)
    log_format: str = "text"  # the API's and the agent's (agents/logsetup.py)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
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


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.o = options
        self.home = private_dir(options.home.expanduser().resolve())
        self.slots: list[Supervised] = []
        self.state = StackState.STARTING
        self._status_failed = False
        self._stop = threading.Event()
        self._signal: int | None = None
        self._lock_file: TextIO | None = None
        self._started_at = time.monotonic()
        # Chosen at start (see _choose_databases): Compute Share's and Prefect's.
        self._database_url: str | None = options.database_url
        self._prefect_database_url = ""

    # -- printing ---------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.o.out, flush=True)

    # -- life cycle -------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, wait for a signal or a crash, stop everything. Exit code."""
        self._started_at = time.monotonic()
        self._take_lock()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._check_ports()
            self._write_status()
            code = self._start_and_supervise()
        finally:
            try:
                self.stop_all()
            finally:
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
        self._choose_databases()
        if self._interrupted():
            return 130
        self._start_prefect(auth)
        if self._interrupted():
            return 130
        boot = bootstrap(self.home, self._database_url)
        self._start_api(auth)
        if self._interrupted():
            return 130
        agent_note = self._start_agent(boot)
        if self._interrupted():
            return 130
        if self.o.demo:
            self._demo(boot)
        self.state = StackState.RUNNING
        self._write_status()
        self._banner(boot, agent_note)
        return self._supervise()

    def _supervise(self) -> int:
        """Restart what exits until a signal; nothing is restarted once stopping begins."""
        while not self._stop.wait(0.5):
            changed = False
            for slot in self.slots:
                if self._stop.is_set():
                    break
                changed |= slot.tick(self.say)
            if changed:
                self._write_status()
        self.say(f"\nStopping ({signal.Signals(self._signal or signal.SIGINT).name}) ...")
        return 0

    def stop_all(self) -> None:
        """Stop the children in reverse start order (agent, API, Prefect)."""
        self.state = StackState.STOPPING
        self._write_status()
        for slot in reversed(self.slots):
            slot.stop()
            self._write_status()
        for slot in self.slots:
            slot.close()
        if self.slots:
            self.say("Stopped. Run `cshare up` again to resume with the same data.")
        self.state = StackState.STOPPED
        self._write_status()
        self.slots = []

    def _write_status(self) -> None:
        """The status file for `cshare up --status`, and stack.pid (running PIDs). A full
        disk must not stop supervision (or the ordered stop): said once, then retried."""
        try:
            self._write_status_files()
        except OSError as exc:
            if not self._status_failed:
                self.say(f"Could not write the status file in {self.home}: {exc}")
            self._status_failed = True
        else:
            self._status_failed = False

    def _write_status_files(self) -> None:
        status = StackStatus(
            supervisor_pid=os.getpid(),
            supervisor_started=start_time(os.getpid()),
            state=self.state,
            updated_at=iso(utcnow()),
            children=[slot.status() for slot in self.slots],
        )
        write_status(self.home, status)
        if self.state in (StackState.STOPPING, StackState.STOPPED):
            return
        pids = {"supervisor": os.getpid(), **{s.spec.name: s.pid for s in self.slots}}
        (self.home / "stack.pid").write_text(json.dumps(pids) + "\n")

    def _supervise_child(self, spec: ChildSpec) -> Child:
        slot = Supervised(spec, self.o.restart_policy)
        self.slots.append(slot)
        child = slot.start()
        self._write_status()
        return child

    # -- the pieces ---------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        return private_dir(self.home / "logs") / f"{name}.log"

    def _choose_databases(self) -> None:
        """The embedded PostgreSQL for both, unless told otherwise: `--sqlite` (or a
        home that already holds SQLite data: never left behind silently), or external
        URLs (`--database-url`, `--prefect-database-url`)."""
        prefect_sqlite = f"sqlite+aiosqlite:///{private_dir(self.home / 'prefect')}/prefect.db"
        pg = EmbeddedPostgres(self.home)
        legacy = (self.home / "cshare.db").exists() and not pg.exists()
        if self.o.sqlite or (legacy and not self.o.database_url):
            if legacy and not self.o.sqlite:
                self.say(
                    "  This CSHARE_HOME holds SQLite data from an earlier `cshare up`: staying "
                    "on SQLite (as with --sqlite). The data does not move by itself: for the "
                    "embedded PostgreSQL, start with a new CSHARE_HOME and register your "
                    "machines and deployments there (docs/embedded.md)."
                )
            self._prefect_database_url = self.o.prefect_database_url or prefect_sqlite
            return
        if self.o.database_url and self.o.prefect_database_url:
            self._prefect_database_url = self.o.prefect_database_url
            return
        self._start_postgres(pg)
        self._database_url = self.o.database_url or pg.url("cshare")
        self._prefect_database_url = self.o.prefect_database_url or pg.url(
            "prefect", driver="asyncpg"
        )

    def _start_postgres(self, pg: EmbeddedPostgres) -> Child:
        pg.prepare()
        child = self._supervise_child(
            ChildSpec(
                "postgres",
                "PostgreSQL",
                pg.args(),
                clean_env(),
                pg.root,
                self._log("postgres"),
                user=pg.user,
            )
        )
        self.say(f"  PostgreSQL (pid {child.pid}) in {pg.data} ...")
        wait_until(
            lambda: self._interrupted() or pg.ready(),
            timeout_s=POSTGRES_START_TIMEOUT_S,
            child=child,
            what="PostgreSQL",
        )
        if not self._interrupted():
            pg.ensure_databases()
        return child

    def _start_prefect(self, auth: str) -> Child:
        prefect_home = private_dir(self.home / "prefect")
        config = PrefectConfig(
            home=prefect_home,
            database_url=self._prefect_database_url,
            auth=auth,
            host=self.o.host,
            port=self.o.prefect_port,
            public_url=self.o.prefect_url,
        )
        env = prefect_env(config)
        args = [
            str(VENV_BIN / "prefect"),
            "server",
            "start",
            "--host",
            self.o.host,
            "--port",
            str(self.o.prefect_port),
        ]
        child = self._supervise_child(
            ChildSpec("prefect", "Prefect server", args, env, prefect_home, self._log("prefect"))
        )
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
        env = clean_env()
        env.update(
            CSHARE_HOME=str(self.home),
            CSHARE_PREFECT_API_URL=f"{self.o.prefect_url}/api",
            CSHARE_PREFECT_AUTH_STRING=auth,
            CSHARE_PREFECT_UI_URL=self.o.prefect_url,
            CSHARE_PUBLIC_URL=self.o.api_url,
            # The embedded stack is the one place the dispatcher must run.
            CSHARE_DISPATCHER_ENABLED="true",
        )
        if self._database_url:
            env["CSHARE_DATABASE_URL"] = self._database_url
        return env

    def _start_api(self, auth: str) -> Child:
        # The same command an operator runs, so the logging setup is the same too.
        args = [
            str(VENV_BIN / "cshare"),
            "server",
            "--host",
            self.o.host,
            "--port",
            str(self.o.port),
            "--log-format",
            self.o.log_format,
        ]
        child = self._supervise_child(
            ChildSpec("api", "API", args, self._api_env(auth), self.home, self._log("api"))
        )
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
        agent_home = private_dir(self.home / "agent")
        env = clean_env()
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
            "--log-format",
            self.o.log_format,
        ]
        child = self._supervise_child(
            ChildSpec("agent", "Local agent", args, env, agent_home, self._log("agent"))
        )
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
        ready_s = time.monotonic() - self._started_at
        self.say(f"Compute Share is running (ready in {ready_s:.1f} s). Press Ctrl-C to stop.")
        self.say()
        self.say(f"  API docs:    {api}/docs")
        self.say(f"  Prefect UI:  {api}/prefect/{boot.org_slug}/   (signed in as the admin)")
        self.say(f"  Admin:       {boot.admin_email}")
        self.say(f"  Password:    {password}")
        self.say(f"  Demo org:    {boot.org_slug}")
        self.say(f"  Agent:       {agent_note}")
        self.say(f"  Logs:        {self.home / 'logs'}")
        self.say()
        self.say("Next, in another terminal:")
        hint = activate_hint()
        if hint:
            self.say(f"  {hint}   # puts cshare on PATH in that terminal")
        self.say(f"  cshare login --url {api} --email {boot.admin_email}")
        self.say(f"  cshare deploy prefect.yaml --org {boot.org_slug}")
        self.say(f"  cshare job submit train --org {boot.org_slug}")
        self.say()


def activate_hint(cwd: Path | None = None) -> str | None:
    """`source .venv/bin/activate` (relative when under `cwd`) when `cshare` runs from a
    virtual environment whose bin folder is not on PATH: the README's first command
    installs into `.venv` and starts `.venv/bin/cshare up`, so a new terminal has no
    `cshare` until the venv is activated."""
    activate = VENV_BIN / "activate"
    if not activate.is_file():
        return None
    on_path = [Path(p).resolve() for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if VENV_BIN.resolve() in on_path:
        return None
    here = (cwd or Path.cwd()).resolve()
    target = activate.resolve() if not VENV_BIN.is_symlink() else activate
    shown = target.relative_to(here) if target.is_relative_to(here) else target
    return f"source {shown}"


def _is_online(machine: dict[str, Any]) -> bool:
    health = machine.get("health") or machine.get("status_health")
    return bool(health == "online" or machine.get("online") is True)
