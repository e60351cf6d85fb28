"""The model-agnostic fit loop: seeding, device, early stopping, NaN check, checkpoint/resume, callbacks, cancel.

Epochs in reports and results are 1-based counts; ``distiller.on_epoch_start`` gets the 0-based index.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core.config import TrainConfig
from core.data import NegativeSampler, SplitData
from core.eval import evaluate
from core.models.base import Recommender
from core.train_state import TrainState, load_state, save_state

logger = logging.getLogger(__name__)

__all__ = [
    "Callback", "EpochReport", "FitResult", "NonFiniteLossError", "TrainingCancelled",
    "fit", "make_optimizer", "resolve_device", "seed_everything", "sparse_gradients", "validation_users",
]


class TrainingCancelled(RuntimeError):
    """``should_cancel()`` returned True; the last completed epoch is in the checkpoint (if any)."""


class NonFiniteLossError(FloatingPointError):
    """A mini-batch loss became NaN or infinite; the message names the epoch and batch."""


@dataclass
class EpochReport:
    epoch: int
    max_epochs: int
    losses: dict[str, float]
    valid: dict[str, float]
    best_epoch: int
    best: float | None  # best monitored validation value so far (None before any evaluation)
    seconds: float
    eta_seconds: float
    stopped: bool = False


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0  # mean of training time per epoch (refresh + batches), evaluation excluded
    stopped_early: bool = False
    closed_form: bool = False

    @property
    def stopped_by(self) -> str:
        """"patience" when early stopping ended the run, "cap" when it ran out of epochs first (a run that
        may have been cut short: its table says so), "closed_form" for a model solved in one step."""
        if self.closed_form:
            return "closed_form"
        return "patience" if self.stopped_early else "cap"


class Callback(Protocol):
    def on_epoch_end(self, report: EpochReport) -> None: ...


class ExtraLoss(Protocol):
    """What fit needs from a distiller (it knows nothing else of distillation)."""

    def on_epoch_start(self, student: Recommender, epoch: int) -> None: ...
    def may_stop(self) -> bool: ...
    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available else CPU; anything else is passed to ``torch.device`` (errors name it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a valid torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the fused kernel (one pass over each table) when this torch/device supports it.

    Dense embedding gradients make the optimiser step the largest per-batch cost on CPU; fused Adam
    measured about 3x cheaper there than the foreach path at dim 200. With ``sparse_updates`` (gradients
    from ``sparse_gradients``) lazy Adam steps only the rows a batch looked up.
    """
    if config.sparse_updates:
        return torch.optim.SparseAdam(params, lr=config.lr)
    try:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@contextmanager
def sparse_gradients(model: Recommender, on: bool = True) -> Iterator[None]:
    """Inside the block the model's embedding lookups give sparse gradients (TrainConfig.sparse_updates): a
    batch's backward and optimiser step then touch its rows only, not whole tables."""
    if not on:
        yield
        return
    if not model.sparse_lookups:
        raise ValueError(f"sparse_updates: model {model.name!r} does not train by embedding lookups alone")
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    before = [t.sparse for t in tables]
    for t in tables:
        t.sparse = True
    try:
        yield
    finally:
        for t, was in zip(tables, before, strict=True):
            t.sparse = was


def _run_epoch(
    model: Recommender, optimizer: torch.optim.Optimizer, sampler: NegativeSampler, pairs: tuple[np.ndarray, np.ndarray],
    config: TrainConfig, epoch: int, device: torch.device, distiller: ExtraLoss | None,
    should_cancel: Callable[[], bool] | None,
) -> dict[str, float]:
    users, items = pairs
    # Seeded per epoch so that a resumed run draws exactly the negatives of an uninterrupted one.
    negs = sampler.reseed(config.seed + epoch).sample(users)
    perm = np.random.default_rng((config.seed, epoch)).permutation(len(users))
    u_all = torch.from_numpy(users[perm]).to(device)
    p_all = torch.from_numpy(items[perm]).to(device)
    n_all = torch.from_numpy(negs[perm]).to(device)
    bs = config.batch_size
    n_batches = math.ceil(len(users) / bs)  # one pass over the training pairs
    # Losses are summed on the device and read back every batch on a CPU (free there) but only every
    # cancel_check_batches batches on an accelerator: a per-batch ``.item()`` waits for it to drain its queue
    # and leaves it launch-bound. A non-finite loss keeps the epoch's running sum non-finite, so reading the sum
    # names the window of batches it came in; the weights it spoils are never kept (the last batch of an epoch
    # is always read back, before the epoch can end).
    read_every = 1 if device.type == "cpu" else config.cancel_check_batches
    zero = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {"base": zero}
    unread = 0  # the first batch not read back yet
    model.train()
    for b in range(n_batches):
        u, p, n = u_all[b * bs : (b + 1) * bs], p_all[b * bs : (b + 1) * bs], n_all[b * bs : (b + 1) * bs]
        model.begin_step()
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(u, p, n)
        base = loss.detach()
        if distiller is not None:
            extra, parts = distiller.loss(model, u, p, n)
            loss = loss + extra
            for k, v in parts.items():
                sums[k] = sums.get(k, zero) + v
            sums["total"] = sums.get("total", zero) + loss.detach()
        sums["base"] = sums["base"] + base
        loss.backward()
        optimizer.step()
        if (b + 1) % read_every == 0 or b + 1 == n_batches:
            total = float(sums.get("total", sums["base"]))
            if not math.isfinite(total):
                where = f"batch {b + 1}" if b == unread else f"batches {unread + 1}-{b + 1}"
                raise NonFiniteLossError(
                    f"loss became {total} at epoch {epoch + 1}, {where}/{n_batches} (base loss summed over the "
                    f"epoch {float(sums['base'])}); lower the learning rate or check the data and model options"
                )
            unread = b + 1
        if should_cancel is not None and (b + 1) % config.cancel_check_batches == 0 and should_cancel():
            raise TrainingCancelled(f"cancelled during epoch {epoch + 1} (batch {b + 1}/{n_batches})")
    return {k: float(v) / n_batches for k, v in sums.items()}


def fit(
    model: Recommender,
    data: SplitData,
    config: TrainConfig,
    distiller: ExtraLoss | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    should_cancel: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train`` (one sampled negative per pair, re-sampled each epoch) and keep the
    weights of the best validation epoch (by ``config.monitor``). Resuming from ``checkpoint_dir`` ends
    exactly where an uninterrupted run with the same seed ends.
    """
    # A loss fit knows nothing of may read whole tables; only a distiller that says so adds none.
    if config.sparse_updates and distiller is not None and getattr(distiller, "dense_gradients", True):
        raise ValueError("sparse_updates: a distiller's losses give dense gradients; train without one")
    threads_before = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        with sparse_gradients(model, config.sparse_updates):
            return _fit(model, data, config, distiller, callbacks, checkpoint_dir, resume, should_cancel)
    finally:
        torch.set_num_threads(threads_before)


def validation_users(data: SplitData, config: TrainConfig) -> np.ndarray | None:
    """The users early stopping validates on: ``config.valid_users`` of those with validation items, drawn once
    (seeded by the run's seed, so a resumed run validates on the same ones), or None for all of them."""
    if config.valid_users is None:
        return None
    users = np.flatnonzero(data.valid.getnnz(axis=1) > 0)
    if config.valid_users >= len(users):
        return None
    return np.sort(np.random.default_rng([config.seed, 1]).choice(users, config.valid_users, replace=False))


def _solve(
    model: Recommender, data: SplitData, config: TrainConfig, callbacks: Sequence[Callback],
    eval_ks: tuple[int, ...], device: torch.device,
) -> FitResult:
    """A closed-form model (EASE): one solve, reported as a single epoch so progress and history read alike."""
    t0, c0 = time.perf_counter(), time.thread_time()
    model.solve()
    model.to(device)
    train_seconds, train_cpu_seconds = time.perf_counter() - t0, time.thread_time() - c0
    valid = evaluate(model, data, "valid", ks=eval_ks, users=validation_users(data, config)) if data.valid.nnz > 0 else {}
    seconds = time.perf_counter() - t0
    history = [{"epoch": 1, "losses": {}, "valid": valid, "seconds": seconds, "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds}]
    best = valid.get(config.monitor)
    report = EpochReport(1, 1, {}, valid, 1, best, seconds, 0.0, stopped=True)
    for cb in callbacks:
        cb.on_epoch_end(report)
    return FitResult(best_epoch=1, best_valid=dict(valid), epochs_run=1, history=history,
                     seconds_per_epoch=train_seconds, closed_form=True)


def _fit(
    model: Recommender, data: SplitData, config: TrainConfig, distiller: ExtraLoss | None,
    callbacks: Sequence[Callback], checkpoint_dir: str | Path | None, resume: bool,
    should_cancel: Callable[[], bool] | None,
) -> FitResult:
    k_monitor = int(config.monitor.split("@")[1])
    eval_ks = tuple(sorted(set(config.eval_ks) | {k_monitor}))
    device = resolve_device(config.device)
    if model.closed_form:
        return _solve(model, data, config, callbacks, eval_ks, device)
    model.to(device)
    seed_everything(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = make_optimizer(params, config)
    pairs = data.train_pairs()
    sampler = NegativeSampler(data.train)  # built once: its sorted keys depend only on the train matrix
    if len(pairs[0]) == 0:
        raise ValueError("data.train has no interactions to train on")
    has_valid = data.valid.nnz > 0
    valid_users = validation_users(data, config)
    path = Path(checkpoint_dir) / "train_state.safetensors" if checkpoint_dir is not None else None
    state = TrainState()
    if path is not None and resume and path.is_file():
        state = load_state(path, config, model, optimizer, distiller, device)
        logger.info("resumed from %s after epoch %d", path, state.epoch)
    session_seconds: list[float] = []
    while state.epoch < config.epochs and not state.stopped:
        epoch = state.epoch
        t0, c0 = time.perf_counter(), time.thread_time()
        if distiller is not None:
            distiller.on_epoch_start(model, epoch)
        losses = _run_epoch(model, optimizer, sampler, pairs, config, epoch, device, distiller, should_cancel)
        train_seconds = time.perf_counter() - t0
        # CPU time of this thread: with one torch thread on the CPU it is the training work itself, not
        # inflated by waiting for a core on a shared machine (benchmarks compare it beside wall time).
        train_cpu_seconds = time.thread_time() - c0
        valid: dict[str, float] = {}
        if has_valid and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
            valid = evaluate(model, data, "valid", ks=eval_ks, users=valid_users)
            may_stop = distiller is None or distiller.may_stop()
            state.observe(epoch + 1, valid, config.monitor, config.patience, model, config.min_epochs, may_stop)
        elif not has_valid:
            state.best_epoch = epoch + 1
        state.epoch = epoch + 1
        seconds = time.perf_counter() - t0
        session_seconds.append(seconds)
        state.history.append(
            {
                "epoch": epoch + 1,
                "losses": losses,
                "valid": valid,
                "seconds": seconds,
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds,
            }
        )
        if path is not None:
            save_state(path, state, config, model, optimizer, distiller)
        done = state.stopped or state.epoch >= config.epochs
        eta = 0.0 if done else float(np.mean(session_seconds)) * (config.epochs - state.epoch)
        report = EpochReport(
            epoch + 1, config.epochs, losses, valid, state.best_epoch, state.best_score, seconds, eta, state.stopped
        )
        logger.debug("epoch %d/%d losses=%s valid=%s", epoch + 1, config.epochs, losses, valid)
        for cb in callbacks:
            cb.on_epoch_end(report)
        if not done and should_cancel is not None and should_cancel():
            raise TrainingCancelled(f"cancelled after epoch {epoch + 1}")
    if state.best_tensors is not None:
        model.load_state_dict(state.best_tensors)
    train_times = [h["train_seconds"] for h in state.history]
    return FitResult(
        best_epoch=state.best_epoch,
        best_valid=dict(state.best_valid),
        epochs_run=state.epoch,
        history=list(state.history),
        seconds_per_epoch=float(np.mean(train_times)) if train_times else 0.0,
        stopped_early=state.stopped,
    )
