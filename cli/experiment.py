"""`recdistill experiment`: teacher vs students (none, rrd, dcd, ablations) over seeds -> markdown + JSON."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cli.errors import TRAIN_INSTALL_HINT, UsageError
from core.config import ModelSpec
from core.data_read import DataError, MissingColumnError
from core.datasets import KNOWN
from core.experiment import METHODS, ExperimentConfig, ExperimentConfigError, markdown_table, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="compare distillation methods over seeds",
        description="Train a teacher once per seed, distill a student with each method, print mean ± std.",
    )
    p.add_argument("--dataset", required=True,
                   help=f"a cached data set name ({', '.join(sorted(KNOWN))}) or the path of an interactions file")
    p.add_argument("--teacher", default="bpr:200", help="teacher MODEL:DIM, or ease:L2 for the closed-form EASE teacher (default bpr:200)")
    p.add_argument("--student", default="bpr:20", help="student MODEL:DIM, DIM below the teacher's (default bpr:20)")
    p.add_argument("--methods", default="none,rrd,dcd", help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--split", default="random", choices=["random", "loo"],
                   help="random: 80/10/10 per user; loo: leave-one-out (each user's latest interaction by --timestamp-col, else a random one)")
    p.add_argument("--user-col", default="user_id", help="the file's user id column (default user_id)")
    p.add_argument("--item-col", default="item_id", help="the file's item id column (default item_id)")
    p.add_argument("--rating-col", default=None, help="the file's rating column (needed by --rating-threshold)")
    p.add_argument("--timestamp-col", default=None, help="the file's timestamp column (needed by --split loo)")
    p.add_argument("--rating-threshold", type=float, default=None,
                   help="keep rows with rating >= this (needs --rating-col)")
    p.add_argument("--kcore", type=int, default=0,
                   help="keep only users and items with at least this many interactions (default 0: all)")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap for teacher and students")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (evaluations)")
    p.add_argument("--min-epochs", type=int, default=None,
                   help="no early stop before this epoch (a small model's popularity plateau can outlast patience)")
    p.add_argument("--eval-every", type=int, default=None, help="validate every this many epochs (default 1)")
    p.add_argument("--valid-users", type=int, default=None,
                   help="validate for early stopping on a seeded sample of this many users (default: all; a "
                   "full-ranking pass scores users x items); the reported valid and test metrics always use every user")
    p.add_argument("--batch-size", type=int, default=None, help="training pairs per mini-batch")
    p.add_argument("--lr", type=float, default=None, help="learning rate (teacher and students)")
    p.add_argument("--weight-decay", type=float, default=None, help="Adam weight decay (teacher and students)")
    p.add_argument("--teacher-lr", type=float, default=None, help="the teacher's learning rate (overrides --lr)")
    p.add_argument("--teacher-max-epochs", type=int, default=None,
                   help="the teacher's epoch cap (overrides --max-epochs)")
    p.add_argument("--teacher-sparse-updates", action="store_true",
                   help="train the teacher (bpr) with sparse gradients and lazy Adam: an epoch linear in the data, "
                   "not quadratic (bench/results/teacher-epoch-scale.json); results differ from dense Adam")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="distiller hyper-parameter, e.g. dcd.eps=0.05 (repeatable)")
    p.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="teacher model option, e.g. reg=1e-4 (repeatable)")
    p.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="student model option, e.g. reg=1e-4 (repeatable)")
    p.add_argument("--teacher-cache", default=None, help="folder to cache/reuse trained teachers")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default=None,
                   help="JSON results file (default: var/experiments/<dataset>-<UTC time>.json)")
    p.add_argument("--no-progress", action="store_true",
                   help="one log line per epoch even on a terminal (the default when stderr is not a terminal)")
    p.set_defaults(handler=handle)


def _train_opts(args: argparse.Namespace, teacher: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.max_epochs is not None:
        opts["epochs"] = args.max_epochs
    if args.patience is not None:
        opts["patience"] = args.patience
    if args.min_epochs is not None:
        opts["min_epochs"] = args.min_epochs
    if args.eval_every is not None:
        opts["eval_every"] = args.eval_every
    if args.valid_users is not None:
        opts["valid_users"] = args.valid_users
    if args.batch_size is not None:
        opts["batch_size"] = args.batch_size
    if args.lr is not None:
        opts["lr"] = args.lr
    if args.weight_decay is not None:
        opts["weight_decay"] = args.weight_decay
    if teacher and args.teacher_lr is not None:
        opts["lr"] = args.teacher_lr
    if teacher and args.teacher_max_epochs is not None:
        opts["epochs"] = args.teacher_max_epochs
    if teacher and args.teacher_sparse_updates:
        opts["sparse_updates"] = True
    return opts


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected a comma list of integers (e.g. 0,1,2), got {text!r}") from None


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.rating_threshold is not None and not args.rating_col:
        # Refused rather than guessing a column named "rating": a wrong guess filters on the wrong numbers.
        raise UsageError("--rating-threshold needs --rating-col: name the file's rating column (e.g. --rating-col rating)")
    if args.kcore < 0:
        raise UsageError(f"--kcore must be 0 (no filter) or a positive count, got {args.kcore}")
    data_options: dict[str, Any] = {"user_col": args.user_col, "item_col": args.item_col, "kcore": args.kcore}
    if args.rating_col:
        data_options["rating_col"] = args.rating_col
    if args.timestamp_col:
        data_options["timestamp_col"] = args.timestamp_col
    if args.rating_threshold is not None:
        data_options["rating_threshold"] = args.rating_threshold
    return data_options


def _check_dataset(name: str) -> None:
    """A known name, or a readable file: found out now, not after the imports and the first log lines."""
    if name in KNOWN:
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise UsageError(
            f"--dataset {name!r}: no such data set or file; use one of {', '.join(sorted(KNOWN))} "
            "(recdistill datasets list shows the cached ones) or the path of an interactions file"
        )
    if not path.is_file():
        raise UsageError(f"--dataset {name!r} is not a file; give the path of an interactions file (CSV, TSV, ...)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"--dataset {name!r} cannot be read (permission denied); check the file's permissions")


def _require_torch() -> None:
    try:
        import torch  # noqa: F401 - only whether it imports
    except ImportError as exc:
        raise UsageError(f"recdistill experiment trains models and needs PyTorch ({exc}); {TRAIN_INSTALL_HINT}") from exc


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment the arguments describe, every option checked (a UsageError names the bad one)."""
    try:
        cfg = ExperimentConfig(
            dataset=args.dataset,
            teacher=_model_spec(args.teacher, "--teacher"),
            student=_model_spec(args.student, "--student"),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],  # empty: teacher only
            seeds=_parse_ints(args.seeds, "--seeds"),
            split_mode=args.split,
            data_options=_data_options(args),
            teacher_train=_train_opts(args, teacher=True),
            student_train=_train_opts(args, teacher=False),
            method_overrides=_overrides(args.set, "--set"),
            teacher_model_opts=_overrides([f"m.{o}" for o in args.teacher_opt], "--teacher-opt").get("m", {}),
            student_model_opts=_overrides([f"m.{o}" for o in args.student_opt], "--student-opt").get("m", {}),
            teacher_cache=args.teacher_cache,
            device=args.device,
        )
        cfg.validate()  # distiller keys and values, fit-loop values: before anything trains
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return cfg


def _model_spec(text: str, option: str) -> ModelSpec:
    try:
        return ModelSpec.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from exc


def _overrides(items: list[str], option: str) -> dict[str, dict[str, Any]]:
    try:
        return parse_overrides(items)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from exc


def _data_error(exc: DataError) -> UsageError:
    if isinstance(exc, MissingColumnError):
        return UsageError(f"{exc}; name the file's columns with --user-col and --item-col "
                          "(and --rating-col / --timestamp-col)")
    return UsageError(str(exc))


def handle(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    _check_dataset(args.dataset)
    _require_torch()
    from core.experiment import run_experiment
    from core.progress import EpochLog, ProgressBar

    # A bar on a terminal; in a log file (or with --no-progress) one line per epoch instead.
    bar = not args.no_progress and sys.stderr.isatty()

    def callbacks_for(label: str) -> list[Any]:
        return [ProgressBar(label)] if bar else [EpochLog(label)]

    command = "recdistill " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.out:
        out = Path(args.out)
    else:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = Path("var") / "experiments" / f"{Path(args.dataset).stem}-{stamp}.json"
    try:
        result = run_experiment(cfg, command, out_path=out, callbacks_for=callbacks_for)
    except DataError as exc:
        raise _data_error(exc) from exc
    except ExperimentConfigError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # the data file vanished or became unreadable since the check above
        if exc.filename is None or Path(exc.filename) != Path(args.dataset).expanduser():
            raise
        raise UsageError(f"--dataset {args.dataset!r} cannot be read ({exc.strerror})") from exc
    print(markdown_table(result["runs"]))  # noqa: T201 - the command's output
    print(f"\nresults written to {out}")  # noqa: T201
    return 0
