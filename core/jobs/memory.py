"""A floor on a job's memory, from its spec and its data's shape, checked before any work starts.

A job whose worker runs out of memory is killed, re-queued and killed again until RECDISTILL_JOB_MAX_CRASHES
ends it, minutes or hours later. The few structures that grow with what a client chooses are sized here
instead, so such a job is refused at once: at submission (422 naming the option) and by the worker before its
first phase (the worker's own budget; a distributed worker may have less memory than the API's machine).

Each term is a floor, never a guess from above: what the named structure alone holds, from its dtype, in the
phase that holds it (the teacher's, or distillation's); the fuller phase is held to the budget. Everything else
a job holds (the data, its ids, the evaluation's chunks, temporaries: most of the 5.4 GB of the teacher phase at
10M interactions, bench/results/scale-job.json) comes on top, so a job that passes may still not fit, and the
crash cap remains the last word.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.config import (
    DCDConfig,
    HetCompConfig,
    JobSpec,
    ModelSpec,
    RRDConfig,
    check_ease_items,
    list_lengths,
)

# Bytes per entry of a teacher's top-M list, by dtype. Both methods keep the lists as int32
# (core.distill.topm.teacher_topm), and RRD's excluded entries as int32 keys (core.distill.sampling.Excluded).
# DCD adds, for each corrected side (UCD: users, ICD: items) and each entry of its corrected prefix
# (correction_m, else M): the int16 rank discrepancy, and its sampler's int16 slot positions for the two rows
# w+ and w- (core.distill.sampling; the weights are computed from the discrepancy when drawn). Measured peaks:
# bench/results/dcd-memory-*.json.
LIST_BYTES = 4
KEY_BYTES = 4
DCD_CORRECTION_BYTES = 2 + 2 * 2
# A model trained by gradient steps: float32 parameters and Adam's two moments (SparseAdam's too are dense).
ADAM_PARAM_BYTES = 3 * 4
# A training pair gathers a user's and two items' rows (float32; NeuMF gathers more).
BATCH_ROW_BYTES = 3 * 4
# EASE's solve holds the float64 Gram matrix and its float64 inverse (core.models.ease.EASE.solve); the model
# keeps float32 weights after it.
EASE_SOLVE_BYTES, EASE_WEIGHT_BYTES = 16, 4
# HetComp keeps each ensemble member's stages as int64 top-k lists (core.jobs.trajectory; the lists a trained
# member records every epoch go to disk).
HETCOMP_STAGE_BYTES = 8


class MemoryTooSmall(ValueError):
    """The job cannot fit: the message names the option, what it needs at least and the budget."""


@dataclass(frozen=True)
class Need:
    """At least ``bytes`` held during ``phase`` for ``what``, which the client controls through ``field``;
    ``fix`` says how to need less."""

    phase: str
    field: str
    bytes: int
    what: str
    fix: str


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _sides(m: int, n_users: int, n_items: int) -> tuple[int, int]:
    """Entries of the user side's and the item side's lists at list length ``m``, clipped as topm clips them."""
    mu, mi = list_lengths(m, n_users, n_items)
    return n_users * mu, n_items * mi


def _lists_bytes(cfg: DCDConfig | RRDConfig, m: int, n_users: int, n_items: int) -> int:
    """What ``cfg``'s lists hold at list length ``m`` (its other options as they are)."""
    user_side, item_side = _sides(m, n_users, n_items)
    total = LIST_BYTES * (user_side + item_side)
    # RRD's terms (DCD's RKD on the user side) exclude observed and listed entries from the uninteresting
    # draws: their columns, per row (core.distill.sampling.Excluded).
    total += KEY_BYTES * (user_side * (cfg.use_rkd if isinstance(cfg, DCDConfig) else 1)
                           + item_side * (isinstance(cfg, RRDConfig) and cfg.item_side))
    if isinstance(cfg, DCDConfig):
        user_corrected, item_corrected = _sides(min(cfg.correction_m or m, m), n_users, n_items)
        total += DCD_CORRECTION_BYTES * (user_corrected * cfg.use_ucd + item_corrected * cfg.use_icd)
    return total


def _largest_m(cfg: DCDConfig | RRDConfig, left: int, n_users: int, n_items: int) -> int:
    """The largest list length whose lists fit in ``left`` bytes (0: none)."""
    lo, hi = 0, max(n_users, n_items)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _lists_bytes(cfg, mid, n_users, n_items) <= left else (lo, mid - 1)
    return lo


def _model_needs(spec: JobSpec, n_users: int, n_items: int) -> list[Need]:
    """The embedding tables of the models a job trains (with Adam's two moments) or holds, and one batch's
    gathered rows (a user's and two items' per training pair, float32)."""
    out: list[Need] = []
    rows = n_users + n_items
    trained = (("teacher", spec.teacher, spec.teacher_train, "teacher"),
               ("student", spec.student, spec.student_train, "distill"))
    for role, model, train, phase in trained:
        if model is None or model.closed_form or model.dim is None:
            continue
        out.append(Need(phase, f"{role}.dim", ADAM_PARAM_BYTES * rows * model.dim,
                        f"the {role}'s {rows:,} x {model.dim} embeddings and their Adam moments",
                        f"a smaller {role}.dim"))
        key = ("teacher_batch_size" if role == "teacher" and "teacher_batch_size" in spec.hyperparameters
               else "batch_size")
        out.append(Need(phase, f"hyperparameters.{key}", BATCH_ROW_BYTES * train.batch_size * model.dim,
                        f"one batch's {train.batch_size:,} x 3 embedding rows of dim {model.dim}",
                        f"a smaller {key}"))
    if spec.teacher is not None and not spec.teacher.closed_form and spec.teacher.dim is not None:
        out.append(Need("distill", "teacher.dim", 4 * rows * spec.teacher.dim,
                        f"the trained teacher's {rows:,} x {spec.teacher.dim} embeddings", "a smaller teacher.dim"))
    return out


def needs(spec: JobSpec, n_users: int, n_items: int, budget: int) -> list[Need]:
    """The floor terms of ``spec`` on ``n_users`` x ``n_items``, by phase; an EASE teacher above its catalogue
    limit raises ValueError naming it (``budget`` only words the fix for ``m``)."""
    out: list[Need] = []
    ease_fix = "use a bpr or lightgcn teacher"
    if spec.teacher is not None and spec.teacher.closed_form:
        check_ease_items(n_items, "teacher.model")
        out.append(Need("teacher", "teacher.model", EASE_SOLVE_BYTES * n_items**2,
                        f"EASE's solve, a {n_items:,} x {n_items:,} float64 Gram matrix and its inverse", ease_fix))
        out.append(Need("distill", "teacher.model", EASE_WEIGHT_BYTES * n_items**2,
                        f"the EASE teacher's {n_items:,} x {n_items:,} float32 weights", ease_fix))
    out += _model_needs(spec, n_users, n_items)
    cfg = spec.distiller
    if isinstance(cfg, DCDConfig) and cfg.bank > 0:
        # The sample bank: int16 (int32 from 2^15 columns) [bank, 2 rows (over/under) per user or item, p].
        # Each side's width follows its own list length, clipped as the lists are.
        mu, mi = list_lengths(min(cfg.correction_m or cfg.m, cfg.m), n_users, n_items)
        sides = ((n_users, mu, cfg.use_ucd), (n_items, mi, cfg.use_icd))
        rows = sum(2 * n for n, _, on in sides if on)
        held = sum(2 * n * cfg.bank * cfg.p * (2 if length < 2**15 else 4) for n, length, on in sides if on)
        out.append(Need("distill", "hyperparameters.bank", held,
                        f"DCD's sample bank of {cfg.bank} x p = {cfg.p} draws for {rows:,} rows",
                        "lower bank (0 draws fresh samples every batch) or p"))
    if isinstance(cfg, (DCDConfig, RRDConfig)):
        entries = sum(_sides(cfg.m, n_users, n_items))
        held = _lists_bytes(cfg, cfg.m, n_users, n_items)
        largest = _largest_m(cfg, budget - sum(n.bytes for n in out if n.phase == "distill"), n_users, n_items)
        out.append(Need("distill", "hyperparameters.m", held,
                        f"the teacher's top-M lists at m = {cfg.m} ({entries:,} entries) and what "
                        f"{cfg.__class__.__name__.removesuffix('Config')} keeps beside them",
                        (f"no m above {largest:,} can fit, and the rest of the job comes on top" if largest
                         else "this catalogue needs a larger worker")))
    elif isinstance(cfg, HetCompConfig):
        members = [ModelSpec.parse(t) for t in cfg.teachers]
        for i, member in enumerate(members):
            if member.closed_form:  # solved one after the other: one solve at a time
                check_ease_items(n_items, f"hyperparameters.teachers[{i}]")
        if any(m.closed_form for m in members):
            # Its own moment: the members are made one after the other, a solve's matrices gone before the next.
            i = next(i for i, m in enumerate(members) if m.closed_form)
            out.append(Need("ensemble solve", f"hyperparameters.teachers[{i}]", EASE_SOLVE_BYTES * n_items**2,
                            f"an EASE ensemble teacher's solve on {n_items:,} items", "drop the EASE teacher"))
            if spec.teacher is not None and spec.teacher.closed_form:  # the job's EASE teacher is held meanwhile
                out.append(Need("ensemble solve", "teacher.model", EASE_WEIGHT_BYTES * n_items**2,
                                f"the EASE teacher's {n_items:,} x {n_items:,} float32 weights", ease_fix))
        k = max(0, min(cfg.k, n_items - 1))
        lists = n_users * k
        kept = lists * HETCOMP_STAGE_BYTES * (1 + cfg.stages * len(members))  # the job teacher's lists: one
        out.append(Need("distill", "hyperparameters.k", kept,
                        f"HetComp's teacher trajectories, {n_users:,} users x k = {k} items for {cfg.stages} stages "
                        f"of {len(members)} ensemble teacher(s)",
                        "lower k or stages, or drop ensemble teachers"))
    return out


def check(spec: JobSpec, n_users: int, n_items: int, budget: int, budget_source: str) -> None:
    """Raise MemoryTooSmall naming the largest term of the fullest phase when its floor is above ``budget``."""
    terms = needs(spec, n_users, n_items, budget)
    by_phase: dict[str, list[Need]] = {}
    for t in terms:
        by_phase.setdefault(t.phase, []).append(t)
    if not by_phase:
        return
    phase, held = max(by_phase.items(), key=lambda kv: sum(t.bytes for t in kv[1]))
    total = sum(t.bytes for t in held)
    if total <= budget:
        return
    worst = max(held, key=lambda t: t.bytes)
    raise MemoryTooSmall(
        f"{worst.field}: this job needs at least {_gb(total)} of memory in its {phase} phase on {n_users:,} users "
        f"x {n_items:,} items, {_gb(worst.bytes)} of it for {worst.what}; a job may use {_gb(budget)} "
        f"({budget_source}): {worst.fix}")


# A container's memory limit: cgroup v2, then v1 ("max", or a huge number, when there is none).
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit, None when there is none."""
    for path in CGROUP_LIMIT_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit when lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    return min(physical, limit) if limit else physical


def budget(job_memory_mb: int | None) -> tuple[int, str]:
    """(bytes a job may use, where that figure comes from) for the RECDISTILL_JOB_MEMORY_MB setting."""
    if job_memory_mb is not None:
        return job_memory_mb * 2**20, "RECDISTILL_JOB_MEMORY_MB"
    return machine_memory(), "this machine's memory; set RECDISTILL_JOB_MEMORY_MB to the workers'"
