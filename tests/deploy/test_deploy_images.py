"""The Dockerfiles and .dockerignore: pinned bases, non-root, slim API, healthcheck, copied sources."""

from __future__ import annotations

import pytest
from dockerfile_checks import (
    ROOT,
    base_images,
    check_dockerfile,
    dockerignore_patterns,
    image_problems,
    is_ignored,
    parse_dockerfile,
)

DOCKERFILES = {"api": ROOT / "docker/api.Dockerfile", "worker": ROOT / "docker/worker.Dockerfile"}


def _text(role: str) -> str:
    return DOCKERFILES[role].read_text(encoding="utf-8")


@pytest.mark.parametrize("role", ["api", "worker"])
def test_real_dockerfiles_have_no_problems(role: str) -> None:
    assert check_dockerfile(parse_dockerfile(_text(role)), role) == []


def test_images_share_uid_and_artifact_dir() -> None:
    api, worker = (parse_dockerfile(_text(r)) for r in ("api", "worker"))
    assert api.last("USER").args == worker.last("USER").args
    assert api.env()["ARTIFACT_DIR"] == worker.env()["ARTIFACT_DIR"] == "/data/artifacts"
    assert api.env()["RECDISTILL_HOME"] == worker.env()["RECDISTILL_HOME"]


def test_worker_base_resolves_to_a_cuda_image_and_cpu_override_is_pinned() -> None:
    worker = parse_dockerfile(_text("worker"))
    (base,) = base_images(worker)
    assert base.startswith("nvidia/cuda:") and image_problems(base, "x") == []
    assert base_images(worker, {"BASE_IMAGE": "ubuntu:24.04"}) == ["ubuntu:24.04"]
    assert image_problems(base_images(worker, {"BASE_IMAGE": "ubuntu"})[0], "x") != []


def test_parser_joins_continuations_and_drops_comments() -> None:
    df = parse_dockerfile("FROM a:1.0\n# note\nRUN echo one \\\n    # inside\n    && echo two\nUSER 1\n")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN", "USER"]
    assert df.all("RUN")[0].args == "echo one && echo two"
    assert df.all("RUN")[0].line == 3
    with pytest.raises(ValueError, match="dangling"):
        parse_dockerfile("FROM a:1.0\nRUN echo \\\n")


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("python:3.11.13-slim-bookworm", True),
        ("nvidia/cuda:12.8.1-runtime-ubuntu24.04", True),
        ("postgres@sha256:" + "a" * 64, True),
        ("localhost:5000/app:1.2", True),
        ("python:latest", False),
        ("python", False),
        ("localhost:5000/app", False),
        ("python:slim", False),
    ],
)
def test_image_pinning(ref: str, ok: bool) -> None:
    assert (image_problems(ref, "here") == []) is ok


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    patterns = dockerignore_patterns((ROOT / ".dockerignore").read_text(encoding="utf-8"))
    for path in (
        ".venv",
        ".git",
        "var/recdistill.db",
        ".env",
        ".env.local",
        "core/__pycache__/x.pyc",
        "datasets",
    ):
        assert is_ignored(path, patterns), path
    for path in (".env.example", "core/datasets.py", "api", "pyproject.toml", "README.md", "alembic.ini"):
        assert not is_ignored(path, patterns), path


BROKEN = [
    ("api", "FROM python:3.11.13-slim-bookworm", "FROM python:latest", "not pinned"),
    ("api", "FROM python:3.11.13-slim-bookworm", "FROM python", "has no tag"),
    ("api", "USER 10001:10001", "USER root", "final USER is root"),
    ("api", "USER 10001:10001", "", "no USER"),
    ("api", "RUN pip install .", "RUN pip install '.[train]'", "must stay slim"),
    ("api", "EXPOSE 8000", "EXPOSE 8080", "ports disagree"),
    ("api", "127.0.0.1:8000/healthz", "127.0.0.1:9000/healthz", "ports disagree"),
    ("api", '"api.server"', '"api.main"', "does not run `python -m api.server`"),
    ("api", "HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
    ("api", "COPY worker ./worker", "COPY workers ./worker", "'workers' does not exist"),
    ("api", "COPY worker ./worker", "COPY tests ./tests", "'worker' is not copied"),
    ("api", "COPY worker ./worker", "COPY worker ./worker\nCOPY .venv ./.venv", "excluded by .dockerignore"),
    # cli/ holds the `recdistill` console script that `pip install .` installs in both images.
    ("worker", "COPY cli ./cli", "", "'cli' is not copied"),
    ("api", "COPY cli ./cli", "", "'cli' is not copied"),
    ("worker", '"recdistill", "worker"]', '"recdistill", "serve"]', "does not run `recdistill worker`"),
    ("worker", 'pip install ".[train]"', 'pip install "."', "`train` extra"),
    ("worker", "ARG FAISS=gpu", "ARG FAISS=cpu", "`gpu` extra"),
    ("worker", "       fi \\", "       \\", "RUN is not valid sh"),
    ("api", "RUN pip install . \\", "RUN (pip install . \\", "RUN is not valid sh"),
    ("worker", 'ARG TORCH_SPEC="torch>=2.2,<2.15"', 'ARG TORCH_SPEC="torch>=1.0"', "differs from pyproject"),
    (
        "worker",
        "ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04",
        "ARG BASE_IMAGE=nvidia/cuda",
        "no tag",
    ),
]


@pytest.mark.parametrize(("role", "old", "new", "expected"), BROKEN)
def test_broken_copies_are_caught(role: str, old: str, new: str, expected: str) -> None:
    text = _text(role)
    assert old in text, f"fixture out of date: {old!r} not in the {role} Dockerfile"
    problems = check_dockerfile(parse_dockerfile(text.replace(old, new, 1)), role)
    assert any(expected in p for p in problems), problems
