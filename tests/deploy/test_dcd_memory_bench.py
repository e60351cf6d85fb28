"""bench/dcd_refresh_memory.py on a tiny shape: each setting in fresh processes (training, then a resume from its
checkpoint), its report as committed."""

from __future__ import annotations

import json
from pathlib import Path

from script_loader import load_script

bench = load_script("bench/dcd_refresh_memory.py")


def test_a_tiny_shape_reports_peaks_what_is_held_and_seconds_per_setting(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    assert bench.main(["--shape", "200x100x5", "--ms", "60", "--banks", "0,2", "--rkd", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["shape"] == {"users": 200, "items": 100, "train_items_per_user": 5}
    assert report["command"].endswith("--rkd --out " + str(out)) and set(report["commits"]) == {"current"}
    assert [(r["code"], r["m"], r["bank"], r["rkd"]) for r in report["runs"]] == [
        ("current", 60, 0, True), ("current", 60, 2, True)]
    for run in report["runs"]:
        assert run["checkpoint_mb"] >= run["second_refresh_mb"] >= run["first_refresh_mb"] >= run["prepare_mb"] >= 0  # one process's peak
        assert run["resume_mb"] >= run["resume_prepare_mb"] >= 0  # the resumed job's own process
        assert run["resume_s"] >= 0 and "resume_bytes_per_entry" in run
        assert run["prepare_s"] >= 0 and run["first_refresh_s"] >= 0 and run["checkpoint_s"] >= 0 and "held_after_bytes_per_entry" in run  # (0.0: a tiny step rounds to 0)
