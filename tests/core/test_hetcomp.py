"""HetComp: ensemble targets, the easy-to-hard switch, DKC's rule, trajectories and their cache, a job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from core.config import HetCompConfig
from core.db import repo
from core.db.session import dispose_engines, session_scope
from core.distill import HetCompDistiller, Trajectory
from core.distill.hetcomp import importance, list_ndcg, top_unobserved
from core.jobs import trajectory
from core.jobs.lifecycle import run_job
from core.models import build_model
from core.settings import Settings
from core.train import TrainConfig, fit
from tests.core.test_train import small_data
from tests.factories import job_settings, tiny_job

SMALL = {"k": 6, "positives": 3, "ndcg_k": 5, "period": 1, "stages": 3, "row_fraction": 1.0}


def test_importance_and_list_ndcg() -> None:
    lists = torch.tensor([[2, 0, -1]])
    imp = importance(lists, 4, temperature=1.0)
    torch.testing.assert_close(imp, torch.tensor([[torch.exp(torch.tensor(-1.0)), 0.0, 1.0, 0.0]]))
    student = torch.tensor([[1, 2], [3, 0]])
    target = torch.tensor([[1, 2], [1, 2]])
    ndcg = list_ndcg(student, target, 4)
    assert ndcg[0].item() == pytest.approx(1.0) and ndcg[1].item() == 0.0


def test_stage_epochs_run_from_early_to_best() -> None:
    assert trajectory.stage_epochs(40, 4) == [10, 20, 30, 40]
    assert trajectory.stage_epochs(3, 4) == [1, 2, 2, 3]


def _trajectories(data, stages: int = 3) -> list[Trajectory]:  # type: ignore[no-untyped-def]
    out = []
    for seed in (0, 1):
        model = build_model("bpr", data.n_users, data.n_items, 4, seed=seed)
        lists = [top_unobserved(model, data.train.tocsr(), 6, 8) for _ in range(stages)]
        lists = [torch.roll(lst, s, dims=1) for s, lst in enumerate(lists)]  # stages differ
        from core.distill.hetcomp import observed_order

        out.append(Trajectory(f"bpr{seed}", lists, observed_order(model, data.train, 3, 8)))
    return out


def _distiller(data, **over) -> HetCompDistiller:  # type: ignore[no-untyped-def]
    d = HetCompDistiller(HetCompConfig(**{**SMALL, "teachers": [], **over}))
    d.use_trajectories(_trajectories(data, over.get("stages", SMALL["stages"])))
    d.prepare(None, data, "cpu")
    return d


def test_targets_avoid_training_items_and_follow_the_selected_stage() -> None:
    data = small_data()
    d = _distiller(data)
    train = data.train.toarray() > 0
    for u in range(data.n_users):
        assert not train[u, d.targets[u].numpy()].any()
        obs = d.observed[u][d.observed[u] >= 0].numpy()
        assert train[u, obs].all()
    before = d.targets.clone()
    d.stage[:] = 2
    d._select()  # what DKC and a resume do after changing the stages
    assert not torch.equal(d.targets, before) and d.final


def test_loss_is_finite_easy_then_hard_and_reaches_the_student() -> None:
    data = small_data()
    d = _distiller(data)
    student = build_model("bpr", data.n_users, data.n_items, 4, seed=3)
    users, pos, neg = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 0, 0, 0]), torch.tensor([1, 2, 3, 4])
    loss, parts = d.loss(student, users, pos, neg)
    assert "hetcomp_easy" in parts and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert student.user_emb.weight.grad.abs().sum() > 0
    d.stage[:] = d.n_stages - 1
    d._select()
    loss, parts = d.loss(student, users, pos, neg)
    assert "hetcomp_hard" in parts and torch.isfinite(loss)


def test_dkc_records_first_then_moves_a_teacher_the_student_has_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    d = _distiller(data)
    student = build_model("bpr", data.n_users, data.n_items, 4, seed=3)
    d.update_stages(student, epoch=1)
    assert (d.stage == 0).all() and (d.last_dist >= 0).all()  # the first update only measures
    # A student whose lists are exactly teacher 0's next stage: its distance there drops to 0, so it moves on.
    nxt = d.trajectories[0].stages[1][:, :5]
    monkeypatch.setattr("core.distill.hetcomp.top_unobserved", lambda *a, **k: nxt)
    d.last_dist[0] = 0.5
    d.update_stages(student, epoch=2)
    assert (d.stage[0] == 1).all()
    state = d.state_dict()
    fresh = HetCompDistiller(d.config)
    fresh.use_trajectories(d.trajectories)
    fresh.prepare(None, data, "cpu")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.stage, d.stage) and torch.equal(fresh.targets, d.targets) and fresh.final == d.final


def test_fit_with_hetcomp_runs_and_updates_stages() -> None:
    data = small_data()
    d = _distiller(data, period=1)
    student = build_model("bpr", data.n_users, data.n_items, 4, seed=0)
    result = fit(student, data, TrainConfig(epochs=4, batch_size=32, device="cpu"), distiller=d)
    assert result.epochs_run == 4 and d.last_dist.min() >= 0


def test_patience_from_hard_lets_stopping_wait_for_the_last_stage() -> None:
    data = small_data()
    default, waiting = _distiller(data), _distiller(data, patience_from_hard=True)
    assert default.may_stop() and not waiting.may_stop()
    waiting.stage[:] = waiting.n_stages - 1
    waiting._select()
    assert waiting.may_stop()


def test_trajectories_record_every_teacher_and_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    teacher = build_model("ease", data.n_users, data.n_items, data.n_items, train=data.train, l2=5.0)
    teacher.solve()
    config = HetCompConfig(**{**SMALL, "teachers": ["bpr:4", "ease:20"], "ensemble_epochs": 3})
    got = trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, cache=tmp_path)
    assert [t.name for t in got] == ["ease:5", "bpr:4", "ease:20"]
    assert all(len(t.stages) == 3 and t.stages[0].shape == (data.n_users, 6) for t in got)
    assert not torch.equal(got[0].stages[0], got[0].stages[2])  # the L2 path: heavier ridge first
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    monkeypatch.setattr(trajectory, "fit", lambda *a, **k: pytest.fail("a cached trajectory was retrained"))
    again = trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, cache=tmp_path)
    for a, b in zip(got, again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.stages, b.stages, strict=True))


def test_a_trained_teachers_lists_go_to_disk_epoch_by_epoch_and_its_stages_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = small_data()
    teacher = build_model("bpr", data.n_users, data.n_items, 4, seed=0)
    config = HetCompConfig(**{**SMALL, "teachers": ["bpr:4"], "ensemble_epochs": 4})
    seen: list[torch.Tensor] = []
    record = trajectory._Recorder.on_epoch_end

    def spy(self: Any, report: Any) -> None:
        record(self, report)
        assert len(list(self.folder.iterdir())) == self.epochs and self.folder.parent == tmp_path
        seen.append(self.read(self.epochs).long())

    monkeypatch.setattr(trajectory._Recorder, "on_epoch_end", spy)
    got = trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, cache=tmp_path)
    assert len(seen) == 4 and all(any(torch.equal(stage, s) for s in seen) for stage in got[1].stages)
    assert not list(tmp_path.glob("hetcomp-recording-*"))  # removed once the stages are read


def test_a_recording_the_disk_cannot_hold_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = small_data()
    teacher = build_model("bpr", data.n_users, data.n_items, 4, seed=0)
    config = HetCompConfig(**{**SMALL, "teachers": ["bpr:4"], "ensemble_epochs": 4})
    need = data.n_users * min(config.k, data.n_items - 1) * 4 * 4  # int32 lists, 4 epochs
    monkeypatch.setattr(trajectory.shutil, "disk_usage", lambda _: SimpleNamespace(free=need - 1))
    monkeypatch.setattr(trajectory, "fit", lambda *a, **k: pytest.fail("trained without room to record"))
    with pytest.raises(ValueError, match=r"^hyperparameters.ensemble_epochs: .* bpr:4.*lower ensemble_epochs or k"):
        trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, cache=tmp_path)
    assert not list(tmp_path.glob("hetcomp-recording-*"))


@pytest.mark.parametrize(("over", "message"), [
    ({"teachers": ["foo:3"]}, "unknown model"),
    ({"teachers": ["bpr:8"] * 5}, "at most 4"),
    ({"stages": 1}, "greater than or equal to 2"),
    ({"k": 10**6}, "less than or equal to 1000"),
])
def test_config_bounds(over: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HetCompConfig(**over)


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield job_settings(tmp_path)
    dispose_engines()


def test_a_hetcomp_job_succeeds(settings: Settings) -> None:
    hp = {"epochs": 3, "teacher_epochs": 1, "ensemble_epochs": 2, "batch_size": 256, "lr": 0.01, "teachers": ["bpr:6"],
          "k": 8, "positives": 3, "period": 1, "stages": 2}
    job_id = tiny_job(settings, method="hetcomp", hyperparameters=hp)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    with session_scope(settings.database_url) as s:
        assert repo.get_job(s, job_id).student_model_id


def test_a_cancel_stops_the_ensemble_training() -> None:
    from core.train import TrainingCancelled

    data = small_data()
    teacher = build_model("bpr", data.n_users, data.n_items, 4, seed=0)
    config = HetCompConfig(**{**SMALL, "teachers": ["bpr:4"], "ensemble_epochs": 50})
    with pytest.raises(TrainingCancelled):
        trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, should_cancel=lambda: True)
