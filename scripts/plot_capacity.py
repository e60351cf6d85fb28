"""Draw docs/capacity.png: test NDCG@10 against student size, one line per method, the teacher as a line.

Usage: python scripts/plot_capacity.py [--out docs/capacity.png]   (reads bench/results/capacity-<dataset>.json;
needs matplotlib: pip install -e ".[docs]")
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("ml-1m", "ml-100k")
STYLE = {"none": ("alone", "tab:gray", "o"), "rrd": ("RRD", "tab:blue", "s"), "dcd": ("DCD", "tab:red", "D"),
         "hetcomp": ("HetComp", "tab:green", "^")}


README_DIMS = (10, 20)  # the README's table: the dims the bars are set at


def cell(result: dict, method: str, dim: int) -> str:
    """Test NDCG@10 of a method at a dim as the README prints it: mean ± std (n), or — when not run."""
    vals = [r["test"]["ndcg@10"] for r in result["runs"] if r["method"] == method and r["student_dim"] == dim]
    if not vals:
        return "—"
    if len(vals) == 1:  # one seed has no spread to show
        return f"{vals[0]:.4f} (1)"
    return f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f} ({len(vals)})"


def readme_rows() -> list[list[str]]:
    """The README's results rows: data set, dim, teacher, then each method's cell."""
    rows = []
    for name in DATASETS:
        path = ROOT / "bench/results" / f"capacity-{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        teacher = f"{result['teacher']['model']} {result['teacher']['test']['ndcg@10']:.4f}"
        for dim in README_DIMS:
            rows.append([name, str(dim), teacher, *(cell(result, m, dim) for m in STYLE)])
    return rows


def curve(result: dict, method: str) -> tuple[list[float], list[float], list[float]]:
    by_dim: dict[int, list[dict]] = {}
    for r in result["runs"]:
        if r["method"] == method:
            by_dim.setdefault(r["student_dim"], []).append(r)
    xs, ys, es = [], [], []
    for dim in sorted(by_dim):
        vals = [r["test"]["ndcg@10"] for r in by_dim[dim]]
        xs.append(by_dim[dim][0]["bytes"] / 1e6)
        ys.append(statistics.fmean(vals))
        es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return xs, ys, es


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/capacity.png", help="PNG to write")
    parser.add_argument("--table", action="store_true", help="print the README's results rows instead")
    args = parser.parse_args()
    if args.table:
        for row in readme_rows():
            sys.stdout.write("| " + " | ".join(row) + " |\n")
        return
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    results = [(name, json.loads(p.read_text())) for name in DATASETS
               if (p := ROOT / "bench/results" / f"capacity-{name}.json").is_file()]
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.0), squeeze=False)
    for ax, (name, result) in zip(axes[0], results, strict=True):
        teacher = result["teacher"]
        ax.axhline(teacher["test"]["ndcg@10"], color="black", linestyle="--", linewidth=1,
                   label=f"teacher {teacher['model']} ({teacher['bytes'] / 1e6:.0f} MB)")
        for method, (label, colour, marker) in STYLE.items():
            xs, ys, es = curve(result, method)
            if xs:
                ax.errorbar(xs, ys, yerr=es, label=label, color=colour, marker=marker, capsize=3, linewidth=1.5)
        sizes = {r["student_dim"]: r["bytes"] / 1e6 for r in result["runs"]}
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([sizes[d] for d in sorted(sizes)])
        ax.set_xticklabels([f"dim {d}\n{sizes[d]:.2g} MB" for d in sorted(sizes)])
        ax.set_xlabel("BPR-MF student: embedding dim and float32 size")
        ax.set_ylabel("test NDCG@10 (mean ± std over seeds)")
        ax.set_title(f"{name}: {result['n_users']:,} users × {result['n_items']:,} items")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    sys.stdout.write(f"wrote {args.out}\n")


if __name__ == "__main__":
    main()
