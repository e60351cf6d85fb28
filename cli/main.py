"""The `recdistill` command line: datasets, experiments, the server and workers."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from cli.errors import USAGE_EXIT, Parser, UsageError

# Libraries that log their own start-up chatter at INFO (faiss: which CPU build it loaded); shown with -v.
_QUIET_LOGGERS = ("faiss", "faiss.loader")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="recdistill",
        description="Distill compact recommenders (DCD, RRD) and serve them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback with every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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


def _wants_verbose(argv: Sequence[str]) -> bool:
    # Known before parsing, so that a parse error also keeps its traceback under -v; -v is a top-level
    # option, so only what comes before the command counts.
    for arg in argv:
        if arg in ("-v", "--verbose"):
            return True
        if not arg.startswith("-"):
            return False
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _wants_verbose(argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = bool(args.verbose)
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if not verbose:
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return USAGE_EXIT
        return int(handler(args) or 0)
    except UsageError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user error gets
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130
