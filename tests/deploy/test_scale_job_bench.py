"""bench/scale_job.py: its helpers (fast), and one tiny size through a real serve (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

bench = load_script("bench/scale_job.py")


def test_sizes_parse_and_exponents_are_log_log_slopes() -> None:
    assert bench.parse_sizes("10x2x30,100X20x300") == [(10, 2, 30), (100, 20, 300)]
    assert bench.slope([1e6, 1e7], [10.0, 100.0]) == 1.0
    assert bench.slope([1e6, 1e7, 1e8], [5.0, 50.0, 5000.0]) == 1.5
    assert bench.slope([1e6], [1.0]) is None  # one point has no slope
    assert bench.slope([1e6, 1e7], [None, 3.0]) is None  # a phase not seen at a size is left out


@pytest.mark.slow
def test_a_tiny_size_runs_through_the_service(tmp_path: Path) -> None:
    out = tmp_path / "scale-job.json"
    bench.main(["--sizes", "2000x500x20000", "--m", "50", "--valid-users", "500", "--queries", "20",
                "--work", str(tmp_path / "work"), "--out", str(out)])
    size = json.loads(out.read_text())["sizes"][0]
    assert size["job"]["status"] == "succeeded", size["job"]
    assert size["upload"]["answer"] == {"n_users": 2000, "n_items": 500, "n_interactions": 20000}
    assert size["job"]["worker_peak_rss_mb"] > 0 and {e["phase"] for e in size["epochs"]} == {"teacher", "distill"}
    assert size["recommend"]["non_200"] == 0 and size["activation_seconds"] < 10
