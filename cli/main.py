"""The `recdistill` command line: datasets, experiments, the server and workers."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recdistill",
        description="Distill compact recommenders (DCD, RRD) and serve them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each module registers its own subcommands (imports stay light: torch is imported only when a
    # training command runs).
    from cli import datasets, experiment

    datasets.register(sub)
    experiment.register(sub)
    try:
        from cli import service
    except ImportError:  # pragma: no cover - service extras missing
        service = None  # type: ignore[assignment]
    if service is not None:
        service.register(sub)
    try:
        from cli import quickstart
    except ImportError:  # pragma: no cover
        quickstart = None  # type: ignore[assignment]
    if quickstart is not None:
        quickstart.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        rc = handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)

