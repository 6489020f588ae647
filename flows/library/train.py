"""A parameterised "training" flow: fits y = w*x + b by gradient descent, in pure Python.

Small enough to run anywhere, shaped like real training: epochs, a learning rate, a seed,
per-epoch loss in the run's logs, final metrics as the result. `fail_at_epoch` makes it
fail on purpose (for testing failure handling); `sleep_s` stretches each epoch (for
testing cancellation and runtime limits). Imports only prefect and the standard library.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from prefect import flow, get_run_logger

TRUE_WEIGHT = 3.0
TRUE_BIAS = -2.0


class TrainingFailed(RuntimeError):
    """Raised by `fail_at_epoch`: the run ends Failed with this message."""


def make_dataset(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        x = rng.uniform(-1.0, 1.0)
        points.append((x, TRUE_WEIGHT * x + TRUE_BIAS + rng.gauss(0.0, 0.1)))
    return points


def mse(points: list[tuple[float, float]], w: float, b: float) -> float:
    return sum((w * x + b - y) ** 2 for x, y in points) / len(points)


@flow(name="train")
def train(
    epochs: int = 20,
    learning_rate: float = 0.1,
    seed: int = 0,
    samples: int = 256,
    fail_at_epoch: int | None = None,
    sleep_s: float = 0.0,
) -> dict[str, Any]:
    """Full-batch gradient descent on mean squared error; returns the final metrics."""
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if not learning_rate > 0:
        raise ValueError("learning_rate must be positive")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    logger = get_run_logger()
    points = make_dataset(samples, seed)
    w, b = 0.0, 0.0
    loss = mse(points, w, b)
    logger.info("epoch 0 loss=%.6f", loss)
    for epoch in range(1, epochs + 1):
        if fail_at_epoch is not None and epoch == fail_at_epoch:
            raise TrainingFailed(f"Failing on purpose at epoch {epoch} (fail_at_epoch).")
        grad_w = sum(2 * (w * x + b - y) * x for x, y in points) / len(points)
        grad_b = sum(2 * (w * x + b - y) for x, y in points) / len(points)
        w -= learning_rate * grad_w
        b -= learning_rate * grad_b
        loss = mse(points, w, b)
        if not math.isfinite(loss):
            raise TrainingFailed(f"Loss diverged at epoch {epoch}; lower the learning rate.")
        logger.info("epoch %d loss=%.6f w=%.4f b=%.4f", epoch, loss, w, b)
        if sleep_s > 0:
            time.sleep(sleep_s)
    return {
        "epochs": epochs,
        "loss": round(loss, 6),
        "weight": round(w, 6),
        "bias": round(b, 6),
        "seed": seed,
    }


if __name__ == "__main__":
    print(json.dumps(train(), indent=2))
