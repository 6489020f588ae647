"""A scheduled job: every hour (see prefect.yaml), count what the `points` dataset holds
and keep a small report as the dataset `points-report`.

    cshare deploy prefect.yaml          # registers the deployment and its schedule
    cshare schedule list                # next fire times
    cshare job submit report --input points --wait   # or run it now, by hand
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow

from flows.runtime import input_path, log_metadata, save_output


@flow(log_prints=True)
def report(dataset: str = "points") -> dict[str, int]:
    rows = 0
    if os.environ.get("CSHARE_INPUTS_DIR"):
        rows = max(0, len(input_path(dataset).read_text().splitlines()) - 1)  # minus header
    stats = {"rows": rows}
    print(f"{dataset}: {rows} rows at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    log_metadata(stats)
    out = Path(tempfile.mkdtemp()) / "report.json"
    out.write_text(json.dumps({"dataset": dataset, **stats}) + "\n")
    save_output(out, dataset=f"{dataset}-report")
    return stats


if __name__ == "__main__":
    print(report())
