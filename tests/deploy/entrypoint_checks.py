"""Checks that a container command names things that exist: modules, app objects, CLI subcommands, flags.

``command_problems(argv, where, subcommands=...)`` returns a list of problems for one command line.
"""

from __future__ import annotations

import argparse
import ast
import configparser
from pathlib import Path

from dockerfile_checks import ROOT, pyproject


def cli_subcommands() -> dict[str, set[str]]:
    """Subcommand -> its option strings, read from the real ``recdistill`` parser."""
    from cli.main import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return {name: set(sub._option_string_actions) for name, sub in action.choices.items()}
    return {}


def module_defines(path: Path, name: str) -> bool:
    """Whether a Python file binds ``name`` at module level (assignment, def, class or import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        elif isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            # A lazy module attribute (PEP 562): `if name == "app": ...` inside __getattr__.
            if any(isinstance(c, ast.Constant) and c.value == name for c in ast.walk(node)):
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                return True
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a dotted module name inside the repository, if any."""
    base = root / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def target_problems(target: str, where: str, root: Path = ROOT) -> list[str]:
    """``module:attr`` must name a module in the repository that binds ``attr``."""
    module, _, attr = target.partition(":")
    path = module_file(module, root)
    if path is None:
        return [f"{where}: module {module} does not exist"]
    if attr and not module_defines(path, attr):
        return [f"{where}: {path.relative_to(root)} defines no {attr}"]
    return []


def console_script_problems(
    name: str = "recdistill", root: Path = ROOT, project: dict | None = None
) -> list[str]:
    """The console script is declared in pyproject and points at a function that exists."""
    scripts = (project or pyproject())["project"].get("scripts", {})
    if name not in scripts:
        return [f"pyproject.toml declares no console script {name!r}"]
    return target_problems(scripts[name], f"console script {name}", root)


def command_problems(
    argv: list[str], where: str, *, subcommands: dict[str, set[str]], root: Path = ROOT
) -> list[str]:
    """Problems of one container command line (python -m, uvicorn, recdistill, alembic or celery)."""
    if not argv:
        return [f"{where}: empty command"]
    prog, args = argv[0], argv[1:]
    if prog == "python" and args[:1] == ["-m"]:
        if len(args) < 2:
            return [f"{where}: python -m without a module"]
        if module_file(args[1], root) is None:
            return [f"{where}: module {args[1]} does not exist"]
        if not module_defines(module_file(args[1], root), "main"):  # type: ignore[arg-type]
            return [f"{where}: module {args[1]} has no main() to run"]
        return []
    if prog == "uvicorn":
        targets = [a for a in args if ":" in a and not a.startswith("-")]
        if not targets:
            return [f"{where}: uvicorn has no module:app target"]
        return target_problems(targets[0], where, root)
    if prog == "recdistill":
        problems = console_script_problems(root=root)
        if not args or args[0] not in subcommands:
            return problems + [f"{where}: `recdistill {args[0] if args else ''}` is not a subcommand"]
        for token in args[1:]:
            flag = token.split("=", 1)[0]
            if flag.startswith("-") and flag not in subcommands[args[0]]:
                problems.append(f"{where}: `recdistill {args[0]}` has no option {flag}")
        return problems
    if prog == "alembic":
        return _alembic_problems(args, where, root)
    if prog == "celery":
        app = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-A", "--app")), None)
        return target_problems(app, where, root) if app else [f"{where}: celery without -A APP"]
    return [f"{where}: unknown program {prog!r}"]


def _alembic_problems(args: list[str], where: str, root: Path) -> list[str]:
    ini = root / "alembic.ini"
    if not ini.is_file():
        return [f"{where}: alembic.ini is missing at the repository root"]
    if args != ["upgrade", "head"]:
        return [f"{where}: expected `alembic upgrade head`, got {args}"]
    config = configparser.ConfigParser(interpolation=None)
    config.read(ini, encoding="utf-8")
    location = config.get("alembic", "script_location", fallback="")
    folder = root / location.replace("%(here)s", str(root))
    if not location or not (folder / "env.py").is_file():
        return [f"{where}: alembic script_location {location!r} has no env.py"]
    return []
