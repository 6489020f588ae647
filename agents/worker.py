"""Our Prefect worker type, `cshare`: Prefect's process worker behind the claim gate.

`prefect worker start --type cshare --pool acme-cpu` works (the type is announced
through the `prefect.collections` entry point, see agents.prefect_plugin) given
`CSHARE_API_URL` and `CSHARE_MACHINE_TOKEN`; `cshare agent start` runs it in-process
with both. What it adds to the process worker:

- **The claim gate.** Before a run leaves `Scheduled` (before Prefect's `Pending`), the
  worker claims it from the control plane. Only a `run` answer proceeds, with the
  limits granted; `hold` and `reject` were already written into the run's Prefect state
  by the control plane, and the worker also logs the reason to the run's own logs;
  `skip` leaves it for the right machine. An error asking means "not now" (the run stays
  `Scheduled` and is asked about again): never a silent drop, never a run without a yes.
- **Limits.** The max runtime is a watchdog: the run's process group gets SIGTERM at
  the limit, SIGKILL a few seconds later, and the run ends `Failed` with "exceeded max
  runtime N s". Memory: cgroup v2 or RLIMIT_DATA (agents.limits); a run that hits it
  ends `Failed` naming the limit. Slots: Prefect's own worker limit (`--limit`) counts
  runs from claim to exit, so more than `slots` never run at once.
- **Fast dispatch.** A released run is picked up at once: the worker subscribes to
  Prefect's event stream for its pool and polls as soon as a run there becomes
  `Scheduled`, with a short poll (`CSHARE_POLL_INTERVAL_S`, 1 s) as the fallback. The
  run's process was started ahead of time with Prefect already imported
  (agents.engine_host), which removes ~2.5 s of imports from the path.

One `FlowRunExecutorContext` (Prefect's process supervision: cancellation observer,
control channel, crash reporting) serves all runs of the worker instead of one per run
as in the stock process worker: its set-up (a websocket subscription among other
things) is then off the dispatch path. This uses Prefect 3.8.8 runner internals
(`prefect.runner._flow_run_executor`, `_process_manager`), pinned with Prefect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.abc
from prefect.client.schemas.objects import State, StateType
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, get_current_settings
from prefect.settings.context import temporary_settings
from prefect.states import Cancelled, Crashed, Failed
from prefect.utilities.services import (
    critical_service_loop,
    start_client_metrics_server,
    stop_client_metrics_server,
)
from prefect.workers.process import (
    ProcessJobConfiguration,
    ProcessWorker,
    ProcessWorkerResult,
)
from pydantic import PrivateAttr

from agents import code_cache, container, job_env, limits, materialize, pyenv, reaper
from agents import config as agent_config
from agents.client import AgentClient, ApiProblem, ClaimAnswer, MachineGone
from agents.job_groups import JobGroups

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.runner._control_channel import ControlChannel

__all__ = ["ControlPlane", "CshareWorker", "WarmPool"]

log = logging.getLogger("cshare.agent.worker")

WORKER_TYPE: Final = "cshare"
DEFAULT_POLL_INTERVAL_S: Final = 1.0
KILL_GRACE_S: Final = 3.0
# How long Prefect's own cancellation of a `Cancelling` run may take when the agent stops.
CANCEL_WAIT_S: Final = 10.0
# A run the control plane said `skip` to (or could not be asked about) is not asked
# about again before this, so a run meant for another machine costs one claim per
# interval, not one per poll.
SKIP_BACKOFF_S: Final = 5.0
ERROR_BACKOFF_S: Final = 2.0
EVENT_RETRY_S: Final = 5.0
SPAWN_RETRY_S: Final = 10.0


@dataclass(frozen=True)
class JobCode:
    """A job's code, ready: the variables naming it, and the interpreter its
    requirements need (None: the agent's own)."""

    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None


@dataclass(frozen=True)
class ControlPlane:
    """Where to claim runs, and with which machine token."""

    api_url: str
    machine_token: str

    @classmethod
    def from_env(cls) -> ControlPlane:
        url = os.environ.get("CSHARE_API_URL")
        token = os.environ.get("CSHARE_MACHINE_TOKEN")
        if not url or not token:
            raise ValueError(
                "The cshare worker claims every run from the Compute Share API before "
                "running it: set CSHARE_API_URL and CSHARE_MACHINE_TOKEN (the token "
                "`cshare agent start` stored), or start it with `cshare agent start`."
            )
        return cls(url, token)


# ------------------------------------------------------------------ warm processes


class WarmPool:
    """Flow-run processes started ahead of time (see agents.engine_host).

    `size` processes are kept ready; `take()` hands one over (or starts one when none is
    ready, which is no slower than a cold start). 0 disables pre-starting.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._ready: list[anyio.abc.Process] = []
        self._wanted = anyio.Event()
        self._closed = False
        self._home: tempfile.TemporaryDirectory[str] | None = None

    @property
    def home(self) -> Path | None:
        """The pool's own home (HOME of its processes; agents.reaper leaves usage there)."""
        return Path(self._home.name) if self._home is not None else None

    def _startup_env(self) -> dict[str, str]:
        """What every job's environment has in common (agents.job_env), with an empty
        home of the pool's own: no job's credential, nothing else of the agent's."""
        if self._home is None:
            self._home = tempfile.TemporaryDirectory(prefix="cshare-warm-")
        home = Path(self._home.name)
        env = job_env.machine_env(os.environ, os.environ.get("CSHARE_JOB_ENV_PASSTHROUGH", ""))
        env.update(HOME=str(home), TMPDIR=str(home))
        env.update(
            job_env.engine_env(
                _prefect_settings(),
                dirs=job_env.JobDirs(home, home, home / "prefect"),
                share_auth=job_env.share_auth_in_legacy_mode(),
            )
        )
        return env

    async def spawn(self) -> anyio.abc.Process:
        env = self._startup_env()
        env["CSHARE_HOST_PARENT"] = str(os.getpid())
        return await anyio.open_process(
            # The job's reaper (agents.reaper), which starts the engine host.
            [sys.executable, "-m", "agents.reaper"],
            stdin=subprocess.PIPE,
            stdout=None,  # inherit: the run's output goes where the worker's goes
            stderr=None,
            env=env,
            # Its own process group: stopping the run stops everything it started.
            start_new_session=True,
        )

    async def take(self) -> anyio.abc.Process:
        while self._ready:
            process = self._ready.pop(0)
            if process.returncode is None:
                self._wanted.set()
                return process
        self._wanted.set()
        return await self.spawn()

    async def keep_ready(self) -> None:
        """Background task: top the pool up whenever a process was taken."""
        while not self._closed:
            self._ready = [p for p in self._ready if p.returncode is None]
            try:
                while len(self._ready) < self.size and not self._closed:
                    self._ready.append(await self.spawn())
            except OSError as exc:  # out of processes or memory: runs start cold meanwhile
                log.warning("could not start a warm flow-run process: %s", exc)
                await anyio.sleep(SPAWN_RETRY_S)
                continue
            self._wanted = anyio.Event()
            await self._wanted.wait()

    async def close(self) -> None:
        self._closed = True
        self._wanted.set()
        ready, self._ready = self._ready, []
        for process in ready:
            with contextlib.suppress(Exception):
                if process.stdin is not None:
                    await process.stdin.aclose()  # EOF: the host exits by itself
        for process in ready:
            with anyio.move_on_after(2):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        if self._home is not None:
            self._home.cleanup()
            self._home = None


def _prefect_settings() -> dict[str, str]:
    # The agent's Prefect settings as environment variables (its context: the Prefect
    # URL and credential the agent was given); agents.job_env picks what a job gets.
    settings = get_current_settings().to_environment_variables(exclude_unset=True)
    return {k: v for k, v in settings.items() if v is not None}


def _job_dirs(
    working_dir: Path | None,
) -> tuple[tempfile.TemporaryDirectory[str], job_env.JobDirs]:
    """A job's own directories (agents.job_env), private and removed with the job; the
    working directory is the deployment's when it sets one (relative: to the agent's)."""
    private = tempfile.TemporaryDirectory(prefix="cshare-job-", ignore_cleanup_errors=True)
    root = Path(private.name)
    dirs = job_env.JobDirs(
        Path(working_dir or root / "work").absolute(), root / "tmp", root / "prefect"
    )
    for path in (dirs.work, dirs.tmp, dirs.prefect_home):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private, dirs


class CshareJobConfiguration(ProcessJobConfiguration):
    """The process worker's job configuration, remembering the deployment's own `env`
    job variable: Prefect merges the worker's whole environment and settings into
    `env`, and a job gets only its own variables (agents.job_env)."""

    _job_variables_env: dict[str, str | None] = PrivateAttr(default_factory=dict)

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: uuid.UUID | None = None,
    ) -> None:
        self._job_variables_env = dict(self.env) if isinstance(self.env, dict) else {}
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )


# ----------------------------------------------------------------- run starter


class _GatedStarter:
    """Prefect's `ProcessStarter` contract, on a warm process, under the run's limits."""

    def __init__(
        self,
        *,
        pool: WarmPool,
        job_variables: dict[str, str | None],
        plumbing: dict[str, str],
        job: dict[str, str],
        dirs: job_env.JobDirs,
        groups: JobGroups | None,
        command: str | None,
        stream_output: bool,
        memory: limits.MemoryLimit | None,
        max_runtime_s: int,
        control_channel: ControlChannel | None,
        on_timeout: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._on_timeout = on_timeout
        self._job_variables = job_variables
        self._plumbing = plumbing
        self.job = job  # the job's CSHARE_* variables (the inputs add theirs)
        self._dirs = dirs
        self._groups = groups
        self._command = command
        self._stream_output = stream_output
        self._memory = memory
        self._max_runtime_s = max_runtime_s
        self._control_channel = control_channel
        self.timed_out = False
        # What the job used (wall time, CPU seconds, peak memory), once its process ended.
        self.resources_used: dict[str, float] | None = None

    def use_python(self, python: str) -> None:
        """Run the engine on the job's own environment's interpreter (agents.pyenv): a
        cold start, exec'd by the warm process after it applied the run's limits. A
        deployment's own command wins."""
        if self._command is None:
            self._command = shlex.join([python, "-m", "prefect.engine"])

    def _run_env(self, flow_run: FlowRun, control_env: dict[str, str]) -> dict[str, str]:
        """An allowlist (agents.job_env), never the agent's environment."""
        job = dict(self.job, CSHARE_MAX_RUNTIME_S=str(self._max_runtime_s))
        if self._memory is not None:
            job["CSHARE_MEMORY_MB"] = str(self._memory.memory_mb)
        return job_env.job_env(
            machine=job_env.machine_env(
                os.environ, os.environ.get("CSHARE_JOB_ENV_PASSTHROUGH", "")
            ),
            job_variables=self._job_variables,
            engine=job_env.engine_env(
                _prefect_settings(),
                dirs=self._dirs,
                job_token=job.get("CSHARE_JOB_TOKEN"),
                share_auth=job_env.share_auth_in_legacy_mode(),
            ),
            run={
                **self._plumbing,
                "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
                **control_env,
            },
            job=job,
            dirs=self._dirs,
        )

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        control_env: dict[str, str] = {}
        registered = False
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
                control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
            except RuntimeError:
                pass  # no control channel: Prefect falls back to kill-only cancellation
        handed_off = False
        try:
            process = await self._pool.take()
            spec = {
                "env": self._run_env(flow_run, control_env),
                "cwd": str(self._dirs.work),
                "command": self._command,
                "stream_output": self._stream_output,
                "memory": {"memory_mb": self._memory.memory_mb, "cgroup": self._memory.cgroup}
                if self._memory is not None
                else None,
            }
            assert process.stdin is not None
            await process.stdin.send((json.dumps(spec) + "\n").encode())
            await process.stdin.aclose()
            handle = ProcessHandle(
                process, termination_scope=create_isolated_termination_scope(process.pid)
            )
            handed_off = True
            task_status.started(handle)
        except BaseException:
            if registered and not handed_off and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise
        record = flow_run.id.hex
        if self._groups is not None:
            # Killed at the next start if the agent dies without its reaper doing it.
            cgroup = self._memory.cgroup if self._memory is not None else None
            with contextlib.suppress(OSError):
                self._groups.record(record, process.pid, cgroup)
        started = time.monotonic()
        try:
            with anyio.move_on_after(self._max_runtime_s) as watchdog:
                await process.wait()
            if watchdog.cancelled_caught:
                self.timed_out = True
                if self._on_timeout is not None:
                    # The ledger hears of the kill before the engine can report its own
                    # end (Crashed on SIGTERM): the job's final state is the limit's.
                    with contextlib.suppress(Exception):
                        await self._on_timeout()
                await self._stop(process)
        finally:
            if process.returncode is None:  # cancelled while it runs: the job ends here
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            self.resources_used = self._usage(process.pid, time.monotonic() - started)
            if self._memory is not None and self._memory.cgroup:
                limits.CgroupV2.kill(self._memory.cgroup)  # what left the process group
            if self._groups is not None:
                with contextlib.suppress(OSError):
                    self._groups.forget(record)

    def _usage(self, reaper_pid: int, wall_s: float) -> dict[str, float]:
        """Wall time here; CPU seconds and peak memory as the job's reaper measured them
        (agents.reaper), when it could."""
        used: dict[str, float] = {"wall_s": round(wall_s, 3)}
        home = self._pool.home
        path = reaper.usage_path(reaper_pid, str(home)) if home is not None else None
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                measured = json.loads(path.read_text())
                path.unlink()
                used.update({k: float(measured[k]) for k in ("cpu_s", "max_rss_mb")})
        return used

    @staticmethod
    async def _stop(process: anyio.abc.Process) -> None:
        for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 30.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with anyio.move_on_after(grace):
                await process.wait()
            if process.returncode is not None:
                return


# ------------------------------------------------------------------------ worker


class CshareWorker(ProcessWorker):
    # The job configuration and its variables are the process worker's.
    type = WORKER_TYPE
    job_configuration = CshareJobConfiguration
    _description = (
        "Compute Share's worker: Prefect's process worker that claims every run from the "
        "Compute Share control plane first and enforces the job's runtime and memory limits."
    )
    _display_name = "Compute Share"
    _documentation_url = "https://github.com/compute-share/compute-share"

    def __init__(
        self,
        work_pool_name: str,
        work_queues: list[str] | None = None,
        name: str | None = None,
        prefetch_seconds: float | None = None,
        create_pool_if_not_found: bool = True,
        limit: int | None = None,
        heartbeat_interval_seconds: int | None = None,
        *,
        base_job_template: dict[str, Any] | None = None,
        control: ControlPlane | None = None,
        poll_interval_s: float | None = None,
        warm_processes: int | None = None,
        flows_dir: str | None = None,
        on_machine_gone: Callable[[ApiProblem], None] | None = None,
    ) -> None:
        super().__init__(
            work_pool_name,
            work_queues,
            name,
            prefetch_seconds,
            create_pool_if_not_found,
            limit,
            heartbeat_interval_seconds,
            base_job_template=base_job_template,
        )
        self._control = control or ControlPlane.from_env()
        self._poll_interval_s = poll_interval_s or float(
            os.environ.get("CSHARE_POLL_INTERVAL_S", DEFAULT_POLL_INTERVAL_S)
        )
        warm = warm_processes
        if warm is None:
            # One per slot, up to two: a burst beyond that starts cold (each warm process
            # holds ~90 MB while it waits).
            warm = int(os.environ.get("CSHARE_WARM_PROCESSES", min(limit or 1, 2)))
        self._warm = WarmPool(min(warm, limit) if limit else warm)
        self._flows_dir = flows_dir or os.environ.get("CSHARE_FLOWS_DIR")
        # The machine's dataset cache bound (agents.materialize.InputCache).
        cache_mb = float(os.environ.get("CSHARE_INPUT_CACHE_MAX_MB", "20480"))
        self._input_cache_max_bytes = int(cache_mb * 2**20)
        # The machine's code bundle cache bound (agents.code_cache.CodeCache).
        self._code_cache_max_bytes = code_cache.max_bytes_from_env()
        # And of the bundles' Python environments (agents.pyenv).
        self._python_env_max_bytes = pyenv.max_bytes_from_env()
        self._on_machine_gone = on_machine_gone
        self._grants: dict[uuid.UUID, ClaimAnswer] = {}
        self._active: set[uuid.UUID] = set()  # claimed (or being claimed) until it ends
        self._running: set[uuid.UUID] = set()
        self._not_before: dict[uuid.UUID, float] = {}
        self._cgroups: limits.CgroupV2 | None = None
        self._groups: JobGroups | None = None
        self._api: AgentClient | None = None
        self._executor_ctx: FlowRunExecutorContext | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._poll_lock = anyio.Lock()
        self._closing = False  # abort_all or stop was called: no new run is claimed
        self._stopping = False
        self._loops: anyio.CancelScope | None = None

    # -- what the agent reads -----------------------------------------------------

    @property
    def _agent_identity(self) -> str:
        return container.agent_identity(self._control.api_url, self._work_pool_name, self.name)

    def active_flow_runs(self) -> list[uuid.UUID]:
        """Runs this worker has claimed and not finished (for heartbeats)."""
        return sorted(self._active)

    # -- lifecycle ----------------------------------------------------------------

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[..., None] = print,
    ) -> None:
        """Prefect's `BaseWorker.start` (3.8.8), with `stop()`: the service loops run in
        a task group that `stop()` cancels from outside, so the worker then leaves its
        context normally and its teardown (runs' task group, clients) is not cancelled
        half-way. `run_once` and the health check are Prefect's own."""
        # Prefect reads its poll interval from settings inside start().
        with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: self._poll_interval_s}):
            if run_once or with_healthcheck:
                await super().start(
                    run_once=run_once, with_healthcheck=with_healthcheck, printer=printer
                )
                return
            try:
                async with self as worker:
                    async with anyio.create_task_group() as loops:
                        self._loops = loops.cancel_scope
                        if self._stopping:
                            loops.cancel_scope.cancel()
                        services: list[tuple[Callable[[], Coroutine[Any, Any, Any]], float]] = [
                            (self.get_and_submit_flow_runs, PREFECT_WORKER_QUERY_SECONDS.value()),
                            (self._sync_and_initialize, self.heartbeat_interval_seconds),
                        ]
                        for workload, interval in services:
                            loops.start_soon(
                                partial(
                                    critical_service_loop,
                                    workload=workload,
                                    interval=interval,
                                    jitter_range=0.3,
                                    backoff=4,  # up to ~1 minute interval during backoff
                                )
                            )
                        self._started_event = await self._emit_worker_started_event()
                        start_client_metrics_server()
                        printer(f"Worker {worker.name!r} started!")
                    self._loops = None
            finally:
                stop_client_metrics_server()

    def stop(self) -> None:
        """End `start()`: no new poll; the runs in flight are waited for (end them
        first with `abort_all`)."""
        self._stopping = True
        self._closing = True
        if self._loops is not None:
            self._loops.cancel()

    # Contexts are entered and left strictly in LIFO order (anyio requires it of task
    # groups): the executor context (its own task group), Prefect's worker (the runs'
    # task group), our background tasks; left in reverse, so the runs end before the
    # process supervision they use goes.

    async def __aenter__(self) -> CshareWorker:
        self._groups = JobGroups.for_worker(
            agent_config.state_dir(), self._control.api_url, self._work_pool_name, self.name
        )
        # Before any work: what a killed agent of this identity left running dies.
        try:
            killed = self._groups.kill_leftovers()
        except OSError as exc:
            log.warning("could not check for leftover jobs in %s: %s", self._groups.path, exc)
        else:
            if killed:
                log.warning(
                    "Killed the processes of %d job(s) a previous agent left running: %s",
                    len(killed),
                    ", ".join(killed),
                )
        gone = await anyio.to_thread.run_sync(container.remove_leftovers, self._agent_identity)
        if gone:
            log.warning("Removed %d container(s) a previous agent left: %s", len(gone), gone)
        self._api = AgentClient(self._control.api_url, self._control.machine_token)
        if os.environ.get("CSHARE_MEMORY_METHOD", "auto") != "rlimit":
            cgroups = limits.CgroupV2()
            self._cgroups = cgroups if cgroups.setup() else None
        executor_ctx = FlowRunExecutorContext()
        await executor_ctx.__aenter__()
        self._executor_ctx = executor_ctx
        try:
            await super().__aenter__()
        except BaseException:
            await self._close_own()
            raise
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        self._background.start_soon(self._warm.keep_ready)
        self._background.start_soon(self._wake_on_events)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        # Every step is attempted even if one fails. The steps are not shielded from a
        # cancellation as a whole: a task group entered outside a shielding scope cannot
        # be left inside it (anyio's scopes nest); `stop()` is how not to cancel this.
        try:
            if self._background is not None:
                self._background.cancel_scope.cancel()
                await self._background.__aexit__(None, None, None)
                self._background = None
        finally:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await self._warm.close()
                await super().__aexit__(*exc_info)  # waits for the runs in flight
            finally:
                await self._close_own()

    async def _close_own(self) -> None:
        executor_ctx, self._executor_ctx = self._executor_ctx, None
        try:
            if executor_ctx is not None:
                await executor_ctx.__aexit__(None, None, None)
        finally:
            if self._api is not None:
                await self._api.aclose()

    # -- fast dispatch ------------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        # Polls come from the interval loop and from events; one at a time.
        async with self._poll_lock:
            return await super().get_and_submit_flow_runs()

    async def _wake_on_events(self) -> None:
        """Poll as soon as a run in our pool becomes `Scheduled` (released or created)."""
        while True:
            pool = self._work_pool
            if pool is None:
                await anyio.sleep(0.2)
                continue
            event_filter = EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.Scheduled"]),
                related=EventRelatedFilter(
                    resources_in_roles=[(f"prefect.work-pool.{pool.id}", "work-pool")]
                ),
            )
            try:
                async with get_events_subscriber(filter=event_filter) as events:
                    async for _event in events:
                        await self.get_and_submit_flow_runs()
            except Exception as exc:  # the interval poll carries on meanwhile
                self._logger.debug("event subscription failed (%s); retrying", exc)
            await anyio.sleep(EVENT_RETRY_S)

    # -- the claim gate -------------------------------------------------------------

    def _drop(self, flow_run_id: uuid.UUID) -> None:
        """Give up a run before it started: free its slot, forget it."""
        self._release_limit_slot(flow_run_id)
        self._submitting_flow_run_ids.discard(flow_run_id)
        if self._cancelling_observer is not None:
            self._cancelling_observer.remove_in_flight_flow_run_id(flow_run_id)
        self._active.discard(flow_run_id)
        self._grants.pop(flow_run_id, None)

    async def _submit_run(self, flow_run: FlowRun) -> None:
        if self._closing or time.monotonic() < self._not_before.get(flow_run.id, 0.0):
            self._drop(flow_run.id)
            return
        self._active.add(flow_run.id)
        answer = await self._claim(flow_run)
        if answer is None or not answer.granted:
            self._drop(flow_run.id)
            return
        self._grants[flow_run.id] = answer
        try:
            await super()._submit_run(flow_run)
        finally:
            if flow_run.id not in self._running:  # refused by Prefect, or failed to start
                self._active.discard(flow_run.id)
                self._grants.pop(flow_run.id, None)

    async def _claim(self, flow_run: FlowRun) -> ClaimAnswer | None:
        run_logger = self.get_flow_run_logger(flow_run)
        assert self._api is not None
        # The limiter holds this run already: the others are what the machine runs.
        running = max(0, len(self._active) - 1)
        try:
            answer = await self._api.claim(flow_run.id, running)
        except MachineGone as exc:
            self._machine_gone(exc)
            return None
        except ApiProblem as exc:
            if exc.status == 403:  # the machine is not (or no longer) approved
                self._machine_gone(exc)
            elif exc.status == 404:
                self._not_before[flow_run.id] = time.monotonic() + 60
                run_logger.warning("Not claimed: %s", exc.detail)
            else:
                self._not_before[flow_run.id] = time.monotonic() + ERROR_BACKOFF_S
                run_logger.warning("Could not claim the run yet (%s); will ask again.", exc.detail)
            return None
        except Exception as exc:  # the API is unreachable: ask again soon, run nothing
            self._not_before[flow_run.id] = time.monotonic() + ERROR_BACKOFF_S
            self._logger.warning("claim for %s failed: %s; will ask again", flow_run.id, exc)
            return None
        if answer.decision == "skip":
            self._not_before[flow_run.id] = time.monotonic() + SKIP_BACKOFF_S
            self._logger.info(
                "Leaving flow run %s to another machine: %s", flow_run.id, answer.reason
            )
        elif answer.decision in ("hold", "reject"):
            verb = "held" if answer.decision == "hold" else "rejected"
            run_logger.warning("Compute Share %s this run: %s", verb, answer.reason)
        else:
            run_logger.info(
                "Claimed by machine '%s' (limits: %s MB memory, %s s runtime).",
                self.name,
                answer.memory_mb,
                answer.max_runtime_s,
            )
        return answer

    def _machine_gone(self, problem: ApiProblem) -> None:
        """The control plane refused the machine (401/403): the agent stops (and says
        why, once); a bare worker logs it."""
        if self._on_machine_gone is not None:
            self._on_machine_gone(problem)
        else:
            self._logger.error("The control plane refused this machine: %s", problem.detail)

    # -- running under limits -------------------------------------------------------

    def _memory_limit(self, flow_run_id: uuid.UUID, memory_mb: int) -> limits.MemoryLimit:
        if self._cgroups is not None:
            try:
                return self._cgroups.create_run(flow_run_id.hex, memory_mb)
            except OSError as exc:
                self._logger.warning("cgroup for %s failed (%s); using rlimit", flow_run_id, exc)
        return limits.MemoryLimit(memory_mb, limits.RLIMIT_METHOD)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        grant = self._grants.get(flow_run.id)
        if grant is None or grant.memory_mb is None or grant.max_runtime_s is None:
            # Unreachable through _submit_run; a guard against any other entry point.
            raise RuntimeError(f"Flow run {flow_run.id} was not claimed; it will not run here.")
        if grant.container is not None:
            return await self._run_container(flow_run, grant, task_status)
        assert self._executor_ctx is not None
        memory = self._memory_limit(flow_run.id, grant.memory_mb)
        job: dict[str, str] = {}
        if self._flows_dir:
            job["CSHARE_FLOWS_DIR"] = self._flows_dir
        if grant.job_id:
            job["CSHARE_JOB_ID"] = grant.job_id
        if grant.job_token and grant.org:
            # The flow's own identity towards the API (datasets, outputs: flows.runtime).
            job.update(
                CSHARE_API_URL=self._control.api_url,
                CSHARE_ORG=grant.org,
                CSHARE_JOB_TOKEN=grant.job_token,
            )
        job_variables = (
            dict(configuration._job_variables_env)
            if isinstance(configuration, CshareJobConfiguration)
            else {}
        )
        runtime_reported = False
        max_runtime_s = grant.max_runtime_s

        async def report_runtime() -> None:
            nonlocal runtime_reported
            message = limits.runtime_failure_message(max_runtime_s)
            runtime_reported = await self._report_limit_to_ledger(flow_run.id, "runtime", message)

        # The job's own directories (agents.job_env): private, removed with the job.
        private, dirs = _job_dirs(configuration.working_dir)
        starter = _GatedStarter(
            on_timeout=report_runtime,
            pool=self._warm,
            job_variables=job_variables,
            plumbing={k: v for k, v in configuration.env.items() if v is not None},
            job=job,
            dirs=dirs,
            groups=self._groups,
            command=configuration.command if configuration._command_configured else None,
            stream_output=configuration.stream_output,
            memory=memory,
            max_runtime_s=grant.max_runtime_s,
            control_channel=self._executor_ctx.control_channel,
        )
        execution: FlowRunExecutionResult | None = None
        self._running.add(flow_run.id)
        try:
            with (
                private,
                self._inputs(grant, dirs.work) as inputs_env,
                self._code(grant, dirs.work, flow_run) as code_env,
            ):
                starter.job.update(await inputs_env())
                code = await code_env()
                starter.job.update(code.env)
                if code.python is not None:
                    starter.use_python(code.python)
                if self._closing:
                    # The agent is stopping and abort_all has ended this run already:
                    # start nothing (an exception as readiness: Prefect records no PID).
                    task_status.started(RuntimeError("the agent is stopping"))  # type: ignore[arg-type]
                    return ProcessWorkerResult(status_code=-1, identifier="")
                executor = self._executor_ctx.create_executor(
                    flow_run,
                    starter,
                    resolve_flow=load_flow_from_flow_run,
                    propose_submitting=False,
                )

                async def execute(
                    *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
                ) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                async with anyio.create_task_group() as group:
                    handle = await group.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(handle.pid)
                    if self._closing:  # abort_all ran while the process was starting
                        with contextlib.suppress(Exception):
                            await self._executor_ctx.process_manager.kill(
                                flow_run.id, grace_seconds=KILL_GRACE_S
                            )
            await self._report_limits(
                flow_run, starter, memory, grant.max_runtime_s, reported=runtime_reported
            )
            await self._report_usage(flow_run.id, starter.resources_used)
        finally:
            self._running.discard(flow_run.id)
            self._active.discard(flow_run.id)
            self._grants.pop(flow_run.id, None)
            self._not_before.pop(flow_run.id, None)
            if memory.cgroup:
                limits.CgroupV2.remove(memory.cgroup)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )

    async def _run_container(
        self, flow_run: FlowRun, grant: ClaimAnswer, task_status: anyio.abc.TaskStatus[int]
    ) -> ProcessWorkerResult:
        """A command job: its container instead of a flow process (agents.container)."""
        spec = grant.container or {}
        if not (grant.job_id and grant.job_token and grant.org and grant.memory_mb):
            raise RuntimeError(f"Flow run {flow_run.id}: the claim lacks the job's credential.")
        job = container.ContainerJob(
            api_url=self._control.api_url,
            org=grant.org,
            job_id=grant.job_id,
            job_token=grant.job_token,
            image=str(spec.get("image")),
            command=[str(a) for a in spec.get("command") or []],
            memory_mb=grant.memory_mb,
            cpus=spec.get("cpus"),
            output=spec.get("output"),
            agent=self._agent_identity,
        )
        identifier = f"container:{grant.job_id}"
        self._running.add(flow_run.id)
        # Not a PID: Prefect only stores it (nothing here is killed by PID).
        task_status.started(identifier)  # type: ignore[arg-type]

        async def report_limit(which: str, message: str) -> bool:
            kind: Literal["memory", "runtime"] = "memory" if which == "memory" else "runtime"
            return await self._report_limit_to_ledger(flow_run.id, kind, message)

        private, dirs = _job_dirs(None)
        try:
            with private, self._inputs(grant, dirs.work) as prepare:
                hooks = container.Hooks(
                    prefect=self.client,
                    logger=self.get_flow_run_logger(flow_run),
                    prepare_inputs=prepare,
                    report_limit=report_limit,
                )
                code = await container.execute(
                    flow_run.id,
                    job,
                    job_dir=dirs.work,
                    max_runtime_s=grant.max_runtime_s or 0,
                    hooks=hooks,
                )
        finally:
            self._running.discard(flow_run.id)
            self._active.discard(flow_run.id)
            self._grants.pop(flow_run.id, None)
            self._not_before.pop(flow_run.id, None)
        return ProcessWorkerResult(status_code=code, identifier=identifier)

    @contextlib.contextmanager
    def _inputs(
        self, grant: ClaimAnswer, job_dir: Path
    ) -> Iterator[Callable[[], Awaitable[dict[str, str]]]]:
        """The job's dataset inputs, read-only under `job_dir/inputs` (agents.materialize)
        for the run's duration. Yields an async function that prepares them and returns
        the environment the flow needs; a failure raises, so the run never starts."""
        prepared = False

        async def prepare() -> dict[str, str]:
            nonlocal prepared
            if not grant.inputs or not (grant.job_token and grant.org and grant.job_id):
                return {}
            done = await anyio.to_thread.run_sync(
                materialize.materialize_job,
                self._control.api_url,
                grant.org,
                grant.job_id,
                grant.job_token,
                job_dir,
                agent_config.state_dir() / "inputs-cache",
                self._input_cache_max_bytes,
            )
            prepared = True
            return dict(done.env)

        try:
            yield prepare
        finally:
            if prepared:
                materialize.release(job_dir)

    @contextlib.contextmanager
    def _code(
        self, grant: ClaimAnswer, job_dir: Path, flow_run: FlowRun
    ) -> Iterator[Callable[[], Awaitable[JobCode]]]:
        """The job's code bundle or Git commit as its own directory (agents.code_cache),
        for the run's duration, and the Python environment its requirements need
        (agents.pyenv). Yields an async function that prepares both and returns the
        environment naming the directory (CSHARE_CODE_DIR) and the interpreter; a failure
        raises, so the run never starts (an install failure with the installer's message
        in the job log)."""
        stack = contextlib.ExitStack()

        async def prepare() -> JobCode:
            code = grant.code
            if not code or code.get("kind") not in ("bundle", "git"):
                return JobCode()
            if not (grant.job_token and grant.org and grant.job_id):
                raise code_cache.CodeFetchError("the claim gave no job token to fetch code with")
            cache_root = agent_config.state_dir() / "code-cache"
            preparing: contextlib.AbstractContextManager[code_cache.PreparedCode]
            if code.get("kind") == "git":
                source = await anyio.to_thread.run_sync(
                    code_cache.http_git_source,
                    self._control.api_url,
                    grant.org,
                    grant.job_id,
                    grant.job_token,
                )
                preparing = code_cache.prepare_git(
                    cache_root, job_dir, source, self._code_cache_max_bytes
                )
            else:
                digest = str(code.get("digest") or "")
                cache = code_cache.CodeCache(cache_root, self._code_cache_max_bytes)
                fetch = code_cache.http_fetch(
                    self._control.api_url, grant.org, grant.job_id, grant.job_token, digest
                )
                preparing = code_cache.prepare(cache, digest, job_dir, fetch)
            prepared = await anyio.to_thread.run_sync(stack.enter_context, preparing)
            how = "cached" if prepared.cached else "downloaded"
            self.get_flow_run_logger(flow_run).info(
                "%s: %d files ready in %d ms (%s).",
                prepared.describe(),
                prepared.files,
                prepared.fetch_ms,
                how,
            )
            python = await self._python_env(prepared.code_dir, flow_run)
            report = prepared.report()
            if python is not None:
                report["requirements_digest"] = python.digest
            # The lineage report (shown by `cshare job show`) must not delay the start.
            threading.Thread(
                target=materialize.report_run,
                args=(self._control.api_url, grant.org, grant.job_id, grant.job_token),
                kwargs={"code": report},
                daemon=True,
            ).start()
            return JobCode(
                {"CSHARE_CODE_DIR": str(prepared.code_dir)},
                str(python.python) if python is not None else None,
            )

        try:
            yield prepare
        finally:
            stack.close()

    async def _report_usage(self, flow_run_id: uuid.UUID, used: dict[str, float] | None) -> None:
        """The job's lineage gets what it used (`cshare lineage --job`)."""
        if used is None or self._api is None:
            return
        try:
            with anyio.fail_after(10):
                await self._api.report_usage(flow_run_id, used)
        except Exception as exc:  # lineage must not fail a run that otherwise succeeded
            self._logger.info("could not report the usage of %s: %s", flow_run_id, exc)

    async def _python_env(self, code_dir: Path, flow_run: FlowRun) -> pyenv.PythonEnv | None:
        """The environment of the bundle's requirements (None: it declares none)."""
        run_logger = self.get_flow_run_logger(flow_run)
        try:
            return await anyio.to_thread.run_sync(
                partial(
                    pyenv.ensure_env,
                    code_dir,
                    agent_config.state_dir() / "python-envs",
                    log=run_logger.info,
                    cap_bytes=self._python_env_max_bytes,
                )
            )
        except pyenv.EnvFailed as exc:
            run_logger.error("Installing the bundle's requirements failed:\n%s", exc.message)
            raise

    async def _report_limits(
        self,
        flow_run: FlowRun,
        starter: _GatedStarter,
        memory: limits.MemoryLimit,
        max_runtime_s: int,
        *,
        reported: bool = False,
    ) -> None:
        """A run stopped by a limit ends `Failed` with the limit in its message.
        `reported`: the ledger already heard of it (a runtime kill is reported first)."""
        message: str | None = None
        which: Literal["memory", "runtime"] = "memory"
        if starter.timed_out:
            message, which = limits.runtime_failure_message(max_runtime_s), "runtime"
        elif memory.cgroup and limits.CgroupV2.oom_killed(memory.cgroup):
            message = limits.memory_failure_message(memory, "The kernel stopped it.")
        else:  # the engine exits 0 after reporting a failure, so the state tells
            current = await self.client.read_flow_run(flow_run.id)
            state = current.state
            if (
                state is not None
                and state.type in (StateType.FAILED, StateType.CRASHED)
                and "MemoryError" in (state.message or "")
            ):
                message = limits.memory_failure_message(memory, state.message)
        if message is None:
            return
        self.get_flow_run_logger(flow_run).error(message)
        # Forced: the engine already proposed its own end (Crashed on a signal,
        # Failed on MemoryError); the limit is the reason people need to see. Then the
        # ledger, which may have copied the engine's end already.
        await self.client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)
        if not reported:
            await self._report_limit_to_ledger(flow_run.id, which, message)

    async def _report_limit_to_ledger(
        self, flow_run_id: uuid.UUID, which: Literal["memory", "runtime"], message: str
    ) -> bool:
        if self._api is None:
            return False
        try:
            await self._api.report_limit(flow_run_id, which, message)
            return True
        except Exception as exc:  # Prefect has the reason; the ledger keeps the engine's
            self._logger.warning("could not report the limit of %s: %s", flow_run_id, exc)
            return False

    async def abort_all(self, reason: str, *, cancelled: bool = False) -> list[uuid.UUID]:
        """End every run this worker has, because the agent stops: no new run is claimed,
        the runs' processes are stopped (SIGTERM, SIGKILL after a grace), and each run
        ends with `reason`: `Cancelled` when `cancelled` (the machine may no longer
        work: removed, rejected, its owner or organization gone, and the control plane
        is cancelling its runs) or when someone was cancelling it anyway, else `Crashed`
        (the agent was stopped). Returns the runs stopped (processes) or ended here.

        Our end is forced after the kill: the engine reports its own `Crashed` on the
        signal ("aborted by a termination signal"), which would hide the reason. A run
        that finished on its own meanwhile (completed, failed, cancelled) keeps that.
        """
        self._closing = True
        if self._executor_ctx is None:
            return []
        manager = self._executor_ctx.process_manager
        with_process = set(manager.flow_run_ids())
        live: dict[uuid.UUID, bool] = {}  # run -> it was being cancelled
        for flow_run_id in sorted(with_process | self._active):
            try:
                run = await self.client.read_flow_run(flow_run_id)
            except Exception as exc:  # Prefect unreachable: the control plane's sweep ends it
                self._logger.warning("could not read flow run %s: %s", flow_run_id, exc)
                continue
            if run.state is None or not run.state.is_final():
                live[flow_run_id] = run.state is not None and run.state.type is StateType.CANCELLING
        async with anyio.create_task_group() as kills:
            for flow_run_id in with_process:
                kills.start_soon(self._kill, flow_run_id, live.get(flow_run_id, False))
        for flow_run_id, cancelling in live.items():
            end = Cancelled if cancelled or cancelling else Crashed
            try:
                await self._end_run(flow_run_id, end(message=reason))
            except Exception as exc:
                self._logger.warning("could not end flow run %s: %s", flow_run_id, exc)
        return sorted(with_process | live.keys())

    async def _kill(self, flow_run_id: uuid.UUID, cancelling: bool) -> None:
        assert self._executor_ctx is not None
        manager = self._executor_ctx.process_manager
        with contextlib.suppress(Exception):
            if cancelling:
                # Prefect's cancellation observer stops it (SIGTERM after telling the
                # engine on the control channel); a second SIGTERM would interrupt the
                # engine's own clean-up. Only if it outlives that: SIGKILL.
                if not await manager.wait_for_exit(flow_run_id, grace_seconds=CANCEL_WAIT_S):
                    await manager.kill(flow_run_id, force=True)
            else:
                await manager.kill(flow_run_id, grace_seconds=KILL_GRACE_S)

    async def _end_run(self, flow_run_id: uuid.UUID, end: State[Any]) -> None:
        """Set `end` unless the run finished on its own meanwhile."""
        current = (await self.client.read_flow_run(flow_run_id)).state
        if current is not None and current.type in (
            StateType.COMPLETED,
            StateType.FAILED,
            StateType.CANCELLED,
        ):
            return
        await self.client.set_flow_run_state(flow_run_id, end, force=True)
