"""core.jobs.memory: a job's memory floor from its spec and its data's shape, the option it names, the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import EASE_MAX_ITEMS, JobSpec
from core.jobs import memory

GB = 10**9


def spec(method: str = "dcd", teacher: dict[str, Any] | None = None, **hp: Any) -> JobSpec:
    return JobSpec.build(dataset_id=None, method=method, teacher=teacher or {"model": "bpr", "dim": 64},
                         teacher_model_id=None, student={"model": "bpr", "dim": 16}, hyperparameters=hp,
                         seed=0, split=None)


MODEL_FIELDS = {"teacher.dim", "student.dim", "hyperparameters.batch_size", "hyperparameters.teacher_batch_size"}


def distiller_needs(s: JobSpec, n_users: int, n_items: int, budget: int) -> list[memory.Need]:
    """The terms of the method and the EASE teacher (the models' own are tested apart)."""
    return [t for t in memory.needs(s, n_users, n_items, budget) if t.field not in MODEL_FIELDS]


def test_lists_are_counted_by_dtype_on_both_sides_with_m_clipped_to_the_other_side() -> None:
    per = memory.LIST_BYTES + memory.DCD_CORRECTION_BYTES  # 4 + 6: both sides corrected
    (need,) = distiller_needs(spec(m=100, bank=0, use_rkd=False), 1_000_000, 100_000, 24 * GB)
    assert need.field == "hyperparameters.m" and need.bytes == per * 1_100_000 * 100
    (need,) = distiller_needs(spec(m=500, bank=0, use_rkd=False), 1000, 50, 24 * GB)  # 49 items a user, 500 users an item
    assert need.bytes == per * (1000 * 49 + 50 * 500)
    # Corrections on a prefix, or on one side only, hold less.
    (prefix,) = distiller_needs(spec(m=100, bank=0, use_rkd=False, correction_m=50), 1_000_000, 100_000, 24 * GB)
    assert prefix.bytes == 4 * 1_100_000 * 100 + 6 * 1_100_000 * 50
    (users,) = distiller_needs(spec(m=100, bank=0, use_rkd=False, use_icd=False), 1_000_000, 100_000, 24 * GB)
    assert users.bytes == 4 * 1_100_000 * 100 + 6 * 1_000_000 * 100
    # RKD (DCD) and RRD keep the int32 excluded columns of each ranked side's listed entries; RRD no corrections.
    (rkd,) = distiller_needs(spec(m=100, bank=0), 1_000_000, 100_000, 24 * GB)
    assert rkd.bytes == per * 1_100_000 * 100 + 4 * 1_000_000 * 100
    (rrd,) = distiller_needs(spec("rrd", m=100), 1_000_000, 100_000, 24 * GB)
    assert rrd.bytes == 4 * 1_100_000 * 100 + 4 * 1_000_000 * 100
    (both,) = distiller_needs(spec("rrd", m=100, item_side=True), 1_000_000, 100_000, 24 * GB)
    assert both.bytes == 8 * 1_100_000 * 100
    assert distiller_needs(spec("none"), 1_000_000, 100_000, 24 * GB) == []


def test_dcds_sample_bank_counts_int16_draws_for_each_corrected_side() -> None:
    bank, lists = distiller_needs(spec(m=100, bank=8, p=40, use_rkd=False), 1_000_000, 100_000, 24 * GB)
    assert bank.field == "hyperparameters.bank" and bank.bytes == 8 * 2 * 1_100_000 * 40 * 2
    # The largest m that fits leaves room for the bank and the student.
    models = sum(t.bytes for t in memory.needs(spec(m=100), 1_000_000, 100_000, 0)
                 if t.phase == "distill" and t.field in MODEL_FIELDS)
    assert lists.fix.startswith(f"no m above {(24 * GB - bank.bytes - models) // (10 * 1_100_000):,} ")
    users_only, _ = distiller_needs(spec(m=100, bank=8, p=40, use_icd=False), 1_000_000, 100_000, 24 * GB)
    assert users_only.bytes == 8 * 2 * 1_000_000 * 40 * 2


def test_a_job_above_the_budget_is_refused_naming_the_option_and_the_largest_m_that_fits() -> None:
    # The scale benchmark's 10M-interaction shape (bench/results/scale-job.json): m = 100 ran in 15.3 GB.
    memory.check(spec(m=100, bank=0, use_rkd=False), 1_000_000, 100_000, 24 * GB, "RECDISTILL_JOB_MEMORY_MB")
    with pytest.raises(memory.MemoryTooSmall) as err:
        memory.check(spec(m=3000, bank=0, use_rkd=False), 1_000_000, 100_000, 24 * GB, "RECDISTILL_JOB_MEMORY_MB")
    text = str(err.value)
    assert text.startswith("hyperparameters.m: this job needs at least 33.5 GB of memory in its distill phase")
    assert "33.0 GB of it for the teacher's top-M lists at m = 3000" in text
    assert "RECDISTILL_JOB_MEMORY_MB" in text and "24.0 GB" in text
    largest = int(text.split("no m above ", 1)[1].split(" ", 1)[0].replace(",", ""))
    memory.check(spec(m=largest, bank=0, use_rkd=False), 1_000_000, 100_000, 24 * GB, "x")
    with pytest.raises(memory.MemoryTooSmall):
        memory.check(spec(m=largest + 1, bank=0, use_rkd=False), 1_000_000, 100_000, 24 * GB, "x")


def test_an_ease_teacher_counts_its_solve_and_is_refused_above_its_catalogue_limit() -> None:
    solve, weights, *_ = distiller_needs(spec(teacher={"model": "ease", "l2": 500}, m=100), 100, 10_000, GB)
    assert (solve.phase, solve.field, solve.bytes) == ("teacher", "teacher.model", 16 * 10_000**2)
    assert (weights.phase, weights.bytes) == ("distill", 4 * 10_000**2)
    # The phases do not add up: the solve's 1.6 GB is gone when the lists are made, its float32 weights stay.
    memory.check(spec(teacher={"model": "ease", "l2": 500}, m=100, bank=0), 100, 10_000, int(1.7 * GB), "x")
    with pytest.raises(memory.MemoryTooSmall, match=r"^teacher\.model: .* for EASE's solve"):
        memory.check(spec(teacher={"model": "ease", "l2": 500}, m=100), 100, 10_000, GB, "x")
    with pytest.raises(ValueError, match=rf"^teacher\.model: EASE keeps .* limit of {EASE_MAX_ITEMS}"):
        distiller_needs(spec(teacher={"model": "ease"}), 100, EASE_MAX_ITEMS + 1, 10**15)


def test_hetcomp_counts_its_trajectories_and_its_ease_members() -> None:
    s = spec("hetcomp", teachers=["bpr:32", "ease:500"], k=100, stages=4, ensemble_epochs=100)
    terms = {t.field: t.bytes for t in distiller_needs(s, 1_000_000, 10_000, GB)}
    lists = 1_000_000 * 100
    # The job teacher's lists and 4 stages of 2 members (int64); what a trained member records goes to disk.
    assert terms["hyperparameters.k"] == lists * 8 * 9
    assert terms["hyperparameters.teachers[1]"] == 16 * 10_000**2
    with pytest.raises(ValueError, match=r"^hyperparameters\.teachers\[0\]: EASE keeps"):
        distiller_needs(spec("hetcomp", teachers=["ease:500"]), 10, EASE_MAX_ITEMS + 1, GB)


def test_an_ease_member_is_solved_at_its_own_moment_not_beside_the_trajectories() -> None:
    # The ensemble is made one member after the other: a solve's matrices are gone when the next one records.
    s = spec("hetcomp", teacher={"model": "ease"}, teachers=["bpr:32", "ease:500"], k=100)
    terms = distiller_needs(s, 4_000_000, 20_000, GB)
    solve = [t for t in terms if t.phase == "ensemble solve"]
    assert {t.field for t in solve} == {"hyperparameters.teachers[1]", "teacher.model"}
    assert sum(t.bytes for t in solve) == (16 + 4) * 20_000**2
    distill = sum(t.bytes for t in memory.needs(s, 4_000_000, 20_000, GB) if t.phase == "distill")
    with pytest.raises(memory.MemoryTooSmall, match=r"in its distill phase"):
        memory.check(s, 4_000_000, 20_000, distill - 1, "x")
    memory.check(s, 4_000_000, 20_000, distill, "x")


def test_each_side_of_the_bank_takes_the_width_of_its_own_list() -> None:
    # m = 40,000 on 1M users x 10k items: user lists are clipped to 9,999 (int16), item lists keep 40,000 (int32).
    bank, _ = distiller_needs(spec(m=40_000, bank=2, p=40), 1_000_000, 10_000, 10**15)
    assert bank.bytes == 2 * 40 * 2 * (1_000_000 * 2 + 10_000 * 4)


def test_tiny_catalogues_count_nothing_negative() -> None:
    assert all(t.bytes >= 0 for t in distiller_needs(spec(m=100), 1, 1, GB))


def test_the_models_and_a_batch_are_counted_for_the_phase_that_trains_them() -> None:
    s = JobSpec.build(dataset_id=None, method="none", teacher={"model": "bpr", "dim": 4096}, teacher_model_id=None,
                      student={"model": "bpr", "dim": 2048}, seed=0, split=None,
                      hyperparameters={"batch_size": 1_000_000, "teacher_batch_size": 2_000_000})
    terms = {(t.phase, t.field): t.bytes for t in memory.needs(s, 1_000_000, 100_000, GB)}
    assert terms == {
        ("teacher", "teacher.dim"): 12 * 1_100_000 * 4096,  # parameters and Adam's two moments
        ("teacher", "hyperparameters.teacher_batch_size"): 12 * 2_000_000 * 4096,
        ("distill", "student.dim"): 12 * 1_100_000 * 2048,
        ("distill", "hyperparameters.batch_size"): 12 * 1_000_000 * 2048,
        ("distill", "teacher.dim"): 4 * 1_100_000 * 4096,  # the trained teacher, held
    }
    with pytest.raises(memory.MemoryTooSmall, match=r"^hyperparameters\.teacher_batch_size: .* in its teacher phase"):
        memory.check(s, 1_000_000, 100_000, 24 * GB, "x")


def test_the_budget_is_the_setting_or_this_machines_memory(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    assert memory.budget(100) == (100 * 2**20, "RECDISTILL_JOB_MEMORY_MB")
    size, source = memory.budget(None)
    assert 0 < size <= memory.machine_memory() and "this machine's memory" in source
    # A container's limit below the machine's wins; "max" (no limit) leaves the machine's.
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (str(tmp_path / "absent"),))
    physical = memory.machine_memory()
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (str(tmp_path / "absent"), str(limit)))
    limit.write_text("max\n")
    assert memory.machine_memory() == physical
    limit.write_text(f"{2**30}\n")
    assert memory.machine_memory() == min(physical, 2**30)
    limit.write_text(f"{2**63 - 4096}\n")  # cgroup v1 without a limit: a huge number
    assert memory.machine_memory() == physical
