"""api.cli.prefect_yaml: prefect.yaml snippets -> planned deployments and warnings."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from api.cli.output import CliError
from api.cli.prefect_yaml import (
    Planned,
    git_clone_source,
    machine_type_for_pool,
    parse_prefect_yaml,
    run_build_steps,
)
from tests.prefect_server import REPO_ROOT

BASE = Path("/project")
TYPES = ("cpu", "gpu")


def parse(text: str, **env: str) -> tuple[list[Planned], list[str]]:
    parsed = parse_prefect_yaml(
        textwrap.dedent(text), BASE, org_slug="acme", machine_types=TYPES, environ=env
    )
    return parsed.deployments, parsed.warnings


def one(text: str, **env: str) -> tuple[Planned, list[str]]:
    planned, warnings = parse(text, **env)
    assert len(planned) == 1
    return planned[0], warnings


# (yaml of ONE deployment's extra keys, expected attributes, words of expected warnings)
CASES: list[Any] = [
    pytest.param("", {"schedules": [], "concurrency_limit": None, "version": None}, [], id="bare"),
    pytest.param(
        "description: ' Trains. '\ntags: [a, b]\nparameters: {x: 1}\nversion: '1.2'",
        {"description": "Trains.", "tags": ["a", "b"], "parameters": {"x": 1}, "version": "1.2"},
        [],
        id="basics",
    ),
    pytest.param("tags: solo", {"tags": ["solo"]}, [], id="tags-as-a-string"),
    pytest.param(
        "schedules:\n  - cron: '0 9 * * 1-5'\n    timezone: Europe/Paris\n"
        "    parameters: {x: 2}\n    active: false",
        {
            "schedules": [
                {
                    "cron": "0 9 * * 1-5",
                    "timezone": "Europe/Paris",
                    "parameters": {"x": 2},
                    "active": False,
                }
            ]
        },
        [],
        id="cron-schedule",
    ),
    pytest.param(
        "schedules:\n  - interval: 3600\n    anchor_date: '2026-01-01T08:00:00'\n"
        "    timezone: America/New_York",
        {
            "schedules": [
                {
                    "interval_s": 3600.0,
                    "anchor_date": "2026-01-01T08:00:00",
                    "timezone": "America/New_York",
                    "parameters": {},
                    "active": True,
                }
            ]
        },
        [],
        id="interval-seconds",
    ),
    pytest.param(
        "schedules:\n  - interval: '01:30:00'\n  - interval: PT2H",
        {
            "schedules": [
                {"interval_s": 5400.0, "parameters": {}, "active": True},
                {"interval_s": 7200.0, "parameters": {}, "active": True},
            ]
        },
        [],
        id="interval-hms-and-iso",
    ),
    pytest.param(
        "schedules:\n  - rrule: 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=9'\n    timezone: UTC\n"
        """  - rrule: '{"rrule": "FREQ=DAILY", "timezone": "Asia/Tokyo"}'""",
        {
            "schedules": [
                {
                    "rrule": "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9",
                    "timezone": "UTC",
                    "parameters": {},
                    "active": True,
                },
                {
                    "rrule": "FREQ=DAILY",
                    "timezone": "Asia/Tokyo",
                    "parameters": {},
                    "active": True,
                },
            ]
        },
        [],
        id="rrule-text-and-json",
    ),
    pytest.param(
        "schedule:\n  cron: '@daily'",
        {"schedules": [{"cron": "@daily", "parameters": {}, "active": True}]},
        [],
        id="legacy-schedule",
    ),
    pytest.param(
        "paused: true\nschedules:\n  - cron: '@hourly'",
        {"schedules": [{"cron": "@hourly", "parameters": {}, "active": False}]},
        [],
        id="paused-makes-schedules-inactive",
    ),
    pytest.param(
        "schedules:\n  - cron: '@hourly'\n    slug: nightly\n    every: 3",
        {"schedules": [{"cron": "@hourly", "parameters": {}, "active": True}]},
        ["'slug' ignored", "unknown key 'every'"],
        id="schedule-extra-keys-warn",
    ),
    pytest.param("concurrency_limit: 2", {"concurrency_limit": 2}, [], id="concurrency-int"),
    pytest.param(
        "concurrency_limit:\n  limit: 1\n  collision_strategy: CANCEL_NEW\n"
        "  grace_period_seconds: 30",
        {"concurrency_limit": 1, "collision_strategy": "cancel_new"},
        ["grace_period_seconds ignored"],
        id="concurrency-mapping",
    ),
    pytest.param(
        "concurrency_limit: 0",
        {"concurrency_limit": None},
        ["not a positive integer"],
        id="concurrency-invalid",
    ),
    pytest.param(
        "work_pool:\n  name: acme-gpu\n  job_variables: {env: {A: '1'}}",
        {"machine_type": "gpu", "job_variables": {"env": {"A": "1"}}},
        [],
        id="pool-org-type",
    ),
    pytest.param("work_pool: {name: gpu}", {"machine_type": "gpu"}, [], id="pool-type-name"),
    pytest.param(
        "work_pool: {name: k8s-prod, work_queue_name: urgent}",
        {"machine_type": None},
        ["'k8s-prod' is not a Compute Share pool", "work_queue_name ignored"],
        id="pool-foreign",
    ),
    pytest.param(
        "work_pool: {name: cshare-default, work_queue_name: default}",
        {"machine_type": None},
        [],
        id="pool-placeholder-is-quiet",
    ),
    pytest.param(
        "triggers: []\nsla: []\nretries: 3",
        {},
        ["'triggers' ignored", "'sla' ignored", "unknown key 'retries'"],
        id="unknown-and-unsupported-keys",
    ),
    pytest.param(
        "pull:\n  - prefect.deployments.steps.git_clone:\n      repository: https://x/r.git\n"
        "  - prefect.deployments.steps.pip_install_requirements:\n"
        "      requirements_file: requirements.txt",
        {
            "pull_steps": [
                {"prefect.deployments.steps.git_clone": {"repository": "https://x/r.git"}},
                {
                    "prefect.deployments.steps.pip_install_requirements": {
                        "requirements_file": "requirements.txt"
                    }
                },
            ]
        },
        [],
        id="pull-steps-passed-through",
    ),
    pytest.param(
        "pull:\n  - prefect_aws.deployments.steps.pull_from_s3: {bucket: b}",
        {"pull_steps": [{"prefect_aws.deployments.steps.pull_from_s3": {"bucket": "b"}}]},
        ["'prefect_aws.deployments.steps.pull_from_s3' is passed through"],
        id="pull-step-other-package-warns",
    ),
    pytest.param(
        "parameters: {who: '{{ $WHO }}', n: '{{ $N }}'}\nversion: 'v-{{ $WHO }}'",
        {"parameters": {"who": "ada", "n": "{{ $N }}"}, "version": "v-ada"},
        ["'{{ $N }}' in parameters is not resolved"],
        id="env-templates",
    ),
    pytest.param(
        "tags: ['{{ prefect.variables.team }}']",
        {"tags": ["{{ prefect.variables.team }}"]},
        ["'{{ prefect.variables.team }}' in tags is not resolved"],
        id="prefect-variable-warns",
    ),
]


@pytest.mark.parametrize(("extra", "expected", "warned"), CASES)
def test_deployment_table(extra: str, expected: dict[str, Any], warned: list[str]) -> None:
    body = textwrap.indent(extra, "    ")
    text = f"deployments:\n  - name: d\n    entrypoint: f.py:flow\n{body}\n"
    planned, warnings = one(text, WHO="ada")
    for attr, value in expected.items():
        assert getattr(planned, attr) == value, attr
    for words in warned:
        assert any(words in w for w in warnings), (words, warnings)
    assert len(warnings) == len(warned), warnings
    assert all(w.startswith("prefect.yaml: deployment 'd'") for w in warnings)


def test_file_level_pull_anchors_and_unknown_top_level_keys() -> None:
    planned, warnings = parse(
        """
        name: proj
        prefect-version: 3.8.8
        owner: ada
        definitions:
          common: &common
            tags: [shared]
            parameters: {x: 1}
          cron: &weekday {cron: '0 9 * * 1-5', timezone: Europe/Paris}
        pull:
          - prefect.deployments.steps.set_working_directory:
              directory: '{{ $CSHARE_FLOWS_DIR }}'
        deployments:
          - <<: *common
            name: a
            entrypoint: a.py:a
            schedules: [*weekday]
          - <<: *common
            name: b
            entrypoint: b.py:b
            pull: []
        """,
        CSHARE_FLOWS_DIR="/on/this/laptop",
    )
    a, b = planned
    assert (a.tags, a.parameters, b.tags) == (["shared"], {"x": 1}, ["shared"])
    assert a.schedules == [
        {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "parameters": {}, "active": True}
    ]
    # The file's pull step, its template kept for the machine; `pull: []` is none.
    assert a.pull_steps == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $CSHARE_FLOWS_DIR }}"
            }
        }
    ]
    assert b.pull_steps == []
    assert warnings == ["prefect.yaml: unknown top-level key 'owner' ignored."]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("deployments: nope", "no 'deployments' list", id="no-list"),
        pytest.param("deployments:\n  - name: x", "needs a name and an entrypoint", id="no-ep"),
        pytest.param(
            "deployments:\n  - {name: x, entrypoint: f.py:f, schedules: [{cron: '* * * * *', "
            "interval: 60}]}",
            "exactly one of cron, interval or rrule",
            id="two-kinds",
        ),
        pytest.param(
            "deployments:\n  - {name: x, entrypoint: f.py:f, schedule: {cron: '@daily'}, "
            "schedules: [{cron: '@daily'}]}",
            "not both",
            id="schedule-and-schedules",
        ),
        pytest.param(
            "deployments:\n  - {name: x, entrypoint: f.py:f, schedules: [{interval: soon}]}",
            "not a duration",
            id="bad-interval",
        ),
        pytest.param("deployments: [\n", "Cannot read", id="bad-yaml"),
    ],
)
def test_errors(text: str, words: str) -> None:
    with pytest.raises(CliError) as err:
        parse(text)
    assert words in err.value.message


def test_the_shipped_prefect_yaml_reads_without_warnings() -> None:
    parsed = parse_prefect_yaml(
        (REPO_ROOT / "prefect.yaml").read_text(), REPO_ROOT, org_slug="acme", machine_types=TYPES
    )
    assert [p.name for p in parsed.deployments] == ["command", "etl", "train"]
    assert parsed.warnings == []
    assert all(p.machine_type is None for p in parsed.deployments)


@pytest.mark.parametrize(
    ("pool", "types", "expected"),
    [
        ("acme-gpu", TYPES, "gpu"),
        ("gpu", TYPES, "gpu"),
        ("acme-tpu", TYPES, None),
        ("acme-tpu", None, "tpu"),  # types unknown: `<org>-<type>` trusted, the server checks
        ("gpu", None, None),
        ("other-gpu", TYPES, None),
    ],
)
def test_machine_type_for_pool(pool: str, types: Any, expected: str | None) -> None:
    found, warning = machine_type_for_pool(pool, "acme", types)
    assert found == expected
    assert (warning is None) == (expected is not None)


def test_build_and_push_steps_run_and_template_their_outputs(tmp_path: Path) -> None:
    text = """
    build:
      - prefect.deployments.steps.run_shell_script:
          id: stamp
          script: echo v42
    deployments:
      - name: d
        entrypoint: f.py:flow
        version: '{{ stamp.stdout }}'
        tags: ['built-{{ stamp.stdout }}']
        pull:
          - prefect.deployments.steps.set_working_directory:
              directory: '{{ $CSHARE_FLOWS_DIR }}/{{ stamp.stdout }}'
      - name: e
        entrypoint: f.py:flow
        build: null
    """
    parsed = parse_prefect_yaml(textwrap.dedent(text), tmp_path, environ={})
    d, e = parsed.deployments
    assert parsed.warnings == []  # the step outputs may resolve d's templates
    said: list[str] = []
    run_build_steps(d, said.append)
    assert d.version == "v42" and d.tags == ["built-v42"]
    # Step outputs go into pull steps too; machine-side `$` templates stay.
    assert d.pull_steps == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $CSHARE_FLOWS_DIR }}/v42"
            }
        }
    ]
    assert any("build steps" in s for s in said)
    assert e.build_steps == []  # `build: null` on the deployment overrides the file's


def test_failing_build_step_names_the_deployment(tmp_path: Path) -> None:
    text = """
    deployments:
      - name: d
        entrypoint: f.py:flow
        build:
          - prefect.deployments.steps.run_shell_script:
              script: "false"
    """
    (d,) = parse_prefect_yaml(textwrap.dedent(text), tmp_path, environ={}).deployments
    with pytest.raises(CliError) as err:
        run_build_steps(d, lambda _msg: None)
    assert "'d'" in err.value.message and "run_shell_script" in err.value.message


def test_body_extras() -> None:
    p = Planned(name="d", entrypoint="f.py:f", base=BASE)
    assert p.body_extras() == {}
    p.version, p.concurrency_limit, p.collision_strategy = "1", 2, "cancel_new"
    p.schedules = [{"cron": "@daily"}]
    assert p.body_extras() == {
        "version": "1",
        "concurrency_limit": 2,
        "collision_strategy": "cancel_new",
        "schedules": [{"cron": "@daily"}],
    }


def test_git_clone_pull_step_becomes_a_git_source() -> None:
    clone = "prefect.deployments.steps.git_clone"
    assert git_clone_source(None, "d") == (None, [])
    assert git_clone_source([{"prefect.deployments.steps.set_working_directory": {}}], "d") == (
        None,
        [],
    )
    source, warned = git_clone_source(
        [{clone: {"repository": "https://github.com/team/vision.git", "branch": "dev"}}], "d"
    )
    assert source == {"repository": "https://github.com/team/vision.git", "ref": "dev"}
    assert warned == []
    source, warned = git_clone_source(
        [
            {clone: {"repository": "https://h/r.git", "access_token": "x", "depth": 1}},
            {"prefect.deployments.steps.pip_install_requirements": {}},
        ],
        "deployment 'd'",
    )
    assert source == {"repository": "https://h/r.git", "ref": "HEAD"}  # the default branch
    assert len(warned) == 3
    assert "access_token/credentials are not used" in warned[0]
    assert "'depth'" in warned[1] and "pip_install_requirements" in warned[2]
