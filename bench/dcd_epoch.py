"""Epoch-time benchmark: student alone vs RRD vs DCD on ML-1M (batch 1024), one thread and default threads.

Usage: .venv/bin/python bench/dcd_epoch.py PATH/ml-1m.inter [--epochs 3] [--teacher-epochs 2] [--out FILE]
Every method runs through ``core.train.fit`` (the product's batch loop); the epoch time is fit's training time
per epoch (``on_epoch_start`` included, so DCD's refresh is amortised over its period), evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import TrainConfig  # noqa: E402
from core.data import SplitData, load_interactions, split  # noqa: E402
from core.distill import RELEASED_PROCEDURE, build_distiller  # noqa: E402
from core.models.bpr import BPRMF  # noqa: E402
from core.train import fit  # noqa: E402

logger = logging.getLogger("bench.dcd_epoch")

#: The authors' released code on this kind of machine, one thread, batch 1024, ML-1M (from the issue).
AUTHORS_SECONDS = {"none": 2.8, "rrd": 13.1, "dcd": 66.7}

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "rrd": ("rrd", {}),
    # The released code's procedure: every row, fresh samples every mini-batch, one step per batch.
    "dcd": ("dcd", RELEASED_PROCEDURE),
    # row_fraction: the distillation terms on a random 1/8 of each batch's distinct users/items, weights x8
    # (same expected gradient, see core/distill/base.py).
    "rrd-rows1/8": ("rrd", {"row_fraction": 0.125}),
    "dcd-rows1/8": ("dcd", {"row_fraction": 0.125}),
    # ... plus a per-epoch bank of 8 exact samples per row (same per-batch distribution, drawn in bulk).
    "dcd-rows1/8-bank8": ("dcd", {"row_fraction": 0.125, "bank": 8, "bank_epochs": 1}),
    # The fast configuration (quality checked against dcd-rows1/8 in bench/results/quality-ml-1m-ucd-study.json).
    "dcd-rows1/16-bank8": ("dcd", {"row_fraction": 0.0625, "bank": 8, "bank_epochs": 1}),
    # ... with the terms of 8 consecutive batches computed in one step (one fixed cost per 8 batches).
    "dcd-rows1/16-bank8-group8": ("dcd", {"row_fraction": 0.0625, "bank": 8, "group": 8, "bank_epochs": 1}),
    # ... with one bank per refresh period (bank_epochs 3) instead of one per epoch: DCDConfig's defaults.
    "dcd-rows1/16-bank8-group8-bankepochs3": ("dcd", {"row_fraction": 0.0625, "bank": 8, "group": 8, "bank_epochs": 3}),
    # DCDConfig() as it is: a plain "method": "dcd" job.
    "dcd-default": ("dcd", {}),
}


def make_teacher(data: SplitData, epochs: int, seed: int) -> BPRMF:
    torch.manual_seed(seed)
    teacher = BPRMF(data.n_users, data.n_items, 200)
    if epochs > 0:
        fit(
            teacher,
            data,
            TrainConfig(epochs=epochs, lr=5e-3, patience=0, eval_every=epochs, seed=seed, device="cpu"),
        )
    teacher.requires_grad_(False)
    return teacher


def time_method(data: SplitData, teacher: BPRMF, method: str, epochs: int, seed: int) -> dict[str, float]:
    name, cfg = METHODS[method]
    distiller = build_distiller(name, seed=seed, **cfg)
    t0 = time.perf_counter()
    distiller.prepare(teacher, data, "cpu")
    prepare_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    student = BPRMF(data.n_users, data.n_items, 20)
    config = TrainConfig(epochs=epochs, patience=0, eval_every=10 * epochs, seed=seed, device="cpu")
    result = fit(student, data, config, distiller=None if name == "none" else distiller)
    per_epoch = [h["train_seconds"] for h in result.history]
    cpu = [h["train_cpu_seconds"] for h in result.history]
    return {
        "seconds_per_epoch": sum(per_epoch) / len(per_epoch),
        "cpu_seconds_per_epoch": sum(cpu) / len(cpu),
        "epochs": per_epoch,
        "cpu_epochs": cpu,
        "prepare_seconds": prepare_s,
    }


def run(
    data: SplitData, teacher: BPRMF, threads: int | None, epochs: int, seed: int, methods: list[str]
) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "methods": {}}
    for method in methods:
        out["methods"][method] = time_method(data, teacher, method, epochs, seed)
        logger.info(
            "threads=%d %s: %.2fs/epoch",
            torch.get_num_threads(),
            method,
            out["methods"][method]["seconds_per_epoch"],
        )
    base = out["methods"]["none"]["seconds_per_epoch"]
    out["ratio_to_student"] = {m: v["seconds_per_epoch"] / base for m, v in out["methods"].items()}
    # Thread CPU time (one torch thread): not inflated by waiting for a core while other work shares the machine.
    base_cpu = out["methods"]["none"]["cpu_seconds_per_epoch"]
    out["cpu_ratio_to_student"] = {
        m: v["cpu_seconds_per_epoch"] / base_cpu for m, v in out["methods"].items()
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="ML-1M interactions (.inter/.csv/...)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per method (DCD period is 3)")
    parser.add_argument(
        "--teacher-epochs", type=int, default=2, help="quick BPR-200 teacher training (0: random)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma list from {', '.join(METHODS)} ('none' is always run)",
    )
    parser.add_argument("--one-thread-only", action="store_true", help="skip the default-threads pass")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dcd-epoch-ml-1m.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    methods = ["none", *[m for m in args.methods.split(",") if m and m != "none"]]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    default_threads = torch.get_num_threads()
    data = split(load_interactions(args.path), seed=args.seed)
    teacher = make_teacher(data, args.teacher_epochs, args.seed)
    report = {
        "dataset": Path(args.path).name,
        "command": "python bench/"
        + " ".join(shlex.quote(a) for a in [Path(__file__).name, *(argv or sys.argv[1:])]),
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_train": int(data.train.nnz),
        "batch_size": 1024,
        "teacher": f"bpr:200, {args.teacher_epochs} epochs at lr 5e-3"
        if args.teacher_epochs
        else "bpr:200 random",
        "student": "bpr:20",
        "distill_defaults": {"M": 500, "rrd": "K=L=40, T=10", "dcd": "p=40, eps=0.1, period=3, RKD+UCD+ICD"},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "authors_one_thread_seconds": AUTHORS_SECONDS,
        "one_thread": run(data, teacher, 1, args.epochs, args.seed, methods),
    }
    if not args.one_thread_only:
        report["default_threads"] = run(data, teacher, default_threads, args.epochs, args.seed, methods)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
