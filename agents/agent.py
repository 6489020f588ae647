"""The machine agent: register once, wait for approval, heartbeat, run our worker.

    cshare agent start [--name N] [--machine-type T] [--slots S]

1. Credentials: the machine token stored for (API URL, org, name) is reused (a restart
   never registers the machine twice); without one, the machine registers with the
   member's token and the hardware it detected, and the new token is stored (0600).
2. Heartbeats every `heartbeat_interval_s` (the control plane says how often), carrying
   the runs in progress. The answer says whether the machine may work.
3. Pending: the agent waits, heartbeating; once an admin approves, it starts working
   without a restart. Approved: the `cshare` worker polls the org's pool for the
   machine's type (`<org>-<type>`) with `slots` as its limit, using the Prefect URL and
   credentials the control plane hands to approved machines (see api/routers/agent.py).
4. Ends: whatever the cause, the agent stops taking work, stops the runs it has (their
   processes, then their final state in Prefect with the reason, see
   CshareWorker.abort_all), stops the worker (`CshareWorker.stop`: it leaves its task
   groups normally), reports once (a last heartbeat with no runs, which lets the
   control plane settle them at once; refused when the token is dead), prints one
   line saying why, and exits with one of the EXIT_* codes below (docs/agents.md):

   - SIGINT/SIGTERM: runs end `Crashed` ("the agent was stopped"), exit 0;
   - rejected, removed, its owner no longer a member, the organization deleted (the
     401's `error` code says which, see orgs.machines): runs end `Cancelled`, exit 3.
     A dead token's file is deleted, so the next start registers the machine anew.

If the worker stops on its own (Prefect unreachable for long: Prefect's service loop
gives up after repeated failures), the agent starts a new one after a pause, so a
Prefect restart costs a few seconds of dispatch, not the agent.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import httpx

from agents import config, hardware, job_env
from agents.client import AgentClient, AgentStatus, ApiProblem, MachineGone, register

__all__ = [
    "EXIT_ENDED",
    "EXIT_PROBLEM",
    "EXIT_STOPPED",
    "EXIT_UNREACHABLE",
    "Agent",
    "AgentOptions",
    "AgentProblem",
]

log = logging.getLogger("cshare.agent")

# Exit statuses (documented in docs/agents.md and `cshare agent start --help`).
EXIT_STOPPED: Final = 0  # SIGINT/SIGTERM
EXIT_PROBLEM: Final = 1  # cannot start: not registered and no member token, refused, ...
EXIT_ENDED: Final = 3  # the machine may not work any more: do not restart it as is
# Heartbeats between two looks for a Docker engine (each costs a socket round trip).
DOCKER_CHECK_EVERY: Final = 30
EXIT_UNREACHABLE: Final = 75  # EX_TEMPFAIL: the API is unreachable at start; try later
WORKER_RESTART_S: Final = 3.0
STATUS_RETRY_S: Final = 2.0
ABORT_S: Final = 20.0  # bounds ending the runs
WORKER_EXIT_S: Final = 20.0  # bounds the worker's own shutdown after that


class AgentProblem(Exception):
    """A reason to stop, with the exit code to stop with."""

    def __init__(self, message: str, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class AgentOptions:
    api_url: str
    org: str
    user_token: str | None
    name: str
    machine_type: str = "cpu"
    slots: int = 1
    pool_type: str = "process"
    flows_dir: str | None = None
    poll_interval_s: float | None = None
    warm_processes: int | None = None
    state_dir: Path | None = None
    # A machine token given from outside (CSHARE_MACHINE_TOKEN: a capacity provider
    # started this agent for a machine it registered): used as is, never stored.
    machine_token: str | None = None


def say(message: str) -> None:
    # Through logging (agents/logsetup.py), so `--log-format json` output stays JSON lines.
    log.info("%s", message)


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.status: AgentStatus | None = None
        self._approved = anyio.Event()
        self._stop = anyio.Event()
        self._stop_reason = ""
        self._exit_code = EXIT_STOPPED
        self._token_dead = False
        self._ended_runs = 0
        self._api: AgentClient | None = None
        self._worker: Any = None  # agents.worker.CshareWorker once Prefect is imported
        self._worker_scope: anyio.CancelScope | None = None
        self._worker_exited = anyio.Event()
        self._creds: config.MachineCredentials | None = None

    # -- credentials ----------------------------------------------------------------

    async def credentials(self) -> config.MachineCredentials:
        o = self.options
        if o.machine_token:
            return config.MachineCredentials(
                api_url=o.api_url,
                org=o.org,
                name=o.name,
                machine_id="",
                machine_token=o.machine_token,
                machine_type=o.machine_type,
            )
        creds = config.load(o.api_url, o.org, o.name, o.state_dir)
        if creds is not None:
            if creds.machine_type != o.machine_type:
                say(
                    f"Machine '{o.name}' is registered as type '{creds.machine_type}'; "
                    f"--machine-type {o.machine_type} is ignored (remove the machine to "
                    "change its type)."
                )
            return creds
        if not o.user_token:
            raise AgentProblem(
                "This machine is not registered yet and no member token is available: run "
                "`cshare login` (or set CSHARE_TOKEN) first."
            )
        detected = hardware.detect()
        try:
            machine, token = await register(
                o.api_url,
                o.user_token,
                o.org,
                name=o.name,
                machine_type=o.machine_type,
                slots=o.slots,
                hardware=detected,
            )
        except ApiProblem as exc:
            code = EXIT_UNREACHABLE if exc.status >= 500 else EXIT_PROBLEM
            raise AgentProblem(
                f"Could not register machine '{o.name}': {exc.detail}", code
            ) from None
        creds = config.MachineCredentials(
            api_url=o.api_url,
            org=o.org,
            name=o.name,
            machine_id=str(machine["id"]),
            machine_token=token,
            machine_type=str(machine["machine_type"]),
        )
        path = config.save(creds, o.state_dir)
        say(
            f"Registered machine '{o.name}' ({machine['machine_type']}, {o.slots} slot(s), "
            f"{detected.get('cpu_count')} CPUs, {detected.get('memory_mb')} MB) in "
            f"'{o.org}'; its token is in {path}."
        )
        return creds

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until a reason to stop, then end cleanly; the exit status."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch_signals, signals)
                    group.start_soon(self._serve)
                    await self._stop.wait()
                    await self._wind_down()
                    group.cancel_scope.cancel()
            except (Exception, BaseExceptionGroup) as exc:
                if not self._stop.is_set():
                    raise
                # Once the agent stops, its pieces may fail as their credential dies
                # under them (the worker's client closed, a 401 mid-request): that is
                # part of ending, not a crash; one line says what it was.
                log.info("while stopping: %s", _describe(exc, detail=False))
        say(self._last_words())
        return self._exit_code

    def stop(self, reason: str, exit_code: int = EXIT_STOPPED) -> None:
        """Stop for `reason` (the first reason given wins)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._exit_code = exit_code
            self._stop.set()

    def _last_words(self) -> str:
        if self._ended_runs == 1:
            return f"{self._stop_reason} It ended its running job."
        if self._ended_runs:
            return f"{self._stop_reason} It ended its {self._ended_runs} running jobs."
        return self._stop_reason

    async def _serve(self) -> None:
        try:
            creds = self._creds = await self.credentials()
        except AgentProblem as exc:
            self.stop(exc.message, exc.exit_code)
            return
        except httpx.TransportError as exc:
            self.stop(self._unreachable(exc), EXIT_UNREACHABLE)
            return
        async with AgentClient(self.options.api_url, creds.machine_token) as api:
            try:
                status = await api.me()
            except ApiProblem as exc:
                if exc.status >= 500:
                    self.stop(self._unreachable(exc), EXIT_UNREACHABLE)
                else:
                    self._refused(exc)
                return
            except (OSError, httpx.TransportError) as exc:
                self.stop(self._unreachable(exc), EXIT_UNREACHABLE)
                return
            self._api = api
            self._update(status)
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeats, api)
                group.start_soon(self._work)
                await anyio.sleep_forever()  # until run() cancels, after winding down

    def _unreachable(self, exc: Exception) -> str:
        return f"Cannot reach the Compute Share API at {self.options.api_url}: {exc}"

    async def _wind_down(self) -> None:
        """Stop taking work, end the runs, stop the worker, report once."""
        worker = self._worker
        if worker is not None:
            with anyio.move_on_after(ABORT_S):
                ended = await worker.abort_all(
                    self._stop_reason, cancelled=self._exit_code != EXIT_STOPPED
                )
                self._ended_runs = len(ended)
            worker.stop()
        if self._worker_scope is not None:
            with anyio.move_on_after(WORKER_EXIT_S):
                await self._worker_exited.wait()
            if self._worker_scope is not None:  # stuck: the last resort
                self._worker_scope.cancel()
        await self._report_end()

    async def _report_end(self) -> None:
        """One last heartbeat with no runs: the control plane settles the runs this
        machine had at once instead of waiting for Prefect or the offline sweep."""
        if self._api is None or self._token_dead:
            if self._token_dead and self._ended_runs:
                log.info(
                    "end of %d run(s) not reported: the machine token is dead", self._ended_runs
                )
            return
        try:
            with anyio.fail_after(10):
                await self._api.heartbeat([])
        except Exception as exc:  # the control plane learns it from Prefect instead
            log.info("could not report the end of this machine's runs: %s", exc)

    def _refused(self, problem: ApiProblem) -> None:
        """The control plane refused the machine token (401) or the machine (403)."""
        o = self.options
        if isinstance(problem, MachineGone):
            self._token_dead = True
            config.delete(o.api_url, o.org, o.name, o.state_dir)
            if problem.code == "bad_machine_token":
                why = (
                    f"Machine '{o.name}' is no longer registered in '{o.org}' (it was "
                    "removed, or its token was revoked)."
                )
            else:  # machine_removed, owner_not_member, org_deleted: the server says why
                why = problem.detail
            again = (
                " Run `cshare agent start` again to register it anew."
                if problem.code in ("bad_machine_token", "machine_removed")
                else ""
            )
            self.stop(f"{why} Its stored token was discarded.{again}", EXIT_ENDED)
        elif problem.status == 403:
            self.stop(f"The control plane refused this machine: {problem.detail}", EXIT_ENDED)
        else:
            self.stop(f"The control plane refused this machine: {problem.detail}", EXIT_PROBLEM)

    def _update(self, status: AgentStatus) -> None:
        previous = self.status
        self.status = status
        if status.status == "rejected":
            self.stop(
                f"Machine '{status.name}' was rejected: {status.reason or 'no reason given'}",
                EXIT_ENDED,
            )
        elif status.approved and not self._approved.is_set():
            say(
                f"Machine '{status.name}' is approved: taking '{status.machine_type}' jobs "
                f"from pool '{status.work_pool}' with {status.slots} slot(s)."
            )
            self._approved.set()
        elif status.status == "pending" and (previous is None or previous.status != "pending"):
            say(
                f"Machine '{status.name}' waits for an admin's approval "
                f"(`cshare machine approve {status.name} --org {status.org}`); it will start "
                "working as soon as it is approved."
            )

    async def _heartbeats(self, api: AgentClient) -> None:
        beats = 0
        docker: dict[str, Any] | None = None
        while not self._stop.is_set():
            running = self._worker.active_flow_runs() if self._worker is not None else []
            if beats % DOCKER_CHECK_EVERY == 0:  # an engine started or stopped meanwhile
                docker = await anyio.to_thread.run_sync(hardware.docker_engine)
            beats += 1
            try:
                self._update(await api.heartbeat(running, docker=docker))
            except ApiProblem as exc:
                if isinstance(exc, MachineGone) or exc.status == 403:
                    self._refused(exc)
                    return
                log.warning("heartbeat refused (%s): %s", exc.status, exc.detail)
            except Exception as exc:  # unreachable: keep trying; the machine shows offline
                log.warning("heartbeat failed: %s", exc)
            await anyio.sleep(self.status.heartbeat_interval_s if self.status else STATUS_RETRY_S)

    async def _watch_signals(self, signals: AsyncIterator[signal.Signals]) -> None:
        # The receiver stays open until the agent exits: a second Ctrl-C while it
        # winds down (bounded) does not interrupt that with a traceback.
        async for signum in signals:
            name = self.status.name if self.status else self.options.name
            self.stop(
                f"The agent on machine '{name}' was stopped ({signal.Signals(signum).name}).",
                EXIT_STOPPED,
            )

    async def _work(self) -> None:
        await self._approved.wait()
        if self.options.pool_type != "process":
            self.stop(
                "Docker pools need prefect-docker and a docker engine on this machine; this "
                "agent runs process pools (see agents/docker_job.py for the job variables "
                "a docker pool gets).",
                EXIT_PROBLEM,
            )
            return
        while not self._stop.is_set():
            # The agent stops the worker with `worker.stop()` (after ending its runs), so
            # it leaves its contexts normally; this scope is only the last resort.
            scope = self._worker_scope = anyio.CancelScope()
            exited = self._worker_exited = anyio.Event()
            try:
                with scope:
                    await self._run_worker()
            except Exception as exc:
                if not self._stop.is_set():
                    say(f"The worker stopped ({_describe(exc)}); restarting it.")
                else:  # the reason was said already: which error it was is enough here
                    log.info("the worker ended with %s", _describe(exc, detail=False))
            else:
                if not self._stop.is_set():
                    say("The worker stopped; restarting it.")
            finally:
                self._worker_scope = None
                exited.set()
            if not self._stop.is_set():
                await anyio.sleep(WORKER_RESTART_S)

    async def _run_worker(self) -> None:
        # Prefect is imported here, once the machine may work: an agent waiting for
        # approval stays light.
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL
        from prefect.settings.context import temporary_settings

        from agents.worker import WORKER_TYPE, ControlPlane, CshareWorker

        status, creds = self.status, self._creds
        assert status is not None and status.prefect is not None and creds is not None
        # No URL from the control plane: its own Prefect proxy, where this API is.
        prefect_url = status.prefect.api_url or f"{self.options.api_url.rstrip('/')}/prefect/api"
        updates: dict[Any, Any] = {PREFECT_API_URL: prefect_url}
        if job_env.is_proxy_url(prefect_url):
            # Compute Share's Prefect proxy: the machine token is the agent's credential
            # (as the key, and as the auth string Prefect's websocket clients send).
            updates[PREFECT_API_KEY] = creds.machine_token
            updates[PREFECT_API_AUTH_STRING] = creds.machine_token
        else:  # the legacy direct mode: Prefect's own auth string
            auth = status.prefect.auth_string or os.environ.get("PREFECT_API_AUTH_STRING")
            if auth:
                updates[PREFECT_API_AUTH_STRING] = auth
        with temporary_settings(updates=updates):
            worker = CshareWorker(
                work_pool_name=status.work_pool,
                name=f"cshare-{status.name}",
                limit=status.slots,
                # Prefect's worker heartbeat also re-reads the pool: a pool created after
                # the agent started is found within seconds, not Prefect's default 30.
                heartbeat_interval_seconds=5,
                # The control plane owns its pools (it creates them with its configured
                # type when deployments register, and when an approved agent asks);
                # ours only where that type is ours, talking to Prefect directly.
                create_pool_if_not_found=status.work_pool_type == WORKER_TYPE
                and not job_env.is_proxy_url(prefect_url),
                control=ControlPlane(self.options.api_url, creds.machine_token),
                poll_interval_s=self.options.poll_interval_s,
                warm_processes=self.options.warm_processes,
                flows_dir=self.options.flows_dir,
                on_machine_gone=self._refused,
            )
            self._worker = worker
            try:
                await worker.start(printer=lambda *a, **_k: say(" ".join(str(x) for x in a)))
            finally:
                self._worker = None


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (anyio task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException, *, detail: bool = True) -> str:
    """`Type: message` of the error(s) inside `exc`; only the type names without
    `detail` (a refusal's message repeats the reason the agent says once)."""
    exc = _unwrap(exc)
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e, detail=detail) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__
