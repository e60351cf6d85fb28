"""docker-compose.yml: services, health checks, dependencies, GPU reservation, ports, env and volumes."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml
from compose_checks import check_compose, interpolated_vars
from dockerfile_checks import ROOT, parse_env_example
from entrypoint_checks import cli_subcommands, command_problems

from core.settings import Settings


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def check() -> Callable[[dict], list[str]]:
    settings_env = {str(f.validation_alias) for f in Settings.model_fields.values()}
    documented = set(parse_env_example((ROOT / ".env.example").read_text(encoding="utf-8")))
    subcommands = cli_subcommands()

    def run(data: dict) -> list[str]:
        return check_compose(
            data,
            settings_env=settings_env,
            documented_env=documented,
            command_check=lambda argv, where: command_problems(argv, where, subcommands=subcommands),
        )

    return run


def test_real_compose_has_no_problems(compose: dict, check: Callable[[dict], list[str]]) -> None:
    assert check(compose) == []


def test_interpolations_are_found(compose: dict) -> None:
    assert interpolated_vars(compose) == {"POSTGRES_PASSWORD"}
    assert interpolated_vars({"a": ["${X}", "$${LITERAL}", "${Y:-d}", "${Z?err}"]}) >= {"X", "Y", "Z"}


def _drop(path: tuple[str, ...]) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(path: tuple[str, ...], value: object) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


S = "services"
BROKEN: list[tuple[str, Callable[[dict], None], str]] = [
    ("no redis", _drop((S, "redis")), "service redis is missing"),
    ("no api healthcheck", _drop((S, "api", "healthcheck")), "service api: no healthcheck"),
    ("no postgres healthcheck", _drop((S, "postgres", "healthcheck")), "service postgres: no healthcheck"),
    ("latest postgres", _set((S, "postgres", "image"), "postgres:latest"), "not pinned"),
    (
        "missing Dockerfile",
        _set((S, "api", "build"), {"context": ".", "dockerfile": "docker/nope.Dockerfile"}),
        "does not exist",
    ),
    ("missing context", _set((S, "worker", "build"), {"context": "nowhere"}), "build context"),
    ("unpinned cpu base", _set((S, "worker-cpu", "build", "args", "BASE_IMAGE"), "ubuntu"), "has no tag"),
    (
        "api starts before migrations",
        _set((S, "api", "depends_on", "migrate", "condition"), "service_started"),
        "depends_on migrate must have condition service_completed_successfully",
    ),
    ("worker ignores redis health", _drop((S, "worker", "depends_on", "redis")), "depends_on redis"),
    ("restarting migrate", _set((S, "migrate", "restart"), "always"), "must not restart"),
    ("no GPU", _drop((S, "worker", "deploy")), "no NVIDIA GPU reservation"),
    ("cpu worker always on", _drop((S, "worker-cpu", "profiles")), "'cpu' profile"),
    ("port mismatch", _set((S, "api", "ports"), ["8000:8080"]), "ports disagree"),
    (
        "command port mismatch",
        _set((S, "api", "command"), ["python", "-m", "api.server", "--port", "9000"]),
        "ports disagree",
    ),
    ("unknown setting", _set((S, "api", "environment", "RECDISTILL_TYPO"), "1"), "RECDISTILL_TYPO is not"),
    (
        "undocumented interpolation",
        _set((S, "redis", "command"), ["redis-server", "${REDIS_ARGS}"]),
        "${REDIS_ARGS} is used",
    ),
    ("no .env", _drop((S, "worker", "env_file")), "not read from .env"),
    (
        "artifact path mismatch",
        _set((S, "worker", "volumes"), ["artifacts:/srv/artifacts"]),
        "ARTIFACT_DIR=/data/artifacts but artifacts is mounted at /srv/artifacts",
    ),
    (
        "artifacts not mounted",
        _set((S, "api", "volumes"), []),
        "service api: the artifacts volume is not mounted",
    ),
    ("undeclared volume", _drop(("volumes", "artifacts")), "artifacts is not declared"),
    (
        "bad app module",
        _set((S, "api", "command"), ["python", "-m", "api.nope", "--port", "8000"]),
        "module api.nope does not exist",
    ),
    (
        "bad app object",
        _set((S, "api", "command"), ["uvicorn", "api.main:application", "--port", "8000"]),
        "defines no application",
    ),
    ("bad subcommand", _set((S, "worker", "command"), ["recdistill", "wrker"]), "is not a subcommand"),
    (
        "bad worker flag",
        _set((S, "worker", "command"), ["recdistill", "worker", "--gpus", "2"]),
        "has no option --gpus",
    ),
    (
        "bad migration",
        _set((S, "migrate", "command"), ["alembic", "downgrade", "base"]),
        "expected `alembic upgrade head`",
    ),
]


@pytest.mark.parametrize(("label", "mutate", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copies_are_caught(
    compose: dict,
    check: Callable[[dict], list[str]],
    label: str,
    mutate: Callable[[dict], None],
    expected: str,
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check(broken)
    assert any(expected in p for p in problems), f"{label}: {problems}"
