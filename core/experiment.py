"""Reproducible comparison runs: one teacher per seed, several distillation methods, a results table.

Used by `recdistill experiment` and the quality benchmarks under bench/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config import DISTILL_CONFIGS, DCDConfig, ModelSpec, distill_config
from core.storage import atomic_write_text

logger = logging.getLogger(__name__)

# Method label -> (distiller name, config overrides). Ablations switch single DCD terms off.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "rrd": ("rrd", {}),
    "dcd": ("dcd", {}),
    "hetcomp": ("hetcomp", {}),
    "dcd-no-ucd": ("dcd", {"use_ucd": False}),
    "dcd-no-icd": ("dcd", {"use_icd": False}),
    "dcd-no-rkd": ("dcd", {"use_rkd": False}),
    "dcd-det": ("dcd", {"deterministic_topk": True}),
    "rrd-det": ("rrd", {"deterministic_topk": True}),
}

TABLE_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")


class ExperimentConfigError(ValueError):
    """An experiment's options are unusable (found before anything trains); the message names the option."""


def _first_error(exc: ValidationError, prefix: str) -> str:
    err = exc.errors()[0]
    if not err["loc"]:  # a rule across keys (e.g. p <= m): its message names them
        return f"{prefix}{err['ctx']['error']}"
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{prefix}{key}: unknown option"
    return f"{prefix}{key}={err.get('input')!r}: {err['msg'].lower()}"


@dataclass
class ExperimentConfig:
    dataset: str
    teacher: ModelSpec
    student: ModelSpec
    methods: list[str]
    seeds: list[int]
    split_mode: str = "random"
    data_options: dict[str, Any] = field(default_factory=dict)
    teacher_train: dict[str, Any] = field(default_factory=dict)
    student_train: dict[str, Any] = field(default_factory=dict)
    teacher_model_opts: dict[str, Any] = field(default_factory=dict)
    student_model_opts: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_cache: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        """Every option checked against the configs in ``core.config`` (ExperimentConfigError naming it), so
        that a typo is refused before a teacher trains for minutes."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ExperimentConfigError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
        if self.student.closed_form:
            raise ExperimentConfigError(f"student {self.student} is solved in closed form and cannot be distilled into")
        if not self.teacher.is_wider_than(self.student.dim or 0):
            raise ExperimentConfigError(
                f"student dim {self.student.dim} must be below teacher dim {self.teacher.dim}")
        if not self.seeds:
            raise ExperimentConfigError("at least one seed is needed")
        if any(s < 0 for s in self.seeds):
            raise ExperimentConfigError(f"seeds must be non-negative, got {self.seeds}")
        for role, spec, opts in (("teacher", self.teacher, self.teacher_train),
                                 ("student", self.student, self.student_train)):
            try:
                spec.train_config(opts, f"{role} sparse_updates")
            except ValidationError as exc:
                raise ExperimentConfigError(_first_error(exc, f"{role} training option ")) from None
        for group, options in self.method_overrides.items():
            if group not in METHODS and group not in DISTILL_CONFIGS:
                raise ExperimentConfigError(
                    f"--set {group}.{next(iter(options))}: unknown method {group!r}; "
                    f"choose from {sorted(set(METHODS) | set(DISTILL_CONFIGS))}")
            dname = METHODS[group][0] if group in METHODS else group
            fields = sorted(set(DISTILL_CONFIGS[dname].model_fields) - {"seed"})
            for key in options:
                if key not in fields:
                    raise ExperimentConfigError(
                        f"--set {group}.{key}: {dname} has no option {key!r}; its options: {', '.join(fields)}")
        for method in self.methods:
            dname = METHODS[method][0]
            try:
                DISTILL_CONFIGS[dname](**self.distiller_options(method))
            except ValidationError as exc:
                raise ExperimentConfigError(_first_error(exc, f"--set {dname}.")) from None

    def distiller_options(self, method: str) -> dict[str, Any]:
        """A method's distiller options: its ablation's switches, then ``--set NAME.key``, then ``--set METHOD.key``."""
        dname, base = METHODS[method]
        return {**base, **self.method_overrides.get(dname, {}), **self.method_overrides.get(method, {})}

    def check_data(self, n_users: int, n_items: int) -> None:
        """The options that depend on the data set's size (its teacher lists hold at most n_items - 1 items
        and n_users - 1 users): checked once the file is read, before the teacher trains."""
        for method in self.methods:
            if METHODS[method][0] != "dcd":
                continue
            c = DCDConfig(**self.distiller_options(method))
            length = min(c.m if c.correction_m is None else c.correction_m, n_items - 1, n_users - 1)
            if c.p > length:
                raise ExperimentConfigError(
                    f"dcd's p={c.p} (--set dcd.p) is more than the {length} entries a teacher list can hold on this data "
                    f"set ({n_users} users, {n_items} items: M is clipped to n_items-1 and n_users-1); "
                    f"use --set dcd.p={max(1, length // 2)} or less")


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`method.key=value` (value parsed as JSON when possible) -> {method: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        lhs, sep, raw = item.partition("=")
        method, dot, key = lhs.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"override must look like 'dcd.eps=0.05', got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[key] = value
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(runs: list[dict[str, Any]], metrics: Sequence[str] = TABLE_METRICS) -> list[dict[str, Any]]:
    """Group runs by method: mean, std and count of each metric, epochs and seconds per epoch."""
    order: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["method"] not in groups:
            order.append(run["method"])
        groups.setdefault(run["method"], []).append(run)
    rows = []
    for method in order:
        group = groups[method]
        row: dict[str, Any] = {"method": method, "n": len(group)}
        for m in metrics:
            row[m] = _mean_std([r["test"][m] for r in group if m in r["test"]])
        row["epochs"] = _mean_std([float(r.get("epochs", 0)) for r in group])[0]
        row["seconds_per_epoch"] = _mean_std([float(r.get("seconds_per_epoch", 0.0)) for r in group])[0]
        row["capped"] = sum(r.get("stopped_by") == "cap" for r in group)
        rows.append(row)
    return rows


GAP_NOTE_NOT_BETTER = (
    "n/a (teacher ≤ student): the teacher is not better than the student trained alone (none) on NDCG@10, "
    "so there is no gap to close; a larger or longer-trained teacher (--teacher, --teacher-max-epochs) may help."
)
GAP_NOTE_SPREAD = (
    "n/a (within seed spread): the teacher-student gap is smaller than the spread across seeds (std), "
    "so a percentage of it would be noise; run more seeds (--seeds) or a stronger teacher."
)


CAP_NOTE = (
    "cap: that many runs hit the epoch cap before early stopping ended them, so they may be cut short; "
    "raise --max-epochs (or --teacher-max-epochs) until patience decides."
)


def _cell(mean: float, std: float, n: int) -> str:
    # One run has no spread: "± 0.0000" would claim a precision that was never measured.
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown_table(runs: list[dict[str, Any]], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """Mean (± std over seeds) of each method; "gap closed" = (method - none) / (teacher - none) on NDCG@10,
    shown as n/a, with a footnote, when the teacher is not better than the student alone or the gap is
    within the seed spread."""
    rows = summarize(runs, metrics)
    by_method = {r["method"]: r for r in rows}
    teacher = by_method.get("teacher")
    alone = by_method.get("none")
    key = "ndcg@10"
    show_gap = teacher is not None and alone is not None and key in metrics
    gap_na = ""
    if show_gap:
        assert teacher is not None and alone is not None
        gap = teacher[key][0] - alone[key][0]
        spread = max(teacher[key][1], alone[key][1])  # 0.0 for single runs
        if not gap > 0:
            gap_na = GAP_NOTE_NOT_BETTER
        elif gap <= spread:
            gap_na = GAP_NOTE_SPREAD
    head = ["method", "n"] + list(metrics) + (["gap closed (NDCG@10)"] if show_gap else []) + ["epochs", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["n"])]
        cells += [_cell(r[m][0], r[m][1], r["n"]) for m in metrics]
        if show_gap:
            assert teacher is not None and alone is not None
            if r["method"] == "teacher":
                cells.append("—")
            elif gap_na:
                cells.append(gap_na.split(":")[0])
            else:
                closed = (r[key][0] - alone[key][0]) / (teacher[key][0] - alone[key][0])
                cells.append(f"{100 * closed:.0f}%")
        epochs = f"{r['epochs']:.0f}" + (f" (cap: {r['capped']}/{r['n']})" if r["capped"] else "")
        cells += [epochs, f"{r['seconds_per_epoch']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if gap_na:
        lines += ["", gap_na]
    if any(r["capped"] for r in rows):
        lines += ["", CAP_NOTE]
    return "\n".join(lines)


def _check_model_opts(cfg: ExperimentConfig) -> None:
    """--teacher-opt / --student-opt: each model built once on a 2 x 2 toy matrix, so that an unknown option
    or a bad value is refused now, not when the student is built after the teacher has trained."""
    import scipy.sparse as sp

    from core.models import build_model

    toy = sp.identity(2, dtype="float32", format="csr")
    for role, spec, opts in (("teacher", cfg.teacher, cfg.teacher_model_opts),
                             ("student", cfg.student, cfg.student_model_opts)):
        if not opts:
            continue
        try:
            dim, spec_opts = spec.build_args(2)
            build_model(spec.model, 2, 2, dim, toy, **spec_opts, **opts)
        except (ValueError, TypeError) as exc:
            raise ExperimentConfigError(f"--{role}-opt: {exc}") from None


ProgressFactory = Callable[[str], Sequence[Any]]


def run_experiment(
    cfg: ExperimentConfig,
    command: str,
    out_path: Path | None = None,
    callbacks_for: Callable[[str], Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Run every (seed, method) pair; the teacher is trained once per seed and reused by every method."""
    from core.checkpoint import library_versions, load_checkpoint, save_checkpoint
    from core.data import load_interactions, split
    from core.datasets import resolve
    from core.jobs import steps
    from core.train import resolve_device

    cfg.validate()
    path = resolve(cfg.dataset)
    inter = load_interactions(path, **cfg.data_options)
    cfg.check_data(inter.n_users, inter.n_items)
    _check_model_opts(cfg)
    result: dict[str, Any] = {
        "dataset": cfg.dataset,
        "protocol": "full",
        "command": command,
        "config": {
            "split": cfg.split_mode,
            "teacher_train": cfg.teacher_train,
            "student_train": cfg.student_train,
            "method_overrides": cfg.method_overrides,
            "data_options": cfg.data_options,
        },
        "runs": [],
        "versions": library_versions(),
    }

    def flush() -> None:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_path, json.dumps(result, indent=1), user_file=True)

    device = resolve_device(cfg.device)

    for seed in cfg.seeds:
        data = split(inter, mode=cfg.split_mode, seed=seed)
        cb = list(callbacks_for(f"seed {seed} teacher {cfg.teacher}")) if callbacks_for else []
        tconf = cfg.teacher.train_config(cfg.teacher_train, seed=seed, device=cfg.device)
        # The key holds every option the teacher trained with (its model's defaults included), not the seed:
        # the seed is in the folder's name.
        tkey = hashlib.sha256(
            json.dumps([tconf.model_dump(exclude={"seed"}), cfg.teacher_model_opts], sort_keys=True).encode()
        ).hexdigest()[:8]
        teacher_dir = (
            Path(cfg.teacher_cache)
            / f"{Path(str(path)).stem}-{str(cfg.teacher).replace(':', '')}-seed{seed}-{data.fingerprint[:12]}-{tkey}"
            if cfg.teacher_cache
            else None
        )
        t0 = time.time()
        if teacher_dir is not None and (teacher_dir / "manifest.json").exists():
            teacher, manifest = load_checkpoint(teacher_dir, device="cpu")
            t_epochs = manifest.get("epochs", 0)
            t_spe = manifest.get("seconds_per_epoch", 0.0)
            t_stopped = manifest.get("stopped_by")  # None: cached before it was recorded
            logger.info("seed %d: reusing cached teacher %s", seed, teacher_dir)
        else:
            teacher, fr = steps.train_model(cfg.teacher, data, tconf, None, cb, None, model_opts=cfg.teacher_model_opts)
            t_epochs, t_spe, t_stopped = fr.epochs_run, fr.seconds_per_epoch, fr.stopped_by
            if teacher_dir is not None:
                save_checkpoint(
                    teacher_dir,
                    teacher,
                    {"seed": seed, "epochs": t_epochs, "seconds_per_epoch": t_spe, "stopped_by": t_stopped,
                     "data_fingerprint": data.fingerprint},
                )
        teacher.eval()
        teacher.to(device)
        result["runs"].append(
            {
                "method": "teacher",
                "teacher": str(cfg.teacher),
                "student": str(cfg.student),
                "seed": seed,
                "test": steps.test_metrics(teacher, data, "test"),
                "valid": steps.test_metrics(teacher, data, "valid"),
                "epochs": t_epochs,
                "stopped_by": t_stopped,
                "seconds_per_epoch": t_spe,
                "seconds": time.time() - t0,
                # What it trained with, its model's own defaults included (the config holds the user's options).
                "batch_size": tconf.batch_size,
                "lr": tconf.lr,
                "sparse_updates": tconf.sparse_updates,
            }
        )
        flush()
        lists_cache: dict = {}  # the teacher's top-M lists, computed once for every method of this seed
        for method in cfg.methods:
            dname = METHODS[method][0]
            dcfg = cfg.distiller_options(method)
            distiller = steps.make_distiller(
                dname, distill_config(dname, dcfg), teacher, data, str(device), lists_cache,
                trajectory_cache=Path(cfg.teacher_cache) if cfg.teacher_cache else None,
                callbacks_for=(lambda what, seed=seed: callbacks_for(f"seed {seed} {what}")) if callbacks_for else None)
            sconf = cfg.student.train_config(cfg.student_train, seed=seed, device=cfg.device)
            cb = list(callbacks_for(f"seed {seed} {method}")) if callbacks_for else []
            t0 = time.time()
            student, fr = steps.train_model(cfg.student, data, sconf, None, cb, None, distiller=distiller,
                                            model_opts=cfg.student_model_opts)
            result["runs"].append(
                {
                    "method": method,
                    "teacher": str(cfg.teacher),
                    "student": str(cfg.student),
                    "seed": seed,
                    "hyperparameters": distiller.describe(),
                    "test": steps.test_metrics(student, data, "test"),
                    "valid": steps.test_metrics(student, data, "valid"),
                    "epochs": fr.epochs_run,
                    "best_epoch": fr.best_epoch,
                    "stopped_by": fr.stopped_by,
                    "seconds_per_epoch": fr.seconds_per_epoch,
                    "seconds": time.time() - t0,
                }
            )
            flush()
            # The table at the end shows the metrics; the whole dictionary is for -v.
            logger.debug("seed %d %s: test %s", seed, method, result["runs"][-1]["test"])
    return result
