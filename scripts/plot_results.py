"""Draw docs/results.png: test NDCG@10 per method on ML-1M and ML-100K, from committed result files.

Usage: python scripts/plot_results.py [--out docs/results.png]   (needs matplotlib: pip install -e ".[docs]")

Each panel shows the dim-20 student trained alone, with RRD and with DCD (each method's setting as selected
on validation by bench/quality_sweep.py) as bars with the seeds' standard deviation, and the dim-200 teacher
as a line with its band. The numbers are the README's results table; `summary` is what both read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (panel title, result file): the fourth run, the current code and defaults (docs/results.md).
PANELS = (
    ("MovieLens-1M", ROOT / "bench/results/quality-ml-1m-fourth.json"),
    ("MovieLens-100K", ROOT / "bench/results/quality-ml-100k-defaults.json"),
)
METHODS = ("teacher", "none", "rrd", "dcd")
LABELS = {"none": "student alone", "rrd": "RRD", "dcd": "DCD"}
METRIC = "ndcg@10"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one method's test metric over its seeds."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


def summary(path: Path, metric: str = METRIC) -> dict[str, Stat]:
    """Test ``metric`` per method in METHODS, from a quality_sweep result file's selected runs."""
    result = json.loads(path.read_text(encoding="utf-8"))
    values: dict[str, list[float]] = {m: [] for m in METHODS}
    for run in result["runs"]:
        if run["method"] in values:
            values[run["method"]].append(run["test"][metric])
    missing = [m for m, v in values.items() if not v]
    if missing:
        raise ValueError(f"{path}: no runs for {missing}")
    # Sample std (n - 1), as bench/quality_sweep.py reports it.
    return {
        m: Stat(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for m, v in values.items()
    }


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(9, 3.6))
    for ax, (title, path) in zip(axes, PANELS, strict=True):
        stats = summary(path)
        teacher = stats["teacher"]
        students = [m for m in METHODS if m != "teacher"]
        xs = range(len(students))
        ax.bar(
            xs,
            [stats[m].mean for m in students],
            yerr=[stats[m].std for m in students],
            capsize=5,
            color=["#9e9e9e", "#6a9fd4", "#1f5fa8"],
            width=0.6,
        )
        ax.axhline(teacher.mean, color="#c0392b", lw=1.5, label=f"teacher, dim 200 ({teacher})")
        ax.axhspan(teacher.mean - teacher.std, teacher.mean + teacher.std, color="#c0392b", alpha=0.12, lw=0)
        ax.set_xticks(list(xs), [LABELS[m] for m in students])
        low = min(stats[m].mean - stats[m].std for m in METHODS)
        high = max(stats[m].mean + stats[m].std for m in METHODS)
        pad = (high - low) * 0.6
        ax.set_ylim(low - pad, high + pad)  # the differences are small: a zero baseline would hide them
        n = stats["none"].n
        ax.set_title(f"{title} ({path.name}, {n} seeds)", fontsize=9)
        ax.set_ylabel("test NDCG@10" if ax is axes[0] else "")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "BPR-MF student, dim 20 (a tenth of the teacher): mean ± std over seeds; the axes do not start at 0",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})  # no version stamp: reruns give the same file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results.png", help="PNG to write")
    args = parser.parse_args(argv)
    plot(args.out)
    for title, path in PANELS:
        sys.stdout.write(
            f"{title} ({path.name}): " + ", ".join(f"{m} {s}" for m, s in summary(path).items()) + "\n"
        )
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
