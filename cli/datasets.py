"""``recdistill datasets fetch NAME [--force]``, ``datasets list`` and ``datasets synth``; wired in by cli/main.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.errors import UsageError
from core import datasets, synth
from core.data import DataError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``datasets`` command (with ``fetch`` and ``list``) to a top-level subparsers object."""
    parser = subparsers.add_parser("datasets", help="fetch or list cached MovieLens data sets, or generate a synthetic one")
    sub = parser.add_subparsers(dest="datasets_command", required=True)
    fetch = sub.add_parser("fetch", help="download a data set into the cache (idempotent)")
    fetch.add_argument("name", choices=sorted(datasets.KNOWN), help="data set name")
    fetch.add_argument("--force", action="store_true", help="download again even if an intact copy is cached")
    sub.add_parser("list", help="show cached data sets")
    gen = sub.add_parser(
        "synth", help="generate a synthetic data set (Zipf popularity over latent clusters) as a .inter file",
        description="Deterministic by --seed; prints the file's path, which `recdistill experiment --dataset` reads.")
    d = synth.SynthSpec(2, 2, 2)
    gen.add_argument("--users", type=int, required=True, help=f"number of users (at most {synth.MAX_USERS:,})")
    gen.add_argument("--items", type=int, required=True, help=f"number of items (at most {synth.MAX_ITEMS:,})")
    gen.add_argument("--interactions", type=int, required=True,
                     help=f"number of distinct (user, item) pairs (at most {synth.MAX_INTERACTIONS:,})")
    gen.add_argument("--alpha", type=float, default=d.alpha, help=f"Zipf exponent of item popularity (default {d.alpha})")
    gen.add_argument("--clusters", type=int, default=d.clusters, help=f"latent clusters (default {d.clusters})")
    gen.add_argument("--affinity", type=float, default=d.affinity,
                     help=f"share of a user's items drawn from the user's cluster (default {d.affinity})")
    gen.add_argument("--min-per-user", type=int, default=d.min_per_user,
                     help=f"interactions every user has at least (default {d.min_per_user})")
    gen.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    gen.add_argument("--out", default=None,
                     help="the .inter file to write (default: <cache>/<name>/<name>.inter, beside the fetched sets)")
    parser.set_defaults(handler=run)
    return parser


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # noqa: T201 - CLI progress


def run(args: argparse.Namespace) -> int:
    """Handle a parsed ``datasets`` command; returns the process exit status."""
    try:
        if args.datasets_command == "synth":
            return _synth(args)
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


def _synth(args: argparse.Namespace) -> int:
    spec = synth.SynthSpec(
        n_users=args.users, n_items=args.items, n_interactions=args.interactions, alpha=args.alpha,
        clusters=args.clusters, affinity=args.affinity, min_per_user=args.min_per_user, seed=args.seed,
    ).check()
    out = Path(args.out) if args.out else datasets.cache_dir() / spec.name / f"{spec.name}.inter"
    if out.suffix != ".inter":
        raise UsageError(f"--out {out}: the file name must end in .inter (the format it is written in)")
    synth.write(spec, out, progress=_say)
    print(out)  # noqa: T201 - the command's output
    return 0
