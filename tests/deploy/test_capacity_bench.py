"""bench/capacity.py --methods: a method joins a committed curve without running the others again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")


def scores(v: float) -> dict[str, float]:
    return dict.fromkeys(METRICS, v)


def run_file(path: Path, seed: int, valid: float, test: float, teacher_test: float = 0.3) -> None:
    teacher = {"method": "teacher", "seed": seed, "valid": scores(0.25), "test": scores(teacher_test)}
    row = {"method": "hetcomp", "seed": seed, "valid": scores(valid), "test": scores(test), "epochs": 50,
           "best_epoch": 40, "stopped_by": "patience", "seconds_per_epoch": 1.0}
    path.write_text(json.dumps({"runs": [teacher, row]}))


def teacher_file(path: Path, valid: float) -> None:
    row = {"method": "teacher", "seed": 0, "valid": scores(valid), "test": scores(0.5), "epochs": 40,
           "stopped_by": "patience"}
    path.write_text(json.dumps({"runs": [row]}))


def earlier_result() -> dict:
    row = {"method": "dcd", "setting": "dcd-a", "student_dim": 20, "params": 2000, "bytes": 8000, "seed": 0,
           "valid": scores(0.2), "test": scores(0.28), "epochs": 60, "best_epoch": 50, "stopped_by": "patience",
           "seconds_per_epoch": 1.0}
    return {
        "command": "python bench/capacity.py --dataset toy --methods dcd",
        "teacher": {"model": "ease:1000", "test_per_seed": {"0": scores(0.3)}},
        "selection": {"teachers": [{"label": "ease-1000", "spec": "ease:1000", "valid": 0.25, "test": 0.3}],
                      "settings": {"dcd": [{"label": "dcd-a", "args": [], "valid": 0.2}]},
                      "chosen": {"dcd": "dcd-a"}},
        "runs": [row], "missing": ["dcd-a-d10-s0"],
    }


def test_methods_join_the_committed_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capacity = load_script("bench/capacity.py")
    grid = {"teachers": [{"label": "bpr-9", "spec": "bpr:9"}, {"label": "bpr-8", "spec": "bpr:8"}],
            "student_model": "bpr", "select_dim": 20, "common": ["--min-epochs", "40"],
            "methods": {"hetcomp": [{"label": "hc-a", "method": "hetcomp"},
                                    {"label": "hc-b", "method": "hetcomp", "args": ["--set", "hetcomp.k=5"]}]}}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    runs = tmp_path / "work" / "toy" / "runs"
    runs.mkdir(parents=True)
    run_file(runs / "hc-a-d20-s0.json", 0, valid=0.21, test=0.20)  # better on validation: chosen
    kept = tmp_path / "kept"  # a finished run committed by an earlier session: the sweep starts from it
    kept.mkdir()
    run_file(kept / "hc-b-d20-s0.json", 0, valid=0.19, test=0.29)
    teacher_file(runs / "teacher-bpr-9.json", valid=0.2)  # new to the grid: joins the selection, does not win
    out = tmp_path / "capacity-toy.json"
    out.write_text(json.dumps(earlier_result()))
    monkeypatch.setattr("core.datasets.resolve", lambda name: name)
    monkeypatch.setattr("core.data.load_interactions", lambda path: SimpleNamespace(n_users=60, n_items=40))
    argv = ["--dataset", "toy", "--dims", "20", "--seeds", "0", "--grid", str(tmp_path / "grid.json"),
            "--workdir", str(tmp_path / "work"), "--out", str(out), "--methods", "hetcomp", "--runs-from", str(kept)]
    monkeypatch.setattr(sys, "argv", ["capacity.py", *argv, "--merge-only"])
    assert capacity.main() == 0
    result = json.loads(out.read_text())
    assert result["teacher"]["model"] == "ease:1000"
    assert [c["label"] for c in result["selection"]["teachers"]] == ["ease-1000", "bpr-9"]
    assert [r["method"] for r in result["runs"]] == ["dcd", "hetcomp"]
    assert result["selection"]["chosen"] == {"dcd": "dcd-a", "hetcomp": "hc-a"}
    assert [c["label"] for c in result["selection"]["settings"]["hetcomp"]] == ["hc-a", "hc-b"]
    assert result["missing"] == ["dcd-a-d10-s0", "teacher-bpr-8"]  # a teacher candidate not run yet
    assert capacity.main() == 0  # merging again records the command once
    assert json.loads(out.read_text())["command"] == result["command"]
    # Before any of a method's selection runs is done, they are listed as missing and the method is left out.
    for f in [*runs.glob("hc-*"), *kept.glob("hc-*")]:
        f.unlink()
    out.write_text(json.dumps(earlier_result()))
    assert capacity.main() == 0
    result = json.loads(out.read_text())
    assert result["selection"]["chosen"] == {"dcd": "dcd-a"}
    assert result["missing"] == ["dcd-a-d10-s0", "teacher-bpr-8", "hc-a-d20-s0", "hc-b-d20-s0"]
    assert result["command"] == ("python bench/capacity.py --dataset toy --methods dcd && python bench/capacity.py "
                                 + " ".join(argv))


def test_a_different_teacher_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capacity = load_script("bench/capacity.py")
    grid = {"teachers": [], "student_model": "bpr", "select_dim": 20, "common": [],
            "methods": {"hetcomp": [{"label": "hc-a", "method": "hetcomp"}]}}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    runs = tmp_path / "work" / "toy" / "runs"
    runs.mkdir(parents=True)
    run_file(runs / "hc-a-d20-s0.json", 0, valid=0.21, test=0.20, teacher_test=0.31)  # not the committed 0.3
    out = tmp_path / "capacity-toy.json"
    out.write_text(json.dumps(earlier_result()))
    monkeypatch.setattr("core.datasets.resolve", lambda name: name)
    monkeypatch.setattr("core.data.load_interactions", lambda path: SimpleNamespace(n_users=60, n_items=40))
    monkeypatch.setattr(sys, "argv", ["capacity.py", "--dataset", "toy", "--dims", "20", "--seeds", "0", "--grid",
                                      str(tmp_path / "grid.json"), "--workdir", str(tmp_path / "work"), "--out",
                                      str(out), "--methods", "hetcomp", "--merge-only"])
    with pytest.raises(SystemExit, match="not the same teacher"):
        capacity.main()


def test_a_new_teacher_candidate_that_wins_stops_the_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capacity = load_script("bench/capacity.py")
    grid = {"teachers": [{"label": "bpr-9", "spec": "bpr:9"}], "student_model": "bpr", "select_dim": 20,
            "common": [], "methods": {"hetcomp": [{"label": "hc-a", "method": "hetcomp"}]}}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    runs = tmp_path / "work" / "toy" / "runs"
    runs.mkdir(parents=True)
    teacher_file(runs / "teacher-bpr-9.json", valid=0.26)  # beats the committed teacher's 0.25 on validation
    out = tmp_path / "capacity-toy.json"
    out.write_text(json.dumps(earlier_result()))
    monkeypatch.setattr(sys, "argv", ["capacity.py", "--dataset", "toy", "--dims", "20", "--seeds", "0", "--grid",
                                      str(tmp_path / "grid.json"), "--workdir", str(tmp_path / "work"), "--out",
                                      str(out), "--methods", "hetcomp", "--merge-only"])
    with pytest.raises(SystemExit, match="bpr-9 now wins on validation"):
        capacity.main()
