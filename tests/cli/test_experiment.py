"""`recdistill experiment` end to end on a tiny synthetic file: table, JSON shape, teacher reuse, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from core.config import ModelSpec
from core.experiment import markdown_table, parse_overrides


def _tiny_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["user,item,rating"]
    for u in range(40):
        group = u % 4  # four taste clusters of 10 items each
        for i in rng.choice(10, size=7, replace=False):
            rows.append(f"u{u},i{group * 10 + i},{rng.integers(1, 6)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_experiment_writes_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "res.json"
    cache = tmp_path / "teachers"
    args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "bpr:8", "--student", "bpr:2", "--methods", "none,dcd", "--seeds", "0,1",
            "--max-epochs", "2", "--teacher-cache", str(cache), "--no-progress", "--out", str(out),
            "--set", "dcd.m=10", "--set", "dcd.p=3", "--set", "dcd.rkd_k=3", "--set", "dcd.rkd_l=3"]
    with caplog.at_level(logging.INFO, logger="core.progress"):
        assert main(args) == 0
    # --no-progress: one log line per epoch and run instead of a bar (2 seeds x teacher, none, dcd x 2 epochs).
    lines = [r.getMessage() for r in caplog.records if r.name == "core.progress"]
    assert len(lines) == 12 and any(m.startswith("seed 1 dcd epoch 2/2: ") and "rkd=" in m for m in lines)
    table = capsys.readouterr().out
    assert "| teacher | 2 |" in table and "| none | 2 |" in table and "| dcd | 2 |" in table
    result = json.loads(out.read_text())
    assert result["protocol"] == "full" and result["command"].startswith("recdistill ")
    methods = [r["method"] for r in result["runs"]]
    assert methods == ["teacher", "none", "dcd"] * 2
    for run in result["runs"]:
        assert run["teacher"] == "bpr:8" and run["student"] == "bpr:2" and run["seed"] in (0, 1)
        assert 0.0 <= run["test"]["ndcg@10"] <= 1.0 and "recall@10" in run["test"]
        assert run["epochs"] >= 1 and run["seconds_per_epoch"] > 0
    # The second invocation reuses the cached teachers (same seeds, same options).
    assert len(list(cache.iterdir())) == 2
    before = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert main([*args[:-2], "--out", str(tmp_path / "again.json")]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert before == after


def test_a_lightgcn_teacher_trains_with_its_own_batch_and_step(tmp_path: Path) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "res.json"
    args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "lightgcn:8", "--student", "bpr:2", "--methods", "", "--seeds", "0",
            "--max-epochs", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    teacher = json.loads(out.read_text())["runs"][0]
    assert (teacher["batch_size"], teacher["lr"]) == (32768, 1e-2)
    assert main([*args[:-2], "--batch-size", "64", "--teacher-lr", "1e-3", "--out", str(out)]) == 0
    teacher = json.loads(out.read_text())["runs"][0]
    assert (teacher["batch_size"], teacher["lr"]) == (64, 1e-3)


def test_a_teacher_trained_with_sparse_updates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "res.json"
    args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "bpr:8", "--student", "bpr:2", "--methods", "none", "--seeds", "0",
            "--max-epochs", "2", "--no-progress", "--teacher-sparse-updates", "--out", str(out)]
    assert main(args) == 0
    teacher, student = json.loads(out.read_text())["runs"]
    assert teacher["sparse_updates"] is True and teacher["epochs"] == 2 and student["method"] == "none"
    assert main([*args[:args.index("--teacher")], "--teacher", "lightgcn:8", *args[args.index("--student"):]]) == 2
    assert "teacher sparse_updates: model 'lightgcn'" in capsys.readouterr().err


def test_the_same_experiment_twice_gives_the_same_numbers(tmp_path: Path) -> None:
    """Teacher and students are built from the seed, so a second run in the same process (whose generator
    has moved on) repeats the first exactly."""
    data = _tiny_csv(tmp_path / "tiny.csv")
    import torch

    runs = []
    for n in range(2):
        torch.manual_seed(100 + n)  # the process's generator is somewhere else for each run
        out = tmp_path / f"run{n}.json"
        args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
                "--teacher", "bpr:8", "--student", "bpr:2", "--methods", "none,dcd", "--seeds", "0",
                "--max-epochs", "2", "--no-progress", "--out", str(out),
                "--set", "dcd.m=10", "--set", "dcd.p=3", "--set", "dcd.rkd_k=3", "--set", "dcd.rkd_l=3"]
        assert main(args) == 0
        runs.append([(r["method"], r["test"], r["valid"]) for r in json.loads(out.read_text())["runs"]])
    assert runs[0] == runs[1]


def test_experiment_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    base = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item", "--no-progress"]
    assert main([*base, "--teacher", "bpr:8", "--student", "bpr:8"]) == 2
    assert "must be below teacher dim" in capsys.readouterr().err
    assert main([*base, "--methods", "none,magic"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*base, "--teacher", "bpr"]) == 2
    assert "name:positive dim" in capsys.readouterr().err


def test_helpers() -> None:
    assert parse_overrides(["dcd.eps=0.05", "dcd.use_icd=false", "rrd.k=10"]) == {
        "dcd": {"eps": 0.05, "use_icd": False}, "rrd": {"k": 10}}
    with pytest.raises(ValueError, match="dcd.eps=0.05"):
        parse_overrides(["eps=0.05"])
    assert str(ModelSpec.parse("LightGCN:64")) == "lightgcn:64"
    runs = [{"method": m, "test": {"ndcg@10": v, "recall@10": v, "ndcg@20": v, "recall@20": v}, "epochs": 3,
             "seconds_per_epoch": 1.0} for m, v in (("teacher", 0.4), ("none", 0.2), ("dcd", 0.35))]
    table = markdown_table(runs)
    assert "75%" in table  # (0.35 - 0.2) / (0.4 - 0.2)


def test_validation_options_reach_both_fit_loops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "res.json"
    args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "bpr:8", "--student", "bpr:2", "--methods", "none", "--seeds", "0", "--max-epochs", "2",
            "--no-progress", "--eval-every", "2", "--valid-users", "10", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for loop in ("teacher_train", "student_train"):
        assert result["config"][loop]["eval_every"] == 2 and result["config"][loop]["valid_users"] == 10
    assert main([*args[:-2], "--valid-users", "0"]) == 2
    assert "valid_users" in capsys.readouterr().err


def test_runs_stopped_by_the_epoch_cap_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: no silent truncation — each run records what stopped it and the table flags the cap."""
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "capped.json"
    args = ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "bpr:8", "--student", "bpr:2", "--methods", "none", "--seeds", "0",
            "--max-epochs", "2", "--patience", "10", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["stopped_by"] for r in runs] == ["cap", "cap"]
    table = capsys.readouterr().out
    assert "2 (cap: 1/1)" in table and "raise --max-epochs" in table
    patient = [{**r, "stopped_by": "patience"} for r in runs]
    assert "cap" not in markdown_table(patient).split("|")[-2] and "raise --max-epochs" not in markdown_table(patient)


def test_experiment_with_an_ease_teacher(tmp_path: Path) -> None:
    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "res.json"
    assert main(["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
                 "--teacher", "ease:50", "--student", "bpr:2", "--methods", "none", "--max-epochs", "2",
                 "--no-progress", "--out", str(out)]) == 0
    teacher, student = json.loads(out.read_text())["runs"]
    assert (teacher["teacher"], teacher["epochs"], teacher["stopped_by"]) == ("ease:50", 1, "closed_form")
    assert student["stopped_by"] in ("cap", "patience")
    assert main(["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
                 "--teacher", "bpr:8", "--student", "ease:5", "--methods", "none", "--no-progress"]) == 2
