"""The compression report of a student: its quality, size and latency beside its teacher's, and how much of
the teacher's advantage distillation recovered.

Torch-free: ``model_report`` reads the rows the job recorded (``core.db.repo``), ``build_report`` is the pure
shape the API returns (``api.schemas.ModelReportPublic``) and ``format_report`` the text the CLI prints from
that same shape. Every number here was measured by the job; what is not known is None, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from core.config import ModelRole
from core.db import repo
from core.db.models import Model

#: The test metrics the report compares (both models on the job's split).
REPORT_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
GAP_METRIC = "ndcg@10"
NOT_MEASURED = "not measured (the job ran before latency was recorded, or RECDISTILL_REPORT_LATENCY_QUERIES=0)"
NOT_SERVABLE = "not servable by an index: timed as full_scores + top-k on the worker"


def _side(
    model_id: str | None,
    model_name: str | None,
    dim: int | None,
    n_params: int | None,
    size_bytes: int | None,
    metrics: Mapping[str, Any] | None,
    latency: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "model_name": model_name,
        "dim": dim,
        "n_params": n_params,
        "size_bytes": size_bytes,
        "metrics": {m: float(metrics[m]) for m in REPORT_METRICS if metrics and m in metrics},
        "latency": dict(latency) if latency else None,
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else float(num) / float(den)


def build_report(
    student: Model, teacher: Model | None, baseline: Model | None
) -> dict[str, Any]:
    """The report of ``student`` (a student row) given its ``teacher`` row (None when gone) and a student-alone
    ``baseline`` (a ``method="none"`` student on the same data set, split, seed and spec; None when unknown)."""
    latency = student.latency or {}
    t_metrics = student.teacher_metrics  # the teacher on this job's split, recorded by the job
    s_side = _side(student.id, student.model_name, student.dim, student.n_params, student.size_bytes,
                   student.metrics, latency.get("student"))
    t_side = _side(student.teacher_model_id, teacher.model_name if teacher else None,
                   teacher.dim if teacher else None, teacher.n_params if teacher else None,
                   teacher.size_bytes if teacher else None, t_metrics, latency.get("teacher"))
    notes: list[str] = []
    if not latency:
        notes.append(f"latency {NOT_MEASURED}")
    elif t_side["latency"] and not t_side["latency"].get("servable", True):
        notes.append(f"teacher {t_side['model_name']} is {NOT_SERVABLE}")
    if teacher is None:
        notes.append("the teacher's row is gone: its parameters and size are unknown")
    s_score = s_side["metrics"].get(GAP_METRIC)
    t_score = t_side["metrics"].get(GAP_METRIC)
    gap, base_score = None, None
    if student.method == "none":
        notes.append("this student was trained without distillation: it is the student-alone baseline")
    elif baseline is None:
        notes.append("gap closed unknown: no student-alone (method none) run with the same data set, split, "
                     "seed and student; run one to know it")
    else:
        base_score = (baseline.metrics or {}).get(GAP_METRIC)
        if s_score is None or t_score is None or base_score is None:
            notes.append(f"gap closed unknown: {GAP_METRIC} missing")
        elif t_score <= base_score:
            notes.append(f"gap closed undefined: the teacher ({t_score:.4f}) is not better than the student "
                         f"alone ({base_score:.4f})")
        else:
            gap = (s_score - base_score) / (t_score - base_score)
    return {
        "model_id": student.id,
        "job_id": student.job_id,
        "dataset_id": student.dataset_id,
        "method": student.method,
        "metric": GAP_METRIC,
        "student": s_side,
        "teacher": t_side,
        "times_smaller": _ratio(t_side["n_params"], student.n_params),
        "bytes_ratio": _ratio(t_side["size_bytes"], student.size_bytes),
        "teacher_share": _ratio(s_score, t_score),
        "baseline_model_id": baseline.id if baseline is not None else None,
        "baseline_metric": None if base_score is None else float(base_score),
        "gap_closed": gap,
        "notes": notes,
    }


def model_report(session: Session, model_id: str) -> dict[str, Any]:
    """The report of student ``model_id`` (NotFoundError when unknown, ConflictError for a teacher)."""
    student = repo.get_model(session, model_id)
    if student.role != ModelRole.STUDENT:
        raise repo.ConflictError(f"model {model_id} is a {student.role}: only students have a compression report")
    teacher = repo.find_model(session, student.teacher_model_id) if student.teacher_model_id else None
    baseline = None if student.method == "none" else repo.find_baseline_student(session, student)
    return build_report(student, teacher, baseline)


# --------------------------------------------------------------------------------------------------- text
def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.3f} MB"


def _latency(lat: Mapping[str, Any] | None) -> tuple[str, str]:
    if not lat:
        return "-", "-"
    return f"{lat['p50_ms']:.3f} ms", f"{lat['p99_ms']:.3f} ms"


def _index(info: Mapping[str, Any] | None) -> str:
    """"ivf nlist=1000 nprobe=32, recall@10 0.985": the index timed and, when approximate, its measured recall."""
    if not info:
        return "-"
    params = " ".join(f"{k}={v}" for k, v in sorted(info.get("params", {}).items()))
    text = f"{info['kind']} {params}".strip()
    recall = info.get("recall_at_10")
    return text if recall is None else f"{text}, recall@10 {recall:.3f}"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a markdown table and a few lines (the CLI's view of the API's ``ModelReportPublic``)."""
    s, t = report["student"], report["teacher"]
    rows = [("", f"teacher {t.get('model_name') or '?'}:{t.get('dim') or '?'}",
             f"student {s['model_name']}:{s['dim']}")]
    for m in REPORT_METRICS:
        if m in s["metrics"] or m in t["metrics"]:
            rows.append((m, _num(t["metrics"].get(m)), _num(s["metrics"].get(m))))
    rows.append(("parameters", "-" if t["n_params"] is None else f"{t['n_params']:,}", f"{s['n_params']:,}"))
    rows.append(("weights on disk", _mb(t["size_bytes"]), _mb(s["size_bytes"])))
    (t50, t99), (s50, s99) = _latency(t["latency"]), _latency(s["latency"])
    k = (s["latency"] or t["latency"] or {}).get("k")
    rows.append((f"recommend p50 (k={k})" if k else "recommend p50", t50, s50))
    rows.append((f"recommend p99 (k={k})" if k else "recommend p99", t99, s99))
    rows.append(("timed as", (t["latency"] or {}).get("method", "-"), (s["latency"] or {}).get("method", "-")))
    if (s["latency"] or {}).get("index") or (t["latency"] or {}).get("index"):
        rows.append(("index", _index((t["latency"] or {}).get("index")), _index((s["latency"] or {}).get("index"))))
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]  # metrics: test split, both models on the same one
    lines.insert(1, "|---|---|---|")
    smaller = report.get("times_smaller")
    lines.append("")
    lines.append(f"{_num(smaller, '.1f')}x fewer parameters than the teacher; "
                 f"student {report['metric']} = {_num(_pct(report.get('teacher_share')), '.1f')} % of the teacher's.")
    gap = report.get("gap_closed")
    if gap is not None:
        lines.append(f"Gap closed: {gap * 100:.1f} % of the way from the student alone "
                     f"({report['baseline_metric']:.4f}, model {report['baseline_model_id']}) to the teacher.")
    lines += [f"Note: {n}." for n in report.get("notes", [])]
    return "\n".join(lines)


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100.0
