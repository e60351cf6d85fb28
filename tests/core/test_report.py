"""The compression report: a tiny job run in-process records both models' latency, and the report built from
its rows has every field; gap closed only from a known student-alone run; the text the CLI prints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.db import repo
from core.db.models import Model
from core.db.session import dispose_engines, session_scope
from core.jobs.lifecycle import run_job
from core.report import build_report, format_report, model_report
from core.settings import Settings
from tests.factories import MODEL_ROW, job_settings, tiny_job

FAST_HP = {"epochs": 2, "teacher_epochs": 2, "batch_size": 256, "lr": 0.01, "m": 10, "p": 3}


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield job_settings(tmp_path, RECDISTILL_REPORT_LATENCY_QUERIES=30)
    dispose_engines()


def _run(settings: Settings, method: str, **job: Any) -> str:
    job_id = tiny_job(settings, hyperparameters=dict(FAST_HP), method=method,
                      split={"mode": "random", "ratios": [0.8, 0.1, 0.1]}, **job)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    with session_scope(settings.database_url) as s:
        return repo.get_job(s, job_id).student_model_id or ""


def test_a_tiny_job_records_latency_and_its_report_has_every_field(settings: Settings) -> None:
    student_id = _run(settings, "dcd")
    with session_scope(settings.database_url) as s:
        report = model_report(s, student_id)
        teacher = repo.get_model(s, report["teacher"]["model_id"])
        assert report["teacher"]["n_params"] == teacher.n_params and teacher.latency is None
    student, teacher_side = report["student"], report["teacher"]
    for side in (student, teacher_side):
        assert set(side["metrics"]) == {"ndcg@10", "recall@10", "ndcg@20", "recall@20"}
        assert side["n_params"] > 0 and side["size_bytes"] > 0
        lat = side["latency"]
        assert lat["queries"] == 30 and lat["k"] == 10 and lat["method"] == "faiss-flat" and lat["servable"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"]
    assert (student["model_name"], student["dim"], teacher_side["model_name"], teacher_side["dim"]) == (
        "bpr", 4, "bpr", 8)
    assert report["times_smaller"] == pytest.approx(teacher_side["n_params"] / student["n_params"])
    assert report["times_smaller"] == pytest.approx(2.0)
    assert report["bytes_ratio"] == pytest.approx(teacher_side["size_bytes"] / student["size_bytes"])
    assert report["teacher_share"] == pytest.approx(
        student["metrics"]["ndcg@10"] / teacher_side["metrics"]["ndcg@10"])
    # No student-alone run yet: gap closed is unknown, and said so.
    assert report["gap_closed"] is None and report["baseline_model_id"] is None
    assert any("gap closed unknown" in n for n in report["notes"])
    text = format_report(report)
    assert "recommend p50 (k=10)" in text and "2.0x fewer parameters" in text and "gap closed unknown" in text


def test_the_report_and_the_bundle_name_the_same_index_and_its_recall(settings: Settings) -> None:
    """RECDISTILL_INDEX=ivf: the worker builds the student's IVF index once; the bundle holds it, the report's
    student latency was timed on it and names it with its recall@10 (the text report too)."""
    from core.index import ServingBundle, read_index_info

    student_id = _run(settings.model_copy(update={"index": "ivf"}), "dcd")
    with session_scope(settings.database_url) as s:
        report = model_report(s, student_id)
        folder = settings.artifact_dir / repo.get_model(s, student_id).artifact_path / "serving"
    info = read_index_info(folder)
    assert info is not None and info["kind"] == "ivf" and info["recall_at_10"] >= 0.95
    assert report["student"]["latency"]["index"] == info and report["student"]["latency"]["method"] == "faiss-ivf"
    assert ServingBundle.load(folder).index_info.to_json() == info
    assert f"recall@10 {info['recall_at_10']:.3f}" in format_report(report)


def test_gap_closed_comes_from_a_student_alone_run_on_the_same_split(settings: Settings) -> None:
    from core.storage import ArtifactStore
    from tests.factories import file_dataset_row, job_row, two_taste_csv

    with session_scope(settings.database_url) as s:
        ds = file_dataset_row(s, ArtifactStore(settings.artifact_dir), two_taste_csv()).id
    split = {"mode": "random", "ratios": [0.8, 0.1, 0.1]}
    ids = {}
    for method in ("none", "dcd"):
        with session_scope(settings.database_url) as s:
            hp = {k: v for k, v in FAST_HP.items() if method == "dcd" or k not in ("m", "p")}
            job_id = job_row(s, ds, method=method, seed=0, split=split, hyperparameters=hp).id
        assert run_job(job_id, settings, worker_id="w1") == "succeeded"
        with session_scope(settings.database_url) as s:
            ids[method] = repo.get_job(s, job_id).student_model_id or ""
    with session_scope(settings.database_url) as s:
        report = model_report(s, ids["dcd"])
        alone = model_report(s, ids["none"])
        base = repo.get_model(s, ids["none"]).metrics["ndcg@10"]
    assert report["baseline_model_id"] == ids["none"] and report["baseline_metric"] == pytest.approx(base)
    t, st = report["teacher"]["metrics"]["ndcg@10"], report["student"]["metrics"]["ndcg@10"]
    if t > base:
        assert report["gap_closed"] == pytest.approx((st - base) / (t - base))
    else:  # a tiny run can leave the teacher below the student alone: no number, a note
        assert report["gap_closed"] is None and any("undefined" in n for n in report["notes"])
    assert alone["gap_closed"] is None and any("baseline" in n for n in alone["notes"])


def _row(**fields: Any) -> Model:
    return Model(**{**MODEL_ROW, "id": "s" * 32, "job_id": None, "dataset_id": None, **fields})


def test_the_gap_is_never_invented() -> None:
    teacher = _row(id="t" * 32, role="teacher", n_params=112, size_bytes=448)
    student = _row(teacher_model_id=teacher.id, metrics={"ndcg@10": 0.30}, teacher_metrics={"ndcg@10": 0.25})
    worse = build_report(student, teacher, _row(id="b" * 32, method="none", metrics={"ndcg@10": 0.28}))
    assert worse["gap_closed"] is None and worse["teacher_share"] == pytest.approx(1.2)
    assert any("not better than the student alone" in n for n in worse["notes"])
    assert worse["student"]["latency"] is None and any("latency not measured" in n for n in worse["notes"])
    better = build_report(student, teacher, _row(id="b" * 32, method="none", metrics={"ndcg@10": 0.20}))
    assert better["gap_closed"] == pytest.approx(2.0) and better["times_smaller"] == pytest.approx(4.0)
    gone = build_report(student, None, None)
    assert gone["teacher"]["n_params"] is None and gone["times_smaller"] is None
    assert "| parameters | - | 28 |" in format_report(gone)


def test_a_neumf_teacher_is_timed_by_full_scores_and_said_not_servable(tmp_path: Path) -> None:
    from core.data import load_interactions, split
    from core.jobs import steps
    from core.models import build_model
    from tests.factories import write_interactions

    write_interactions(tmp_path / "x.csv", 40, 30, 10)
    inter = load_interactions(tmp_path / "x.csv", user_col="user", item_col="item")
    data = split(inter, mode="random", ratios=(0.8, 0.1, 0.1), seed=0)
    model = build_model("neumf", data.n_users, data.n_items, 8, train=data.train, seed=0)
    state = np.random.get_state()
    lat = steps.measure_latency(model, data, 20, "flat", k=10, seed=0)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global stream is untouched
    assert lat["method"] == "full-scores" and lat["servable"] is False and 0 < lat["p50_ms"] <= lat["p99_ms"]
    student = _row(teacher_model_id="t" * 32, teacher_metrics={"ndcg@10": 0.2},
                   latency={"student": {**lat, "method": "faiss-flat", "servable": True}, "teacher": lat})
    report = build_report(student, _row(id="t" * 32, role="teacher", model_name="neumf"), None)
    assert any("not servable by an index" in n for n in report["notes"])


def test_no_latency_queries_skips_the_measurement_and_says_so(settings: Settings) -> None:
    student_id = _run(settings.model_copy(update={"report_latency_queries": 0}), "dcd")
    with session_scope(settings.database_url) as s:
        assert repo.get_model(s, student_id).latency is None
        report = model_report(s, student_id)
    assert report["student"]["latency"] is None and report["teacher"]["latency"] is None
    assert any("latency not measured" in n for n in report["notes"])
