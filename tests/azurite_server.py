"""A real Azure Blob Storage endpoint for the tests: Microsoft's Azurite (npm `azurite`)
under node on 127.0.0.1, in memory, one per test session (per xdist worker).

Installed like the test OIDC provider (tests/oidc_server.py): `npm ci` of
tests/azurite/package-lock.json into a cache directory on first use. Without node or npm
the tests skip with the reason, except under CI=true where they fail. Stopped by PID.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "azurite"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason + " (CI=true requires it)")
    pytest.skip(reason)


def ensure_installed() -> Path:
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        _missing("node and npm are needed to run Azurite (apt-get install nodejs npm)")
    assert npm is not None
    lock = (HERE / "package-lock.json").read_bytes()
    base = Path(os.environ.get("CSHARE_TEST_CACHE") or Path.home() / ".cache" / "cshare-tests")
    target = base / f"azurite-{hashlib.sha256(lock).hexdigest()[:12]}"
    target.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # xdist workers: one installs, the others wait
        if not (target / "node_modules" / ".bin" / "azurite-blob").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(HERE / name, target / name)
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--silent"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                _missing(f"npm ci of azurite failed: {done.stderr.strip()[-500:]}")
    return target


@pytest.fixture(scope="session")
def azurite_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:<port>/devstoreaccount1`: the blob endpoint of the account."""
    directory = ensure_installed()
    process = subprocess.Popen(
        [
            str(directory / "node_modules" / ".bin" / "azurite-blob"),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
        ],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    url = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "successfully listens on" in line:
            url = line.rsplit(" ", 1)[1].strip()
            break
    try:
        if not url:
            raise RuntimeError("Azurite did not start")
        yield f"{url}/{ACCOUNT}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def azure_container(azurite_endpoint: str) -> str:
    """A fresh, empty container in Azurite's development account."""
    from azure.storage.blob import BlobServiceClient

    name = f"test-{uuid.uuid4().hex[:16]}"
    client = BlobServiceClient(
        azurite_endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}
    )
    client.create_container(name)
    return name
