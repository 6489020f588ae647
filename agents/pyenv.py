"""A bundle's Python dependencies, installed with uv into a cached per-requirements env.

A bundle that declares dependencies (`requirements.txt`, else `pyproject.toml`
`[project].dependencies`) runs in its own virtual environment, keyed by the digest of its
normalised requirements: jobs of any deployment that need the same requirements share
it. The environment is layered over the agent's own: a `.pth` file appends the agent's
site-packages AFTER the env's own, so Prefect and the agent's packages stay importable
while the env's pins win (`numpy==1.26` in the bundle beats the agent's numpy).

Made once per machine (an `fcntl` lock per digest, built in a temporary directory and
renamed into place, so a reader sees a whole env or none), reused after by a stat, and
evicted least-recently-used beyond a size cap. uv comes from the `uv` PyPI package;
where it installs from is the machine's choice (`UvOptions.from_environ`).

Standard library only (plus the uv binary): agents import no server code.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import tomllib
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "EnvFailed",
    "PythonEnv",
    "UvOptions",
    "ensure_env",
    "evict",
    "max_bytes_from_env",
    "read_requirements",
    "requirements_digest",
]

READY: Final = ".cshare-ready"  # written last: an env without it is not there
SIZE_FILE: Final = ".cshare-size"
DEFAULT_CAP_BYTES: Final = 10 * 1024**3
STDERR_TAIL: Final = 4000  # characters of uv's stderr carried into the job log
INSTALL_TIMEOUT_S: Final = 1800.0

Log = Callable[[str], None]


class EnvFailed(Exception):
    """The bundle's requirements could not be installed; `message` is for the job log."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PythonEnv:
    path: Path
    digest: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass(frozen=True)
class UvOptions:
    """Where uv finds packages: the machine's index by default (uv's own settings and
    `UV_*` variables apply), or what the agent's environment says."""

    find_links: Sequence[str] = ()
    index_url: str | None = None
    no_index: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> UvOptions:
        """`CSHARE_AGENT_UV_FIND_LINKS` (paths or URLs separated by spaces or commas),
        `CSHARE_AGENT_UV_INDEX` (passed as `UV_INDEX_URL`), `CSHARE_AGENT_UV_NO_INDEX=1`
        (only the find-links: an offline machine)."""
        links = environ.get("CSHARE_AGENT_UV_FIND_LINKS", "").replace(",", " ").split()
        return cls(
            find_links=tuple(links),
            index_url=environ.get("CSHARE_AGENT_UV_INDEX") or None,
            no_index=environ.get("CSHARE_AGENT_UV_NO_INDEX", "").lower() in {"1", "true", "yes"},
        )

    def args(self) -> list[str]:
        out: list[str] = []
        for link in self.find_links:
            out += ["--find-links", link]
        if self.no_index:
            out.append("--no-index")
        return out

    def env(self) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.index_url:
            extra["UV_INDEX_URL"] = self.index_url
        return extra


# ------------------------------------------------------------------ requirements


def read_requirements(bundle_dir: Path) -> list[str] | None:
    """The bundle's requirements, normalised (comments and blank lines dropped,
    `-r` files inlined, sorted, deduplicated); None when it declares none."""
    req = bundle_dir / "requirements.txt"
    if req.is_file():
        lines = _requirement_lines(req, bundle_dir, seen=set())
    else:
        lines = _pyproject_dependencies(bundle_dir / "pyproject.toml")
    normalised = sorted(set(lines))
    return normalised or None


def _requirement_lines(path: Path, root: Path, seen: set[Path]) -> list[str]:
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvFailed(f"Cannot read {path.name}: {exc}") from None
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):  # continuation line
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if not line:
            continue
        for flag in ("-r ", "--requirement ", "--requirement="):
            if line.startswith(flag):
                included = (path.parent / line[len(flag) :].strip()).resolve()
                if not included.is_relative_to(root.resolve()):
                    raise EnvFailed(f"{path.name} includes {included}, outside the bundle.")
                out += _requirement_lines(included, root, seen)
                break
        else:
            out.append(" ".join(line.split()))
    return out


def _pyproject_dependencies(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EnvFailed(f"Cannot read pyproject.toml: {exc}") from None
    project = doc.get("project")
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(deps, list):
        return []
    return [" ".join(str(d).split()) for d in deps if str(d).strip()]


def requirements_digest(requirements: Sequence[str], base_python: str) -> str:
    """The env key: the requirements and the interpreter they are installed for."""
    h = hashlib.sha256()
    h.update(f"python={os.path.realpath(base_python)}\n".encode())
    h.update(f"platform={sysconfig.get_platform()}\n".encode())
    for line in requirements:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- envs


def max_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The cap on the machine's environments (CSHARE_AGENT_PYTHON_ENVS_MAX_BYTES)."""
    value = (environ if environ is not None else os.environ).get(
        "CSHARE_AGENT_PYTHON_ENVS_MAX_BYTES", ""
    )
    return int(value) if value.strip().isdecimal() else DEFAULT_CAP_BYTES


def ensure_env(
    bundle_dir: Path,
    cache_dir: Path,
    *,
    base_python: str = sys.executable,
    log: Log = lambda _msg: None,
    options: UvOptions | None = None,
    cap_bytes: int = DEFAULT_CAP_BYTES,
) -> PythonEnv | None:
    """The environment for the bundle's requirements (made on first use); None when the
    bundle declares none (the job runs on the agent's own interpreter)."""
    requirements = read_requirements(bundle_dir)
    if requirements is None:
        return None
    digest = requirements_digest(requirements, base_python)
    env = PythonEnv(cache_dir / digest, digest)
    if (env.path / READY).exists():  # the fast path: one stat, no lock, no uv
        _touch(env.path)
        return env
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, digest):
        if (env.path / READY).exists():  # someone else made it while we waited
            _touch(env.path)
            return env
        log(f"Installing {len(requirements)} requirement(s) into environment {digest[:12]}")
        started = time.monotonic()
        _build(env, requirements, bundle_dir, base_python, options or UvOptions.from_environ())
        log(f"Environment {digest[:12]} ready in {time.monotonic() - started:.1f}s")
    evict(cache_dir, cap_bytes, keep={digest})
    return env


def _build(
    env: PythonEnv,
    requirements: Sequence[str],
    bundle_dir: Path,
    base_python: str,
    options: UvOptions,
) -> None:
    tmp = env.path.parent / f".tmp-{env.digest[:12]}-{uuid.uuid4().hex[:8]}"
    try:
        uv = _uv_bin()
        run_env = {
            **os.environ,
            "UV_PYTHON_DOWNLOADS": "never",  # the agent's interpreter, never a download
            "UV_CACHE_DIR": str(env.path.parent / ".uv-cache"),
            **options.env(),
        }
        # Relocatable: the env is built under a temporary name, then renamed.
        _run([uv, "venv", "--quiet", "--relocatable", "--python", base_python, str(tmp)], run_env)
        req_file = tmp / "cshare-requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--no-config",
                "--python",
                str(tmp / "bin" / "python"),
                *options.args(),
                "-r",
                str(req_file),
            ],
            run_env,
            cwd=bundle_dir,  # a `./pkg` requirement is the bundle's
        )
        _layer_over_agent(tmp)
        (tmp / SIZE_FILE).write_text(str(_disk_usage(tmp)))
        (tmp / READY).write_text(str(time.time()))
        os.rename(tmp, env.path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _uv_bin() -> str:
    try:
        import uv  # type: ignore[import-untyped,unused-ignore]

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise EnvFailed(
                "The machine cannot install the bundle's requirements: uv is not installed "
                "(pip install uv)."
            ) from None
        return found


def _run(cmd: list[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(
            cmd,
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvFailed(f"`uv {cmd[1]}` took longer than {INSTALL_TIMEOUT_S:.0f}s.") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-STDERR_TAIL:]
        raise EnvFailed(f"Installing the bundle's requirements failed (uv {cmd[1]}):\n{tail}")


def _layer_over_agent(env_dir: Path) -> None:
    """Append the agent's site-packages to the env's path (after its own)."""
    own = sorted((env_dir / "lib").glob("python*/site-packages"))
    if not own:
        raise EnvFailed(f"The new environment {env_dir.name} has no site-packages.")
    agent_paths = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if p]
    lines = [p for p in dict.fromkeys(agent_paths) if Path(p).is_dir()]
    # `zz-`: .pth files run in name order; ours last, after any the packages brought.
    (own[0] / "zz-cshare-agent.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _touch(path: Path) -> None:
    # Gone if evicted just now; the LRU order is only a hint.
    with suppress(OSError):
        os.utime(path / READY)


@contextmanager
def _locked(cache_dir: Path, digest: str) -> Iterator[None]:
    locks = cache_dir / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{digest}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _disk_usage(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def evict(cache_dir: Path, cap_bytes: int, *, keep: Collection[str] = ()) -> list[str]:
    """Remove least-recently-used envs until the cache fits `cap_bytes`; the digests
    removed. Envs in `keep` stay, and so do those being made (hidden `.tmp-` names)."""
    envs: list[tuple[float, int, Path]] = []
    for ready in cache_dir.glob(f"*/{READY}"):
        if ready.parent.name.startswith("."):
            continue
        try:
            used = ready.stat().st_mtime
            size = int((ready.parent / SIZE_FILE).read_text() or 0)
        except (OSError, ValueError):
            continue
        envs.append((used, size, ready.parent))
    total = sum(size for _used, size, _p in envs)
    removed: list[str] = []
    for _used, size, path in sorted(envs):
        if total <= cap_bytes:
            break
        if path.name in keep:
            continue
        trash = cache_dir / f".trash-{path.name[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)  # atomic: no reader sees half an env
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total -= size
        removed.append(path.name)
    return removed
