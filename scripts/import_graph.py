"""Count the project's import graph: modules, edges, cycles and imports from a lower layer up.

A module here is one file of api/, worker/, cli/ or core/, or one subpackage (core/db, core/distill,
core/models, core/jobs, api/routers) taken whole. Layers are the ones pyproject.toml's import contracts
declare: cli > api > worker > core, and inside core the `containers = ["core"]` layers contract (modules it
does not list count as core/jobs). Imports under `if TYPE_CHECKING:` are left out, as in the contracts.

    PYTHONPATH=$PWD python scripts/import_graph.py [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import grimp

PACKAGES = ("cli", "api", "worker", "core")
WHOLE = {"core.db", "core.distill", "core.models", "core.jobs", "api.routers"}


def unit(module: str) -> str:
    """The module's file or whole subpackage (``core.distill.dcd`` -> ``core.distill``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def ranks(root: Path) -> dict[str, int]:
    """Layer rank of each core unit (0 = top), read from the core layers contract."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract.get("containers") == ["core"]:
            return {
                f"core.{name.strip().strip('()')}": rank
                for rank, layer in enumerate(contract["layers"])
                for name in layer.split("|")
            }
    raise SystemExit("pyproject.toml has no core layers contract")


def rank_of(name: str, core_ranks: dict[str, int]) -> tuple[int, int]:
    package = name.split(".")[0]
    inner = core_ranks.get(name, core_ranks["core.jobs"]) if package == "core" and name != "core" else 0
    return PACKAGES.index(package), inner


def cycles(edges: set[tuple[str, str]], nodes: list[str]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    adjacent: dict[str, list[str]] = {n: sorted(b for a, b in edges if a == n) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in adjacent[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for n in nodes:
        if n not in index:
            visit(n)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="tree to count (e.g. an old commit: git worktree add /tmp/old 7e5c73f)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    present = [p for p in PACKAGES if (args.root / p).is_dir()]
    graph = grimp.build_graph(*present, exclude_type_checking_imports=True, cache_dir=None)
    edges = {
        (unit(a), unit(b))
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if b in graph.modules and unit(a) != unit(b) and "core" not in (unit(a), unit(b))
    }
    nodes = sorted({unit(m) for m in graph.modules} - set(PACKAGES))
    core_ranks = ranks(Path(__file__).resolve().parents[1])  # this checkout's contracts, also for an old --root
    upward = sorted((a, b) for a, b in edges if rank_of(b, core_ranks) < rank_of(a, core_ranks))
    found = cycles(edges, nodes)
    lines = [f"{len(nodes)} modules, {len(edges)} import edges, {len(found)} import cycles, {len(upward)} imports up"]
    lines += ["  cycle: " + " <-> ".join(component) for component in found]
    lines += [f"  up: {a} -> {b}" for a, b in upward]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
