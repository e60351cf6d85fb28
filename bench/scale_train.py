"""Training and evaluation at 1M -> 10M interactions: wall time and peak RSS of every phase, and their growth.

One size runs in its own process (``--one``), so no size inherits another's memory; inside it the phases run in
order on one thread and each phase's peak RSS is the kernel's high-water mark (VmHWM), reset at the phase's
start through /proc/self/clear_refs (exact, no sampling), reported beside the RSS the phase started from.
Phases: generate (core.synth) -> load + split -> teacher train (BPR-MF) -> teacher test (full ranking) ->
DCD prepare (teacher top-M lists, both sides) -> student train (DCD) -> student test -> popularity test ->
bundle write (FAISS index build) -> activation (ServingBundle.load + recommends). Epochs are capped (the
numbers are seconds per epoch, not converged models). The driver runs the sizes one after another, merges
their JSON and fits, per phase, the slope of log(time) and log(peak RSS) against log(interactions).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/scale_train.py \
        --sizes 100000x10000x1000000,316228x31623x3162278,1000000x100000x10000000 \
        --out bench/results/scale-train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "scale-train"


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


class Phases:
    """Times every phase and reads its peak RSS (VmHWM reset at the phase start)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn, **extra: Any):  # noqa: ANN001, ANN201 - a bench helper
        start_rss = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            exact = True
        except OSError:
            exact = False
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        row = {"phase": name, "seconds": round(seconds, 2), "start_rss_mb": round(start_rss / 1024, 1),
               "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1), "peak_exact": exact, **extra}
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # noqa: T201 - bench progress
        return out


def run_one(size: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core import synth
    from core.config import ModelSpec, TrainConfig, distill_config
    from core.data import load_interactions, split
    from core.eval import evaluate
    from core.index import ServingBundle
    from core.jobs import steps

    torch.set_num_threads(1)
    n_users, n_items, n_inter = (int(x) for x in size.split("x"))
    spec = synth.SynthSpec(n_users, n_items, n_inter, alpha=args.alpha, clusters=args.clusters, seed=args.seed)
    ph = Phases()
    data_path = WORK / "data" / f"{spec.name}.inter"
    if data_path.exists():
        data_path.unlink()  # generation is a timed phase: always run it
    meta = ph.run("generate", lambda: synth.write(spec, data_path, progress=lambda _m: None))
    # One dict of live objects: phases are lambdas over it, and popping an entry frees it for the next phase.
    s: dict[str, Any] = {"inter": ph.run("load", lambda: load_interactions(data_path))}
    s["data"] = ph.run("split", lambda: split(s.pop("inter"), seed=args.seed))
    train_opts = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "patience": 0,
                  "seed": args.seed, "device": "cpu", "num_threads": 1}
    s["teacher"], tfit = ph.run("teacher_train", lambda: steps.train_model(
        ModelSpec.parse(args.teacher), s["data"], TrainConfig(**train_opts), None, [], None))
    ph.rows[-1].update(seconds_per_epoch=round(tfit.seconds_per_epoch, 2), epochs=tfit.epochs_run)
    s["teacher"].eval()
    quality: dict[str, dict[str, float]] = {}
    quality["teacher"] = ph.run("teacher_test", lambda: steps.test_metrics(s["teacher"], s["data"], "test"))
    dcfg = distill_config("dcd", {"m": args.m, **json.loads(args.dcd)})
    s["distiller"] = ph.run("dcd_prepare", lambda: steps.make_distiller("dcd", dcfg, s["teacher"], s["data"], "cpu"))
    s["student"], sfit = ph.run("student_train", lambda: steps.train_model(
        ModelSpec.parse(args.student), s["data"], TrainConfig(**train_opts), None, [], None,
        distiller=s.pop("distiller")))
    ph.rows[-1].update(seconds_per_epoch=round(sfit.seconds_per_epoch, 2), epochs=sfit.epochs_run)
    s.pop("teacher")
    quality["dcd_student"] = ph.run("student_test", lambda: steps.test_metrics(s["student"], s["data"], "test"))
    pop = _popularity_model(s["data"])
    quality["popularity"] = ph.run("popularity_test", lambda: {
        k: float(v) for k, v in evaluate(pop, s["data"], "test", ks=steps.TEST_KS).items()})
    folder = WORK / "bundles" / spec.name
    ph.run("bundle_write", lambda: steps.export_bundle(folder, s.pop("student"), s.pop("data"), model_id=spec.name))

    def activate() -> dict[str, Any]:
        bundle = ServingBundle.load(folder)
        rng = np.random.default_rng(args.seed)
        users = [bundle.user_ids[int(u)] for u in rng.integers(0, bundle.n_users, size=args.queries)]
        t0 = time.perf_counter()
        for u in users:
            bundle.recommend(u, 10)
        return {"kind": bundle.kind, "queries": len(users),
                "mean_recommend_ms": round(1000 * (time.perf_counter() - t0) / len(users), 3)}

    served = ph.run("activation", activate)
    return {"size": {"users": n_users, "items": n_items, "interactions": n_inter},
            "synth": meta["spec"], "phases": ph.rows, "quality": quality, "serving": served}


def _popularity_model(data):  # noqa: ANN001, ANN202
    import torch

    class Popularity(torch.nn.Module):
        """Scores every item by its training count, the same for every user: the baseline a model must beat."""

        is_dot_product = False

        def __init__(self) -> None:
            super().__init__()
            counts = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32)
            self.register_buffer("counts", torch.from_numpy(counts))

        def full_scores(self, users: torch.Tensor) -> torch.Tensor:
            return self.counts.expand(len(users), -1).clone()

    return Popularity()


def fit_exponents(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per phase: least-squares slope of log(seconds) and log(peak RSS) against log(interactions)."""
    out: dict[str, dict[str, float]] = {}
    phases = [r["phase"] for r in results[0]["phases"]]
    x = np.log([r["size"]["interactions"] for r in results])
    for name in phases:
        rows = [next(p for p in r["phases"] if p["phase"] == name) for r in results]
        t = np.log([max(p.get("seconds_per_epoch", p["seconds"]), 1e-3) for p in rows])
        m = np.log([p["peak_rss_mb"] for p in rows])
        out[name] = {"time": round(float(np.polyfit(x, t, 1)[0]), 2), "peak_rss": round(float(np.polyfit(x, m, 1)[0]), 2),
                     "time_measure": "seconds_per_epoch" if "seconds_per_epoch" in rows[0] else "seconds"}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The docs table of a result file: per phase, seconds (per epoch for training) and peak RSS at each size,
    then the two growth exponents."""
    sizes = result["sizes"]
    head = ["phase"] + [f"{r['size']['interactions'] / 1e6:.2g}M: s / peak GB" for r in sizes] + ["time exp.", "RSS exp."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, exp in result["exponents"].items():
        cells = [name + (" (per epoch)" if exp["time_measure"] == "seconds_per_epoch" else "")]
        for r in sizes:
            p = next(x for x in r["phases"] if x["phase"] == name)
            cells.append(f"{p.get('seconds_per_epoch', p['seconds']):.1f} / {p['peak_rss_mb'] / 1024:.2f}")
        cells += [f"{exp['time']:.2f}", f"{exp['peak_rss']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| NDCG@10 (test, full ranking) | " + " | ".join(
        f"{r['size']['interactions'] / 1e6:.2g}M" for r in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for model in sizes[0]["quality"]:
        lines.append(f"| {model} | " + " | ".join(f"{r['quality'][model]['ndcg@10']:.4f}" for r in sizes) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000x10000x1000000,316228x31623x3162278,1000000x100000x10000000",
                    help="comma list of USERSxITEMSxINTERACTIONS")
    ap.add_argument("--one", default=None, help="(internal) run one size in this process, print its JSON")
    ap.add_argument("--teacher", default="bpr:64")
    ap.add_argument("--student", default="bpr:16")
    ap.add_argument("--epochs", type=int, default=1, help="teacher and student epochs (capped: seconds per epoch)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (teacher and student)")
    ap.add_argument("--m", type=int, default=100, help="DCD teacher list length M")
    ap.add_argument("--dcd", default="{}", help="other DCD options as JSON")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--reuse", action="store_true", help="keep per-size results already in var/scale-train")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None, metavar="RESULT_JSON", help="print the docs table of a result file")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))  # noqa: T201
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args)))  # noqa: T201
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes.split(","):
        part = WORK / f"{size}.json"
        if not (args.reuse and part.exists()):
            cmd = [sys.executable, __file__, "--one", size, *_strip(sys.argv[1:])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr: progress, as it comes
            if proc.returncode != 0:
                print(f"size {size} failed (rc {proc.returncode})", file=sys.stderr)  # noqa: T201
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process_seconds"] = round(time.perf_counter() - t0, 1)
            part.write_text(json.dumps(res, indent=1))
        results.append(json.loads(part.read_text()))
    out = {
        "command": "PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/scale_train.py "
                   + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "device": "cpu only (no GPU in this session)", "torch_threads": 1,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "note": "2 cores shared with another benchmark sweep on the other core: times are noisy"},
        "settings": {"teacher": args.teacher, "student": args.student, "epochs": args.epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "dcd_m": args.m, "dcd": json.loads(args.dcd)},
        "sizes": results,
        "exponents": fit_exponents(results) if len(results) >= 2 else {},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)  # noqa: T201
    return 0


def _strip(argv: list[str]) -> list[str]:
    """The options a per-size process gets: all but the driver's own."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--sizes", "--out"):
            skip = True
            continue
        if a.startswith(("--sizes=", "--out=")) or a == "--reuse":
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
