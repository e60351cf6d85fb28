"""Models: registry, losses against slow loops, gradients, score broadcasting and a planted-item task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from core.config import CLOSED_FORM_MODEL_NAMES, SPARSE_UPDATE_MODEL_NAMES, TrainConfig
from core.data import SplitData
from core.eval import evaluate
from core.models import BPRMF, EASE, MODELS, LightGCN, NeuMF, build_model
from core.models import neumf as neumf_module
from core.train import fit

# Models trained by gradient steps (EASE, solved in closed form, has its own tests: test_ease.py).
GRADIENT_MODELS = sorted(name for name, cls in MODELS.items() if not cls.closed_form)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny tensors: thread hand-offs cost more than the maths on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered_split(n_clusters: int = 4, users_per: int = 12, items_per: int = 8) -> SplitData:
    """Users like exactly their cluster's items; each user's test item is the one cluster item left out of train."""
    n_users, n_items = n_clusters * users_per, n_clusters * items_per
    train_rows, train_cols, test_rows, test_cols = [], [], [], []
    for u in range(n_users):
        c = u // users_per
        items = list(range(c * items_per, (c + 1) * items_per))
        held = items[u % items_per]
        for i in items:
            (test_rows if i == held else train_rows).append(u)
            (test_cols if i == held else train_cols).append(i)

    def csr(rows: list[int], cols: list[int]) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))

    return SplitData(
        train=csr(train_rows, train_cols),
        valid=csr([], []),
        test=csr(test_rows, test_cols),
        user_ids=np.array([f"u{i}" for i in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        fingerprint="synthetic",
    )


def random_train(n_users: int = 7, n_items: int = 9, seed: int = 0) -> sp.csr_matrix:
    m = sp.random(n_users, n_items, density=0.35, format="csr", random_state=seed, dtype=np.float32)
    m.data[:] = 1.0
    return m


def make(name: str, dim: int = 4, train: sp.csr_matrix | None = None, **opts: object):
    train = random_train() if train is None else train
    torch.manual_seed(0)
    return build_model(name, train.shape[0], train.shape[1], dim, train=train, **opts)


def test_registry_and_build_errors() -> None:
    assert MODELS == {"bpr": BPRMF, "neumf": NeuMF, "lightgcn": LightGCN, "ease": EASE}
    with pytest.raises(ValueError, match="model name 'nope'"):
        build_model("nope", 3, 3, 2)
    with pytest.raises(ValueError, match="needs train="):
        build_model("lightgcn", 3, 3, 2)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        build_model("bpr", 3, 3, 0)
    with pytest.raises(ValueError, match="reg must be"):
        build_model("bpr", 3, 3, 2, reg=-1.0)
    with pytest.raises(ValueError, match="bad options for model 'neumf'"):
        build_model("neumf", 3, 3, 2, colour="red")
    with pytest.raises(ValueError, match="train has shape"):
        build_model("lightgcn", 3, 3, 2, train=random_train(4, 3))


def test_the_config_names_each_model_kind_as_the_classes_declare() -> None:
    # core.config cannot import the models (it imports no torch): its name lists are checked against them here.
    assert {n for n, cls in MODELS.items() if cls.closed_form} == set(CLOSED_FORM_MODEL_NAMES)
    assert {n for n, cls in MODELS.items() if cls.sparse_lookups} == set(SPARSE_UPDATE_MODEL_NAMES)


def test_bpr_loss_equals_slow_loop() -> None:
    model = make("bpr", reg=0.1)
    users, pos, neg = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    expected = 0.0
    for u, p, n in zip(users.tolist(), pos.tolist(), neg.tolist(), strict=True):
        eu, ep, en = (
            w.detach() for w in (model.user_emb.weight[u], model.item_emb.weight[p], model.item_emb.weight[n])
        )
        expected += -math.log(1 / (1 + math.exp(-float(eu @ ep - eu @ en))))
        expected += 0.1 * float(eu @ eu + ep @ ep + en @ en)
    assert model.loss(users, pos, neg).item() == pytest.approx(expected, rel=1e-5)


def test_neumf_loss_equals_slow_loop() -> None:
    model = make("neumf", dim=6, n_layers=2, reg=0.01)
    users, pos, neg = torch.tensor([0, 3, 6]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 0])
    expected = torch.tensor(0.0)
    for u, p, n in zip(users.tolist(), pos.tolist(), neg.tolist(), strict=True):
        for item, label in ((p, 1.0), (n, 0.0)):
            h = torch.cat([model.mlp_user.weight[u], model.mlp_item.weight[item]])
            for layer in model.tower:
                h = torch.relu(layer.weight @ h + layer.bias)
            z = model.out.weight[0] @ torch.cat([model.gmf_user.weight[u] * model.gmf_item.weight[item], h])
            z = z + model.out.bias[0]
            expected = expected + F.binary_cross_entropy_with_logits(z, torch.tensor(label))
            expected = expected + 0.01 * (
                model.gmf_item.weight[item].pow(2).sum() + model.mlp_item.weight[item].pow(2).sum()
            )
        expected = expected + 0.01 * (
            model.gmf_user.weight[u].pow(2).sum() + model.mlp_user.weight[u].pow(2).sum()
        )
    assert [layer.out_features for layer in model.tower] == [6, 3]  # halving from 2 * dim
    assert model.loss(users, pos, neg).item() == pytest.approx(expected.item(), rel=1e-5)


def test_lightgcn_propagation_equals_dense_formula() -> None:
    train = random_train()
    model = make("lightgcn", dim=3, train=train, n_layers=2)
    n_u, n_i = train.shape
    adj = np.zeros((n_u + n_i, n_u + n_i))
    adj[:n_u, n_u:] = train.toarray()
    adj[n_u:, :n_u] = train.toarray().T
    deg = adj.sum(1)
    inv = np.where(deg > 0, deg, 1) ** -0.5 * (deg > 0)
    norm = inv[:, None] * adj * inv[None, :]
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double().numpy()
    mean = (ego + norm @ ego + norm @ norm @ ego) / 3
    users, items = model.embed()
    np.testing.assert_allclose(users.detach().numpy(), mean[:n_u], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(items.detach().numpy(), mean[n_u:], rtol=1e-5, atol=1e-7)
    u, p, n = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    diff = (users[u] * (items[p] - items[n])).sum(-1)
    assert model.loss(u, p, n).item() == pytest.approx(-F.logsigmoid(diff).sum().item(), rel=1e-5)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_initial_loss_sane_and_gradients_reach_every_parameter(name: str) -> None:
    model = make(name, dim=8, reg=1e-3)
    users, pos, neg = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    loss = model.loss(users, pos, neg)
    # Near-zero initial scores: BPR ~ B log 2, BCE on a pos and a neg ~ 2 B log 2.
    per_pair = 2 * math.log(2) if name == "neumf" else math.log(2)
    assert loss.item() == pytest.approx(4 * per_pair, rel=0.15)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", GRADIENT_MODELS)
@pytest.mark.parametrize("dim", [1, 5])
def test_score_forms_agree(name: str, dim: int) -> None:
    model = make(name, dim=dim).eval()
    users = torch.tensor([0, 2, 5])
    with torch.no_grad():
        full = model.full_scores(users)  # [3, n_items]
        assert full.shape == (3, model.n_items)
        items = torch.tensor([[0, 4, 8], [1, 1, 3], [7, 2, 0]])
        torch.testing.assert_close(model.score(users, items), full.gather(1, items))
        torch.testing.assert_close(model.score(users, items[:, 0]), full[torch.arange(3), items[:, 0]])
        listed = torch.tensor([[0, 1], [6, 2], [3, 3]])
        item = torch.tensor([4, 0, 8])
        expect = torch.stack([model.full_scores(listed[r])[:, item[r]] for r in range(3)])
        torch.testing.assert_close(model.score_users(listed, item), expect)
        if model.is_dot_product:
            torch.testing.assert_close(full, model.user_embeddings()[users] @ model.item_embeddings().T)


def test_neumf_full_scores_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("neumf", dim=6).eval()
    users = torch.arange(7)
    with torch.no_grad():
        whole = model.full_scores(users)
        monkeypatch.setattr(neumf_module, "_BLOCK_ELEMENTS", 7 * 6 * 2)  # two items per chunk
        torch.testing.assert_close(model.full_scores(users), whole)
    assert NeuMF.is_dot_product is False
    assert model.user_embeddings() is model.gmf_user.weight


def test_lightgcn_cache_follows_parameter_changes() -> None:
    model = make("lightgcn", dim=4)
    first = model.embed()[0]
    assert model.embed()[0] is first  # same step: reused
    model.begin_step()
    second = model.embed()[0]
    assert second is not first
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])).backward()
    opt.step()  # in-place update bumps the parameter version
    third = model.embed()[0]
    assert not torch.equal(third, second)
    model.eval()
    with torch.no_grad():
        cached = model.embed()[0]
        assert model.embed()[0] is cached and not cached.requires_grad
    model.train()
    assert model.embed()[0] is not cached


@pytest.mark.parametrize(
    ("name", "opts", "epochs", "lr"),
    [
        ("bpr", {}, 30, 0.05),
        ("neumf", {"n_layers": 2, "reg": 0.01}, 60, 0.02),
        ("lightgcn", {"n_layers": 2}, 30, 0.05),
    ],
)
def test_planted_item_ranked_first(name: str, opts: dict[str, object], epochs: int, lr: float) -> None:
    data = clustered_split()
    torch.manual_seed(0)
    # A width equal to the number of clusters forces the low-rank structure that generalises.
    model = build_model(name, data.n_users, data.n_items, 4, train=data.train, **opts)
    fit(model, data, TrainConfig(epochs=epochs, batch_size=64, lr=lr, seed=0, device="cpu"))
    metrics = evaluate(model, data, "test", ks=(1, 5))
    assert metrics["hit@1"] >= 0.95, metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_models_on_cuda(name: str) -> None:
    model = make(name, dim=8).to("cuda")
    users = torch.tensor([0, 1], device="cuda")
    loss = model.loss(users, torch.tensor([0, 1], device="cuda"), torch.tensor([2, 3], device="cuda"))
    loss.backward()
    assert model.full_scores(users).device.type == "cuda"
    cpu = make(name, dim=8)
    torch.testing.assert_close(
        model.full_scores(users).cpu(), cpu.full_scores(users.cpu()), rtol=1e-4, atol=1e-5
    )


def test_build_model_with_a_seed_ignores_and_keeps_the_global_generator() -> None:
    torch.manual_seed(123)
    first = build_model("bpr", 5, 4, 3, seed=7)
    state = torch.random.get_rng_state()
    torch.rand(10)  # whatever ran before the second build
    second = build_model("bpr", 5, 4, 3, seed=7)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.random.set_rng_state(state)
    expected = torch.rand(3)
    torch.random.set_rng_state(state)
    build_model("bpr", 5, 4, 3, seed=7)
    assert torch.equal(torch.rand(3), expected)  # the global generator was left as it was
    assert not torch.equal(build_model("bpr", 5, 4, 3, seed=8).user_emb.weight, first.user_emb.weight)
