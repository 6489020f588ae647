"""The agent's HTTP client for the Compute Share API (async; the worker runs on asyncio).

Registration uses the member's own token; everything after that uses the machine token.
Answers become small frozen dataclasses; problems become `ApiProblem` (the server's
`error` code and `detail`), with `MachineGone` for 401 (removed machine, wrong token).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx

__all__ = [
    "AgentClient",
    "AgentStatus",
    "ApiProblem",
    "ClaimAnswer",
    "MachineGone",
    "PrefectAccess",
    "register",
]

API_PREFIX: Final = "/api/v1"
TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0)
USER_AGENT: Final = "cshare-agent/0.1.0"


class ApiProblem(Exception):
    def __init__(self, status: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class MachineGone(ApiProblem):
    """401: the control plane does not know this machine's token (removed, or wrong)."""


@dataclass(frozen=True, slots=True)
class PrefectAccess:
    api_url: str | None  # None: the control plane's Prefect proxy (<api>/prefect/api)
    auth_string: str | None


@dataclass(frozen=True, slots=True)
class AgentStatus:
    machine_id: str
    name: str
    org: str
    machine_type: str
    slots: int
    status: str  # pending | approved | rejected
    approved: bool
    reason: str | None
    work_pool: str
    work_pool_type: str
    heartbeat_interval_s: float
    offline_after_s: int
    prefect: PrefectAccess | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentStatus:
        prefect = data.get("prefect")
        return cls(
            machine_id=str(data["machine_id"]),
            name=str(data["name"]),
            org=str(data["org"]),
            machine_type=str(data["machine_type"]),
            slots=int(data["slots"]),
            status=str(data["status"]),
            approved=bool(data["approved"]),
            reason=data.get("reason"),
            work_pool=str(data["work_pool"]),
            work_pool_type=str(data.get("work_pool_type") or ""),
            heartbeat_interval_s=float(data["heartbeat_interval_s"]),
            offline_after_s=int(data["offline_after_s"]),
            prefect=PrefectAccess(prefect.get("api_url"), prefect.get("auth_string"))
            if prefect
            else None,
        )


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    decision: Literal["run", "hold", "reject", "skip"]
    reason: str
    job_id: str | None = None
    memory_mb: int | None = None
    max_runtime_s: int | None = None
    user: str | None = None
    org: str | None = None
    job_token: str | None = None  # the flow's credential towards datasets (CSHARE_JOB_TOKEN)
    inputs: int = 0  # dataset inputs to materialise before the run
    # The job's code bundle {kind, digest, size, files} (agents.code_cache); None: none.
    code: dict[str, Any] | None = None
    # A command job: {image, command, cpus, output}, run with Docker (agents.container).
    container: dict[str, Any] | None = None

    @property
    def granted(self) -> bool:
        return self.decision == "run"


def _problem(response: httpx.Response) -> ApiProblem:
    try:
        body = response.json()
    except ValueError:
        body = None
    code, detail = "", f"HTTP {response.status_code}"
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        detail = str(body.get("detail") or detail)
    cls = MachineGone if response.status_code == 401 else ApiProblem
    return cls(response.status_code, code, detail, body)


def _client(
    api_url: str, token: str, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=api_url.rstrip("/") + API_PREFIX,
        headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
        timeout=TIMEOUT,
        transport=transport,
    )


async def register(
    api_url: str,
    user_token: str,
    org: str,
    *,
    name: str,
    machine_type: str,
    slots: int,
    hardware: dict[str, Any],
) -> tuple[dict[str, Any], str]:
    """Register a machine with the member's token: (machine, machine token)."""
    body = {"name": name, "machine_type": machine_type, "slots": slots, "hardware": hardware}
    async with _client(api_url, user_token) as http:
        response = await http.post(f"/orgs/{org}/machines", json=body)
    if response.status_code != 201:
        problem = _problem(response)
        raise ApiProblem(problem.status, problem.code, problem.detail, problem.body)
    data = response.json()
    return data["machine"], data["machine_token"]


class AgentClient:
    """Calls made with the machine token."""

    def __init__(
        self,
        api_url: str,
        machine_token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url
        self._http = _client(api_url, machine_token, transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def me(self) -> AgentStatus:
        response = await self._http.get("/agent/me")
        if response.status_code != 200:
            raise _problem(response)
        return AgentStatus.from_json(response.json())

    async def heartbeat(
        self, running: list[uuid.UUID], *, docker: dict[str, Any] | bool | None = False
    ) -> AgentStatus:
        """`docker`: the engine this machine reaches now (None: none); False: not said."""
        body: dict[str, Any] = {"running": [str(r) for r in running]}
        if docker is not False:
            body["docker"] = docker
        response = await self._http.post("/agent/heartbeat", json=body)
        if response.status_code != 200:
            raise _problem(response)
        return AgentStatus.from_json(response.json())

    async def claim(self, flow_run_id: uuid.UUID, running: int) -> ClaimAnswer:
        """The control plane's decision. Raises ApiProblem for 401/403 (the machine may
        not work), 404 (not this organization's run) and 5xx (ask again later)."""
        response = await self._http.post(
            "/agent/claims", json={"flow_run_id": str(flow_run_id), "running": running}
        )
        data: Any = None
        with contextlib.suppress(ValueError):
            data = response.json()
        if response.status_code == 200 and isinstance(data, dict):
            limits = data["limits"]
            return ClaimAnswer(
                "run",
                "",
                job_id=str(data["job_id"]),
                memory_mb=int(limits["memory_mb"]),
                max_runtime_s=int(limits["max_runtime_s"]),
                user=data.get("user"),
                org=data.get("org"),
                job_token=data.get("job_token"),
                inputs=int(data.get("inputs") or 0),
                code=data["code"] if isinstance(data.get("code"), dict) else None,
                container=data.get("container") or None,
            )
        if (
            response.status_code in (403, 409)
            and isinstance(data, dict)
            and data.get("decision") in ("hold", "reject", "skip")
        ):
            return ClaimAnswer(data["decision"], str(data.get("detail") or ""))
        raise _problem(response)

    async def report_usage(self, flow_run_id: uuid.UUID, used: dict[str, float]) -> None:
        """Tell the control plane what a run used (wall time, CPU seconds, peak memory)."""
        response = await self._http.post(f"/agent/runs/{flow_run_id}/usage", json=used)
        if response.status_code != 204:
            raise _problem(response)

    async def report_limit(self, flow_run_id: uuid.UUID, limit: str, message: str) -> None:
        """Tell the control plane a run was stopped at its memory or runtime limit."""
        response = await self._http.post(
            f"/agent/runs/{flow_run_id}/limit", json={"limit": limit, "message": message}
        )
        if response.status_code != 204:
            raise _problem(response)
