"""Running a command job in a container, with the `docker` package.

The worker (agents/worker.py) hands a claimed command job here instead of starting a
Python process. What happens, as Prefect's docker worker would do it, plus our limits:

1. the registry login for the job's image comes from the API with the job's own token
   (`GET /orgs/{org}/jobs/{id}/registry-auth`: only the credential for that image); it
   goes to the engine in the pull request itself (`auth_config`, the X-Registry-Auth
   header), so nothing is written to disk on this machine, and is dropped after the pull;
2. the image is pulled and its digest (`sha256:...`) reported to the job's lineage;
3. the container runs the command with the job's limits: `mem_limit` = memory (swap
   the same, so no swap beyond it), `nano_cpus` from cpus, no network, inputs mounted
   read-only at `/inputs/<name>` (materialised by agents.materialize), `/outputs`
   bound to a folder of the job that becomes the output dataset's new version;
4. its output goes line by line to the run's logs as it is written;
5. it is stopped at the max runtime, or when the run is being cancelled, and always
   removed at the end.

The Docker calls block; they run in threads. Nothing here imports server code.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx

from datasets import wire

__all__ = [
    "ContainerFailed",
    "ContainerJob",
    "Hooks",
    "Outcome",
    "agent_identity",
    "engine",
    "execute",
    "fetch_registry_auth",
    "pull",
    "remove_leftovers",
    "report_image",
    "run_container",
    "upload_outputs",
]

log = logging.getLogger("cshare.agent.container")

API_PREFIX: Final = "/api/v1"
TAIL_LINES: Final = 20
MAX_LINE: Final = 10_000
STOP_GRACE_S: Final = 5
LABEL: Final = "io.compute-share.job-id"
# Which agent started a container (agent_identity): a restarted agent removes what a
# killed one left running, and nothing of another agent sharing the engine.
AGENT_LABEL: Final = "io.compute-share.agent"
HTTP_TIMEOUT: Final = httpx.Timeout(300.0, connect=10.0)
POLL_S: Final = 0.5
CANCEL_POLL_S: Final = 1.0


class ContainerFailed(RuntimeError):
    """The job cannot run (login, pull, start): the message names image and registry."""


@dataclass(frozen=True)
class ContainerJob:
    api_url: str
    org: str
    job_id: str
    job_token: str
    image: str
    command: list[str]
    memory_mb: int
    cpus: float | None = None
    output: str | None = None  # the dataset /outputs becomes a version of
    agent: str = ""  # agent_identity() of the worker running it


@dataclass
class Outcome:
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    cancelled: bool = False
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))


def _base(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix(API_PREFIX) + API_PREFIX


def _job_path(job: ContainerJob, tail: str) -> str:
    return f"/orgs/{quote(job.org, safe='')}/jobs/{quote(job.job_id, safe='')}/{tail}"


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail") or response.text[:300])
    except ValueError:
        return response.text[:300]


def fetch_registry_auth(job: ContainerJob) -> dict[str, Any]:
    """The login for the job's image (`{registry, anonymous, username, password}`), from
    the API with the job's token. Kept in memory only."""
    headers = {"Authorization": f"Bearer {job.job_token}", "User-Agent": "cshare-agent/0.1"}
    with httpx.Client(base_url=_base(job.api_url), timeout=30, headers=headers) as http:
        response = http.get(_job_path(job, "registry-auth"))
    if not response.is_success:
        raise ContainerFailed(
            f"Could not get the registry login for image {job.image}: HTTP "
            f"{response.status_code} {_detail(response)}"
        )
    data: dict[str, Any] = response.json()
    return data


def engine(timeout_s: float | None = 60) -> Any:
    """A client of the engine `DOCKER_HOST` names (else the default socket)."""
    import docker

    return docker.from_env(timeout=timeout_s)


def _split_ref(image: str) -> tuple[str, str]:
    """(repository, tag or digest) as `images.pull` wants them."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def pull(client: Any, image: str, auth: Mapping[str, Any]) -> str:
    """Pull `image` with the login in `auth` (none when anonymous); its digest."""
    import docker.errors

    repo, tag = _split_ref(image)
    auth_config = (
        None
        if auth.get("anonymous")
        else {"username": auth.get("username"), "password": auth.get("password")}
    )
    registry = auth.get("registry") or repo.split("/", 1)[0]
    login = "anonymously" if auth_config is None else f"as '{auth.get('username')}'"
    try:
        pulled = client.images.pull(repo, tag=tag, auth_config=auth_config)
    except docker.errors.NotFound as exc:
        raise ContainerFailed(
            f"Image {image} not found in registry {registry} (pulled {login}): "
            f"{exc.explanation or exc}"
        ) from None
    except docker.errors.APIError as exc:
        reason = str(exc.explanation or exc)
        if any(w in reason.lower() for w in ("unauthorized", "authentication", "denied")):
            raise ContainerFailed(
                f"Registry {registry} refused to pull {image} {login}: {reason}. An admin "
                "checks the organization's login for it: `cshare registry list` / "
                f"`cshare registry add {registry} --username U --password-stdin`."
            ) from None
        raise ContainerFailed(f"Could not pull {image} from {registry}: {reason}") from None
    finally:
        auth_config = None  # the password leaves this frame with nothing keeping it
    return image_digest(pulled.attrs, repo)


def image_digest(attrs: Mapping[str, Any], repo: str) -> str:
    """The registry digest of a pulled image (`RepoDigests`), else its id (`sha256:`)."""
    for entry in attrs.get("RepoDigests") or []:
        name, _, digest = str(entry).partition("@")
        if name == repo and digest:
            return digest
    for entry in attrs.get("RepoDigests") or []:
        _, _, digest = str(entry).partition("@")
        if digest:
            return digest
    return str(attrs.get("Id") or "")


def report_image(job: ContainerJob, digest: str) -> None:
    """Record the image digest on the job's lineage; logged, never raised."""
    headers = {"Authorization": f"Bearer {job.job_token}"}
    body = {"image": f"{job.image}@{digest}", "image_digest": digest}
    try:
        r = httpx.post(
            _base(job.api_url) + _job_path(job, "lineage"), json=body, headers=headers, timeout=30
        )
        if not r.is_success:
            log.warning("image report for job %s refused: %s %s", job.job_id, r.status_code, r.text)
    except httpx.HTTPError as exc:
        log.warning("image report for job %s failed: %s", job.job_id, exc)


def agent_identity(api_url: str, work_pool: str, worker_name: str) -> str:
    """A short, stable name for one agent (control plane, pool, worker name)."""
    return hashlib.sha256(f"{api_url}|{work_pool}|{worker_name}".encode()).hexdigest()[:24]


def remove_leftovers(agent: str) -> list[str]:
    """Remove the containers a previous run of this agent left (killed with -9, say);
    their names. Nothing (and no error) when no engine answers."""
    try:
        client = engine(5)
    except Exception:
        return []
    removed: list[str] = []
    try:
        for leftover in client.containers.list(
            all=True, filters={"label": f"{AGENT_LABEL}={agent}"}
        ):
            with contextlib.suppress(Exception):
                leftover.remove(force=True)
                removed.append(str(leftover.name))
    except Exception as exc:  # the engine went away meanwhile: the next start tries again
        log.warning("could not look for leftover containers: %s", exc)
    finally:
        client.close()
    return removed


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace").rstrip("\r")


def _pump_logs(container: Any, emit: Callable[[str], None], outcome: Outcome) -> None:
    # A client without a read timeout: a job may be silent for longer than any timeout.
    stream_client = engine(None)
    try:
        chunks = stream_client.api.logs(container.id, stream=True, follow=True)
        for line in _lines(chunks):
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + " [line truncated]"
            outcome.tail.append(line)
            emit(line)
    except Exception as exc:  # the container went away: its logs end here
        log.debug("log stream of %s ended: %s", container.id, exc)
    finally:
        stream_client.close()


def run_container(
    client: Any,
    job: ContainerJob,
    *,
    inputs_dir: Path | None,
    outputs_dir: Path,
    emit: Callable[[str], None],
    started: Callable[[str], None],
    stop_requested: threading.Event,
    max_runtime_s: int,
) -> Outcome:
    """Run the job's container to its end, streaming its lines to `emit`; blocking.

    Stopped (and then reported as such) when `stop_requested` is set (the run is being
    cancelled) or at `max_runtime_s`. The container is always removed.
    """
    import docker.errors

    volumes = {str(outputs_dir): {"bind": "/outputs", "mode": "rw"}}
    if inputs_dir is not None and inputs_dir.exists():
        volumes[str(inputs_dir)] = {"bind": "/inputs", "mode": "ro"}
    kwargs: dict[str, Any] = {
        "command": job.command,
        "name": f"cshare-job-{job.job_id}",
        "detach": True,
        "labels": {LABEL: job.job_id, AGENT_LABEL: job.agent},
        "mem_limit": f"{job.memory_mb}m",
        "memswap_limit": f"{job.memory_mb}m",
        "network_mode": "none",
        "volumes": volumes,
        "working_dir": "/",
        "environment": {"CSHARE_JOB_ID": job.job_id},
    }
    if job.cpus:
        kwargs["nano_cpus"] = int(job.cpus * 1e9)
    outcome = Outcome()
    try:
        container = client.containers.run(job.image, **kwargs)
    except docker.errors.APIError as exc:
        raise ContainerFailed(
            f"Could not start {job.image} with command {job.command!r}: {exc.explanation or exc}"
        ) from None
    try:
        started(container.id)
        # In this thread's context: Prefect's settings (the API the lines go to) live in
        # context variables, which a new thread does not inherit by itself.
        context = contextvars.copy_context()
        pump = threading.Thread(
            target=context.run,
            args=(_pump_logs, container, emit, outcome),
            daemon=True,
            name="cshare-logs",
        )
        pump.start()
        deadline_hit = not _wait(container, stop_requested, max_runtime_s)
        if deadline_hit or stop_requested.is_set():
            outcome.timed_out = deadline_hit
            outcome.cancelled = not deadline_hit
            with contextlib.suppress(docker.errors.APIError):
                container.stop(timeout=STOP_GRACE_S)
        pump.join(timeout=10)
        container.reload()
        state = container.attrs.get("State") or {}
        outcome.exit_code = int(state.get("ExitCode", -1))
        outcome.oom_killed = bool(state.get("OOMKilled"))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    return outcome


def _wait(container: Any, stop: threading.Event, max_runtime_s: int) -> bool:
    """Wait for the container's end; False when `max_runtime_s` passed first. Returns
    early (True) when `stop` is set."""
    deadline = time.monotonic() + max_runtime_s
    while not stop.is_set():
        container.reload()
        if (container.attrs.get("State") or {}).get("Status") in ("exited", "dead"):
            return True
        if time.monotonic() >= deadline:
            return False
        stop.wait(POLL_S)
    return True


def upload_outputs(job: ContainerJob, outputs_dir: Path) -> dict[str, Any] | None:
    """`/outputs` as a new version of the job's output dataset (created if missing), as
    `flows.runtime.save_output` does it; None when there is nothing to upload."""
    if job.output is None:
        return None
    files = wire.walk_directory(outputs_dir)
    if not files:
        return None
    headers = {"Authorization": f"Bearer {job.job_token}", "User-Agent": "cshare-agent/0.1"}
    org = quote(job.org, safe="")
    name = quote(job.output, safe="")
    with httpx.Client(base_url=_base(job.api_url), timeout=HTTP_TIMEOUT, headers=headers) as http:
        created = http.post(f"/orgs/{org}/datasets", json={"name": job.output})
        if not (created.is_success or created.status_code == 409):
            raise ContainerFailed(
                f"Could not create the output dataset {job.output}: HTTP "
                f"{created.status_code} {_detail(created)}"
            )
        sha = wire.manifest_sha256(wire.directory_manifest(files))
        length = wire.tar_length([(f.path, f.size) for f in files])
        response = http.post(
            f"/orgs/{org}/datasets/{name}/versions",
            content=wire.iter_tar_from_files(files),
            headers={
                "Content-Type": wire.TAR_MEDIA_TYPE,
                "Content-Length": str(length),
                wire.SHA256_HEADER: sha,
            },
            params={"filename": "outputs", "job": job.job_id},
        )
    if not response.is_success:
        raise ContainerFailed(
            f"Could not upload /outputs as {job.output}: HTTP {response.status_code} "
            f"{_detail(response)}"
        )
    version: dict[str, Any] = response.json()
    return version


# ------------------------------------------------------------------ the whole job


@dataclass(frozen=True)
class Hooks:
    """What the worker lends a container run (agents/worker.py)."""

    prefect: Any  # the worker's Prefect client (states, reads)
    logger: Any  # the run's logger: lines go to the run's Prefect logs
    # The job's inputs materialised under the job dir (agents.materialize); {} if none.
    prepare_inputs: Callable[[], Awaitable[dict[str, str]]]
    # Tell the ledger a limit stopped the run ("memory" | "runtime", message).
    report_limit: Callable[[str, str], Awaitable[bool]]


async def _set_state(prefect: Any, flow_run_id: uuid.UUID, state: Any, *, force: bool) -> Any:
    with contextlib.suppress(Exception):  # the control plane's sweep settles a lost end
        return await prefect.set_flow_run_state(flow_run_id, state, force=force)
    return None


async def _current_type(prefect: Any, flow_run_id: uuid.UUID) -> str | None:
    with contextlib.suppress(Exception):
        run = await prefect.read_flow_run(flow_run_id)
        return str(run.state.type.value) if run.state is not None else None
    return None


async def _being_cancelled(prefect: Any, flow_run_id: uuid.UUID) -> bool:
    from prefect.client.schemas.objects import StateType

    with contextlib.suppress(Exception):
        run = await prefect.read_flow_run(flow_run_id)
        return run.state is not None and run.state.type is StateType.CANCELLING
    return False


async def _ended(prefect: Any, flow_run_id: uuid.UUID) -> bool:
    with contextlib.suppress(Exception):
        run = await prefect.read_flow_run(flow_run_id)
        return run.state is not None and bool(run.state.is_final())
    return False


async def _watch_cancel(prefect: Any, flow_run_id: uuid.UUID, stop: threading.Event) -> None:
    from prefect.client.schemas.objects import StateType

    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                run = await prefect.read_flow_run(flow_run_id)
                # Cancelling (a member cancels), or ended from outside (the agent stops:
                # its worker's abort_all ends the run Crashed): the container stops.
                if run.state is not None and (
                    run.state.type is StateType.CANCELLING or run.state.is_final()
                ):
                    return
            await anyio.sleep(CANCEL_POLL_S)
    finally:
        # Also when the agent stops (this task is cancelled): the container stops too.
        stop.set()


def _root(exc: BaseException) -> BaseException:
    """The one error inside (nested) task-group groups, which say nothing themselves."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _tail_text(outcome: Outcome) -> str:
    lines = list(outcome.tail)[-TAIL_LINES:]
    return ("\nLast lines:\n" + "\n".join(lines)) if lines else ""


async def execute(
    flow_run_id: uuid.UUID,
    job: ContainerJob,
    *,
    job_dir: Path,
    max_runtime_s: int,
    hooks: Hooks,
) -> int:
    """Run a claimed command job to its end and set its Prefect states (Running, then
    Completed / Failed / Cancelled) like Prefect's docker worker; the ledger follows
    Prefect as for flows. Returns 0 (the states carry the outcome)."""
    from prefect.states import Cancelled, Completed, Failed, Running

    from agents import limits

    logger = hooks.logger
    running = await _set_state(hooks.prefect, flow_run_id, Running(), force=False)
    status = getattr(running, "status", None)
    # A retried request whose first attempt went through is rejected as a duplicate
    # transition: what counts is whether the run is Running now.
    if (
        status is not None
        and str(getattr(status, "value", status)).upper() != "ACCEPT"
        and await _current_type(hooks.prefect, flow_run_id) != "RUNNING"
    ):
        logger.warning("Prefect did not let the run start (%s); not starting it.", running)
        if await _being_cancelled(hooks.prefect, flow_run_id):
            await _set_state(
                hooks.prefect,
                flow_run_id,
                Cancelled(message="Cancelled before the container started."),
                force=True,
            )
        return 0
    stop = threading.Event()
    outcome: Outcome | None = None
    outputs_dir = job_dir / "outputs"
    outputs_dir.mkdir(mode=0o777, parents=True, exist_ok=True)
    outputs_dir.chmod(0o777)  # the image's user may not be root
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch_cancel, hooks.prefect, flow_run_id, stop)
            try:
                await hooks.prepare_inputs()
                auth = await anyio.to_thread.run_sync(fetch_registry_auth, job)
                client = engine()
                try:
                    logger.info("Pulling %s ...", job.image)
                    digest = await anyio.to_thread.run_sync(pull, client, job.image, auth)
                    auth = {}  # the login is not needed any more
                    logger.info("Pulled %s (%s).", job.image, digest)
                    await anyio.to_thread.run_sync(report_image, job, digest)
                    inputs_dir = job_dir / "inputs"
                    if stop.is_set():  # cancelled during the pull: start nothing
                        outcome = Outcome(cancelled=True)
                    else:
                        outcome = await anyio.to_thread.run_sync(
                            partial(
                                run_container,
                                client,
                                job,
                                inputs_dir=inputs_dir if inputs_dir.exists() else None,
                                outputs_dir=outputs_dir,
                                emit=logger.info,
                                started=lambda c: logger.info("Container %s started.", c[:12]),
                                stop_requested=stop,
                                max_runtime_s=max_runtime_s,
                            ),
                            abandon_on_cancel=False,
                        )
                finally:
                    client.close()
            finally:
                stop.set()
                group.cancel_scope.cancel()
    except Exception as raised:  # ContainerFailed names image and registry; others as is
        exc = _root(raised)
        message = str(exc) if isinstance(exc, ContainerFailed) else f"{type(exc).__name__}: {exc}"
        logger.error("%s", message)
        await _set_state(hooks.prefect, flow_run_id, Failed(message=message), force=True)
        return 0
    assert outcome is not None
    if outcome.cancelled:
        logger.info("Stopped: the container was stopped and removed.")
        if await _ended(hooks.prefect, flow_run_id):
            return 0  # ended from outside (the agent stops): that end stays
        await _set_state(
            hooks.prefect,
            flow_run_id,
            Cancelled(message="Cancelled: the container was stopped."),
            force=True,
        )
        return 0
    memory = limits.MemoryLimit(job.memory_mb, "docker mem_limit")
    if outcome.timed_out:
        message = limits.runtime_failure_message(max_runtime_s)
        await hooks.report_limit("runtime", message)
    elif outcome.oom_killed:
        message = limits.memory_failure_message(
            memory, "The kernel stopped the container (OOMKilled)."
        )
        await hooks.report_limit("memory", message)
    elif outcome.exit_code != 0:
        message = f"The command exited with code {outcome.exit_code}.{_tail_text(outcome)}"
    else:
        try:
            version = await anyio.to_thread.run_sync(upload_outputs, job, outputs_dir)
        except ContainerFailed as exc:
            message = str(exc)
        else:
            if version is not None:
                logger.info(
                    "Saved /outputs as %s@%s (sha256 %s).",
                    job.output,
                    version.get("version"),
                    version.get("sha256"),
                )
            elif job.output is None and any(outputs_dir.iterdir()):
                logger.warning("/outputs has files but the job declared no --output: not kept.")
            await _set_state(
                hooks.prefect,
                flow_run_id,
                Completed(message="The command exited with code 0."),
                force=True,
            )
            return 0
    logger.error("%s", message)
    await _set_state(hooks.prefect, flow_run_id, Failed(message=message), force=True)
    return 0
