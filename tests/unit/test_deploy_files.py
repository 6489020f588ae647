"""The shipped deployment files name only commands, options and settings that exist.

There is no container registry here, so deploy/compose.yaml cannot be run in the test
suite: instead every `cshare ...` command line in it and in deploy/systemd/ is parsed by
the real CLI (`--help` appended: click resolves the subcommand and rejects an unknown
option before printing help), and every CSHARE_* / PREFECT_* name in the env files is
checked against what reads it: Compute Share's settings, a CLI option's envvar, a name
our code reads from the environment, or one of Prefect's (and prefect-redis's) settings.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from api.cli.main import app
from orgs.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
ENV_FILES = [
    DEPLOY / "cshare.env.example",
    SYSTEMD / "cshare.env.example",
    SYSTEMD / "agent.env.example",
]
ENV_NAME = re.compile(r"^(?:CSHARE|PREFECT)_[A-Z0-9_]+$")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def _compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if command and command[0] == "cshare":
            yield f"compose:{name}", list(command[1:])


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _unit_commands() -> Iterator[tuple[str, list[str]]]:
    for path in sorted(SYSTEMD.glob("*.service")):
        args = shlex.split(_unit(path)["Service"]["ExecStart"])
        assert Path(args[0]).name == "cshare", path
        # %i: the instance name (a port or an agent name); ${X}: from the env file.
        values = {"%i": "8000" if "agent" not in path.name else "box-1"}
        filled = [values.get(a, re.sub(r"\$\{[A-Z_]+\}", "2", a)) for a in args[1:]]
        yield f"systemd:{path.name}", filled


def _all_commands() -> list[tuple[str, list[str]]]:
    return [*_compose_commands(), *_unit_commands()]


def test_the_files_name_every_role() -> None:
    commands = {
        tuple(args[:2]) if args[0] == "agent" else (args[0],) for _, args in _all_commands()
    }
    assert commands >= {("server",), ("prefect-server",), ("services",), ("agent", "start")}
    services = set(_compose()["services"])
    assert {"postgres", "redis", "lb", "services"} <= services
    assert sum(s.startswith("prefect-server") for s in services) == 2
    assert sum(s.startswith("cshare-server") for s in services) == 2
    units = {p.name for p in SYSTEMD.glob("*.service")}
    assert units == {
        "cshare-server@.service",
        "cshare-prefect-server@.service",
        "cshare-services.service",
        "cshare-agent@.service",
    }


@pytest.mark.parametrize(("where", "args"), _all_commands(), ids=lambda v: str(v))
def test_each_command_line_parses(where: str, args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{where}: cshare {' '.join(args)}\n{result.output}"
    assert "Usage:" in result.output


def _cli_envvars() -> set[str]:
    found: set[str] = set()

    # Any: typer builds on its own vendored click.
    def walk(command: Any) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def _read_by_our_code() -> set[str]:
    names: set[str] = set()
    for package in ("agents", "api", "orgs", "flows", "datasets"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](CSHARE_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def _prefect_env_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect_redis.client import (  # type: ignore[import-untyped]
        RedisMessagingSettings,
    )
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    names: set[str] = set()

    def walk(model: type[BaseSettings], prefix: str) -> None:
        for name, info in model.model_fields.items():
            names.add(f"{prefix}{name}".upper())
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(c.upper() for c in alias.choices if isinstance(c, str))
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, BaseSettings):
                walk(sub, f"{prefix}{name}_")

    walk(PrefectSettings, "PREFECT_")
    walk(RedisMessagingSettings, "PREFECT_REDIS_MESSAGING_")
    return names


def _env_file_names(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")]


def test_every_setting_named_is_real() -> None:
    known_cshare = (
        {f"CSHARE_{name.upper()}" for name in Settings.model_fields}
        | _cli_envvars()
        | _read_by_our_code()
    )
    known_prefect = _prefect_env_names()
    named: dict[str, str] = {}
    for path in ENV_FILES:
        for name in _env_file_names(path):
            named[name] = path.name
    for path in SYSTEMD.glob("*.service"):
        for line in _unit(path)["Service"].get("Environment", "").split():
            named[line.split("=", 1)[0]] = path.name
    for service in _compose()["services"].values():
        for name in service.get("environment") or {}:
            named[name] = "compose.yaml"
    checked = {n: w for n, w in named.items() if ENV_NAME.match(n)}
    assert len(checked) >= 10
    unknown = sorted(
        f"{name} ({where})"
        for name, where in checked.items()
        if name not in (known_cshare if name.startswith("CSHARE_") else known_prefect)
    )
    assert not unknown, unknown


def test_the_prefect_settings_we_set_are_real() -> None:
    """What `cshare prefect-server`/`services`/`up` put in Prefect's environment."""
    from api.cli.up.prefect_env import PrefectConfig, prefect_env

    env = prefect_env(
        PrefectConfig(
            home=Path("/tmp/x"),
            database_url="postgresql+asyncpg://u@h/p",
            auth="a:b",
            redis_url="redis://127.0.0.1:6379/3",
        ),
        base={},
    )
    names = set(env) | {
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START",
    }
    unknown = sorted(names - _prefect_env_names())
    assert not unknown, unknown
    # The redis modules exist in the installed prefect-redis.
    import importlib

    for module in {env[k] for k in env if k.endswith(("BROKER", "CACHE", "ORDERING", "STORAGE"))}:
        importlib.import_module(module)


def test_compose_env_file_and_volumes_are_shipped() -> None:
    compose = _compose()
    assert (DEPLOY / "cshare.env.example").exists()
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
            else:
                assert source in compose["volumes"], source
    build = compose["x-cshare"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).exists()
