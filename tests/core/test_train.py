"""The fit loop: early stopping, best-weight restore, NaN detection, cancel + resume equivalence, callbacks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import core.train as train_module
from core.checkpoint import CheckpointError
from core.config import DistillConfig, TrainConfig
from core.data import SplitData
from core.distill import distiller_for
from core.models import BPRMF, build_model
from core.progress import ProgressBar
from core.train import (
    EpochReport,
    NonFiniteLossError,
    TrainingCancelled,
    fit,
    resolve_device,
    sparse_gradients,
)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_data(n_users: int = 30, n_items: int = 20, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[:, 0] = True  # every user has something
    which = rng.random(dense.shape)
    parts = [
        sp.csr_matrix((dense & (lo <= which) & (which < hi)).astype(np.float32))
        for lo, hi in ((0.0, 0.7), (0.7, 0.85), (0.85, 1.01))
    ]
    return SplitData(
        parts[0], parts[1], parts[2], np.arange(n_users).astype(str), np.arange(n_items).astype(str), "s"
    )


def bpr(data: SplitData, seed: int = 0, dim: int = 8) -> BPRMF:
    torch.manual_seed(seed)
    return build_model("bpr", data.n_users, data.n_items, dim)  # type: ignore[return-value]


class Recorder:
    def __init__(self) -> None:
        self.reports: list[EpochReport] = []

    def on_epoch_end(self, report: EpochReport) -> None:
        self.reports.append(report)


def test_reports_losses_and_result() -> None:
    data = small_data()
    rec = Recorder()
    result = fit(bpr(data), data, TrainConfig(epochs=3, batch_size=16, lr=0.01), callbacks=[rec])
    assert [r.epoch for r in rec.reports] == [1, 2, 3]
    first = rec.reports[0]
    assert first.max_epochs == 3 and set(first.losses) == {"base"}
    n_batches = -(-data.train.nnz // 16)
    # mean per-batch BPR loss starts near log(2) * batch size (small init)
    assert first.losses["base"] == pytest.approx(np.log(2) * data.train.nnz / n_batches, rel=0.05)
    assert "ndcg@10" in first.valid and first.best is not None and first.eta_seconds > 0
    assert rec.reports[-1].eta_seconds == 0.0
    assert result.epochs_run == 3 and len(result.history) == 3 and result.seconds_per_epoch > 0
    assert result.best_valid["ndcg@10"] == max(r.valid["ndcg@10"] for r in rec.reports)


def test_early_stopping_restores_best_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    script = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.5])
    snapshots: dict[int, torch.Tensor] = {}

    def fake_evaluate(model: BPRMF, data: SplitData, split: str, ks: tuple[int, ...], users: object = None) -> dict[str, float]:
        snapshots[len(snapshots) + 1] = model.user_emb.weight.detach().clone()
        return {"ndcg@10": next(script)}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    model = bpr(data)
    result = fit(model, data, TrainConfig(epochs=20, batch_size=16, lr=0.01, patience=3))
    assert result.best_epoch == 2 and result.epochs_run == 5 and result.stopped_early
    assert result.best_valid == {"ndcg@10": 0.3}
    assert torch.equal(model.user_emb.weight, snapshots[2])


def test_eval_every_counts_patience_in_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    calls: list[int] = []

    def fake_evaluate(model: BPRMF, data: SplitData, split: str, ks: tuple[int, ...], users: object = None) -> dict[str, float]:
        calls.append(1)
        return {"ndcg@10": 0.5 if len(calls) == 1 else 0.1}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    result = fit(bpr(data), data, TrainConfig(epochs=50, batch_size=64, eval_every=2, patience=2))
    assert result.best_epoch == 2 and result.epochs_run == 6 and len(calls) == 3


def test_min_epochs_holds_early_stopping_through_a_plateau(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    # A popularity plateau: the metric peaks at epoch 1, sags for a while, then the model personalises.
    script = iter([0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: {"ndcg@10": next(script)})
    stopped = fit(bpr(data), data, TrainConfig(epochs=13, batch_size=64, patience=3))
    assert (stopped.epochs_run, stopped.best_epoch) == (4, 1)
    script = iter([0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    held = fit(bpr(data), data, TrainConfig(epochs=13, batch_size=64, patience=3, min_epochs=7))
    assert (held.epochs_run, held.best_epoch, held.stopped_by) == (11, 8, "patience")


def test_non_finite_loss_is_reported_with_epoch_and_batch() -> None:
    data = small_data()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+/"):
        fit(bpr(data), data, TrainConfig(epochs=2, batch_size=8, lr=1e30))

    class NanModel(BPRMF):
        def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            return super().loss(users, pos, neg) * float("nan")

    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, batch 1/"):
        fit(NanModel(data.n_users, data.n_items, 4), data, TrainConfig(epochs=1))


class ToyDistiller:
    """Stateful extra loss: random per-epoch weights drawn from torch's global RNG (tests RNG + state resume)."""

    def __init__(self, n_users: int) -> None:
        self.weights = torch.zeros(n_users)

    def on_epoch_start(self, student: BPRMF, epoch: int) -> None:
        if epoch % 2 == 0:
            self.weights = torch.rand(self.weights.shape).to(student.user_emb.weight.device)

    def may_stop(self) -> bool:
        return True

    def loss(self, student: BPRMF, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):
        extra = (self.weights.to(users.device)[users] * student.score(users, pos).pow(2)).sum() * 0.01
        return extra, {"toy": extra.item()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state["weights"].clone()


def strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


@pytest.mark.parametrize("mid_epoch", [False, True])
def test_cancel_then_resume_equals_uninterrupted(tmp_path: Path, mid_epoch: bool) -> None:
    data = small_data()
    # CPU: CUDA's embedding backward accumulates with atomics, so only CPU promises bitwise equality.
    config = TrainConfig(epochs=6, batch_size=16, lr=0.01, seed=3, cancel_check_batches=2, device="cpu")
    ref_model = bpr(data)
    ref = fit(ref_model, data, config, distiller=ToyDistiller(data.n_users), checkpoint_dir=tmp_path / "ref")

    rec = Recorder()
    polls_after_3: list[int] = []

    def should_cancel() -> bool:
        if len(rec.reports) < 3:
            return False
        polls_after_3.append(1)
        # the first poll after epoch 3 is the between-epochs one; the second falls inside epoch 4
        return len(polls_after_3) >= (2 if mid_epoch else 1)

    match = "during epoch 4" if mid_epoch else "after epoch 3"
    with pytest.raises(TrainingCancelled, match=match):
        fit(
            bpr(data),
            data,
            config,
            distiller=ToyDistiller(data.n_users),
            callbacks=[rec],
            checkpoint_dir=tmp_path / "run",
            should_cancel=should_cancel,
        )
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG
    resumed_model = bpr(data, seed=99)  # different init: the checkpoint must overwrite it
    resumed = fit(
        resumed_model, data, config, distiller=ToyDistiller(data.n_users), checkpoint_dir=tmp_path / "run"
    )
    assert torch.equal(resumed_model.user_emb.weight, ref_model.user_emb.weight)
    assert torch.equal(resumed_model.item_emb.weight, ref_model.item_emb.weight)
    assert strip_times(resumed.history) == strip_times(ref.history)
    assert (resumed.best_epoch, resumed.epochs_run) == (ref.best_epoch, ref.epochs_run)
    assert "toy" in ref.history[0]["losses"] and "total" in ref.history[0]["losses"]
    # a finished run resumes to the same answer without training again
    again = fit(
        bpr(data), data, config, distiller=ToyDistiller(data.n_users), checkpoint_dir=tmp_path / "run"
    )
    assert again.epochs_run == 6 and len(again.history) == 6


def test_resume_with_changed_config_is_refused(tmp_path: Path) -> None:
    data = small_data()
    fit(bpr(data), data, TrainConfig(epochs=1, batch_size=16), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="config field 'lr'"):
        fit(bpr(data), data, TrainConfig(epochs=2, batch_size=16, lr=0.5), checkpoint_dir=tmp_path)
    # a longer run may extend the finished one; resume=False starts over
    assert fit(bpr(data), data, TrainConfig(epochs=2, batch_size=16), checkpoint_dir=tmp_path).epochs_run == 2
    assert (
        fit(
            bpr(data),
            data,
            TrainConfig(epochs=1, batch_size=16, lr=0.5),
            checkpoint_dir=tmp_path,
            resume=False,
        ).epochs_run
        == 1
    )


def test_config_and_device_validation() -> None:
    with pytest.raises(ValueError, match="monitor"):
        TrainConfig(monitor="auc")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="epoch"):
        TrainConfig(epoch=3)  # type: ignore[call-arg]
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_no_validation_split_trains_all_epochs() -> None:
    data = small_data()
    data = SplitData(
        data.train,
        sp.csr_matrix(data.train.shape, dtype=np.float32),
        data.test,
        data.user_ids,
        data.item_ids,
        "x",
    )
    result = fit(bpr(data), data, TrainConfig(epochs=2, batch_size=32))
    assert result.epochs_run == 2 and result.best_epoch == 2 and result.best_valid == {}


def test_progress_bar_draws() -> None:
    data = small_data()
    out = io.StringIO()
    fit(bpr(data), data, TrainConfig(epochs=2, batch_size=32), callbacks=[ProgressBar("teacher", file=out)])
    text = out.getvalue()
    assert "teacher" in text and "2/2" in text and "ndcg@10" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda() -> None:
    data = small_data()
    model = bpr(data)
    result = fit(model, data, TrainConfig(epochs=2, batch_size=16, device="cuda"))
    assert model.user_emb.weight.device.type == "cuda" and result.epochs_run == 2


def test_num_threads_applies_during_fit_only() -> None:
    data = small_data()
    seen: list[int] = []

    class ThreadSpy:
        def on_epoch_end(self, report: EpochReport) -> None:
            seen.append(torch.get_num_threads())

    torch.set_num_threads(2)
    fit(bpr(data), data, TrainConfig(epochs=1, batch_size=64, num_threads=1), callbacks=[ThreadSpy()])
    assert seen == [1] and torch.get_num_threads() == 2


def test_fit_says_whether_patience_or_the_cap_stopped_it() -> None:
    from core.train import FitResult

    assert FitResult(best_epoch=1, best_valid={}, epochs_run=3, stopped_early=True).stopped_by == "patience"
    assert FitResult(best_epoch=3, best_valid={}, epochs_run=3).stopped_by == "cap"


def test_sparse_updates_give_sparse_gradients_and_resume_exactly(tmp_path: Path) -> None:
    data = small_data()
    model = bpr(data)
    with sparse_gradients(model):
        model.loss(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])).backward()
        assert model.user_emb.weight.grad.is_sparse and model.item_emb.weight.grad.is_sparse
    assert not model.user_emb.sparse and not model.item_emb.sparse  # restored after the block
    assert isinstance(train_module.make_optimizer(list(model.parameters()), TrainConfig(sparse_updates=True)),
                      torch.optim.SparseAdam)

    config = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=3, device="cpu", sparse_updates=True)
    ref = bpr(data)
    before = ref.user_emb.weight.detach().clone()
    fit(ref, data, config, checkpoint_dir=tmp_path / "ref")
    assert not ref.user_emb.sparse  # fit leaves the model as it found it
    trained = data.train.getnnz(axis=1) > 0
    assert not torch.equal(ref.user_emb.weight[trained], before[trained])

    # a run cut after epoch 2 resumes to the same weights (lazy Adam's state is checkpointed)
    with pytest.raises(TrainingCancelled):
        fit(bpr(data), data, config, callbacks=[rec := Recorder()], checkpoint_dir=tmp_path / "run",
            should_cancel=lambda: len(rec.reports) >= 2)
    resumed = bpr(data, seed=99)
    fit(resumed, data, config, checkpoint_dir=tmp_path / "run")
    assert torch.equal(resumed.user_emb.weight, ref.user_emb.weight)
    assert torch.equal(resumed.item_emb.weight, ref.item_emb.weight)
    # and a dense checkpoint is not resumed as a sparse one
    with pytest.raises(CheckpointError, match="sparse_updates"):
        fit(bpr(data), data, config.model_copy(update={"sparse_updates": False}), checkpoint_dir=tmp_path / "run")


def test_sparse_updates_refuse_what_gives_dense_gradients() -> None:
    data = small_data()
    config = TrainConfig(epochs=1, batch_size=16, device="cpu", sparse_updates=True)
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="distiller"):
        fit(bpr(data), data, config.model_copy(update={"num_threads": threads + 1}),
            distiller=ToyDistiller(data.n_users))
    assert torch.get_num_threads() == threads
    # the student trained alone (method "none") has a distiller that adds no loss: it may
    assert fit(bpr(data), data, config, distiller=distiller_for("none", DistillConfig())).epochs_run == 1
    lightgcn = build_model("lightgcn", data.n_users, data.n_items, 8, train=data.train)
    with pytest.raises(ValueError, match="sparse_updates: model 'lightgcn'"):
        fit(lightgcn, data, config)
    with pytest.raises(ValueError, match="weight_decay must be 0"):
        TrainConfig(sparse_updates=True, weight_decay=1e-4)


def test_valid_users_validates_on_a_fixed_seeded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    seen: list = []
    real = train_module.evaluate

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs.get("users"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", recording)
    fit(bpr(data), data, TrainConfig(epochs=3, batch_size=16, device="cpu", valid_users=5, seed=4))
    with_valid = set(np.flatnonzero(data.valid.getnnz(axis=1) > 0).tolist())
    assert len(seen) == 3 and all(np.array_equal(u, seen[0]) for u in seen)  # the same users every epoch
    assert len(seen[0]) == 5 and set(seen[0].tolist()) <= with_valid
    first = seen[0]
    seen.clear()
    fit(bpr(data), data, TrainConfig(epochs=1, batch_size=16, device="cpu", valid_users=5, seed=4))
    assert np.array_equal(seen[0], first)  # another run with the same seed: the same users
    seen.clear()
    fit(bpr(data), data, TrainConfig(epochs=1, batch_size=16, device="cpu", valid_users=5, seed=5))
    assert not np.array_equal(seen[0], first)
    seen.clear()
    fit(bpr(data), data, TrainConfig(epochs=1, batch_size=16, device="cpu", valid_users=len(with_valid)))
    assert seen == [None]  # a sample as large as the users is all of them


class PhasedDistiller(ToyDistiller):
    """A curriculum whose last phase begins at ``last_from`` (0-based epoch): early stopping waits for it."""

    def __init__(self, n_users: int, last_from: int) -> None:
        super().__init__(n_users)
        self.last_from, self.epoch = last_from, 0

    def on_epoch_start(self, student: BPRMF, epoch: int) -> None:
        super().on_epoch_start(student, epoch)
        self.epoch = epoch

    def may_stop(self) -> bool:
        return self.epoch >= self.last_from


def test_a_distiller_before_its_last_phase_holds_patience_at_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    script = iter([0.5] + [0.1] * 20)  # the best at epoch 1, then nothing better
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: {"ndcg@10": next(script)})
    held = fit(bpr(data), data, TrainConfig(epochs=20, batch_size=64, patience=3),
               distiller=PhasedDistiller(data.n_users, last_from=6))
    # Epochs 2-6 (0-based 1-5) do not count; patience counts epochs 7, 8, 9 and stops there.
    assert (held.epochs_run, held.best_epoch, held.stopped_by) == (9, 1, "patience")
    script = iter([0.5] + [0.1] * 20)
    capped = fit(bpr(data), data, TrainConfig(epochs=5, batch_size=64, patience=3),
                 distiller=PhasedDistiller(data.n_users, last_from=99))
    assert (capped.epochs_run, capped.stopped_by) == (5, "cap")
