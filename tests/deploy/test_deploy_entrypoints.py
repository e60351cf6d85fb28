"""What the images run exists: the API app and the Celery app import without torch; the CLI has its commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_checks import ROOT, pyproject
from entrypoint_checks import cli_subcommands, command_problems, console_script_problems, module_defines

# Fails any `import torch` (and CUDA libraries) the way the slim API image would, then imports a module.
_NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "triton"):
            raise ImportError(f"{name} is not installed in the API image")
sys.meta_path.insert(0, Block())
import importlib
for target in sys.argv[1:]:
    module, attr = target.split(":")
    print(target, type(getattr(importlib.import_module(module), attr)).__name__)
"""


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Type name of each image entry object, imported in a fresh process where torch cannot load."""
    env = {"RECDISTILL_HOME": str(tmp_path_factory.mktemp("home")), "PATH": "/usr/bin:/bin"}
    targets = ["api.main:app", "worker.celery_app:celery_app"]
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *targets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_api_app_imports_without_torch(imported: dict[str, str]) -> None:
    assert imported["api.main:app"] == "FastAPI"


def test_celery_app_imports_without_torch(imported: dict[str, str]) -> None:
    assert imported["worker.celery_app:celery_app"] == "Celery"


def test_console_script_and_subcommands_exist() -> None:
    assert console_script_problems() == []
    assert pyproject()["project"]["scripts"]["recdistill"] == "cli.main:main"
    subcommands = cli_subcommands()
    for name in ("serve", "worker", "migrate", "quickstart"):
        assert name in subcommands, f"`recdistill {name}` is missing (have {sorted(subcommands)})"


def test_quickstart_is_wired_into_the_cli() -> None:
    assert {"--dataset", "--teacher", "--student", "--port"} <= cli_subcommands()["quickstart"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "empty command"),
        (["gunicorn", "api.main:app"], "unknown program"),
        (["uvicorn", "--port", "8000"], "no module:app target"),
        (["uvicorn", "api.nothing:app"], "module api.nothing does not exist"),
        (["python", "-m", "api.nothing"], "module api.nothing does not exist"),
        (["python", "-m", "api.schemas"], "has no main() to run"),
        (["recdistill", "serv"], "`recdistill serv` is not a subcommand"),
        (["recdistill", "worker", "--gpus=2"], "`recdistill worker` has no option --gpus"),
        (["alembic", "upgrade", "base"], "expected `alembic upgrade head`"),
        (["celery", "worker"], "celery without -A APP"),
        (["celery", "-A", "worker.nope", "worker"], "module worker.nope does not exist"),
    ],
)
def test_broken_commands_are_caught(argv: list[str], expected: str) -> None:
    subcommands = {"worker": {"--concurrency", "-h", "--help"}, "serve": set()}
    problems = command_problems(argv, "cmd", subcommands=subcommands)
    assert any(expected in p for p in problems), problems


def test_good_commands_pass() -> None:
    subs = {"worker": {"--concurrency"}}
    assert command_problems(["alembic", "upgrade", "head"], "cmd", subcommands=subs) == []
    assert command_problems(["uvicorn", "api.main:app", "--port", "8000"], "cmd", subcommands=subs) == []
    assert command_problems(["python", "-m", "api.server", "--port", "8000"], "cmd", subcommands=subs) == []
    assert command_problems(["celery", "-A", "worker.celery_app", "worker"], "cmd", subcommands=subs) == []
    assert command_problems(["recdistill", "worker", "--concurrency", "1"], "cmd", subcommands=subs) == []


def test_module_defines_sees_assignments_defs_imports_and_lazy_attributes(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from x import y as app2\nv: int = 1\ndef f(): pass\n"
        "def __getattr__(name):\n    if name == 'lazy':\n        return 1\n    raise AttributeError(name)\n"
    )
    for name in ("app2", "v", "f", "lazy"):
        assert module_defines(path, name), name
    assert not module_defines(path, "app")


def test_the_torch_blocker_catches_a_torch_import(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text("import torch\napp = object()\n")
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "leaky:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "torch is not installed in the API image" in done.stderr
