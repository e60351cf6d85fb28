"""bench/topm_speed.py on a tiny shape, this checkout against itself: times per run, the lists compared."""

from __future__ import annotations

import json
from pathlib import Path

from script_loader import ROOT, load_script

bench = load_script("bench/topm_speed.py")


def test_a_tiny_shape_against_the_same_code_reports_both_runs_and_equal_lists(tmp_path: Path) -> None:
    out = tmp_path / "topm.json"
    # The same checkout as its own baseline: each run writes its own lists (they were once named by path).
    assert bench.main(["--shape", "300x50x5", "--m", "20", "--baseline", str(ROOT), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["shape"] == {"users": 300, "items": 50, "train_items_per_user": 5, "m": 20}
    assert [r["code"] for r in report["runs"]] == ["current", "baseline"]
    assert all(r["wall_s"] >= 0 and r["cpu_s"] >= 0 for r in report["runs"])  # (0.0: a tiny run rounds to 0)
    assert report["item_lists"] == {"rows": 50, "equal": 50, "same_users_other_order": 0, "other_users": 0}
    assert report["user_lists_equal"] is True
