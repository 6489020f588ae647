"""Real Git servers for the tests, on 127.0.0.1 and free ports, each stopped by the
fixture that started it:

- `git_daemon`: `git daemon` serving a temp base path (git://, public, read-only);
- `git_http`: `git http-backend` as CGI behind HTTP basic auth (stdlib http.server in a
  thread), for private repositories reached with a token;
- `git_sshd`: OpenSSH's `sshd` with a temp host key, logging in the current user with
  the keys the test authorizes (`authorize(public_key)`), for deploy keys.

Repositories are bare repos under one base directory; `GitRepo.commit({...})` adds a
commit to a branch (through a scratch work tree) and returns its sha. `sshd` missing:
the SSH tests fail under CI=true (CI installs openssh-server) and skip otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")
_AUTHOR = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started, by its PID."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_AUTHOR}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class GitRepo:
    """A bare repository (what the servers serve) and a scratch tree to commit from."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, base: Path, name: str, *, any_sha: bool = True) -> GitRepo:
        bare = base / f"{name}.git"
        git("init", "-q", "--bare", "-b", "main", str(bare))
        # Served by `git daemon` and http-backend alike; fetch by any sha (GitHub does).
        # Protocol v2 serves any sha anyway; `any_sha=False` matters to v0 clients.
        git("config", "uploadpack.allowAnySHA1InWant", str(any_sha).lower(), cwd=bare)
        git("config", "http.receivepack", "false", cwd=bare)
        work = base / ".work" / name
        git("init", "-q", "-b", "main", str(work))
        git("remote", "add", "origin", str(bare), cwd=work)
        return cls(bare, work)

    @property
    def name(self) -> str:
        return self.bare.name

    def commit(
        self, files: dict[str, str], *, branch: str = "main", message: str = "change"
    ) -> str:
        if git("branch", "--list", branch, cwd=self.work):
            git("checkout", "-q", branch, cwd=self.work)
        elif (
            subprocess.run(
                ["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=self.work, capture_output=True
            ).returncode
            == 0
        ):
            git("checkout", "-q", "-b", branch, cwd=self.work)
        else:  # no commit yet: the first one starts `branch`
            git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.work)
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, *, annotated: bool = False) -> None:
        if annotated:
            git("tag", "-a", "-m", name, name, cwd=self.work)
        else:
            git("tag", name, cwd=self.work)
        git("push", "-q", "origin", f"refs/tags/{name}", cwd=self.work)


@dataclass
class GitDaemon:
    base: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def url(self, repo: GitRepo) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.name}"

    def repo(self, name: str) -> GitRepo:
        return GitRepo.create(self.base, name)


@contextlib.contextmanager
def running_git_daemon(base: Path) -> Iterator[GitDaemon]:
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--informative-errors",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        env={**os.environ, **_AUTHOR},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield GitDaemon(base, port, proc)
    finally:
        stop(proc)


@dataclass
class GitHttp:
    """git http-backend behind basic auth: `user`/`token` may fetch, nobody else."""

    base: Path
    port: int
    user: str
    token: str
    requests: list[tuple[str, int]] = field(default_factory=list)
    # Drop the client's Git-Protocol header: http-backend then speaks protocol v0, like
    # an old server that only hands out ref tips (with a repo made `any_sha=False`).
    protocol_v0: bool = False

    def url(self, repo: GitRepo) -> str:
        return f"http://127.0.0.1:{self.port}/{repo.name}"

    def repo(self, name: str, *, any_sha: bool = True) -> GitRepo:
        return GitRepo.create(self.base, name, any_sha=any_sha)


def _http_handler(server_info: GitHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return (user, secret) == (server_info.user, server_info.token)

        def _serve(self) -> None:
            if not self._authorized():
                server_info.requests.append((self.path, 401))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server_info.base),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": server_info.user,
                "REMOTE_ADDR": "127.0.0.1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": (
                    "" if server_info.protocol_v0 else self.headers.get("Git-Protocol", "")
                ),
            }
            done = subprocess.run(
                [str(HTTP_BACKEND)], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = done.stdout.partition(b"\n\n")
            status = 200
            headers: list[tuple[str, str]] = []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            server_info.requests.append((self.path, status))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

    return Handler


@contextlib.contextmanager
def running_git_http(base: Path, *, user: str, token: str) -> Iterator[GitHttp]:
    if not HTTP_BACKEND.exists():
        raise RuntimeError(f"{HTTP_BACKEND} is missing (Debian's git package ships it)")
    base.mkdir(parents=True, exist_ok=True)
    info = GitHttp(base, 0, user, token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(info))
    info.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield info
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class GitSshd:
    base: Path
    port: int
    user: str
    authorized_keys: Path

    def url(self, repo: GitRepo) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo.bare}"

    def repo(self, name: str) -> GitRepo:
        return GitRepo.create(self.base, name)

    def authorize(self, public_key: str) -> None:
        with self.authorized_keys.open("a") as handle:
            handle.write(f"restrict {public_key.strip()}\n")


def sshd_missing() -> None:
    """Fail under CI (it installs openssh-server), skip with the reason otherwise."""
    reason = "sshd is not installed (apt-get install -y openssh-server)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def running_sshd(base: Path, state: Path) -> Iterator[GitSshd]:
    if SSHD is None:
        sshd_missing()
    assert SSHD is not None
    base.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    privsep = Path("/run/sshd")  # Debian's sshd insists on it (root-owned, 0755)
    if not privsep.exists() and os.geteuid() == 0:
        privsep.mkdir(mode=0o755)
    host_key = state / "host_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        capture_output=True,
    )
    authorized = state / "authorized_keys"
    authorized.touch(mode=0o600)
    port = free_port()
    user = getpass.getuser()
    config = state / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {state / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                f"AllowUsers {user}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    log = state / "sshd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"sshd did not start ({exc}): {log.read_text()[-2000:]}") from None
        yield GitSshd(base, port, user, authorized)
    finally:
        stop(proc)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    with running_git_daemon(tmp_path / "daemon") as daemon:
        yield daemon


@pytest.fixture
def git_http(tmp_path: Path) -> Iterator[GitHttp]:
    with running_git_http(
        tmp_path / "http", user="oauth2", token="tok-" + os.urandom(8).hex()
    ) as s:
        yield s


@pytest.fixture
def git_sshd(tmp_path: Path) -> Iterator[GitSshd]:
    with running_sshd(tmp_path / "ssh-repos", tmp_path / "sshd") as sshd:
        yield sshd
