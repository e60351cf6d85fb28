"""bench/quality_sweep.py: selection on validation only, and the recorded reproduce command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]


def run_file(path: Path, method: str, seed: int, valid: float, test: float) -> None:
    row = {"method": method, "seed": seed, "valid": {"ndcg@10": valid}, "test": {"ndcg@10": test}, "epochs": 5}
    teacher = {**row, "method": "teacher", "valid": {"ndcg@10": 0.3}, "test": {"ndcg@10": 0.3}}
    runs = [teacher] if method == "teacher" else [teacher, row]  # a student's file repeats its teacher's row
    path.write_text(json.dumps({"runs": runs, "versions": {"torch": "x"}}))


def test_selection_uses_validation_only_and_the_command_is_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = load_script("bench/quality_sweep.py")
    work = tmp_path / "ml-1m"
    (work / "runs").mkdir(parents=True)
    grid = {"candidates": [
        {"label": "a", "method": "dcd"},  # better on validation, worse on test: must be selected
        {"label": "b", "method": "dcd", "args": ["--set", "dcd.p=10"]},
        {"label": "c", "method": "dcd", "report_as": "dcd-x"},
    ]}
    for s in (0, 1):
        run_file(work / "runs" / f"teacher-{s}.json", "teacher", s, 0.3, 0.3)
        run_file(work / "runs" / f"a-{s}.json", "dcd", s, 0.21, 0.25)
        run_file(work / "runs" / f"b-{s}.json", "dcd", s, 0.20, 0.29)
    run_file(work / "runs" / "c-0.json", "dcd", 0, 0.19, 0.20)  # one finished seed still counts
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    args = argparse.Namespace(dataset="ml-1m", seeds="0,1", grid="g.json", jobs=2, workdir=str(tmp_path),
                              device="cpu", threads=1, out="o.json", how="by hand", merge_only=True)
    merged = sweep.merge(work, grid, ["0", "1"], args)
    assert merged["selected"] == {"dcd": "a", "dcd-x": "c"}
    by_method = {}
    for r in merged["runs"]:
        by_method.setdefault(r["method"], []).append(r["test"]["ndcg@10"])
    assert by_method == {"teacher": [0.3, 0.3], "dcd": [0.25, 0.25], "dcd-x": [0.20]}
    assert set(merged["candidates"]) == {"a", "b", "c"} and merged["how_it_was_run"] == "by hand"
    assert merged["command"] == (
        "ATEN_CPU_CAPABILITY=avx2 python bench/quality_sweep.py --dataset ml-1m --seeds 0,1 --grid g.json "
        "--jobs 2 --workdir " + str(tmp_path) + " --device cpu --threads 1 --out o.json"
    )
