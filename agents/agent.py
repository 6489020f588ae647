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
4. Rejected or removed (the token stops working): it stops its runs, says why, and
   exits with status 1; a removed machine's token file is deleted, so the next start
   registers it anew (pending approval again where the org requires it).
5. SIGINT/SIGTERM: runs in progress end `Crashed` ("the agent was stopped"), exit 0.

If the worker stops on its own (Prefect unreachable for long: Prefect's service loop
gives up after repeated failures), the agent starts a new one after a pause, so a
Prefect restart costs a few seconds of dispatch, not the agent.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from agents import config, hardware
from agents.client import AgentClient, AgentStatus, ApiProblem, MachineGone, register

__all__ = ["EXIT_REFUSED", "Agent", "AgentOptions", "AgentProblem"]

log = logging.getLogger("cshare.agent")

EXIT_REFUSED: Final = 1
EXIT_UNREACHABLE: Final = 3
WORKER_RESTART_S: Final = 3.0
STATUS_RETRY_S: Final = 2.0


class AgentProblem(Exception):
    """A reason to stop, with the exit code to stop with."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
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
        self._exit_code = 0
        self._worker: Any = None  # agents.worker.CshareWorker once Prefect is imported
        self._creds: config.MachineCredentials | None = None

    # -- credentials ----------------------------------------------------------------

    async def credentials(self) -> config.MachineCredentials:
        o = self.options
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
            raise AgentProblem(f"Could not register machine '{o.name}': {exc.detail}") from None
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
        try:
            creds = self._creds = await self.credentials()
        except AgentProblem as exc:
            say(exc.message)
            return exc.exit_code
        async with AgentClient(self.options.api_url, creds.machine_token) as api:
            try:
                status = await api.me()
            except MachineGone:
                self._forget_machine()
                return EXIT_REFUSED
            except ApiProblem as exc:
                say(f"The control plane refused this machine: {exc.detail}")
                return EXIT_REFUSED
            except OSError as exc:
                say(f"Cannot reach the Compute Share API at {self.options.api_url}: {exc}")
                return EXIT_UNREACHABLE
            self._update(status)
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_signals)
                group.start_soon(self._heartbeats, api)
                group.start_soon(self._work)
                await self._stop.wait()
                await self._abort_runs(self._stop_reason)
                group.cancel_scope.cancel()
        if self._exit_code:
            say(self._stop_reason)
        else:
            say("Stopped.")
        return self._exit_code

    def stop(self, reason: str, exit_code: int = 0) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._exit_code = exit_code
            self._stop.set()

    def _forget_machine(self) -> None:
        o = self.options
        config.delete(o.api_url, o.org, o.name, o.state_dir)
        self.stop(
            f"Machine '{o.name}' is no longer registered in '{o.org}' (it was removed, or its "
            "token was revoked); its token file was deleted. Run `cshare agent start` again "
            "to register it anew.",
            EXIT_REFUSED,
        )

    def _update(self, status: AgentStatus) -> None:
        previous = self.status
        self.status = status
        if status.status == "rejected":
            self.stop(
                f"Machine '{status.name}' was rejected: {status.reason or 'no reason given'}",
                EXIT_REFUSED,
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
        while True:
            running = self._worker.active_flow_runs() if self._worker is not None else []
            try:
                self._update(await api.heartbeat(running))
            except MachineGone:
                self._forget_machine()
                return
            except ApiProblem as exc:
                if exc.status == 403:
                    self.stop(f"The control plane refused this machine: {exc.detail}", 1)
                    return
                log.warning("heartbeat refused (%s): %s", exc.status, exc.detail)
            except Exception as exc:  # unreachable: keep trying; the machine shows offline
                log.warning("heartbeat failed: %s", exc)
            await anyio.sleep(self.status.heartbeat_interval_s if self.status else STATUS_RETRY_S)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _signum in signals:
                name = self.status.name if self.status else self.options.name
                self.stop(f"The agent on machine '{name}' was stopped.")
                return

    async def _abort_runs(self, reason: str) -> None:
        if self._worker is not None:
            with anyio.move_on_after(15):
                await self._worker.abort_all(reason)

    async def _work(self) -> None:
        await self._approved.wait()
        if self.options.pool_type != "process":
            self.stop(
                "Docker pools need prefect-docker and a docker engine on this machine; this "
                "agent runs process pools (see agents/docker_job.py for the job variables "
                "a docker pool gets).",
                EXIT_REFUSED,
            )
            return
        while not self._stop.is_set():
            try:
                await self._run_worker()
            except Exception as exc:
                say(f"The worker stopped ({type(exc).__name__}: {exc}); restarting it.")
            else:
                say("The worker stopped; restarting it.")
            await anyio.sleep(WORKER_RESTART_S)

    async def _run_worker(self) -> None:
        # Prefect is imported here, once the machine may work: an agent waiting for
        # approval stays light.
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL
        from prefect.settings.context import temporary_settings

        from agents.worker import WORKER_TYPE, ControlPlane, CshareWorker

        status, creds = self.status, self._creds
        assert status is not None and status.prefect is not None and creds is not None
        auth = status.prefect.auth_string or os.environ.get("PREFECT_API_AUTH_STRING")
        updates: dict[Any, Any] = {PREFECT_API_URL: status.prefect.api_url}
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
                # type when deployments register); ours only where that type is ours.
                create_pool_if_not_found=status.work_pool_type == WORKER_TYPE,
                control=ControlPlane(self.options.api_url, creds.machine_token),
                poll_interval_s=self.options.poll_interval_s,
                warm_processes=self.options.warm_processes,
                flows_dir=self.options.flows_dir,
                on_machine_gone=lambda reason: self.stop(reason, EXIT_REFUSED),
            )
            self._worker = worker
            try:
                await worker.start(printer=lambda *a, **_k: say(" ".join(str(x) for x in a)))
            finally:
                self._worker = None
