"""New-user fold-in (POST /recommend) on ML-100K: quality against the same users trained in, and latency.

A random 10 % of users are "new". Model A (BPR, trained on every user's training items) is the normal
model: its NDCG@10 / Recall@10 on the new users' test items is what they get when trained in. Model B is
trained the same way with the new users' rows removed, so its item embeddings never saw them; each new
user is then folded in from their training items (``ServingBundle.fold_in``: a ridge solve against B's
item embeddings) and scored on the same test items, with the same full-ranking protocol (core/eval.py:
training items excluded). The ridge is chosen on the new users' validation items, never on test.
Latency: POST /recommend (fold-in) beside GET /recommend/{user}, in-process (TestClient) on model A's
bundle, p50/p99 over ``--requests`` requests each.

    PYTHONPATH=$PWD .venv/bin/python bench/foldin_quality.py --out bench/results/foldin-ml-100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import TrainConfig  # noqa: E402
from core.data import SplitData, load_interactions, split  # noqa: E402
from core.datasets import resolve  # noqa: E402
from core.eval import evaluate  # noqa: E402
from core.index import FOLDIN_RIDGE, ServingBundle  # noqa: E402
from core.models import build_model  # noqa: E402
from core.models.base import Recommender  # noqa: E402
from core.train import fit  # noqa: E402

KS = (10, 20)
# Relative ridges (units of the mean squared item-embedding norm, as ServingBundle.recommend_items uses).
RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def rows_only(mat: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``mat`` with every row outside ``keep`` (a boolean mask over users) emptied; the shape is kept."""
    return sp.csr_matrix(sp.diags(keep.astype(np.float32)) @ mat)


def subset(data: SplitData, keep: np.ndarray, *, train_too: bool) -> SplitData:
    """``data`` restricted to users ``keep``: their valid/test rows (and train rows when ``train_too``)."""
    return SplitData(train=rows_only(data.train, keep) if train_too else data.train,
                     valid=rows_only(data.valid, keep), test=rows_only(data.test, keep),
                     user_ids=data.user_ids, item_ids=data.item_ids, fingerprint=data.fingerprint)


def train(data: SplitData, args: argparse.Namespace) -> tuple[Recommender, dict[str, Any]]:
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=1024, patience=args.patience, seed=args.seed,
                         device="cpu", num_threads=args.threads)
    model = build_model("bpr", data.n_users, data.n_items, args.dim, seed=args.seed, reg=args.reg)
    t0 = time.perf_counter()
    result = fit(model, data, config)
    return model, {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                   "seconds": round(time.perf_counter() - t0, 1), "best_valid_ndcg@10": result.best_valid["ndcg@10"]}


def with_user_vectors(model: Recommender, users: np.ndarray, vectors: np.ndarray) -> Recommender:
    """A copy of ``model`` whose rows ``users`` hold ``vectors`` (so core/eval.py scores them as it scores any)."""
    clone = build_model("bpr", model.n_users, model.n_items, model.dim, reg=0.0)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        clone.user_emb.weight[torch.as_tensor(users)] = torch.as_tensor(vectors, dtype=torch.float32)
    return clone


def metrics(model: Recommender, data: SplitData, split_name: str) -> dict[str, float]:
    out = evaluate(model, data, split_name, ks=KS)
    return {k: round(float(out[k]), 4) for k in ("ndcg@10", "recall@10", "ndcg@20", "recall@20")}


def fold_in_all(bundle: ServingBundle, train: sp.csr_matrix, users: np.ndarray, ridge: float) -> np.ndarray:
    """The users' vectors as POST /recommend computes them (``ridge`` relative, as in ``recommend_items``)."""
    lam = ridge * bundle.mean_sq_norm
    return np.stack([bundle.fold_in(train.indices[train.indptr[u]:train.indptr[u + 1]], lam) for u in users])


def bundle_of(model: Recommender, data: SplitData) -> ServingBundle:
    u, v = (t.detach().float().numpy() for t in model.embed())
    return ServingBundle(u, v, [str(x) for x in data.user_ids], [str(i) for i in data.item_ids], data.train,
                         np.argsort(-np.asarray(data.train.sum(axis=0)).ravel(), kind="stable"), "b" * 32)


def latency(model: Recommender, data: SplitData, new_users: np.ndarray, n_requests: int) -> dict[str, Any]:
    """p50/p99 of GET /recommend/{user} and POST /recommend (the new users' training items) in-process."""
    home = Path(tempfile.mkdtemp(prefix="foldin-bench-"))
    os.environ["RECDISTILL_HOME"] = str(home)
    os.environ.pop("RECDISTILL_API_KEY", None)
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.db import repo
    from core.db.migrate import upgrade_head
    from core.db.session import session_scope
    from core.jobs.steps import export_bundle
    from core.settings import clear_settings_cache, get_settings

    clear_settings_cache()
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    with session_scope(settings.database_url) as s:
        ds = repo.create_dataset(s, name="bench", original_filename="ml-100k.inter", path="datasets/bench/data.inter",
                                 format="inter", user_col="user_id", item_col="item_id", rating_col=None,
                                 timestamp_col=None, rating_threshold=None, n_users=data.n_users,
                                 n_items=data.n_items, n_interactions=0, density=0.0, size_bytes=0)
        job = repo.create_job(s, dataset_id=ds.id, status="succeeded", method="none",
                              teacher={"model": "bpr", "dim": model.dim}, student={"model": "bpr", "dim": model.dim})
        row = repo.create_model(s, job_id=job.id, dataset_id=ds.id, role="student", model_name="bpr", dim=model.dim,
                                method="none", artifact_path="", n_params=0, size_bytes=0, metrics={})
        row.artifact_path = f"models/{row.id}"
        model_id = row.id
    export_bundle(settings.artifact_dir / "models" / model_id / "serving", model, data, model_id)
    with session_scope(settings.database_url) as s:
        repo.activate_model(s, model_id)
    rng = np.random.default_rng(0)
    users = [str(data.user_ids[u]) for u in rng.choice(data.n_users, n_requests)]
    bodies = []
    for u in rng.choice(new_users, n_requests):
        items = data.train.indices[data.train.indptr[u]:data.train.indptr[u + 1]]
        bodies.append({"items": [str(data.item_ids[i]) for i in items], "k": 10})
    out: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        for name, call in (("GET /recommend/{user}", lambda i: client.get(f"/recommend/{users[i]}?k=10")),
                           ("POST /recommend", lambda i: client.post("/recommend", json=bodies[i]))):
            for i in range(min(20, n_requests)):  # warm-up
                assert call(i).status_code == 200
            times = []
            for i in range(n_requests):
                t0 = time.perf_counter()
                res = call(i)
                times.append(time.perf_counter() - t0)
                assert res.status_code == 200, res.text
            ms = np.asarray(times) * 1e3
            out[name] = {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                         "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": n_requests}
    out["foldin_items_per_request"] = {"mean": round(float(np.mean([len(b["items"]) for b in bodies])), 1),
                                       "max": int(max(len(b["items"]) for b in bodies))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--new-share", type=float, default=0.1, help="share of users treated as new")
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    data = split(load_interactions(resolve(args.dataset)), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    new_users = np.sort(rng.choice(data.n_users, int(round(args.new_share * data.n_users)), replace=False))
    is_new = np.zeros(data.n_users, dtype=bool)
    is_new[new_users] = True
    new_eval = subset(data, is_new, train_too=False)  # scores only the new users; their training items excluded

    model_a, fit_a = train(data, args)  # (a) everyone trained in
    trained_in = {"valid": metrics(model_a, new_eval, "valid"), "test": metrics(model_a, new_eval, "test")}
    print(f"(a) trained in: {trained_in}", flush=True)

    # (b) the new users' rows removed from every split: B's item embeddings never saw them.
    model_b, fit_b = train(subset(data, ~is_new, train_too=True), args)
    bundle_b = bundle_of(model_b, data)
    sweep = {}
    for ridge in RIDGES:
        folded = with_user_vectors(model_b, new_users, fold_in_all(bundle_b, data.train, new_users, ridge))
        sweep[str(ridge)] = {"valid": metrics(folded, new_eval, "valid")}
        print(f"ridge {ridge}: valid {sweep[str(ridge)]['valid']}", flush=True)
    best = max(RIDGES, key=lambda r: sweep[str(r)]["valid"]["ndcg@10"])
    folded = with_user_vectors(model_b, new_users, fold_in_all(bundle_b, data.train, new_users, best))
    folded_in = {"ridge": best, "valid": sweep[str(best)]["valid"], "test": metrics(folded, new_eval, "test")}
    at_default = with_user_vectors(model_b, new_users, fold_in_all(bundle_b, data.train, new_users, FOLDIN_RIDGE))
    print(f"(b) folded in (ridge {best}): {folded_in}", flush=True)

    # Context: B's item embeddings with popularity as every new user's scores (what GET gives an unknown user).
    pop = build_model("bpr", data.n_users, data.n_items, 1, reg=0.0)
    with torch.no_grad():
        pop.user_emb.weight.fill_(1.0)
        pop.item_emb.weight[:, 0] = torch.as_tensor(np.asarray(data.train.sum(axis=0)).ravel())
    popular = {"test": metrics(pop, new_eval, "test")}

    lat = latency(model_a, data, new_users, args.requests)
    print(json.dumps(lat), flush=True)
    result = {
        "dataset": args.dataset,
        "command": "PYTHONPATH=$PWD .venv/bin/python bench/foldin_quality.py " + " ".join(sys.argv[1:]),
        "protocol": "full ranking (core/eval.py), the new users' training items excluded; metrics averaged over "
                    "the new users with test (valid) items",
        "split": f"random 0.8/0.1/0.1 per user, seed {args.seed}",
        "model": {"name": "bpr", "dim": args.dim, "lr": args.lr, "reg": args.reg, "epochs_max": args.epochs,
                  "patience": args.patience},
        "n_users": data.n_users, "n_items": data.n_items, "n_new_users": int(len(new_users)),
        "fit": {"a_all_users": fit_a, "b_without_new_users": fit_b},
        "a_trained_in": trained_in,
        "b_folded_in": folded_in,
        "b_folded_in_at_FOLDIN_RIDGE": {"ridge": FOLDIN_RIDGE, "test": metrics(at_default, new_eval, "test")},
        "popular_baseline": popular,
        "ridge_sweep_on_valid": sweep,
        "ridge_selection": "the ridge with the best validation NDCG@10 of the folded-in users (test never seen); "
                           "ridges are in units of the mean squared item-embedding norm of model B",
        "mean_sq_item_norm_b": round(bundle_b.mean_sq_norm, 4),
        "latency_in_process": lat,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
