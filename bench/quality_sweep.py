"""Quality sweep: teachers once per seed, then every (method, hyper-parameter set, seed) run in parallel.

Hyper-parameters are selected per method on the mean validation NDCG@10 over seeds; the selected
configuration's test numbers are what bench/results/quality-<dataset>.json reports (all candidates are kept
in the file under "candidates"). Usage (one line, reproduces the committed ML-1M file):

  python bench/quality_sweep.py --dataset ml-1m --seeds 0,1,2 --jobs 12 --grid bench/grids/ml-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    with log.open("w") as fh:
        fh.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--grid", required=True, help="JSON: {teacher, student, common:[args], candidates:[{label, method, args}]}")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--workdir", default="var/sweep")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--merge-only", action="store_true", help="only merge the runs already in --workdir")
    ap.add_argument("--only", default=None, help="comma list of candidate labels to run (the merge covers the grid)")
    ap.add_argument("--how", default=None, help="free text stored as how_it_was_run (e.g. what ran by hand)")
    args = ap.parse_args()

    grid = json.loads(Path(args.grid).read_text())
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted(only - {c["label"] for c in grid["candidates"]}) if only else []
    if unknown:
        ap.error(f"--only: no candidate labelled {unknown} in {args.grid}")
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    work = Path(args.workdir) / args.dataset
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    exe = [sys.executable, "-m", "cli", "experiment", "--dataset", args.dataset,
           "--teacher", grid["teacher"], "--student", grid["student"], "--device", args.device,
           "--teacher-cache", str(work / "teachers"), "--no-progress", *grid.get("common", [])]
    t0 = time.time()
    if args.merge_only:
        return write_merged(work, grid, seeds, args)
    # Phase 1: one teacher per seed (an empty method list trains and evaluates the teacher only).
    teacher_cmds = [
        ([*exe, "--seeds", s, "--methods", "", "--out", str(work / "runs" / f"teacher-{s}.json"),
          *grid.get("teacher_args", [])], work / "logs" / f"teacher-{s}.log")
        for s in seeds
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(lambda c: run(c[0], c[1], env), teacher_cmds))
    if any(codes):
        print(f"teacher phase failed: {codes}; see {work / 'logs'}", file=sys.stderr)
        return 1
    print(f"teachers done in {time.time() - t0:.0f}s", flush=True)
    # Phase 2: every candidate x seed, each in its own process, reusing the cached teacher.
    student_cmds = []
    for cand in grid["candidates"]:
        if only is not None and cand["label"] not in only:
            continue
        for s in seeds:
            out = work / "runs" / f"{cand['label']}-{s}.json"
            student_cmds.append((
                [*exe, "--seeds", s, "--methods", cand["method"], "--out", str(out), *cand.get("args", [])],
                work / "logs" / f"{cand['label']}-{s}.log",
            ))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(lambda c: run(c[0], c[1], env), student_cmds))
    failed = [c[1].name for c, code in zip(student_cmds, codes, strict=True) if code]
    print(f"students done in {time.time() - t0:.0f}s; failed: {failed}", flush=True)
    rc = write_merged(work, grid, seeds, args)
    return rc if not failed else 1


def sweep_command(args: argparse.Namespace) -> str:
    """The command that (re)produces the runs, from the parsed options (a --merge-only call records the full
    sweep command, without --merge-only/--how); a kernel choice forced through ATEN_CPU_CAPABILITY is kept."""
    parts = ["--dataset", args.dataset, "--seeds", args.seeds, "--grid", args.grid, "--jobs", str(args.jobs),
             "--workdir", args.workdir, "--device", args.device, "--threads", str(args.threads)]
    if args.out:
        parts += ["--out", args.out]
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    prefix = f"ATEN_CPU_CAPABILITY={shlex.quote(forced)} " if forced else ""
    return prefix + "python bench/quality_sweep.py " + " ".join(shlex.quote(a) for a in parts)


def write_merged(work: Path, grid: dict[str, Any], seeds: list[str], args: argparse.Namespace) -> int:
    merged = merge(work, grid, seeds, args)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"quality-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1))
    from core.experiment import markdown_table

    print(markdown_table(merged["runs"]))
    print(f"selected: {merged['selected']}")
    return 0


def merge(work: Path, grid: dict[str, Any], seeds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    candidates: dict[str, list[dict[str, Any]]] = {}
    for s in seeds:
        tfile = work / "runs" / f"teacher-{s}.json"
        if tfile.exists():
            runs += [r for r in json.loads(tfile.read_text())["runs"] if r["method"] == "teacher"]
    for cand in grid["candidates"]:
        for s in seeds:
            f = work / "runs" / f"{cand['label']}-{s}.json"
            if not f.exists():
                continue
            for r in json.loads(f.read_text())["runs"]:
                if r["method"] != "teacher":
                    r["label"] = cand["label"]
                    r["args"] = cand.get("args", [])
                    candidates.setdefault(cand["label"], []).append(r)
    # Select per reported method name (cand["report_as"] or method) on mean validation NDCG@10.
    best: dict[str, tuple[float, str]] = {}
    for cand in grid["candidates"]:
        rs = candidates.get(cand["label"], [])
        if not rs:  # a candidate with fewer finished seeds still counts; the table shows n per method
            continue
        v = sum(r["valid"]["ndcg@10"] for r in rs) / len(rs)
        name = cand.get("report_as", cand["method"])
        if name not in best or v > best[name][0]:
            best[name] = (v, cand["label"])
    for name, (_, label) in best.items():
        for r in candidates[label]:
            runs.append({**r, "method": name})
    command = sweep_command(args)
    return {
        "dataset": args.dataset,
        "protocol": "full",
        "command": command,
        "selection": "per method, the candidate with the best mean validation NDCG@10 over its finished seeds",
        "seeds_requested": seeds,
        "selected": {k: v[1] for k, v in best.items()},
        **({"how_it_was_run": args.how} if args.how else {}),
        # Library versions and CPU capability of the runs (the first run file that records them).
        "versions": next(
            (v for f in sorted((work / "runs").glob("*.json")) if (v := json.loads(f.read_text()).get("versions"))),
            None,
        ),
        "runs": runs,
        "candidates": {k: [{"seed": r["seed"], "valid": r["valid"], "test": r["test"], "epochs": r["epochs"],
                            "args": r["args"]} for r in v] for k, v in candidates.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
