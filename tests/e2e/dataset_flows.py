"""The flow the dataset end-to-end test deploys (runs on an agent, from this folder)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow

from flows.runtime import input_path, log_metadata, save_output


@flow
def uses_inputs(output: str = "e2e-results") -> dict[str, Any]:
    """Reads two inputs, tries (and must fail) to write them, saves a summary."""
    images, labels = input_path("images"), input_path("labels")
    refused = 0
    for target in (images, labels / "new.txt", next(labels.rglob("*.txt"))):
        try:
            with open(target, "a") as f:
                f.write("changed")
        except OSError:
            refused += 1
    names = sorted(p.relative_to(labels).as_posix() for p in labels.rglob("*") if p.is_file())
    out = Path(tempfile.mkdtemp()) / "summary.txt"
    out.write_text(f"{images.read_text()}|{','.join(names)}\n")  # the same for the same inputs
    version = save_output(out, dataset=output)
    assert version is not None
    for step in range(5):  # a metric series over steps, as a training loop logs it
        log_metadata(step=step, loss=round(1.0 / (step + 1), 4))
    log_metadata({"refused_writes": refused, "files": len(names)})  # the plain dict form
    return {"refused": refused, "version": version["version"], "sha256": version["sha256"]}
