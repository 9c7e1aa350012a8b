"""Pointwise baseline scores: each against a slow reference, on known cases, and param checks."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy
from torch import nn

import robustcore.scores.base as base
import robustcore.scores.cal as cal
import robustcore.scores.deepfool as deepfool
import robustcore.scores.pointwise as pointwise
from robustcore.data import Split
from robustcore.io import InputError
from robustcore.persample import DYNAMICS_COLUMNS
from robustcore.probe import ProbeData
from robustcore.scores.base import REGISTRY, ScoreInputs


# ------------------------------------------------------------------------------------- builders
def make_probe(logits: np.ndarray, features: np.ndarray | None = None, labels=None) -> ProbeData:
    """A ProbeData for N samples with the given logits (and features, labels)."""
    n, c = logits.shape
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n, 4)) if features is None else np.asarray(features)
    labels = np.arange(n) % c if labels is None else labels
    return ProbeData(
        index=np.arange(n, dtype=np.int64) * 3,  # sample rows need not be 0..N-1
        labels=np.asarray(labels, dtype=np.int64),
        features=np.asarray(features, dtype=np.float32),
        logits=np.asarray(logits, dtype=np.float32),
        last_weight=rng.normal(size=(c, features.shape[1])).astype(np.float32),
        last_bias=np.zeros(c, np.float32),
    )


def probe_inputs(logits, features=None, labels=None, device=None) -> ScoreInputs:
    """ScoreInputs carrying a probe (and the device a method computes on, default the CPU)."""
    probe = make_probe(np.asarray(logits, dtype=np.float64), features, labels)
    device = torch.device("cpu") if device is None else device
    return ScoreInputs(index=probe.index, labels=probe.labels, probe=probe, device=device)


def dynamics_inputs(correct: np.ndarray, el2n=None, grad=None, seed: int = 0) -> ScoreInputs:
    """ScoreInputs with one dynamics frame per epoch (columns of the N×E arrays), rows shuffled."""
    rng = np.random.default_rng(seed)
    n, epochs = correct.shape
    el2n = rng.random((n, epochs)) if el2n is None else el2n
    grad = rng.random((n, epochs)) * 5 if grad is None else grad
    index = np.arange(n, dtype=np.int64) * 2 + 5
    labels = np.arange(n, dtype=np.int64) % 3
    frames = {}
    for e in range(epochs):
        order = rng.permutation(n)  # files are keyed by index, not by row position
        columns = {
            "index": index,
            "label": labels,
            "loss": rng.random(n),
            "correct": correct[:, e].astype(bool),
            "margin": rng.normal(size=n),
            "input_grad_norm": rng.random(n),
            "el2n": el2n[:, e],
            "grad_norm_last": grad[:, e],
        }
        frames[e + 1] = pd.DataFrame({c: columns[c][order] for c in DYNAMICS_COLUMNS})
    return ScoreInputs(index=index, labels=labels, dynamics=frames)


def model_inputs(model: nn.Module, x: np.ndarray, device: torch.device) -> ScoreInputs:
    """ScoreInputs with a model moved to `device` and a float vector training split."""
    x = np.asarray(x, dtype=np.float32)
    labels = np.zeros(len(x), dtype=np.int64)
    return ScoreInputs(
        index=np.arange(len(x), dtype=np.int64),
        labels=labels,
        model=model.to(device),
        train=Split(labels=labels, images=x),
        device=device,
    )


def run(name: str, inputs: ScoreInputs, **params) -> pd.DataFrame:
    """Call a method through the registry, as the workflow does."""
    return REGISTRY[name](inputs, seed=0, **params)


def kept_first(name: str, result: pd.DataFrame) -> int:
    """Row position the method's natural order keeps first."""
    score = result["score"].to_numpy()
    return int(np.argmax(score) if REGISTRY[name].natural == "high" else np.argmin(score))


# ------------------------------------------------------------------------------------- registry
def test_registered_with_the_papers_natural_end_and_needs():
    expected = {
        "least_confidence": ("high", ("probe",)),
        "entropy": ("high", ("probe",)),
        "margin": ("low", ("probe",)),
        "forgetting": ("high", ("dynamics",)),
        "el2n": ("high", ("dynamics",)),
        "grand": ("high", ("dynamics",)),
        "cal": ("high", ("probe",)),
        "deepfool": ("low", ("model",)),
    }
    for name, (natural, needs) in expected.items():
        assert (REGISTRY[name].natural, REGISTRY[name].needs) == (natural, needs), name
    assert REGISTRY["cal"].defaults == {"k": 10, "per_class": True}
    assert REGISTRY["forgetting"].defaults == {"first_epoch": 1, "last_epoch": None}
    assert REGISTRY["deepfool"].defaults == {
        "max_iter": 50,
        "overshoot": 0.02,
        "batch_size": 256,
        "top_classes": 10,  # the DeepFool reference code's num_classes (LTS4/DeepFool)
    }


def test_missing_inputs_are_named():
    bare = ScoreInputs(index=np.arange(3), labels=np.zeros(3, dtype=np.int64))
    for name, need in [("entropy", "probe"), ("forgetting", "dynamics"), ("deepfool", "model")]:
        with pytest.raises(InputError, match=need):
            run(name, bare)


# ---------------------------------------------------------------------------------- uncertainty
def test_uncertainty_matches_per_sample_reference():
    logits = np.random.default_rng(0).normal(scale=3, size=(25, 5))
    inputs = probe_inputs(logits)
    lc, ent, mar = [], [], []
    for row in logits:
        p = softmax(row.astype(np.float32).astype(np.float64))
        ordered = sorted(p, reverse=True)
        lc.append(1 - ordered[0])
        ent.append(scipy_entropy(p))
        mar.append(ordered[0] - ordered[1])
    np.testing.assert_allclose(run("least_confidence", inputs)["score"], lc, rtol=1e-9)
    np.testing.assert_allclose(run("entropy", inputs)["score"], ent, rtol=1e-9)
    np.testing.assert_allclose(run("margin", inputs)["score"], mar, rtol=1e-9, atol=1e-12)


def test_uncertainty_keeps_the_boundary_point():
    """Equal top-2 probabilities: highest entropy and least confidence, smallest margin."""
    logits = [
        [6.0, 0.0, 0.0],
        [2.0, 2.0, -1.0],
        [3.0, 1.0, 0.0],
        [0.0, 0.0, 9.0],
        [800.0, 0.0, 0.0],
    ]
    inputs = probe_inputs(logits)
    for name in ("least_confidence", "entropy", "margin"):
        result = run(name, inputs)
        assert np.isfinite(result["score"]).all(), name  # saturated softmax: no NaN
        assert kept_first(name, result) == 1, name
    assert run("margin", inputs)["score"][1] == pytest.approx(0.0, abs=1e-7)
    assert run("entropy", inputs)["score"][4] == pytest.approx(0.0, abs=1e-12)


def test_probe_of_other_samples_is_rejected():
    inputs = probe_inputs(np.zeros((4, 3)))
    inputs.index = inputs.index + 1
    with pytest.raises(InputError, match="indices"):
        run("entropy", inputs)


# ------------------------------------------------------------------------------------ forgetting
def test_forgetting_matches_per_sample_reference():
    correct = np.random.default_rng(3).random((40, 7)) < 0.6
    correct[0] = False  # never learned
    inputs = dynamics_inputs(correct)
    for first, last in [(1, None), (2, 5), (4, 4)]:
        result = run("forgetting", inputs, first_epoch=first, last_epoch=last)
        window = correct[:, first - 1 : (last or 7)]
        expected = []
        for row in window:
            events = sum(1 for a, b in zip(row[:-1], row[1:], strict=True) if a and not b)
            expected.append(events if row.any() else np.inf)
        np.testing.assert_array_equal(result["score"], expected)
        np.testing.assert_array_equal(result["ever_learned"], window.any(axis=1))


def test_forgetting_counts_events_and_never_learned_is_infinite():
    correct = np.array(
        [
            [0, 0, 0, 0, 0],  # never learned
            [1, 0, 1, 0, 1],  # learned, forgotten twice
            [0, 1, 1, 1, 1],  # learned once, never forgotten
            [1, 1, 1, 1, 0],  # forgotten at the end
        ],
        dtype=bool,
    )
    result = run("forgetting", dynamics_inputs(correct))
    assert result["score"].tolist() == [np.inf, 2, 0, 1]
    assert result["forgetting_events"].tolist() == [0, 2, 0, 1]
    assert result["ever_learned"].tolist() == [False, True, True, True]
    assert kept_first("forgetting", result) == 0  # infinite ranks above every finite count
    later = run("forgetting", dynamics_inputs(correct), first_epoch=3)
    assert later["score"].tolist() == [np.inf, 1, 0, 1]


# ------------------------------------------------------------------------------------ el2n/grand
@pytest.mark.parametrize(("name", "column"), [("el2n", 1), ("grand", 2)])
def test_window_means_match_reference(name, column):
    rng = np.random.default_rng(4)
    el2n, grad = rng.random((12, 5)), rng.random((12, 5)) * 3
    inputs = dynamics_inputs(rng.random((12, 5)) < 0.5, el2n=el2n, grad=grad)
    values = el2n if column == 1 else grad
    for first, last in [(1, None), (2, 3), (5, 5)]:
        result = run(name, inputs, first_epoch=first, last_epoch=last)
        expected = [np.mean(row[first - 1 : (last or 5)]) for row in values]
        np.testing.assert_allclose(result["score"], expected, rtol=1e-12)
        assert (result["n_epochs"] == (last or 5) - first + 1).all()


@pytest.mark.parametrize("name", ["forgetting", "el2n", "grand"])
def test_bad_epoch_windows_name_the_key(name):
    inputs = dynamics_inputs(np.ones((4, 3), dtype=bool))
    for params, key in [
        ({"first_epoch": 0}, "first_epoch"),
        ({"last_epoch": 4}, "last_epoch"),
        ({"first_epoch": 3, "last_epoch": 2}, "first_epoch"),
        ({"first_epoch": 1.5}, "first_epoch"),
    ]:
        with pytest.raises(InputError, match=key):
            run(name, inputs, **params)
    with pytest.raises(InputError, match="window"):
        run(name, inputs, window=3)


# ------------------------------------------------------------------------------------------- CAL
def cal_reference(features, logits, labels, k, per_class):
    """Per-sample loop: mean KL(p_neighbour ‖ p_sample) over its k nearest (scipy cdist)."""
    p = softmax(logits.astype(np.float32).astype(np.float64), axis=1)
    scores = []
    for i in range(len(features)):
        pool = np.flatnonzero(labels == labels[i]) if per_class else np.arange(len(features))
        pool = pool[pool != i]
        dist = cdist(features[i : i + 1], features[pool])[0]
        neighbours = pool[np.argsort(dist, kind="stable")[: min(k, len(pool))]]
        scores.append(np.mean([scipy_entropy(p[j], p[i]) for j in neighbours]))
    return np.array(scores)


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("blocks", [None, (7, 5)])
def test_cal_matches_per_sample_reference(per_class, blocks, device, monkeypatch):
    if blocks:  # many small distance blocks: self-exclusion and top-k merge across blocks
        monkeypatch.setattr(cal, "KNN_BLOCK_ROWS", blocks[0])
        monkeypatch.setattr(cal, "KNN_BLOCK_COLS", blocks[1])
    rng = np.random.default_rng(5)
    features = rng.normal(size=(45, 6)).astype(np.float32)
    logits = rng.normal(scale=2, size=(45, 4))
    labels = rng.integers(0, 3, size=45)
    labels[:4] = 3  # a class smaller than k + 1: all its other members are the neighbours
    inputs = probe_inputs(logits, features, labels, device)  # neighbours found on the device
    result = run("cal", inputs, k=5, per_class=per_class)
    expected = cal_reference(features.astype(np.float64), logits, labels, 5, per_class)
    np.testing.assert_allclose(result["score"], expected, rtol=1e-6, atol=1e-12)
    assert result.loc[:3, "n_neighbours"].tolist() == ([3] * 4 if per_class else [5] * 4)


def test_cal_kl_direction_is_neighbour_to_sample(device):
    """Two samples, k=1: each scores KL(p_other ‖ p_self), which is not symmetric."""
    logits = np.log([[0.9, 0.1], [0.5, 0.5]])
    result = run("cal", probe_inputs(logits, [[0.0], [1.0]], [0, 0], device), k=1)
    p, q = np.array([0.9, 0.1]), np.array([0.5, 0.5])
    np.testing.assert_allclose(result["score"], [scipy_entropy(q, p), scipy_entropy(p, q)], 1e-6)
    assert scipy_entropy(q, p) > scipy_entropy(p, q) + 0.05


def test_cal_keeps_the_sample_its_neighbours_disagree_with(device):
    """Two tight clusters of one class; the odd-one-out prediction scores highest."""
    rng = np.random.default_rng(6)
    features = np.concatenate([rng.normal(0, 0.1, (6, 3)), rng.normal(5, 0.1, (6, 3))])
    logits = np.tile([4.0, 0.0], (12, 1))
    logits[2] = [0.0, 4.0]  # disagrees with its cluster
    labels = np.zeros(12, dtype=np.int64)
    result = run("cal", probe_inputs(logits, features, labels, device), k=3)
    assert kept_first("cal", result) == 2
    agreeing = result["score"].to_numpy()[6:]  # the other cluster: all agree
    assert result["score"][2] > 10 * agreeing.max()
    assert agreeing.max() == pytest.approx(0.0, abs=1e-9)


def test_cal_rejects_bad_params():
    inputs = probe_inputs(np.zeros((5, 2)))
    with pytest.raises(InputError, match="'k'|k must"):
        run("cal", inputs, k=0)
    with pytest.raises(InputError, match="per_class"):
        run("cal", inputs, per_class="yes")
    with pytest.raises(InputError, match="neighbours"):
        run("cal", inputs, neighbours=3)


# -------------------------------------------------------------------------------------- DeepFool
def deepfool_reference(model, x0, device, max_iter=50, overshoot=0.02):
    """One sample at a time, all classes, as in the DeepFool reference code; inf if no flip."""
    model.eval()
    x0 = torch.as_tensor(x0, dtype=torch.float32, device=device)[None]
    pred = int(model(x0).argmax(1))
    r_tot = torch.zeros_like(x0)
    x, iterations, label = x0.clone(), 0, pred
    while label == pred and iterations < max_iter:
        x.requires_grad_(True)
        out = model(x)[0]
        grads = [torch.autograd.grad(out[c], x, retain_graph=True)[0] for c in range(len(out))]
        best, best_w = np.inf, None
        for c in range(len(out)):
            if c == pred:
                continue
            w = grads[c] - grads[pred]
            pert = abs((out[c] - out[pred]).item()) / w.norm().item()
            if pert < best:
                best, best_w = pert, w
        r_tot = r_tot + (best + 1e-4) * best_w / best_w.norm()
        x = (x0 + (1 + overshoot) * r_tot).detach()
        label = int(model(x).argmax(1))
        iterations += 1
    norm = float(((1 + overshoot) * r_tot).norm())
    return (norm if label != pred else np.inf), iterations


def linear_model(w: np.ndarray, b: np.ndarray) -> nn.Module:
    """logits = W x + b."""
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return layer


class Quadratic(nn.Module):
    """Two classes, boundary the unit sphere: DeepFool needs several steps from far away."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * x).sum(1) - 1
        return torch.stack([g, torch.zeros_like(g)], 1)


class Constant(nn.Module):
    """Zero input gradient everywhere: DeepFool cannot move."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0 * x.sum(1)
        return torch.stack([s + 1, s], 1)


def test_deepfool_equals_hyperplane_distance_for_a_linear_model(device):
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(2, 6)), rng.normal(size=2)
    x = rng.normal(size=(20, 6))
    w_diff, b_diff = w[1] - w[0], b[1] - b[0]
    x[3] -= (x[3] @ w_diff + b_diff) / (w_diff @ w_diff) * w_diff  # on the decision boundary
    analytic = np.abs(x @ w_diff + b_diff) / np.linalg.norm(w_diff)
    inputs = model_inputs(linear_model(w, b), x, device)
    exact = run("deepfool", inputs, overshoot=0.0, batch_size=7)
    np.testing.assert_allclose(exact["score"], analytic + 1e-4, rtol=1e-4, atol=1e-5)
    assert exact["iterations"].tolist() == [1] * 20 and exact["flipped"].all()
    default = run("deepfool", inputs)
    np.testing.assert_allclose(default["score"], 1.02 * (analytic + 1e-4), rtol=1e-4, atol=1e-5)
    assert kept_first("deepfool", default) == 3
    assert analytic[3] < 1e-5


def test_deepfool_multiclass_linear_and_top_classes(device):
    """Three classes: the nearest pairwise hyperplane; top_classes=2 sees only the runner-up."""
    w = np.array([[1.0, 0.0], [0.9, 0.0], [0.0, -3.0]])
    b = np.array([0.0, 0.05, 0.2])
    x = np.array([[1.0, 0.1], [2.0, 1.5], [-1.0, -2.5], [0.3, 0.0]])
    logits = x @ w.T + b
    expected_all, expected_top2 = [], []
    for row in logits:
        pred = int(row.argmax())
        dists = {
            c: abs(row[c] - row[pred]) / np.linalg.norm(w[c] - w[pred])
            for c in range(3)
            if c != pred
        }
        runner_up = max(dists, key=lambda c: row[c])
        expected_all.append(min(dists.values()))
        expected_top2.append(dists[runner_up])
    inputs = model_inputs(linear_model(w, b), x, device)
    got = run("deepfool", inputs, overshoot=0.0)["score"]
    np.testing.assert_allclose(got, np.array(expected_all) + 1e-4, rtol=1e-5)
    model = inputs.model.requires_grad_(False)
    got2, flipped, _ = deepfool._deepfool_batch(
        model, torch.as_tensor(x, dtype=torch.float32, device=device), 50, 0.0, top_classes=2
    )
    assert got2.device == flipped.device == next(model.parameters()).device
    assert flipped.all()
    np.testing.assert_allclose(got2.cpu().numpy(), np.array(expected_top2) + 1e-4, rtol=1e-5)
    assert expected_top2[0] > 1.3 * expected_all[0]  # the runner-up is not the nearest boundary


class Counted(nn.Module):
    """Wraps a model and records, per backward to the input, how many samples it covered."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.backwards = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(lambda g: self.backwards.append(len(g)))
        return self.inner(x)


def mlp(classes: int, seed: int) -> nn.Module:
    """A small tanh MLP: DeepFool needs more than one step on it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, classes))


@pytest.mark.parametrize("classes", [3, 10])
def test_deepfool_default_candidates_are_every_class_up_to_ten(classes, device):
    """With C ≤ 10 the default's 10 candidates are all classes: the same result as None."""
    x = np.random.default_rng(classes).normal(size=(24, 6))
    inputs = model_inputs(Counted(mlp(classes, seed=classes)), x, device)
    default = run("deepfool", inputs, batch_size=24)
    per_iteration = len(inputs.model.backwards) / default["iterations"].max()
    inputs.model.backwards.clear()
    every = run("deepfool", inputs, batch_size=24, top_classes=None)
    pd.testing.assert_frame_equal(default, every)
    assert default["flipped"].all() and default["iterations"].max() > 1
    assert per_iteration == classes  # one backward per class and iteration


def test_deepfool_default_takes_ten_candidate_gradients_above_ten_classes(device):
    """15 classes: 10 backwards per iteration by default, 15 with None (all classes)."""
    x = np.random.default_rng(3).normal(size=(16, 6))
    model = Counted(mlp(15, seed=4))
    inputs = model_inputs(model, x, device)
    result = run("deepfool", inputs, batch_size=16, max_iter=1)
    assert model.backwards == [16] * 10  # one iteration: the whole batch, 10 candidate classes
    model.backwards.clear()
    run("deepfool", inputs, batch_size=16, max_iter=1, top_classes=None)
    assert model.backwards == [16] * 15
    model.backwards.clear()
    ten = run("deepfool", inputs, batch_size=16, top_classes=10)
    pd.testing.assert_frame_equal(run("deepfool", inputs, batch_size=16), ten)
    assert result["iterations"].tolist() == [1] * 16


def test_deepfool_matches_single_sample_reference_and_restores_the_model(device):
    """BatchNorm MLP left in train mode: batched DeepFool equals the per-sample loop (eval)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model(torch.randn(64, 5) * 2)  # non-trivial running statistics
        model[1].weight.uniform_(0.5, 1.5)
    x = np.random.default_rng(8).random((21, 5)).astype(np.float32)
    model.train()
    inputs = model_inputs(model, x, device)
    stats = model[1].running_mean.clone()
    result = run("deepfool", inputs, batch_size=8)
    assert model.training and model[1].training  # mode restored
    assert torch.equal(model[1].running_mean, stats)  # attacked in eval mode
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    reference = [deepfool_reference(model, row, device) for row in x]
    model.train()
    np.testing.assert_allclose(result["score"], [s for s, _ in reference], rtol=1e-4)
    assert result["iterations"].tolist() == [i for _, i in reference]
    assert result["flipped"].all()


def test_deepfool_non_flipping_samples_score_infinity(device):
    x = np.array([[3.0, 0.0], [0.0, 1.01], [0.5, 0.0]])  # far, near (outside); inside the sphere
    inputs = model_inputs(Quadratic(), x, device)
    one = run("deepfool", inputs, max_iter=1)
    assert one["flipped"].tolist() == [False, True, True]
    assert one["score"][0] == np.inf and np.isfinite(one["perturbation_norm"][0])
    assert kept_first("deepfool", one) == 1
    full = run("deepfool", inputs)
    assert full["flipped"].all() and full["iterations"][0] > 1
    assert full["score"][0] == pytest.approx(2.0, rel=1e-2)  # distance 3 → 1 radially
    stuck = run("deepfool", model_inputs(Constant(), x, device))
    assert np.isinf(stuck["score"]).all() and (stuck["perturbation_norm"] == 0).all()
    assert stuck["iterations"].tolist() == [1, 1, 1]


def test_deepfool_is_vectorized_over_the_batch(device):
    """A linear model flips every sample in one step: two forwards per batch, not per sample."""
    rng = np.random.default_rng(9)
    model = linear_model(rng.normal(size=(2, 4)), rng.normal(size=2))
    calls = []
    model.register_forward_hook(lambda _m, inp, _o: calls.append(len(inp[0])))
    run("deepfool", model_inputs(model, rng.normal(size=(32, 4)), device), batch_size=32)
    assert calls == [32, 32]


def test_deepfool_rejects_bad_params(device):
    inputs = model_inputs(linear_model(np.eye(2), np.zeros(2)), np.eye(2), device)
    for params, key in [
        ({"max_iter": 0}, "max_iter"),
        ({"batch_size": 0}, "batch_size"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"top_classes": 1}, "top_classes"),
        ({"top_classes": 2.5}, "top_classes"),
        ({"top_classes": True}, "top_classes"),
        ({"steps": 3}, "steps"),
    ]:
        with pytest.raises(InputError, match=key):
            run("deepfool", inputs, **params)


# ---------------------------------------------------------------------------------------- style
def test_no_per_sample_python_loops():
    """Every loop in the modules runs over blocks, epochs, classes, batches or iterations."""
    allowed = {
        "range(0, n, size)": "row blocks (base.blocks)",
        "window": "epochs of the window",
        "groups.values()": "classes (cal)",
        "loader.epoch(shuffle=False)": "batches (deepfool)",
        "range(1, max_iter + 1)": "DeepFool iterations",
        "range(n_cand)": "candidate classes (one backward each)",
    }
    sources = [inspect.getsource(m) for m in (pointwise, cal, deepfool)]
    for source in [*sources, inspect.getsource(base.blocks)]:
        tree = ast.parse(source)
        loops = [n.iter for n in ast.walk(tree) if isinstance(n, (ast.For, ast.comprehension))]
        found = {ast.unparse(it) for it in loops}
        blocked = {f for f in found if f.startswith("blocks(")}
        assert found - blocked <= set(allowed), found - blocked - set(allowed)
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.While)]
