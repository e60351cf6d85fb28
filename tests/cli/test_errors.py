"""A user mistake gets one line, ``error: <what is wrong>; <what to do>``, and exit status 2: no traceback
(unless -v), and nothing trains before the options are known to be good."""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cli.errors import USAGE_EXIT
from cli.main import build_parser, main
from core.experiment import GAP_NOTE_NOT_BETTER, GAP_NOTE_SPREAD, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def _tiny_csv(path: Path, header: str = "user,item,rating") -> Path:
    rng = np.random.default_rng(0)
    rows = [header]
    for u in range(40):
        for i in rng.choice(10, size=7, replace=False):
            rows.append(f"u{u},i{(u % 4) * 10 + i},{rng.integers(1, 6)}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return _tiny_csv(tmp_path / "tiny.csv")


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training fails the test: the checks must come first."""
    from core.jobs import steps

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was trained before the options were checked")

    monkeypatch.setattr(steps, "train_model", refuse)


def _one_error_line(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == USAGE_EXIT, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _experiment(data: Path | str, *extra: str) -> list[str]:
    return ["experiment", "--dataset", str(data), "--user-col", "user", "--item-col", "item",
            "--teacher", "bpr:8", "--student", "bpr:2", "--max-epochs", "1", "--no-progress", *extra]


def test_unknown_data_set_name(capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error_line(capsys, main(["experiment", "--dataset", "ml-10m"]))
    assert "'ml-10m'" in line and "ml-100k" in line and "ml-1m" in line and "recdistill datasets list" in line


def test_missing_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error_line(capsys, main(_experiment(tmp_path / "nope.csv")))
    assert "nope.csv" in line and "no such data set or file" in line
    line = _one_error_line(capsys, main(_experiment(tmp_path)))
    assert "is not a file" in line
    garbage = tmp_path / "ratings.xlsx"
    garbage.write_bytes(b"\x00\x01\x02")
    line = _one_error_line(capsys, main(_experiment(garbage)))
    assert "unknown file extension" in line
    not_gzip = tmp_path / "ratings.csv.gz"
    not_gzip.write_bytes(b"user,item\nu1,i1\n")
    line = _one_error_line(capsys, main(_experiment(not_gzip)))
    assert line.startswith("error: ratings.csv.gz: not a valid .gz file (Not a gzipped file")
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(_tiny_csv(tmp_path / "t.csv").read_bytes())[:200])
    line = _one_error_line(capsys, main(_experiment(truncated)))
    assert line.startswith("error: cut.csv.gz: not a valid .gz file (Compressed file ended")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(128, 256)) * 3)
    line = _one_error_line(capsys, main(_experiment(binary)))
    assert "not valid UTF-8" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_a_file_without_read_permission(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny.chmod(0)
    line = _one_error_line(capsys, main(_experiment(tiny)))
    assert "cannot be read" in line


def test_columns_not_named_as_expected(tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None) -> None:
    line = _one_error_line(capsys, main(["experiment", "--dataset", str(tiny), "--no-progress"]))
    assert "missing user id column 'user_id'" in line and "'user', 'item', 'rating'" in line
    assert "--user-col" in line and "--item-col" in line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("dcd.foo=1", "--set dcd.foo: dcd has no option 'foo'; its options: bank,"),
        ("dcd.p=-1", "--set dcd.p=-1: input should be greater than 0"),
        ("dcd.eps=abc", "--set dcd.eps='abc': input should be a valid number"),
        ("magic.eps=1", "--set magic.eps: unknown method 'magic'"),
        ("dcd.p=600", "--set dcd.p: must be at most m (500)"),
        ("eps=0.1", "--set: override must look like 'dcd.eps=0.05'"),
    ],
)
def test_bad_set_options_before_anything_trains(
    tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None, option: str, expected: str
) -> None:
    line = _one_error_line(capsys, main(_experiment(tiny, "--methods", "none,dcd", "--set", option)))
    assert line.startswith(f"error: {expected}"), line


def test_a_list_length_too_long_for_the_data_set_before_the_teacher_trains(
    tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None
) -> None:
    # 40 items: a teacher list holds at most 39, and DCD's default p is 40.
    line = _one_error_line(capsys, main(_experiment(tiny, "--methods", "dcd")))
    assert "p=40" in line and "39 entries" in line and "--set dcd.p=" in line


def test_bad_fit_loop_values(tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None) -> None:
    line = _one_error_line(capsys, main(_experiment(tiny, "--lr", "-1")))
    assert "lr=-1.0" in line and "greater than 0" in line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--student-opt", "foo=1"], "--student-opt: bad options for model 'bpr'"),
        (["--student-opt", "reg=-1"], "--student-opt: reg must be a non-negative number, got -1"),
        (["--teacher-opt", "reg=abc"], "--teacher-opt: reg must be a non-negative number, got 'abc'"),
    ],
)
def test_bad_model_options_before_anything_trains(
    tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None, option: list[str], expected: str
) -> None:
    line = _one_error_line(capsys, main(_experiment(tiny, "--methods", "none", *option)))
    assert line.startswith(f"error: {expected}"), line


def test_rating_threshold_needs_rating_col(tiny: Path, capsys: pytest.CaptureFixture[str], no_training: None) -> None:
    line = _one_error_line(capsys, main(_experiment(tiny, "--rating-threshold", "4")))
    assert "--rating-threshold needs --rating-col" in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("foo:8", "--teacher: unknown model 'foo'"),
        ("bpr", "--teacher: model spec must look like 'bpr:200'"),
        ("bpr:0", "--teacher: model spec must look like 'bpr:200'"),
        ("bpr:100000", "--teacher: dim 100000 in 'bpr:100000' is above the limit 4096"),
        ("ease:abc", "--teacher: model spec must look like 'ease:1000'"),
        ("ease:0", "--teacher: model spec must look like 'ease:1000'"),
    ],
)
def test_bad_teacher_spec(tiny: Path, capsys: pytest.CaptureFixture[str], spec: str, expected: str) -> None:
    line = _one_error_line(capsys, main([*_experiment(tiny), "--teacher", spec]))
    assert line.startswith(f"error: {expected}"), line


def test_bad_seeds_and_argparse_errors(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_error_line(capsys, main(_experiment(tiny, "--seeds", "0,x")))
    assert "--seeds" in line and "'0,x'" in line
    line = _one_error_line(capsys, main(_experiment(tiny, "--kcore", "x")))
    assert "--kcore: invalid int value: 'x'" in line and "recdistill experiment --help" in line
    line = _one_error_line(capsys, main(["experiment"]))
    assert "required: --dataset" in line
    line = _one_error_line(capsys, main(["no-such-command"]))
    assert "invalid choice: 'no-such-command'" in line


def test_verbose_keeps_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "experiment", "--dataset", "ml-10m"]) == USAGE_EXIT
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --dataset 'ml-10m'")


def _run_cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom cli.main import main\nsys.exit(main({list(argv)!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_a_real_process_prints_one_line(tmp_path: Path) -> None:
    proc = _run_cli("experiment", "--dataset", "ml-10m")
    assert proc.returncode == USAGE_EXIT and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --dataset 'ml-10m'")


def test_missing_torch(tiny: Path) -> None:
    # sys.modules[name] = None makes `import torch` raise ImportError, as on an install without the extra.
    proc = _run_cli(*_experiment(tiny), prelude="sys.modules['torch'] = None")
    assert proc.returncode == USAGE_EXIT and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: recdistill experiment trains models and needs PyTorch")
    assert 'install it with: pip install -e ".[train]" (or: make install)' in lines[0]


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([name], name, help=helped.get(name))
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_and_command_has_help() -> None:
    seen = list(_walk(build_parser(), "recdistill"))
    assert {"recdistill experiment", "recdistill datasets fetch", "recdistill serve"} <= {p for p, _ in seen}
    missing = [f"{path}: {action.option_strings or action.dest}" for path, action in seen
               if not (action.help and action.help.strip())]
    assert missing == []


def _runs(ndcg: dict[str, list[float]]) -> list[dict[str, object]]:
    return [{"method": m, "test": {"ndcg@10": v, "recall@10": v, "ndcg@20": v, "recall@20": v}, "epochs": 3,
             "seconds_per_epoch": 1.0} for m, values in ndcg.items() for v in values]


def test_table_single_runs_show_no_spread() -> None:
    table = markdown_table(_runs({"teacher": [0.4], "none": [0.2], "dcd": [0.35]}))
    assert "±" not in table and "| 0.4000 |" in table and "75%" in table
    assert GAP_NOTE_NOT_BETTER not in table and GAP_NOTE_SPREAD not in table


def test_table_gap_closed_when_the_teacher_is_not_better() -> None:
    table = markdown_table(_runs({"teacher": [0.2], "none": [0.3], "dcd": [0.25]}))
    assert "%" not in table.split("\n\n")[0]  # no -50% (or -121%)
    assert "| n/a (teacher ≤ student) |" in table and table.endswith(GAP_NOTE_NOT_BETTER)


def test_table_gap_closed_within_the_seed_spread() -> None:
    table = markdown_table(_runs({"teacher": [0.30, 0.40], "none": [0.34, 0.32], "dcd": [0.33, 0.35]}))
    assert "0.3500 ± 0.0707" in table and "| n/a (within seed spread) |" in table
    assert table.endswith(GAP_NOTE_SPREAD)


def test_padding_warning_explains_itself_once(caplog: pytest.LogCaptureFixture) -> None:
    from core.distill import topm

    dense = sp.csr_matrix(np.ones((5, 6), dtype=np.float32))
    with caplog.at_level(logging.DEBUG, logger="core.distill.topm"):
        topm._log_padding(dense, 5, 4)
        topm._log_padding(dense, 5, 4)
    records = [r for r in caplog.records if r.name == "core.distill.topm"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG]
    assert "m clipped to n_items-1 and n_users-1" in records[0].getMessage()
    assert "filled up at the end with already-observed entries" in records[0].getMessage()
