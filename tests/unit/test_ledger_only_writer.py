"""The job ledger is the only code that creates job rows or writes a job's state,
machine, timings or outcome (issue 11). Scans the source so it stays true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "orgs", "policies", "agents", "api", "datasets")
LEDGER = ROOT / "flows" / "ledger.py"
FIELDS = (
    "state",
    "machine_id",
    "ended_at",
    "started_at",
    "claimed_at",
    "released_at",
    "cancel_requested_at",
)
_FIELDS = "|".join(FIELDS)
# `job.state = ...`, `j.ended_at = ...` (any name: the attribute is what matters).
ASSIGN = re.compile(rf"^\s*[A-Za-z_][\w.]*\.({_FIELDS})\s*(=|\+=)(?!=)", re.MULTILINE)
CONSTRUCT = re.compile(r"(?<![\w.])Job\(")
BULK = re.compile(r"update\(\s*Job\s*\)(?P<rest>.{0,600}?)\.values\((?P<values>[^)]*)\)", re.S)
BULK_FIELD = re.compile(rf"\b({_FIELDS})\s*=")
# Attributes of other tables that share a field name (a machine's own state, say).
OTHER_OWNERS = re.compile(r"\b(machine|m|dataset|version|target|row|self|state|info|run)\.")


def offences(text: str) -> list[str]:
    found: list[str] = []
    for m in ASSIGN.finditer(text):
        line = m.group(0).strip()
        if OTHER_OWNERS.match(line):
            continue
        found.append(line)
    for m in CONSTRUCT.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        line = text[start : text.find("\n", m.end())]
        if not line.lstrip().startswith("class "):
            found.append(line.strip())
    for m in BULK.finditer(text):
        if BULK_FIELD.search(m.group("values")):
            found.append(f"update(Job)...values({m.group('values').strip()})")
    return found


def _sources() -> list[Path]:
    return [
        p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p != LEDGER and "/web/static/" not in p.as_posix()
    ]


def test_the_scanner_finds_each_kind_of_write() -> None:
    sample = (
        "    job.state = 'running'\n"
        "    other.ended_at = now\n"
        "    j = Job(org_id=1)\n"
        "    s.execute(update(Job).where(Job.id == 1).values(state='failed', reason=''))\n"
        "    machine.state = 'ok'\n"
        "    if job.state == 'held': pass\n"
    )
    assert len(offences(sample)) == 4


def test_only_the_ledger_writes_job_state() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in _sources()
        if (hits := offences(path.read_text()))
    }
    assert found == {}, f"job rows or job state written outside flows/ledger.py: {found}"


def test_the_ledger_does_write_them() -> None:
    assert offences(LEDGER.read_text()), "the scanner must see the ledger's own writes"
