"""agents.pyenv: per-requirements environments made with the real uv, offline.

The test package is a wheel written here (a wheel is a zip with three metadata files),
installed with `--find-links <dir> --no-index`: no network, no build backend.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from agents import pyenv
from agents.pyenv import EnvFailed, UvOptions, ensure_env, read_requirements

try:
    pyenv._uv_bin()
    HAVE_UV = True
except EnvFailed:
    HAVE_UV = False

pytestmark = pytest.mark.skipif(not HAVE_UV, reason="uv is not installed (pip install uv)")


def build_wheel(dest: Path, name: str, version: str, body: str) -> Path:
    """A pure-Python wheel holding module `name` with `body` as its source."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    build_wheel(d, "cshare_testdep", "1.0", "def answer():\n    return 42\n")
    build_wheel(d, "cshare_testdep", "2.0", "def answer():\n    return 2\n")
    return d


def offline(wheels: Path) -> UvOptions:
    return UvOptions(find_links=(str(wheels),), no_index=True)


def run_in(env: pyenv.PythonEnv, code: str) -> str:
    out = subprocess.run(
        [str(env.python), "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def test_no_requirements_is_no_env(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "flow.py").write_text("")
    assert ensure_env(bundle, tmp_path / "cache") is None
    (bundle / "pyproject.toml").write_text("[project]\nname = 'x'\ndependencies = []\n")
    assert ensure_env(bundle, tmp_path / "cache") is None


def test_requirements_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# pinned\nb==1\n\n  a>=2   # why\n-r more.txt\n")
    (tmp_path / "more.txt").write_text("c\nb==1\n")
    assert read_requirements(tmp_path) == ["a>=2", "b==1", "c"]
    (tmp_path / "requirements.txt").unlink()
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = ['z', 'y >= 1']\n")
    assert read_requirements(tmp_path) == ["y >= 1", "z"]


def test_env_made_once_layered_over_the_agent(tmp_path: Path, wheels: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "requirements.txt").write_text("cshare_testdep==1.0\n")
    cache = tmp_path / "cache"
    lines: list[str] = []

    t0 = time.perf_counter()
    env = ensure_env(bundle, cache, log=lines.append, options=offline(wheels))
    first = time.perf_counter() - t0
    assert env is not None and env.python.exists()
    assert any("Installing 1 requirement" in line for line in lines)
    # The env sees its own package and the agent's Prefect; its own site-packages first.
    out = run_in(
        env,
        "import cshare_testdep, prefect, sys; print(cshare_testdep.answer(), prefect.__version__,"
        " sys.prefix)",
    )
    answer, prefect_version, prefix = out.split()
    assert answer == "42"
    assert prefect_version.startswith("3.")
    assert Path(prefix).resolve() == env.path.resolve()

    lines.clear()
    t0 = time.perf_counter()
    again = ensure_env(bundle, cache, log=lines.append, options=offline(wheels))
    cached = time.perf_counter() - t0
    assert again == env and lines == []  # no uv run
    assert cached < 0.05, cached
    print(f"\nensure_env: first {first * 1000:.0f} ms, cached {cached * 1000:.2f} ms")


def test_two_digests_coexist_and_own_pins_win(tmp_path: Path, wheels: Path) -> None:
    cache = tmp_path / "cache"
    envs = []
    for version in ("1.0", "2.0"):
        bundle = tmp_path / version
        bundle.mkdir()
        (bundle / "pyproject.toml").write_text(
            f"[project]\nname = 'p'\ndependencies = ['cshare_testdep=={version}']\n"
        )
        env = ensure_env(bundle, cache, options=offline(wheels))
        assert env is not None
        envs.append(env)
    assert envs[0].digest != envs[1].digest
    assert [run_in(e, "import cshare_testdep; print(cshare_testdep.answer())") for e in envs] == [
        "42",
        "2",
    ]


def test_bad_requirement_raises_with_uvs_message(tmp_path: Path, wheels: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "requirements.txt").write_text("cshare-no-such-package==9.9\n")
    cache = tmp_path / "cache"
    with pytest.raises(EnvFailed) as err:
        ensure_env(bundle, cache, options=offline(wheels))
    assert "cshare-no-such-package" in err.value.message
    assert "uv pip" in err.value.message
    # Nothing half-made is left to be mistaken for an env.
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]


def test_lru_eviction_keeps_the_newest(tmp_path: Path, wheels: Path) -> None:
    cache = tmp_path / "cache"
    envs = []
    for version in ("1.0", "2.0"):
        bundle = tmp_path / version
        bundle.mkdir()
        (bundle / "requirements.txt").write_text(f"cshare_testdep=={version}\n")
        env = ensure_env(bundle, cache, options=offline(wheels))
        assert env is not None
        envs.append(env)
        time.sleep(0.05)
    # Oldest first; `keep` protects the one a job is about to use.
    assert pyenv.evict(cache, cap_bytes=1, keep={envs[1].digest}) == [envs[0].digest]
    assert not envs[0].path.exists() and envs[1].python.exists()
    assert pyenv.evict(cache, cap_bytes=10**12) == []


def test_options_from_environ() -> None:
    opts = UvOptions.from_environ(
        {
            "CSHARE_AGENT_UV_FIND_LINKS": "/w1, /w2",
            "CSHARE_AGENT_UV_INDEX": "https://pypi.example/simple",
            "CSHARE_AGENT_UV_NO_INDEX": "1",
        }
    )
    assert opts.args() == ["--find-links", "/w1", "--find-links", "/w2", "--no-index"]
    assert opts.env() == {"UV_INDEX_URL": "https://pypi.example/simple"}
    assert sys.executable  # the default base interpreter


def test_concurrent_callers_build_once(tmp_path: Path, wheels: Path) -> None:
    import threading

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "requirements.txt").write_text("cshare_testdep==1.0\n")
    cache = tmp_path / "cache"
    lines: list[str] = []
    results: list[pyenv.PythonEnv | None] = []

    def call() -> None:
        results.append(ensure_env(bundle, cache, log=lines.append, options=offline(wheels)))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3 and len({r.path for r in results if r is not None}) == 1
    assert sum("Installing" in line for line in lines) == 1  # one uv run, under the lock
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [
        results[0].digest if results[0] else ""
    ]
