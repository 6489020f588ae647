"""Git sources end to end: a deployment pinned to the commit its ref named at deploy time.

Real processes throughout: a Prefect server, the API (`cshare server`, told that
127.0.0.1 is an allowed Git host), `cshare deploy --git` run from a checkout outside the
repository, an agent whose working directory and HOME hold no project code, a `git
daemon` serving a public repository and `git http-backend` behind basic auth serving a
private one (tests/git_servers.py). The test shows, in order:

- `cshare deploy flow.py:shipped --git URL --ref main` pins commit A and prints it; the
  job runs A's code on the agent (checked out by the machine itself);
- commit B is pushed: a new job still runs A; after a redeploy the next job runs B;
- `cshare job show` and `cshare lineage --job` show `git <repository>@<commit[:12]>`;
- a private repository over HTTP works with the project's token (`cshare project
  git-token set --token-stdin`), which never shows in any output.

Processes are stopped by PID (tests.prefect_server._stop, the git fixtures).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_agents import CSHARE, Stack
from tests.e2e.test_code_bundles import FLOW, _cli_env, running_stack, start_bare_agent
from tests.git_servers import GitDaemon, GitHttp, GitRepo
from tests.prefect_server import PREFECT_STALL_S

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AGENT = "git-box"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    api_env = {"CSHARE_GIT_HOST_ALLOWLIST": "127.0.0.1/32"}
    with running_stack(tmp_path_factory.mktemp("git-e2e"), api_env) as s:
        yield s


def cshare(stack: Stack, cwd: Path, *args: str, stdin: str | None = None) -> str:
    (stack.home / "member-home").mkdir(exist_ok=True)
    done = subprocess.run(
        [CSHARE, *args],
        cwd=cwd,
        env=_cli_env(stack, stack.home / "member-home"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"cshare {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def commit(repo: GitRepo, value: int) -> str:
    return repo.commit({"flow.py": FLOW, "helper.py": f"VALUE = {value}\n"})


def run(stack: Stack, deployment: str) -> tuple[str, str]:
    """(job id, what the job wrote) of a new job of `deployment`."""
    out_dir = stack.home / "out"
    out_dir.mkdir(exist_ok=True)
    job_id = stack.submit(deployment, parameters={"out_dir": str(out_dir)})
    job = stack.wait_final(job_id, timeout=120 + PREFECT_STALL_S)
    assert job["state"] == "completed", (job, stack.agent_log(AGENT))
    return job_id, (out_dir / f"{job_id}.txt").read_text().splitlines()[0]


def test_a_job_runs_the_pinned_commit(
    stack: Stack, git_daemon: GitDaemon, git_http: GitHttp, tmp_path: Path
) -> None:
    repo = git_daemon.repo("pipeline")
    first = commit(repo, 1)
    url = git_daemon.url(repo)
    # repo.work is a checkout (outside this repository): deploy loads the flow there.
    assert not repo.work.resolve().is_relative_to(REPO)
    git_args = ["deploy", "flow.py:shipped", "--name", "gitjob", "--git", url, "--ref", "main"]
    out = cshare(stack, repo.work, *git_args)
    assert f"commit {first[:12]} (pinned)" in out, out
    dep = stack.ok("GET", f"/orgs/{stack.slug}/deployments/gitjob", stack.member)
    assert dep["entrypoint"] == "flow.py:shipped"
    assert dep["code"]["commit"] == first

    start_bare_agent(stack, AGENT)
    job_a, result = run(stack, "gitjob")
    assert result == "VALUE=1 big_present=False in_code_dir=True"

    second = commit(repo, 2)
    _job, result = run(stack, "gitjob")  # nothing changes until the next deploy
    assert result == "VALUE=1 big_present=False in_code_dir=True"
    assert stack.job(_job)["code"]["commit"] == first

    out = cshare(stack, repo.work, *git_args)
    assert f"commit {second[:12]} (pinned)" in out, out
    job_b, result = run(stack, "gitjob")
    assert result == "VALUE=2 big_present=False in_code_dir=True"

    shown = cshare(stack, tmp_path, "job", "show", job_a)
    assert f"git {url}@{first[:12]}" in shown, shown
    lineage = cshare(stack, tmp_path, "lineage", "--job", job_b)
    assert f"git {url}@{second[:12]}" in lineage, lineage

    # A private repository over HTTP, with the project's token.
    private = git_http.repo("private")
    third = commit(private, 3)
    project = f"p{uuid.uuid4().hex[:6]}"
    cshare(stack, tmp_path, "project", "create", project)
    cshare(
        stack,
        tmp_path,
        "project",
        "git-token",
        "set",
        project,
        "--token-stdin",
        "--user",
        git_http.user,
        stdin=git_http.token + "\n",
    )
    out = cshare(
        stack,
        tmp_path,  # no checkout here: the entrypoint is taken as the repository's
        "deploy",
        "flow.py:shipped",
        "--name",
        "private",
        "--project",
        project,
        "--git",
        git_http.url(private),
        "--ref",
        "main",
    )
    assert f"commit {third[:12]}" in out and git_http.token not in out, out
    job_p, result = run(stack, "private")
    assert result == "VALUE=3 big_present=False in_code_dir=True"
    assert git_http.token not in stack.agent_log(AGENT)
    shown = cshare(stack, tmp_path, "job", "show", job_p)
    assert f"@{third[:12]}" in shown and git_http.token not in shown, shown
