"""ACS (batch-wise adversarial coreset selection): schedule, coverage, gradients, cost, fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_split, meta_for
from torch import nn

import robustcore.regimes.acs as acs
from robustcore import data, models
from robustcore.cost import Cost
from robustcore.io import InputError
from robustcore.probe import last_linear, run_probe
from robustcore.regimes import REGIMES
from robustcore.regimes.trades import trades_attack
from robustcore.runtime import seed_everything
from robustcore.train import fit


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared CPU) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(split: data.Split, device: torch.device, classes: int = 3, seed: int = 0) -> nn.Module:
    """A small MLP for a synthetic split (initialised on the CPU from `seed`) on `device`."""
    torch.manual_seed(seed)
    spec = models.model_spec("mlp", {"hidden": [16]}, meta_for(split, classes))
    return models.build(spec).to(device)


def _spec(**overrides) -> dict:
    """An acs entry with the regime's defaults, cheap attacks and a small compact schedule."""
    spec = {**REGIMES["acs"].defaults, "epochs": 10, "steps": 1, "step_size": 0.05, "eps": 0.05}
    return {**spec, "epoch_plan": "compact", "warm_start_epochs": 2, "freq": 3, **overrides}


def test_schedule_coverage_and_weights(device):
    split = make_split(n=47, classes=3)
    loader = data.Loader(split, 5, device)  # 9 candidates of 5 samples and one of 2
    plan = acs.AcsPlan(
        _mlp(split, device), loader, _spec(fraction=0.3), torch.Generator().manual_seed(1), Cost()
    )
    target = round(0.3 * 47)
    selected = []
    for epoch in range(1, 11):
        out = plan(epoch)
        if epoch not in (3, 6, 9):  # T_w = 2: right after the warm start, then every 3 epochs
            assert out is None
            continue
        selected.append(epoch)
        coreset, weights = out
        # The candidates partition the samples into whole batches of the loader's batch size.
        assert sorted(len(b) for b in plan.batches) == [2] + [5] * 9
        assert np.array_equal(np.sort(np.concatenate(plan.batches)), np.arange(47))
        chosen = plan.history[-1]["batches"]
        rows = np.concatenate([plan.batches[b] for b in chosen])
        assert len(np.unique(chosen)) == len(chosen)
        assert target <= len(rows) < target + 5  # at least m samples, less than one batch over
        assert np.array_equal(coreset.indices, np.sort(rows))
        assert coreset.device == loader.device
        assert weights.shape == (47,) and weights.device.type == device.type  # fit indexes it
        weights = weights.cpu()
        assert (weights[rows] > 0).all()
        assert np.array_equal(np.flatnonzero(weights.numpy() > 0), np.sort(rows))
        for b, w in zip(chosen, plan.history[-1]["weights"], strict=True):
            assert torch.all(weights[plan.batches[b]] == float(w))  # a batch shares its weight
    assert selected == [3, 6, 9]


def test_warm_start_rule_and_unweighted_and_full_fraction(device):
    # The reference rule T_w = round(fraction * int(kappa * epochs)).
    assert acs.check_params({"epochs": 15}).warm_start_epochs == 4  # round(0.5 * 7)
    assert acs.check_params({"epochs": 120, "kappa": 0.6}).warm_start_epochs == 36
    assert acs.check_params({"epochs": 15, "warm_start_epochs": 0}).warm_start_epochs == 0
    split = make_split(n=47, classes=3)
    spec = _spec(fraction=1.0, weighted=False, warm_start_epochs=0)
    loader = data.Loader(split, 5, device)
    plan = acs.AcsPlan(_mlp(split, device), loader, spec, torch.Generator(), Cost())
    coreset, weights = plan(1)
    assert weights is None
    assert np.array_equal(coreset.indices, np.arange(47))
    assert plan(2) is None and plan(4) is not None


def _reference_loop(epochs: int, kappa: float, fraction: float, freq: int) -> list[str]:
    """The reference's epoch loop (scripts/robust_train_linf.py, *PB-Warm), 0-based, verbatim."""
    kappa_epochs = int(kappa * epochs)
    full_epochs = round(kappa_epochs * fraction)
    kinds = []
    for i in range(epochs):
        selects = (i % freq == 0) and (i >= kappa_epochs)
        if i < full_epochs:
            kinds.append("full")
        elif i >= kappa_epochs:
            kinds.append("select" if selects else "coreset")
        else:
            kinds.append("idle")
    return kinds


@pytest.mark.parametrize(
    ("epochs", "kappa", "fraction", "freq"),
    [(10, 0.5, 0.5, 2), (200, 0.5, 0.1, 20), (120, 0.5, 0.5, 20), (15, 0.5, 0.5, 5),
     (100, 0.6, 0.3, 7), (30, 0.5, 0.25, 4), (12, 0.0, 0.5, 3)],
)  # fmt: skip
def test_reference_schedule_is_the_reference_codes(epochs, kappa, fraction, freq):
    params = acs.check_params(
        {"epochs": epochs, "kappa": kappa, "fraction": fraction, "freq": freq}
    )
    ours = [acs.epoch_kind(e, params) for e in range(1, epochs + 1)]
    # "initial": a coreset epoch before the first selection, on the reference's random start_idxs.
    assert [k.replace("initial", "coreset") for k in ours] == _reference_loop(
        epochs, kappa, fraction, freq
    )
    assert ours.count("initial") <= 1


def test_reference_schedule_worked_examples():
    """E = 200, κ = 0.5, f = 0.1, freq 20: 10 full, 90 idle, 100 coreset epochs, 5 selections."""
    params = acs.check_params({"epochs": 200, "kappa": 0.5, "fraction": 0.1, "freq": 20})
    kinds = [acs.epoch_kind(e, params) for e in range(1, 201)]
    assert kinds.count("full") == 10 and kinds.count("idle") == 90
    assert [e for e, k in enumerate(kinds, 1) if k == "select"] == [101, 121, 141, 161, 181]
    compact = acs.check_params({**params.__dict__, "epochs": 200, "epoch_plan": "compact"})
    kinds = [acs.epoch_kind(e, compact) for e in range(1, 201)]
    assert kinds.count("full") == 10 and "idle" not in kinds and kinds.count("select") == 10


def test_reference_schedule_trains_nothing_in_idle_epochs(digits_dir, device):
    """fit: full, idle (no pass counted, loss NaN, the schedule still advances), coreset."""
    generator = seed_everything(0)
    train, _ = data.load(digits_dir)
    spec = models.model_spec("mlp", {"hidden": [16]}, data.load_meta(digits_dir))
    model = models.build(spec).to(device)
    regime = {
        "type": "acs", "epochs": 6, "kappa": 0.5, "fraction": 0.5, "freq": 2, "steps": 1,
        "step_size": 0.05, "eps": 0.05, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
    }  # fmt: skip
    # K = 3, T_w = round(1.5) = 2: epochs 1-2 full, 3 idle, 4 initial subset, 5 selection, 6.
    log, cost = fit(model, data.Loader(train, 64, device), regime, generator=generator)
    losses = [row["train_loss"] for row in log]
    assert math.isnan(losses[2]) and all(math.isfinite(v) for i, v in enumerate(losses) if i != 2)
    assert [row["lr"] for row in log][3] == pytest.approx(0.1 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    n, m = len(train), round(0.5 * len(train))
    assert cost.forward["selection"] == n * (1 + 1)  # one selection (epoch 5), 1 attack step
    assert 2 * n + m + 2 * m <= cost.forward["update"] <= 2 * n + m + 2 * (m + 63)


def test_reproducible_with_the_seed(device):
    split = make_split(n=47, classes=3)

    def run(seed: int):
        loader = data.Loader(split, 5, device)
        generator = torch.Generator().manual_seed(seed)
        plan = acs.AcsPlan(_mlp(split, device), loader, _spec(), generator, Cost())
        coreset, weights = plan(3)
        return plan.batches, coreset.indices, weights

    first, second, other = run(7), run(7), run(8)
    for a, b in zip(first[0], second[0], strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(first[1], second[1]) and torch.equal(first[2], second[2])
    assert not all(np.array_equal(a, b) for a, b in zip(first[0], other[0], strict=True))


def _two_fragilities(device: torch.device) -> tuple[nn.Module, data.Split]:
    """Class 0 everywhere; batch 0 is adversarially fragile, batches 1-5 are not.

    Logits z0 = 0, z1 = 80·x1 − 44, z2 = 10·x2 − 12, z3 = 10·x3 − 12. Batch 0 (x1 ≈ 0.5) is
    correct with margin 4 against class 1, but ε = 0.1 moves z1 by 8: tiny clean gradient, huge
    adversarial one. Batches 1-2 (x2 = 1) and 3-5 (x3 = 1) have margin 2 against class 2 or 3
    and the attack cannot move them (x is already at 1): their gradients are the larger clean.
    """
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [np.tile([0.5, 0, 0], (4, 1)), np.tile([0, 1.0, 0], (8, 1)), np.tile([0, 0, 1.0], (12, 1))]
    )
    x[:4, 0] += rng.uniform(-0.005, 0.005, 4)
    split = data.Split(labels=np.zeros(24, np.int64), images=x.astype(np.float32))
    model = nn.Sequential(nn.Linear(3, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0, 0, 0], [80, 0, 0], [0, 10, 0], [0, 0, 10.0]]))
        model[0].bias.copy_(torch.tensor([0, -44, -12, -12.0]))
    return model.to(device), split


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_selection_follows_the_adversarial_gradients(method, device):
    model, split = _two_fragilities(device)
    loader = data.Loader(split, 4, device)  # the candidates: batch 0 fragile, 1-2 and 3-5 robust
    picks = {}
    for eps in (0.1, 0.0):
        params = acs.check_params(
            {"eps": eps, "steps": 10, "step_size": 0.025, "method": method, "epochs": 1}
        )
        generator = torch.Generator(device=device)  # random starts are drawn on the device
        grads, batches = acs.batch_gradients(model, loader, params, Cost(), generator)
        sizes = np.array([len(b) for b in batches])
        chosen, weights = acs.select_batches(grads, sizes, 8, method)
        again = acs.select_batches(grads, sizes, 8, method)
        assert np.array_equal(chosen, again[0]) and np.array_equal(weights, again[1])
        assert len(chosen) == 2 and (weights > 0).all()
        picks[eps] = set(chosen.tolist())
    assert 0 in picks[0.1]  # the dominant adversarial gradient is matched...
    assert 0 not in picks[0.0]  # ...which the clean gradients would not pick
    assert picks[0.0] == {1, 3}  # one representative of each clean group


def test_zero_weights_are_replaced_by_random_batches():
    # GradMatch: batch 0 alone matches the total (1,1) + (1,0) + (0,1), so the refit gives the
    # second pick weight 0; it is dropped and a seeded-random batch of weight 1 fills the budget.
    grads = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sizes = np.array([4, 4, 4])
    chosen, weights = acs.select_batches(grads, sizes, 8, "gradmatch", rng=np.random.default_rng(0))
    assert chosen[0] == 0 and len(chosen) == 2 and (weights > 0).all()
    np.testing.assert_allclose(weights, [2.0, 1.0], rtol=1e-6)
    # CRAIG: of two identical batches only the first chosen is anyone's nearest medoid.
    grads = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    chosen, weights = acs.select_batches(grads, sizes, 12, "craig")
    assert sorted(chosen.tolist()) == [0, 1, 2] and (weights > 0).all()


def test_batch_gradients_are_batch_means_of_the_probe_embeddings(device):
    split = make_split(n=23, classes=3)
    torch.manual_seed(0)
    spec = models.model_spec("small_cnn", {"width": 4}, meta_for(split, 3))
    model = models.build(spec).to(device)
    order = np.random.default_rng(0).permutation(23)
    loader = data.Loader(split, 5, device, indices=order)
    params = acs.check_params({"eps": 0.0, "epochs": 1})  # no perturbation: clean gradients
    grads, batches = acs.batch_gradients(model, loader, params, Cost())
    embedding = run_probe(model, data.Loader(split, 23, device)).grad_embedding()
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    for row, rows in zip(grads, batches, strict=True):
        np.testing.assert_allclose(row, embedding[rows].mean(axis=0), rtol=1e-4, atol=1e-6)


def test_trades_batch_gradient_is_the_head_gradient_of_the_trades_loss(device):
    split = make_split(n=6, classes=3)
    model = _mlp(split, device, seed=1)
    loader = data.Loader(split, 6, device)
    params = acs.check_params(
        {"adv_loss": "trades", "beta": 2.0, "eps": 0.1, "steps": 3, "step_size": 0.04, "epochs": 1}
    )
    (grad,), _ = acs.batch_gradients(
        model, loader, params, Cost(), torch.Generator(device=device).manual_seed(3)
    )
    _, x, y = next(loader.epoch())
    start = torch.Generator(device=device).manual_seed(3)  # the same start noise, on the device
    x_adv = trades_attack(model, x, eps=0.1, steps=3, step_size=0.04, generator=start)
    model.eval()
    logits, adv_logits = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(logits, 1), reduction="sum")
    loss = (F.cross_entropy(logits, y, reduction="sum") + 2.0 * kl) / len(y)
    head = last_linear(model)
    d_weight, d_bias = torch.autograd.grad(loss, [head.weight, head.bias])
    expected = torch.cat([d_weight, d_bias[:, None]], dim=1).reshape(-1).double().cpu().numpy()
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("adv_loss", ["pgd", "trades"])
def test_selection_cost_is_counted(adv_loss, device):
    split = make_split(n=47, classes=3)
    cost = Cost()
    spec = _spec(adv_loss=adv_loss, selection_steps=3, warm_start_epochs=0)
    loader = data.Loader(split, 5, device)
    plan = acs.AcsPlan(_mlp(split, device), loader, spec, torch.Generator(), cost)
    assert cost.forward == {} and plan(2) is None and cost.forward == {}
    plan(1)
    probes = 1 if adv_loss == "pgd" else 3  # TRADES: the KL target, clean and adversarial views
    assert cost.forward == {"selection": 47 * (3 + probes)}
    assert cost.backward == {"selection": 47 * 3}
    assert cost.attack_steps == 10 * 3  # per candidate batch, as robustcore.regimes counts
    assert cost.samples_perturbed == 47


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_fit_trains_on_the_coreset(digits_dir, method, device):
    generator = seed_everything(0)
    train, _ = data.load(digits_dir)
    spec = models.model_spec("small_cnn", {"width": 8}, data.load_meta(digits_dir))
    model = models.build(spec).to(device)
    regime = {
        "type": "acs",
        "method": method,
        "epoch_plan": "compact",
        "epochs": 4,
        "warm_start_epochs": 1,
        "freq": 2,
        "steps": 2,
        "step_size": 0.02,
        "eps": 0.05,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }
    log, cost = fit(model, data.Loader(train, 64, device), regime, generator=generator)
    n, m = len(train), round(0.5 * len(train))
    losses = [row["train_loss"] for row in log]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert log[-1]["train_acc"] > 0.3
    assert cost.forward["selection"] == 2 * n * (2 + 1)  # selections at epochs 2 and 4
    # Epoch 1 trains on all samples, epochs 2-4 on coresets of m..m+63 samples.
    assert n + 3 * m <= cost.forward["update"] <= n + 3 * (m + 63)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fraction", 0),
        ("fraction", 1.5),
        ("freq", 0),
        ("method", "kmeans"),
        ("adv_loss", "fgsm"),
        ("warm_start_epochs", -1),
        ("kappa", 2.0),
        ("selection_steps", 1.5),
        ("lam", -0.1),
        ("weighted", "yes"),
    ],
)
def test_bad_params_name_the_key(key, value):
    with pytest.raises(InputError, match=key):
        acs.check_params({"epochs": 10, key: value})


def test_bad_params_stop_fit_before_training(device):
    split = make_split(n=20, classes=3)
    regime = {
        "type": "acs",
        "epochs": 2,
        "fraction": 1.5,
        "lr": 0.1,
        "momentum": 0,
        "weight_decay": 0,
    }
    with pytest.raises(InputError, match="fraction"):
        fit(_mlp(split, device), data.Loader(split, 5, device), regime, generator=torch.Generator())
    with pytest.raises(InputError, match="norm"):
        acs.check_params({"epochs": 10, "adv_loss": "trades", "norm": "l2"})
