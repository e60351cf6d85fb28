"""`recdistill experiment`: teacher vs students (none, rrd, dcd, ablations) over seeds -> markdown + JSON."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from core.config import ModelSpec
from core.experiment import METHODS, ExperimentConfig, markdown_table, parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="compare distillation methods over seeds",
        description="Train a teacher once per seed, distill a student with each method, print mean ± std.",
    )
    p.add_argument("--dataset", required=True, help="cached dataset name (ml-100k, ml-1m) or a file path")
    p.add_argument("--teacher", default="bpr:200", help="teacher model:dim (default bpr:200)")
    p.add_argument("--student", default="bpr:20", help="student model:dim (default bpr:20)")
    p.add_argument("--methods", default="none,rrd,dcd", help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--split", default="random", choices=["random", "loo"], help="split mode")
    p.add_argument("--user-col", default="user_id")
    p.add_argument("--item-col", default="item_id")
    p.add_argument("--rating-col", default=None)
    p.add_argument("--timestamp-col", default=None)
    p.add_argument("--rating-threshold", type=float, default=None, help="keep rows with rating >= this")
    p.add_argument("--kcore", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap for teacher and students")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (evaluations)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate (teacher and students)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--teacher-lr", type=float, default=None)
    p.add_argument("--teacher-max-epochs", type=int, default=None)
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars: one log line per epoch instead")
    p.set_defaults(handler=handle)


def _train_opts(args: argparse.Namespace, teacher: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.max_epochs is not None:
        opts["epochs"] = args.max_epochs
    if args.patience is not None:
        opts["patience"] = args.patience
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
    return opts


def handle(args: argparse.Namespace) -> int:
    from core.experiment import run_experiment

    try:
        data_options: dict[str, Any] = {"user_col": args.user_col, "item_col": args.item_col, "kcore": args.kcore}
        if args.rating_col:
            data_options["rating_col"] = args.rating_col
        if args.timestamp_col:
            data_options["timestamp_col"] = args.timestamp_col
        if args.rating_threshold is not None:
            data_options["rating_threshold"] = args.rating_threshold
            data_options.setdefault("rating_col", "rating")
        cfg = ExperimentConfig(
            dataset=args.dataset,
            teacher=ModelSpec.parse(args.teacher),
            student=ModelSpec.parse(args.student),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],  # empty: teacher only
            seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
            split_mode=args.split,
            data_options=data_options,
            teacher_train=_train_opts(args, teacher=True),
            student_train=_train_opts(args, teacher=False),
            method_overrides=parse_overrides(args.set),
            teacher_model_opts=parse_overrides([f"m.{o}" for o in args.teacher_opt]).get("m", {}),
            student_model_opts=parse_overrides([f"m.{o}" for o in args.student_opt]).get("m", {}),
            teacher_cache=args.teacher_cache,
            device=args.device,
        )
        cfg.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from core.progress import EpochLog, ProgressBar

    def callbacks_for(label: str) -> list[Any]:
        # --no-progress (sweeps, log files): one log line per epoch instead of a bar.
        return [EpochLog(label)] if args.no_progress else [ProgressBar(label)]

    command = "recdistill " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.out:
        out = Path(args.out)
    else:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = Path("var") / "experiments" / f"{Path(args.dataset).stem}-{stamp}.json"
    result = run_experiment(cfg, command, out_path=out, callbacks_for=callbacks_for)
    print(markdown_table(result["runs"]))
    print(f"\nresults written to {out}")
    return 0
