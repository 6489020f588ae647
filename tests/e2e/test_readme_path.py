"""The README's "Using it" block, command by command, against a real `cshare up` stack.

The block is parsed from README.md (its first ```bash fence under "## Using it"), so the
README cannot drift from what works. A fresh home: the stack in its own CSHARE_HOME, the
CLI with a fresh HOME and CSHARE_CONFIG (no token, no org), in a copy of `examples/`.
Not a freshly created venv (that costs minutes per run): the project venv's `cshare`,
whose bin folder is put first on PATH in place of `source .venv/bin/activate`.

What the test substitutes, and nothing else: the stack's real URL for
`http://127.0.0.1:8000` (it runs on a free port), the id the previous `job submit`
printed for `JOB`, `--password-stdin` on `signup` (the password is typed at a prompt
by a person). A line ending in `&` is started in the background and stopped by its PID
at the end; `cd` changes the working directory of the following commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.docker_engine import DockerEngine, PrivateRegistry, docker_engine, private_registry
from tests.e2e.test_up import CSHARE, REPO_ROOT, START_TIMEOUT_S, running_up

__all__ = ["docker_engine", "private_registry"]  # fixtures, used by name

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme-path"), pytest.mark.timeout(900)]

README = REPO_ROOT / "README.md"
README_URL = "http://127.0.0.1:8000"
PASSWORD = "readme-path-Pw-2026!"
JOB_ID = re.compile(r"\bJob ([0-9a-f-]{36})\b")


def using_it_commands(readme: str) -> list[str]:
    """The first bash block of the "Using it" section, one command per line, comments off."""
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "no ```bash block in README's Using it"
    commands = []
    for raw in match.group(1).splitlines():
        line = raw.split("  #", 1)[0].strip() if "  #" in raw else raw.strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_the_block_is_the_newcomer_path() -> None:
    """signup -> org -> machine -> deploy -> submit -> logs -> output, in that order."""
    commands = using_it_commands(README.read_text())
    order = ["signup", "org create", "agent start", "deploy", "job submit", "job logs", "download"]
    positions = [next(i for i, c in enumerate(commands) if step in c) for step in order]
    assert positions == sorted(positions), commands


def test_readme_using_it_against_cshare_up(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    commands = using_it_commands(README.read_text())
    # The container example needs a Docker engine: our own (tests/docker_engine.py), which
    # fails under CI=true when it cannot start and skips (only that part) otherwise.
    docker: tuple[DockerEngine, PrivateRegistry] | None = None
    docker_skipped = ""
    try:
        docker = (
            request.getfixturevalue("docker_engine"),
            request.getfixturevalue("private_registry"),
        )
    except pytest.skip.Exception as exc:
        docker_skipped = str(exc)
    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "examples", work / "examples")
    with running_up(tmp_path, signal.SIGINT) as up:
        up.out.wait_for("Press Ctrl-C to stop", START_TIMEOUT_S, up.process)
        up.record()
        # The CLI's own fresh state: not the stack's, not the developer's.
        cli_home = tmp_path / "person"
        cli_home.mkdir()
        env = {k: v for k, v in up.env.items() if k not in ("CSHARE_PORT", "CSHARE_PREFECT_PORT")}
        env.update(
            HOME=str(cli_home),
            CSHARE_CONFIG=str(cli_home / ".config" / "cshare" / "config.toml"),
            PATH=f"{CSHARE.parent}{os.pathsep}{env.get('PATH', '')}",
        )
        env.pop("CSHARE_HOME", None)
        if docker is not None:
            env.update(docker[0].env())  # the README's agent runs containers on it
        background: list[subprocess.Popen[bytes]] = []
        cwd = work
        job_id: str | None = None
        transcript: list[str] = []
        try:
            for command in commands:
                if command.startswith("source "):
                    continue  # PATH above
                line = command.replace(README_URL, up.api)
                if job_id is not None:
                    line = re.sub(r"\bJOB\b", job_id, line)
                if line.startswith("cd "):
                    cwd = (cwd / line[3:].strip()).resolve()
                    assert cwd.is_dir(), line
                    continue
                if line.endswith("&"):
                    log = (tmp_path / "agent.log").open("wb")
                    background.append(
                        subprocess.Popen(
                            shlex.split(line[:-1]),
                            env=env,
                            cwd=cwd,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
                    continue
                args = shlex.split(line)
                stdin = None
                if args[:2] == ["cshare", "signup"]:
                    args.append("--password-stdin")
                    stdin = PASSWORD + "\n"
                out = _run(
                    args, env, cwd, stdin, retry=args[:3] == ["cshare", "machine", "approve"]
                )
                transcript.append(f"$ {line}\n{out}")
                found = JOB_ID.search(out)
                if args[:3] == ["cshare", "job", "submit"]:
                    assert found, out
                    job_id = found.group(1)
                    assert f"Job {job_id} is completed" in out, out
                up.record()
            # The job's output, downloaded by the last command, is the fitted line.
            model = json.loads((cwd / "model.json").read_text())
            assert model["a"] == pytest.approx(2.0, abs=0.1), model
            assert model["b"] == pytest.approx(1.0, abs=0.2), model
            assert model["epochs"] == 200
            logs = next(t for t in transcript if "job logs" in t)
            assert "step 200: loss" in logs, logs
            _scheduled_example(env, work, transcript)
            if docker is not None:
                _container_example(env, work, docker[1], transcript)
        except BaseException:
            print("\n".join(transcript))
            print((tmp_path / "agent.log").read_text(errors="replace"))
            print(up.out.text)
            raise
        finally:
            for process in background:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # by its PID
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(10)
    if docker_skipped:
        pytest.skip(
            f"README path and examples passed; the container example did not run: {docker_skipped}"
        )


def _scheduled_example(env: dict[str, str], work: Path, transcript: list[str]) -> None:
    """examples/scheduled: its prefect.yaml registers the deployment with its schedule;
    run it once by hand on the same machine and read its output."""
    cwd = work / "examples" / "scheduled"
    transcript.append(_run(["cshare", "deploy", "prefect.yaml"], env, cwd))
    schedules = json.loads(_run(["cshare", "schedule", "list", "--json"], env, cwd))
    items = schedules.get("items", schedules) if isinstance(schedules, dict) else schedules
    assert any("0 * * * *" in json.dumps(s) for s in items), schedules
    out = _run(["cshare", "job", "submit", "report", "--input", "points", "--wait"], env, cwd)
    assert "is completed" in out, out
    _run(["cshare", "dataset", "download", "points-report", "-o", "report.json"], env, cwd)
    report = json.loads((cwd / "report.json").read_text())
    assert report == {"dataset": "points", "rows": 40}


def _container_example(
    env: dict[str, str], work: Path, registry: PrivateRegistry, transcript: list[str]
) -> None:
    """examples/container/run.sh with the test registry's image (its login added first,
    as an admin would); the listing the command wrote to /outputs is the job's output."""
    cwd = work / "examples" / "container"
    login = ["--username", registry.username, "--password-stdin"]
    _run(
        ["cshare", "registry", "add", f"{registry.host}/team", *login], env, cwd, registry.password
    )
    transcript.append(_run(["sh", "run.sh"], {**env, "IMAGE": registry.image}, cwd))
    _run(["cshare", "dataset", "download", "points-listing", "-o", "listing"], env, cwd)
    listing = cwd / "listing"
    text = (listing / "listing.txt" if listing.is_dir() else listing).read_text()
    assert "/inputs/points" in text, text


def _run(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    stdin: str | None = None,
    *,
    retry: bool = False,
) -> str:
    """Run one CLI command; it must exit 0. `retry`: for up to 60 s (the background
    agent registers its machine a moment after it starts)."""
    deadline = time.monotonic() + (60 if retry else 0)
    while True:
        r = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            input=stdin.encode() if stdin else None,
            capture_output=True,
            timeout=400,
        )
        out = r.stdout.decode() + r.stderr.decode()
        if r.returncode == 0:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{out}")
        time.sleep(1)
