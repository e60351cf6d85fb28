"""The size-quality curve: how small a student can go, and what each distillation method keeps of its teacher.

Three stages, every run its own `recdistill experiment` process (resumable: a run whose file exists is kept):
1. the teacher: each candidate of the grid's "teachers" on seed 0; the best validation NDCG@10 is chosen;
2. the settings: each method's candidates at dim "select_dim" on seed 0; the best validation NDCG@10 is chosen;
3. the curve: every student dim x method (its chosen setting) x seed.
Nothing is chosen on test. The result, bench/results/capacity-<dataset>.json, has the shape
{dataset, protocol, command, teacher: {model, dim, params, bytes, test}, runs: [{method, student_dim, params,
bytes, seed, valid, test, epochs, stopped_by}], selection: {...}}. Plot it with scripts/plot_capacity.py.

  python bench/capacity.py --dataset ml-1m --dims 5,10,20,40 --seeds 0,1,2 --jobs 2

With --methods, the result file already there keeps its teacher and its other methods' runs, and the methods named
join it; its "command" then lists both commands, in order, on one work directory. Teacher candidates new to the
grid are run and join the selection (it stops if one of them wins on validation). Finished runs of a sweep still
in progress can be committed under bench/results/capacity-runs/<dataset>/: a sweep starts from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPORTED = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
MONITOR = "ndcg@10"
FLOAT_BYTES = 4  # students are stored and served as float32


def run(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    with log.open("w") as fh:
        fh.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def done(cmd: list[str], out: Path) -> bool:
    """A run is done when its file holds its student (a teacher-only run: its teacher); a run killed halfway
    leaves a file with the teacher row only, and runs again."""
    teacher_only = cmd[cmd.index("--methods") + 1] == ""
    return any(teacher_only or r["method"] != "teacher" for r in runs_of(out))


def runs_of(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


class Sweep:
    def __init__(self, args: argparse.Namespace, grid: dict[str, Any]) -> None:
        self.args, self.grid = args, grid
        self.unrun: list[str] = []  # selection runs not done yet (--merge-only)
        self.work = Path(args.workdir) / args.dataset
        for sub in ("logs", "runs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        # Finished runs of a sweep still in progress, committed so that a later session (or machine) resumes it
        # instead of training them again.
        kept = Path(args.runs_from) if args.runs_from else ROOT / "bench" / "results" / "capacity-runs" / args.dataset
        for f in sorted(kept.glob("*.json")) if kept.is_dir() else []:
            if not (self.work / "runs" / f.name).exists():
                shutil.copyfile(f, self.work / "runs" / f.name)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                    "PYTHONUNBUFFERED": "1"}

    def command(self, teacher: str, dim: int, method: str, seed: int, extra: list[str], name: str
                ) -> tuple[list[str], Path, Path]:
        out = self.work / "runs" / f"{name}.json"
        extra = [*extra, *self.grid.get("dataset_args", {}).get(self.args.dataset, {}).get(method, [])]
        cmd = [sys.executable, "-m", "cli", "experiment", "--dataset", self.args.dataset, "--teacher", teacher,
               "--student", f"{self.grid['student_model']}:{dim}", "--methods", method, "--seeds", str(seed),
               "--device", self.args.device, "--no-progress", "--out", str(out),
               # Teachers (and HetComp's ensemble trajectories) are kept per seed and reused by every run.
               "--teacher-cache", str(self.work / "teachers"), *self.grid["common"], *extra]
        return cmd, self.work / "logs" / f"{name}.log", out

    def run_all(self, jobs: list[tuple[list[str], Path, Path]]) -> None:
        if self.args.merge_only:
            return
        todo = [(c, log) for c, log, out in jobs if not done(c, out)]
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            codes = list(pool.map(lambda j: run(j[0], j[1], self.env), todo))
        failed = [log.name for (_, log), code in zip(todo, codes, strict=True) if code]
        if failed:
            raise SystemExit(f"failed runs (see {self.work / 'logs'}): {failed}")

    def choose_teacher(self, candidates: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Each candidate that ran, with its seed-0 validation and test NDCG@10 (the caller picks the best)."""
        candidates = self.grid["teachers"] if candidates is None else candidates
        jobs = [self.command(t["spec"], self.grid["select_dim"], "", 0, t.get("args", []), f"teacher-{t['label']}")
                for t in candidates]
        self.run_all(jobs)
        seen = []
        for t, (_, _, out) in zip(candidates, jobs, strict=True):
            if not runs_of(out):  # --merge-only before this candidate ran: listed as missing, not chosen
                self.unrun.append(out.stem)
                continue
            r = runs_of(out)[0]
            seen.append({"label": t["label"], "spec": t["spec"], "args": t.get("args", []),
                         "valid": r["valid"][MONITOR], "test": r["test"][MONITOR], "epochs": r["epochs"],
                         "stopped_by": r["stopped_by"]})
        return seen

    def choose_settings(self, teacher: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        dim = self.grid["select_dim"]
        jobs, where = [], []
        for label, cands in self.grid["methods"].items():
            if self.args.methods and label not in self.args.methods:
                continue
            for c in cands:
                jobs.append(self.command(teacher, dim, c["method"], 0, c.get("args", []), f"{c['label']}-d{dim}-s0"))
                where.append((label, c))
        self.run_all(jobs)
        chosen: dict[str, dict[str, Any]] = {}
        tried: dict[str, list[dict[str, Any]]] = {}
        for (label, c), (_, _, out) in zip(where, jobs, strict=True):
            found = [r for r in runs_of(out) if r["method"] != "teacher"]
            if not found:  # --merge-only before this candidate ran: listed as missing, the method left out
                self.unrun.append(out.stem)
                continue
            r = found[0]
            tried.setdefault(label, []).append({"label": c["label"], "args": c.get("args", []),
                                                "valid": r["valid"][MONITOR]})
            if label not in chosen or r["valid"][MONITOR] > chosen[label]["valid"]:
                chosen[label] = {**c, "valid": r["valid"][MONITOR]}
        for label, c in chosen.items():
            print(f"{label}: {c['label']} (validation NDCG@10 {c['valid']:.4f} at dim {dim}, seed 0)", flush=True)
        return chosen, tried

    def curve(self, teacher: str, chosen: dict[str, dict[str, Any]], run: bool = True
              ) -> list[tuple[str, int, int, Path]]:
        """Every (dim, seed, method) run, seed by seed (a sweep cut short still holds whole curves of its first
        seeds); ``run``: False only lists them (--merge-only)."""
        jobs, keys = [], []
        only = self.grid.get("method_dims", {})
        for seed in self.args.seeds:
            for dim in self.args.dims:
                for label, c in chosen.items():
                    if label in only and dim not in only[label]:
                        continue
                    jobs.append(self.command(teacher, dim, c["method"], seed, c.get("args", []),
                                             f"{c['label']}-d{dim}-s{seed}"))
                    keys.append((label, dim, seed, jobs[-1][2]))
        if run:
            self.run_all(jobs)
        return keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--dims", default="5,10,20,40", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--grid", default=str(ROOT / "bench/grids/capacity.json"))
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--workdir", default=str(ROOT / "var/capacity"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", default=None, type=lambda s: s.split(","),
                    help="only these methods of the grid (default: all)")
    ap.add_argument("--runs-from", default=None,
                    help="finished runs to start from (default: bench/results/capacity-runs/<dataset>, if any)")
    ap.add_argument("--merge-only", action="store_true",
                    help="write the result from the runs already done (the missing ones are listed in it)")
    args = ap.parse_args()
    grid = json.loads(Path(args.grid).read_text())
    sweep = Sweep(args, grid)
    result_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"capacity-{args.dataset}.json"
    # --methods adds methods to a result already written: its teacher (chosen on validation) and its other
    # methods' runs are kept, so a slow method can join a curve without running the rest again.
    earlier = json.loads(result_path.read_text()) if args.methods and result_path.exists() else None
    if earlier:
        # Teacher candidates the grid gained since are run and join the selection; if one of them wins on
        # validation, every method must run again with it.
        teachers_tried = earlier["selection"]["teachers"]
        known = {c["label"] for c in teachers_tried}
        new = [t for t in grid["teachers"] if t["label"] not in known]
        if new:
            teachers_tried = teachers_tried + sweep.choose_teacher(new)
        teacher = max(teachers_tried, key=lambda c: c["valid"])
        if teacher["spec"] != earlier["teacher"]["model"]:
            raise SystemExit(f"teacher candidate {teacher['label']} now wins on validation over "
                             f"{earlier['teacher']['model']}: run every method (without --methods)")
        print(f"teacher: {teacher['spec']} (kept from {result_path.name})", flush=True)
    else:
        teachers_tried = sweep.choose_teacher()
        if not teachers_tried:
            raise SystemExit("no teacher candidate has run yet: run without --merge-only first")
        teacher = max(teachers_tried, key=lambda c: c["valid"])
        print(f"teacher: {teacher['spec']} (validation NDCG@10 {teacher['valid']:.4f})", flush=True)
    chosen, settings_tried = sweep.choose_settings(teacher["spec"])
    keys = sweep.curve(teacher["spec"], chosen, run=not args.merge_only)

    from core.data import load_interactions
    from core.datasets import resolve

    inter = load_interactions(resolve(args.dataset))
    n_users, n_items = inter.n_users, inter.n_items
    common = grid["common"]
    min_epochs = int(common[common.index("--min-epochs") + 1]) if "--min-epochs" in common else 0
    teacher_runs = []
    runs = []
    missing = list(sweep.unrun)
    for label, dim, seed, out in keys:
        found = runs_of(out)
        students = [r for r in found if r["method"] != "teacher"]
        if not students:  # not run yet, or still running (the teacher row is written first)
            missing.append(out.stem)
            continue
        t = next(r for r in found if r["method"] == "teacher")
        s = students[0]
        if s["stopped_by"] == "patience" and s["epochs"] < min_epochs:
            raise SystemExit(f"{out} stopped at epoch {s['epochs']}, before --min-epochs {min_epochs}: it was run "
                             "under an older protocol; delete it and run again")
        teacher_runs.append({"seed": seed, "test": t["test"]})
        params = (n_users + n_items) * dim
        runs.append({
            "method": label, "setting": chosen[label]["label"], "student_dim": dim, "params": params,
            "bytes": params * FLOAT_BYTES, "seed": seed,
            "valid": {k: s["valid"][k] for k in REPORTED}, "test": {k: s["test"][k] for k in REPORTED},
            "epochs": s["epochs"], "best_epoch": s.get("best_epoch"), "stopped_by": s["stopped_by"],
            "seconds_per_epoch": s["seconds_per_epoch"],
        })
    # The teacher of a seed is the same at every student dim (it never sees the student): keep one per seed.
    per_seed = {r["seed"]: r["test"] for r in teacher_runs}
    command = "python bench/capacity.py " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--merge-only")
    if earlier:
        runs, missing, settings_tried, chosen, command = merge_earlier(
            earlier, result_path, grid, args.methods, per_seed, runs, missing, settings_tried, chosen, command)
    spec = teacher["spec"]
    t_params = n_items * n_items if spec.startswith("ease") else None
    if t_params is None:  # an embedding teacher: (users + items) x dim
        t_params = (n_users + n_items) * int(spec.split(":")[1])
    result = {
        "dataset": args.dataset,
        "protocol": "full ranking of every unobserved item; random 80/10/10 split per user, one split per seed; "
                    "teacher and settings chosen on validation NDCG@10 of seed 0 (see selection); student BPR-MF",
        "command": command,
        "grid": grid,
        "n_users": n_users, "n_items": n_items,
        "teacher": {
            "model": spec, "dim": n_items if spec.startswith("ease") else int(spec.split(":")[1]),
            "params": t_params, "bytes": t_params * FLOAT_BYTES,
            "test": {k: sum(t[k] for t in per_seed.values()) / len(per_seed) for k in REPORTED},
            "test_per_seed": {str(s): {k: t[k] for k in REPORTED} for s, t in sorted(per_seed.items())},
        },
        "selection": {"teachers": teachers_tried, "settings": settings_tried,
                      "chosen": {k: v["label"] for k, v in chosen.items()}},
        "runs": runs,
        "missing": missing,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))
    print(f"written to {result_path}")
    return 0


def merge_earlier(
    earlier: dict[str, Any], result_path: Path, grid: dict[str, Any], methods: list[str], per_seed: dict[int, Any],
    runs: list[dict[str, Any]], missing: list[str], settings_tried: dict[str, Any], chosen: dict[str, Any],
    command: str,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any], dict[str, Any], str]:
    """``--methods``: this sweep's methods joined to the committed result's others, which share its teacher
    (``per_seed`` gains the earlier seeds' teacher scores). Returns runs, missing, settings, chosen, command."""
    for seed, test in earlier["teacher"]["test_per_seed"].items():
        mine = per_seed.setdefault(int(seed), test)
        if abs(mine[MONITOR] - test[MONITOR]) > 1e-6:
            raise SystemExit(f"seed {seed}: the teacher's test NDCG@10 {mine[MONITOR]:.6f} differs from "
                             f"{test[MONITOR]:.6f} in {result_path}: not the same teacher or data; run every method")
    kept = [m for m in earlier["selection"]["chosen"] if m not in methods]
    runs = [r for r in earlier["runs"] if r["method"] in kept] + runs
    # This merge lists again what it still lacks: teacher candidates, and runs of the methods named.
    labels = ("teacher-", *(f"{c['label']}-d" for m in methods for c in grid["methods"].get(m, [])))
    missing = [m for m in earlier["missing"] if not m.startswith(labels)] + missing
    settings_tried = {**{m: earlier["selection"]["settings"][m] for m in kept}, **settings_tried}
    chosen = {**{m: {"label": earlier["selection"]["chosen"][m]} for m in kept}, **chosen}
    done_before = earlier["command"].split(" && ")
    command = " && ".join(done_before if command in done_before else [*done_before, command])  # a re-merge adds nothing
    return runs, missing, settings_tried, chosen, command


def summary(result: dict[str, Any]) -> str:
    """Markdown: the teachers tried (validation, test, size) and, per student dim, each method's test NDCG@10
    (mean ± std over seeds), its share of the teacher's and the runs the epoch cap stopped."""
    import statistics

    teacher = result["teacher"]
    t_ndcg = teacher["test"][MONITOR]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in result["runs"]:
        groups.setdefault((r["method"], r["student_dim"]), []).append(r)
    alone20 = [r["test"][MONITOR] for r in groups.get(("none", 20), []) if r["seed"] == 0]
    lines = ["| teacher candidate | valid NDCG@10 (seed 0) | test NDCG@10 (seed 0) | lead over dim-20 alone |",
             "|---|---|---|---|"]
    for c in result["selection"]["teachers"]:
        lead = f"{100 * (c['test'] / alone20[0] - 1):+.1f} %" if alone20 else "—"
        lines.append(f"| {c['label']} | {c['valid']:.4f} | {c['test']:.4f} | {lead} |")
    lines += ["", f"Teacher {teacher['model']} ({teacher['params']:,} numbers, {teacher['bytes'] / 1e6:.1f} MB): "
              f"test NDCG@10 {t_ndcg:.4f} (mean of {len(teacher['test_per_seed'])} seeds).", "",
              "| student dim | size | method | n | test NDCG@10 | of teacher | Recall@10 | capped |",
              "|---|---|---|---|---|---|---|---|"]
    for (method, dim), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], list(STYLE_ORDER).index(kv[0][0]))):
        vals = [r["test"][MONITOR] for r in rs]
        rec = [r["test"]["recall@10"] for r in rs]
        mean = statistics.fmean(vals)
        spread = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""  # one seed has no spread to show
        capped = sum(r["stopped_by"] == "cap" for r in rs)
        lines.append(f"| {dim} | {rs[0]['bytes'] / 1e6:.2f} MB | {method} | {len(rs)} | {mean:.4f}{spread} | "
                     f"{100 * mean / t_ndcg:.1f} % | {statistics.fmean(rec):.4f} | {capped} |")
    if result.get("missing"):
        lines += ["", f"Not run yet: {', '.join(result['missing'])}."]
    return "\n".join(lines)


STYLE_ORDER = ("none", "rrd", "dcd", "hetcomp")


if __name__ == "__main__":
    raise SystemExit(main())
