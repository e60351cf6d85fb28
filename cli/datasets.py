"""``recdistill datasets fetch NAME [--force]`` and ``recdistill datasets list``; wired in by cli/main.py."""

from __future__ import annotations

import argparse
import sys

from cli.errors import UsageError
from core import datasets
from core.data import DataError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``datasets`` command (with ``fetch`` and ``list``) to a top-level subparsers object."""
    parser = subparsers.add_parser("datasets", help="fetch or list cached MovieLens data sets")
    sub = parser.add_subparsers(dest="datasets_command", required=True)
    fetch = sub.add_parser("fetch", help="download a data set into the cache (idempotent)")
    fetch.add_argument("name", choices=sorted(datasets.KNOWN), help="data set name")
    fetch.add_argument("--force", action="store_true", help="download again even if an intact copy is cached")
    sub.add_parser("list", help="show cached data sets")
    parser.set_defaults(handler=run)
    return parser


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # noqa: T201 - CLI progress


def run(args: argparse.Namespace) -> int:
    """Handle a parsed ``datasets`` command; returns the process exit status."""
    try:
        if args.datasets_command == "fetch":
            path = datasets.fetch(args.name, force=args.force, progress=_say)
            print(path)  # noqa: T201 - the command's output
            return 0
        rows = datasets.list_cached()
        print(f"cache: {datasets.cache_dir()}")  # noqa: T201
        if not rows:
            print("no data sets cached; try: recdistill datasets fetch ml-100k")  # noqa: T201
            return 0
        print(f"{'name':<10} {'users':>7} {'items':>7} {'interactions':>13} {'MB':>7}  status  path")  # noqa: T201
        for r in rows:
            status = "ok" if r["intact"] else "corrupt"
            print(  # noqa: T201
                f"{r['name']:<10} {r['n_users']:>7} {r['n_items']:>7} {r['n_interactions']:>13} "
                f"{r['size_bytes'] / 1e6:>7.1f}  {status:<7} {r['path']}"
            )
        return 0
    except DataError as exc:  # a failed download or a corrupt cache: cli/main.py prints it as one line
        raise UsageError(str(exc)) from exc
