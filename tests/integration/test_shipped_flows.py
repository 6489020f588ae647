"""The shipped flows: deployed from prefect.yaml with plain `prefect deploy`, run by a real
process worker, and called directly in-process."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.gateway import PrefectGateway, StateType
from flows.library import SHIPPED_FLOWS
from tests.prefect_server import (
    PREFECT,
    PREFECT_STALL_S,
    REPO_ROOT,
    PrefectServer,
    start_worker,
    wait_for_runs,
)

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect")]

POOL = "cshare-default"  # the placeholder pool named in prefect.yaml


def _wait_for_log(gateway: PrefectGateway, run_id: uuid.UUID, text: str) -> list[str]:
    # A flow process ships its last log lines just after reporting its final state.
    deadline = time.monotonic() + 20 + PREFECT_STALL_S
    while True:
        messages = [line.message for line in gateway.read_logs(run_id, limit=200)]
        if any(text in message for message in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


@pytest.fixture(scope="module")
def deployed(
    prefect_server: PrefectServer, prefect_gateway: PrefectGateway
) -> dict[str, uuid.UUID]:
    """prefect.yaml, deployed exactly as a Prefect user would: `prefect deploy --all`."""
    prefect_gateway.ensure_work_pool(POOL, description="shipped flows")
    result = subprocess.run(
        [PREFECT, "deploy", "--all", "--prefect-file", str(REPO_ROOT / "prefect.yaml")],
        env=prefect_server.client_env(),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {name: prefect_gateway.read_deployment_by_name(name, name).id for name in SHIPPED_FLOWS}


@pytest.fixture(scope="module")
def worker(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    # The pull step's `{{ $CSHARE_FLOWS_DIR }}` is resolved on the machine at run time.
    with start_worker(
        prefect_server,
        POOL,
        tmp_path_factory.mktemp("worker"),
        env={"CSHARE_FLOWS_DIR": str(REPO_ROOT)},
    ):
        yield


def test_prefect_yaml_deploys_every_shipped_flow(
    prefect_gateway: PrefectGateway, deployed: dict[str, uuid.UUID]
) -> None:
    for name, entrypoint in SHIPPED_FLOWS.items():
        info = prefect_gateway.read_deployment(deployed[name])
        assert info.entrypoint == entrypoint
        assert info.work_pool_name == POOL
        assert info.description
        assert "shipped" in info.tags


def test_shipped_flows_run_on_a_process_worker(
    prefect_gateway: PrefectGateway,
    deployed: dict[str, uuid.UUID],
    worker: None,
    tmp_path: Path,
) -> None:
    def run(name: str, **parameters: object) -> uuid.UUID:
        return prefect_gateway.create_flow_run(
            deployed[name], idempotency_key=str(uuid.uuid4()), parameters=parameters
        ).id

    # All at once: the worker runs them side by side.
    command_ok = run("command", command="echo hello-from-command; echo to-stderr >&2")
    command_bad = run("command", command=["sh", "-c", "echo about-to-fail >&2; exit 7"])
    etl_ok = run("etl", rows=300, output_dir=str(tmp_path / "etl"))
    train_ok = run("train", epochs=5)
    train_bad = run("train", epochs=5, fail_at_epoch=3)

    runs = wait_for_runs(
        prefect_gateway,
        [command_ok, command_bad, etl_ok, train_ok, train_bad],
        timeout_s=120 + PREFECT_STALL_S,
    )
    expected = {
        command_ok: StateType.COMPLETED,
        command_bad: StateType.FAILED,
        etl_ok: StateType.COMPLETED,
        train_ok: StateType.COMPLETED,
        train_bad: StateType.FAILED,
    }
    assert {i: runs[i].state_type for i in expected} == expected, {
        i: (r.state_name, r.message) for i, r in runs.items()
    }
    assert "exit code 7" in (runs[command_bad].message or "")
    assert "about-to-fail" in (runs[command_bad].message or "")  # the stderr tail
    assert "fail_at_epoch" in (runs[train_bad].message or "")

    logs = _wait_for_log(prefect_gateway, command_ok, "to-stderr")
    assert "hello-from-command" in logs
    assert "to-stderr" in logs
    assert any("epoch 5 loss=" in m for m in _wait_for_log(prefect_gateway, train_ok, "epoch 5"))
    summary = json.loads((tmp_path / "etl" / "summary.json").read_text())
    assert sum(group["count"] for group in summary.values()) == 300 - 300 // 50


# -- in-process ------------------------------------------------------------------------------


def test_command_in_process(prefect_client: object, prefect_gateway: PrefectGateway) -> None:
    from flows.library.command import CommandFailed, command

    assert command("echo hi-in-process") == 0
    state = command(["echo", "argv-form"], return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    assert "argv-form" in _wait_for_log(prefect_gateway, run_id, "argv-form")

    assert command('test "$GREETING" = hello', env={"GREETING": "hello"}) == 0
    with pytest.raises(CommandFailed) as failed:
        command("exit 3")
    assert failed.value.exit_code == 3

    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        command("sleep 30", timeout_s=1)
    assert time.monotonic() - started < 15


def test_train_in_process(prefect_client: object) -> None:
    from flows.library.train import TrainingFailed, train

    short = train(epochs=2)
    longer = train(epochs=40, learning_rate=0.2)
    assert longer["loss"] < short["loss"]
    assert abs(longer["weight"] - 3.0) < 0.2
    with pytest.raises(TrainingFailed, match="epoch 2"):
        train(epochs=5, fail_at_epoch=2)


def test_etl_in_process(prefect_client: object, tmp_path: Path) -> None:
    from flows.library.etl import etl

    summary = etl(rows=100, seed=3, output_dir=str(tmp_path))
    assert summary["rows_in"] == 100
    assert summary["rows_out"] == 98  # every 50th synthetic row is broken on purpose
    assert (tmp_path / "rows.csv").exists()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary["groups"]

    # A CSV input instead of synthetic rows.
    source = tmp_path / "in.csv"
    source.write_text("id,category,value\n1,A,1.5\n2,a,2.5\n3,,9\n4,b,x\n")
    summary = etl(input_path=str(source), output_dir=str(tmp_path / "out"), scale=2)
    assert summary["rows_out"] == 2
    assert summary["groups"] == {"a": {"count": 2, "sum": 8.0, "mean": 4.0, "min": 3.0, "max": 5.0}}
