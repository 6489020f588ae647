"""The limits document: defaults, bounds, clear errors naming the key, round trips."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.errors import Invalid
from policies.limits import (
    DEFAULT_LIMITS,
    MAX_DOCUMENT_CHARS,
    Limits,
    LimitsDocument,
    MachineTypeLimits,
    OrganizationLimits,
    parse_limits,
    parse_limits_yaml,
)

DOCUMENTED = """\
organization:
  limits:
    max_machines_per_user: 10
    max_concurrent_jobs_per_user: 20
    max_queued_jobs_per_user: 500
    max_job_runtime: 86400     # seconds
    max_job_memory: 65536      # MB
  machine_types:
    gpu: {max_scale: 4, per_user_quota: 1}
    cpu: {max_scale: 100, per_user_quota: 20}
"""


def limits_yaml(**values: object) -> str:
    lines = ["organization:", "  limits:"]
    lines += [f"    {key}: {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def types_yaml(body: str) -> str:
    return "organization:\n  machine_types:\n" + body


# ------------------------------------------------------------------ valid docs


def test_defaults_are_the_documented_values() -> None:
    limits = DEFAULT_LIMITS.limits
    assert limits == Limits(
        max_machines_per_user=10,
        max_concurrent_jobs_per_user=20,
        max_queued_jobs_per_user=500,
        max_job_runtime=86_400,
        max_job_memory=65_536,
    )
    assert DEFAULT_LIMITS.machine_types == {
        "cpu": MachineTypeLimits(max_scale=100, per_user_quota=20)
    }
    assert LimitsDocument() == DEFAULT_LIMITS


def test_documented_example_parses() -> None:
    doc = parse_limits_yaml(DOCUMENTED)
    assert doc.limits.max_job_runtime == 86_400
    assert doc.machine_types["gpu"] == MachineTypeLimits(max_scale=4, per_user_quota=1)
    assert list(doc.machine_types) == ["gpu", "cpu"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{}\n", DEFAULT_LIMITS, id="empty-mapping-is-all-defaults"),
        pytest.param("organization: {}\n", DEFAULT_LIMITS, id="empty-organization"),
        pytest.param(
            limits_yaml(max_job_runtime=60),
            LimitsDocument(organization=OrganizationLimits(limits=Limits(max_job_runtime=60))),
            id="partial-limits-keep-other-defaults",
        ),
        pytest.param(
            types_yaml("    gpu: {max_scale: 4, per_user_quota: 1}\n"),
            LimitsDocument(
                organization=OrganizationLimits(
                    machine_types={"gpu": MachineTypeLimits(max_scale=4, per_user_quota=1)}
                )
            ),
            id="machine-types-replace-default-cpu",
        ),
        pytest.param(
            "organization:\n  machine_types:\n"
            "    a: &b {max_scale: 2, per_user_quota: 1}\n"
            "    b: {<<: *b, per_user_quota: 2}\n",
            LimitsDocument(
                organization=OrganizationLimits(
                    machine_types={
                        "a": MachineTypeLimits(max_scale=2, per_user_quota=1),
                        "b": MachineTypeLimits(max_scale=2, per_user_quota=2),
                    }
                )
            ),
            id="merge-key-override-is-not-a-duplicate",
        ),
    ],
)
def test_valid_documents(text: str, expected: LimitsDocument) -> None:
    assert parse_limits_yaml(text) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("max_machines_per_user", 1, id="machines-min"),
        pytest.param("max_machines_per_user", 10_000, id="machines-max"),
        pytest.param("max_concurrent_jobs_per_user", 100_000, id="concurrency-max"),
        pytest.param("max_queued_jobs_per_user", 1_000_000, id="queue-max"),
        pytest.param("max_job_runtime", 1, id="runtime-min"),
        pytest.param("max_job_runtime", 30 * 86_400, id="runtime-30-days"),
        pytest.param("max_job_memory", 16 * 1024 * 1024, id="memory-16-tib"),
    ],
)
def test_bounds_are_inclusive(key: str, value: int) -> None:
    doc = parse_limits_yaml(limits_yaml(**{key: value}))
    assert getattr(doc.limits, key) == value


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-letter"),
        pytest.param("gpu_a100", id="underscore-and-digits"),
        pytest.param("a" * 32, id="32-chars"),
    ],
)
def test_valid_machine_type_names(name: str) -> None:
    doc = parse_limits_yaml(types_yaml(f"    {name}: {{max_scale: 1, per_user_quota: 1}}\n"))
    assert name in doc.machine_types


# ---------------------------------------------------------------- invalid docs


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        pytest.param(
            limits_yaml(max_jobz=3),
            "organization.limits.max_jobz",
            ["Unknown key 'max_jobz'", "line 3"],
            id="unknown-limit-key",
        ),
        pytest.param(
            "organisation: {}\n",
            "organisation",
            ["Unknown key", "did you mean 'organization'"],
            id="unknown-top-key-with-suggestion",
        ),
        pytest.param(
            "organization:\n  quotas: {}\n",
            "organization.quotas",
            ["allowed keys: limits, machine_types"],
            id="unknown-organization-key",
        ),
        pytest.param(
            types_yaml("    gpu: {max_scale: 1, per_user_quota: 1, gpus: 2}\n"),
            "organization.machine_types.gpu.gpus",
            ["Unknown key 'gpus'"],
            id="unknown-machine-type-key",
        ),
        pytest.param(
            limits_yaml(max_job_runtime=-5),
            "organization.limits.max_job_runtime",
            ["positive integer", "-5"],
            id="negative-runtime",
        ),
        pytest.param(
            limits_yaml(max_job_memory=0),
            "organization.limits.max_job_memory",
            ["positive integer", "got 0"],
            id="zero-memory",
        ),
        pytest.param(
            limits_yaml(max_job_runtime=30 * 86_400 + 1),
            "organization.limits.max_job_runtime",
            ["at most 2592000 seconds"],
            id="absurd-runtime",
        ),
        pytest.param(
            limits_yaml(max_job_memory=16 * 1024 * 1024 + 1),
            "organization.limits.max_job_memory",
            ["at most 16777216 MB"],
            id="absurd-memory",
        ),
        pytest.param(
            limits_yaml(max_concurrent_jobs_per_user=100_001),
            "organization.limits.max_concurrent_jobs_per_user",
            ["at most 100000"],
            id="absurd-concurrency",
        ),
        pytest.param(
            limits_yaml(max_machines_per_user=10_001),
            "organization.limits.max_machines_per_user",
            ["at most 10000"],
            id="absurd-machines",
        ),
        pytest.param(
            limits_yaml(max_queued_jobs_per_user=10**12),
            "organization.limits.max_queued_jobs_per_user",
            ["at most 1000000"],
            id="absurd-queue",
        ),
        pytest.param(
            limits_yaml(max_job_memory="'10'"),
            "organization.limits.max_job_memory",
            ["must be an integer", "the string '10'"],
            id="wrong-type-string",
        ),
        pytest.param(
            limits_yaml(max_job_memory=1.5),
            "organization.limits.max_job_memory",
            ["must be an integer", "1.5"],
            id="wrong-type-float",
        ),
        pytest.param(
            limits_yaml(max_job_memory="true"),
            "organization.limits.max_job_memory",
            ["must be an integer"],
            id="wrong-type-bool",
        ),
        pytest.param(
            "organization:\n  limits: [1, 2]\n",
            "organization.limits",
            ["must be a mapping", "a list"],
            id="limits-not-a-mapping",
        ),
        pytest.param(
            types_yaml("    gpu: 4\n"),
            "organization.machine_types.gpu",
            ["must be a mapping"],
            id="machine-type-not-a-mapping",
        ),
        pytest.param(
            types_yaml("    gpu: {max_scale: 4}\n"),
            "organization.machine_types.gpu.per_user_quota",
            ["is required"],
            id="machine-type-missing-quota",
        ),
        pytest.param(
            types_yaml("    gpu: {max_scale: 0, per_user_quota: 1}\n"),
            "organization.machine_types.gpu.max_scale",
            ["positive integer"],
            id="machine-type-zero-scale",
        ),
        pytest.param(
            "organization:\n  machine_types: {}\n",
            "organization.machine_types",
            ["at least one machine type"],
            id="no-machine-types",
        ),
        pytest.param(
            types_yaml("    GPU: {max_scale: 1, per_user_quota: 1}\n"),
            "organization.machine_types.GPU",
            ["Machine type name 'GPU' is invalid"],
            id="bad-type-name-uppercase",
        ),
        pytest.param(
            types_yaml("    1gpu: {max_scale: 1, per_user_quota: 1}\n"),
            "organization.machine_types.1gpu",
            ["invalid"],
            id="bad-type-name-leading-digit",
        ),
        pytest.param(
            types_yaml("    gpu-big: {max_scale: 1, per_user_quota: 1}\n"),
            "organization.machine_types.gpu-big",
            ["invalid"],
            id="bad-type-name-dash",
        ),
        pytest.param(
            types_yaml(f"    {'a' * 33}: {{max_scale: 1, per_user_quota: 1}}\n"),
            f"organization.machine_types.{'a' * 33}",
            ["invalid"],
            id="bad-type-name-too-long",
        ),
        pytest.param(
            types_yaml("    on: {max_scale: 1, per_user_quota: 1}\n"),
            "organization.machine_types.1",
            ["must be strings", "quote"],
            id="type-name-yaml-reads-as-boolean",
        ),
        pytest.param(
            limits_yaml(max_job_runtime=-1, max_job_memory=0),
            "organization.limits.max_job_runtime",
            ["1 more problem"],
            id="several-problems-first-reported-and-counted",
        ),
    ],
)
def test_invalid_documents_name_the_key(text: str, field: str, words: list[str]) -> None:
    with pytest.raises(Invalid) as caught:
        parse_limits_yaml(text)
    assert caught.value.field == field
    for word in words:
        assert word in caught.value.detail
    assert caught.value.detail.endswith(".")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(
            "organization:\n  limits: [1, 2\n",
            ["not valid YAML", "line 3, column 1"],
            id="syntax-error-with-position",
        ),
        pytest.param(
            "organization:\n\tlimits: {}\n",
            ["not valid YAML", "line 2"],
            id="tab-indentation",
        ),
        pytest.param(
            limits_yaml(max_job_runtime=5, max_job_memory=6) + "    max_job_runtime: 7\n",
            ["duplicate key 'max_job_runtime'", "line 5"],
            id="duplicate-key",
        ),
        pytest.param("", ["empty"], id="empty-text"),
        pytest.param("# only a comment\n", ["empty"], id="only-comment"),
        pytest.param("- a\n- b\n", ["must be a mapping", "a list"], id="top-level-list"),
        pytest.param("42\n", ["must be a mapping"], id="top-level-scalar"),
        pytest.param("a: 1\n---\nb: 2\n", ["not valid YAML"], id="two-documents"),
        pytest.param("a: &a [*a]\n", ["not valid YAML"], id="recursive-alias"),
        pytest.param("[" * 20_000 + "]" * 20_000, ["nested too deeply"], id="deep-nesting"),
        pytest.param("a: !!python/name:os.system\n", ["not valid YAML"], id="python-tag-refused"),
        pytest.param("x" * (MAX_DOCUMENT_CHARS + 1), ["too large"], id="too-large"),
    ],
)
def test_unreadable_documents(text: str, words: list[str]) -> None:
    with pytest.raises(Invalid) as caught:
        parse_limits_yaml(text)
    assert caught.value.field is None
    for word in words:
        assert word in caught.value.detail


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param(None, None, id="none"),
        pytest.param([], None, id="list"),
        pytest.param(
            {"organization": {"limits": {"max_jobz": 1}}},
            "organization.limits.max_jobz",
            id="unknown-key",
        ),
        pytest.param(
            {"organization": {"limits": {"max_job_runtime": "60"}}},
            "organization.limits.max_job_runtime",
            id="string-number-from-json",
        ),
    ],
)
def test_parse_limits_rejects_bad_data(data: object, field: str | None) -> None:
    with pytest.raises(Invalid) as caught:
        parse_limits(data)
    assert caught.value.field == field
    assert "line" not in caught.value.detail  # no text, no position


def test_parse_limits_accepts_a_document() -> None:
    assert parse_limits(DEFAULT_LIMITS) is DEFAULT_LIMITS


def test_document_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        DEFAULT_LIMITS.limits.max_job_runtime = 1  # type: ignore[misc]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(DEFAULT_LIMITS, id="defaults"),
        pytest.param(parse_limits_yaml(DOCUMENTED), id="documented"),
    ],
)
def test_round_trips(doc: LimitsDocument) -> None:
    assert parse_limits_yaml(doc.to_yaml()) == doc
    assert parse_limits(doc.model_dump()) == doc
    assert parse_limits(doc.model_dump(mode="json")) == doc


_type_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")
_machine_types = st.builds(
    MachineTypeLimits,
    max_scale=st.integers(1, 100_000),
    per_user_quota=st.integers(1, 100_000),
)
documents = st.builds(
    LimitsDocument,
    organization=st.builds(
        OrganizationLimits,
        limits=st.builds(
            Limits,
            max_machines_per_user=st.integers(1, 10_000),
            max_concurrent_jobs_per_user=st.integers(1, 100_000),
            max_queued_jobs_per_user=st.integers(1, 1_000_000),
            max_job_runtime=st.integers(1, 30 * 86_400),
            max_job_memory=st.integers(1, 16 * 1024 * 1024),
        ),
        machine_types=st.dictionaries(_type_names, _machine_types, min_size=1, max_size=4),
    ),
)


@given(documents)
def test_any_valid_document_round_trips(doc: LimitsDocument) -> None:
    assert parse_limits_yaml(doc.to_yaml()) == doc
    assert parse_limits(doc.model_dump()) == doc


@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_invalid(text: str) -> None:
    try:
        parse_limits_yaml(text)
    except Invalid as exc:
        assert exc.detail
