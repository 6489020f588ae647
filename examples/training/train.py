"""A small training-style job: fit y = a*x + b to the input dataset `points` by gradient
descent, log the loss over the steps, save the fitted model as the dataset `model`.

    cshare dataset upload points data/points.csv --create
    cshare deploy train.py:train --name train
    cshare job submit train --input points --param epochs=200 --wait

Runs anywhere (`python train.py`): outside a job it reads data/points.csv and the
runtime helpers only log that they have nothing to talk to.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows.runtime import input_path, log_metadata, save_output

HERE = Path(__file__).resolve().parent


def _points() -> list[tuple[float, float]]:
    # In a job: the verified, read-only copy the agent fetched. By hand: the sample.
    source = (
        input_path("points") if os.environ.get("CSHARE_INPUTS_DIR") else HERE / "data/points.csv"
    )
    with open(source, newline="") as f:
        return [(float(row["x"]), float(row["y"])) for row in csv.DictReader(f)]


@flow(log_prints=True)
def train(epochs: int = 200, learning_rate: float = 0.05) -> dict[str, float]:
    logger = get_run_logger()
    points = _points()
    a = b = 0.0
    history: list[float] = []
    for step in range(1, epochs + 1):
        grad_a = sum(2 * (a * x + b - y) * x for x, y in points) / len(points)
        grad_b = sum(2 * (a * x + b - y) for x, y in points) / len(points)
        a, b = a - learning_rate * grad_a, b - learning_rate * grad_b
        loss = sum((a * x + b - y) ** 2 for x, y in points) / len(points)
        history.append(round(loss, 6))
        if step % 10 == 0 or step == epochs:
            # A point of the series `loss` over steps (charted on the job's page).
            log_metadata(step=step, loss=round(loss, 6))
        if step % 50 == 0 or step == epochs:
            logger.info("step %d: loss %.6f", step, loss)
    # The final numbers, merged into the job's metadata.
    log_metadata({"loss": history[-1], "a": round(a, 4), "b": round(b, 4)})
    model = Path(tempfile.mkdtemp()) / "model.json"
    model.write_text(json.dumps({"a": round(a, 4), "b": round(b, 4), "epochs": epochs}) + "\n")
    save_output(model, dataset="model", description=f"y = a*x + b after {epochs} steps")
    return {"a": a, "b": b, "loss": history[-1]}


if __name__ == "__main__":
    print(train())
