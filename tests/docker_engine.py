"""A real Docker engine and a private registry for the tests, started offline.

`docker_engine` (session): our own `dockerd` (Debian's `docker.io`) with its data, exec
root, pid file and unix socket under a temp dir, no bridge and no iptables, so it
touches nothing of the host's. `private_registry` (session): Debian's `docker-registry`
on a free 127.0.0.1 port with htpasswd (bcrypt) auth, so anonymous pulls are refused;
a tiny image made from busybox-static (`docker import` of a rootfs tar: no download) is
pushed to it as `127.0.0.1:<port>/team/tool:1` with the registry's credentials and then
removed from the engine, so a job must pull it. The engine treats 127.0.0.0/8
registries as insecure (plain HTTP) by itself.

Missing binaries: the fixtures fail under CI=true, otherwise skip saying what is missing.
Everything started here is stopped by PID (tests.prefect_server._stop).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.prefect_server import _free_port, _stop, _tail

BUSYBOX_TOOLS = (
    "sh", "echo", "cat", "sleep", "dd", "head", "tail", "ls", "env", "true", "false",
    "wc", "mkdir", "cp", "id", "yes", "sha256sum", "test", "[",
)  # fmt: skip
REGISTRY_USER = "robot"
REGISTRY_PASSWORD = "s3cret-registry-pw"  # a throwaway test registry's


def _need(*binaries: str) -> dict[str, str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = {b: shutil.which(b, path=search) or "" for b in binaries}
    missing = [b for b, path in found.items() if not path]
    if missing:
        reason = (
            f"{', '.join(missing)} not installed (apt-get install docker.io docker-registry "
            "busybox-static)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class DockerEngine:
    host: str  # DOCKER_HOST: unix://<tmp>/docker.sock
    root: Path

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def cli(self, *args: str, input_: bytes | None = None) -> str:
        """`docker ...` against this engine; its stdout."""
        done = subprocess.run(
            ["docker", *args],
            input=input_,
            capture_output=True,
            env={**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.root / "cli")},
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def containers(self) -> list[str]:
        """Names of every container on the engine (running or not)."""
        return self.cli("ps", "-a", "--format", "{{.Names}}").split()


@dataclass(frozen=True)
class PrivateRegistry:
    host: str  # 127.0.0.1:<port>
    username: str
    password: str
    image: str  # <host>/team/tool:1, pushed, absent from the engine


def _busybox_rootfs_tar(busybox: str) -> bytes:
    """A rootfs tar: /bin/busybox and its applets as symlinks, plus empty dirs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "dev", "proc", "sys", "etc", "inputs", "outputs"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = Path(busybox).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for tool in BUSYBOX_TOOLS:
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def _wait(what: str, check: object, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in 60 s:\n{_tail(log)}")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """Our own dockerd on a unix socket under a temp dir; stopped (by PID) at the end."""
    paths = _need("dockerd", "docker", "containerd", "runc")
    root = Path(tempfile.mkdtemp(prefix="cshare-dockerd-", dir="/tmp"))  # short socket path
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                paths["dockerd"],
                *("--data-root", str(root / "data"), "--exec-root", str(root / "exec")),
                *("--pidfile", str(root / "docker.pid"), "-H", f"unix://{socket}"),
                *("--bridge", "none", "--iptables=false", "--ip-masq=false"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    engine = DockerEngine(f"unix://{socket}", root)
    try:

        def up() -> bool:
            if not socket.exists():
                return False
            transport = httpx.HTTPTransport(uds=str(socket))
            try:
                with httpx.Client(transport=transport, timeout=2) as c:
                    return c.get("http://docker/_ping").status_code == 200
            except httpx.HTTPError:
                return False

        _wait("dockerd", up, process, log)
        yield engine
    finally:
        _stop(process, grace_s=20)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_registry(docker_engine: DockerEngine) -> Iterator[PrivateRegistry]:
    """docker-registry with htpasswd auth on 127.0.0.1; the busybox test image in it."""
    paths = _need("docker-registry", "busybox")
    import bcrypt  # test-only dependency (pyproject: dev)

    root = Path(tempfile.mkdtemp(prefix="cshare-registry-"))
    port = _free_port()
    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (root / "htpasswd").write_text(f"{REGISTRY_USER}:{hashed}\n")
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: test-only-secret}}\n"
        f"auth: {{htpasswd: {{realm: cshare-test, path: {root / 'htpasswd'}}}}}\n"
    )
    log = root / "registry.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [paths["docker-registry"], "serve", str(root / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    host = f"127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://{host}/v2/", timeout=2).status_code == 401
            except httpx.HTTPError:
                return False

        _wait("docker-registry", up, process, log)
        image = f"{host}/team/tool:1"
        docker_engine.cli("import", "-", image, input_=_busybox_rootfs_tar(paths["busybox"]))
        docker_engine.cli(
            "login", host, "-u", REGISTRY_USER, "--password-stdin",
            input_=REGISTRY_PASSWORD.encode(),
        )  # fmt: skip
        docker_engine.cli("push", image)
        docker_engine.cli("logout", host)
        # Jobs must pull it with the org's credentials: not in the engine any more.
        docker_engine.cli("rmi", image)
        yield PrivateRegistry(host, REGISTRY_USER, REGISTRY_PASSWORD, image)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
