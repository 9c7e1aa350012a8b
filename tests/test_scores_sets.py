"""Greedy set methods as pick orders, checked against slow from-scratch greedy references."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import nnls as scipy_nnls

import robustcore.scores.contextual_diversity as contextual_diversity
import robustcore.scores.gradmatch as gradmatch
import robustcore.scores.greedy as greedy
from robustcore.io import InputError
from robustcore.probe import ProbeData
from robustcore.scores.base import REGISTRY, ScoreInputs
from robustcore.scores.craig import craig_weights
from robustcore.scores.gradmatch import gradmatch_weights
from robustcore.select import greedy_select

METHODS = [
    "herding",
    "kcenter",
    "contextual_diversity",
    "craig",
    "gradmatch",
    "glister",
    "facility_location",
    "graph_cut",
    "log_det",
]


def make_inputs(
    sizes: tuple[int, ...] = (13, 11),
    d: int = 6,
    seed: int = 0,
    features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scale: float = 1.0,
) -> ScoreInputs:
    """A hand-built probe: ReLU-like features, a random head, logits = [h, 1] [W, b]^T."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
        labels = labels[rng.permutation(len(labels))]
    labels = np.asarray(labels, dtype=np.int64)
    n, classes = len(labels), int(labels.max()) + 1
    if features is None:
        shift = rng.normal(size=(classes, d))
        features = np.abs(rng.normal(size=(n, d)) + shift[labels])
    features = np.asarray(features, dtype=np.float32)
    weight = (scale * rng.normal(size=(classes, features.shape[1]))).astype(np.float32)
    bias = (0.1 * rng.normal(size=classes)).astype(np.float32)
    logits = (features.astype(np.float64) @ weight.T.astype(np.float64) + bias).astype(np.float32)
    index = np.arange(n, dtype=np.int64) * 3 + 5  # sample ids are not row positions
    probe = ProbeData(index, labels, features, logits, weight, bias)
    return ScoreInputs(index=index, labels=labels, probe=probe)


def run(name: str, inputs: ScoreInputs, seed: int = 0, **params):
    return REGISTRY[name](inputs, seed=seed, **params)


def orders(result, inputs: ScoreInputs, per_class: bool) -> dict:
    """Pick order per group as row positions (in the frame's sample order)."""
    score = result["score"].to_numpy()
    groups = (
        {int(c): np.flatnonzero(inputs.labels == c) for c in np.unique(inputs.labels)}
        if per_class
        else {None: np.arange(len(score))}
    )
    return {c: rows[np.argsort(score[rows], kind="stable")] for c, rows in groups.items()}


def pick(candidates: list[int], values: list[float]) -> int:
    """The best candidate; values within 1e-10 of the largest magnitude tie -> the first."""
    values = np.asarray(values, dtype=np.float64)
    tol = 1e-10 * np.abs(values).max()
    return candidates[int(np.flatnonzero(values >= values.max() - tol)[0])]


def greedy_reference(rows: np.ndarray, gain, k: int | None = None) -> np.ndarray:
    """Plain greedy: every candidate's gain(S, e) evaluated from scratch; ties -> lower row."""
    chosen: list[int] = []
    for _ in range(len(rows) if k is None else k):
        candidates = [int(e) for e in rows if e not in chosen]
        chosen.append(pick(candidates, [gain(chosen, e) for e in candidates]))
    return np.array(chosen)


def set_gain(value):
    """Marginal gain F(S + e) - F(S) of a set function evaluated from scratch."""
    return lambda s, e: value(s + [e]) - (value(s) if s else 0.0)


def groups_of(inputs: ScoreInputs, per_class: bool) -> list[np.ndarray]:
    if per_class:
        return [np.flatnonzero(inputs.labels == c) for c in np.unique(inputs.labels)]
    return [np.arange(len(inputs.labels))]


def cosine_sim(x: np.ndarray) -> np.ndarray:
    """(1 + cos) / 2 pair by pair."""
    x = x.astype(np.float64)
    n = len(x)
    sim = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            sim[i, j] = (1 + x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))) / 2
    return sim


# ------------------------------------------------------------------------------------------------
# every method: a permutation per class, nested prefixes, seeds


@pytest.mark.parametrize("name", METHODS)
def test_order_is_a_permutation_per_class_and_globally(name):
    inputs = make_inputs()
    result = run(name, inputs)
    assert REGISTRY[name].kind == "order" and REGISTRY[name].natural == "low"
    assert np.array_equal(result["index"].to_numpy(), inputs.index)
    for c in (0, 1):
        got = np.sort(result["score"].to_numpy()[inputs.labels == c])
        assert np.array_equal(got, np.arange((inputs.labels == c).sum()))
    flat = run(name, inputs, per_class=False)["score"].to_numpy()
    assert np.array_equal(np.sort(flat), np.arange(len(flat)))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("per_class", [True, False])
def test_budgeted_greedy_is_a_prefix_of_the_full_order(name, per_class):
    """Nested prefixes: running m greedy steps gives the first m picks of the full order."""
    inputs = make_inputs(seed=3)
    full = orders(run(name, inputs, per_class=per_class), inputs, per_class)
    part = orders(run(name, inputs, per_class=per_class, budget=0.4), inputs, per_class)
    for c, rows in full.items():
        m = math.ceil(0.4 * len(rows))
        if name == "craig" and not per_class:
            continue  # the global craig merge of budgeted class prefixes is checked below
        assert np.array_equal(part[c][:m], rows[:m]), (name, c)
        assert set(part[c][m:]) == set(rows[m:])


def test_order_gives_the_greedy_coreset_through_class_quotas():
    """select's class quotas on an order score take the q_c-step greedy set of each class."""
    inputs = make_inputs(sizes=(20, 17), seed=4)
    result = run("facility_location", inputs)
    kept = greedy_select(inputs.index, inputs.labels, result["score"].to_numpy(), 0.3)
    expected = []
    for rows in orders(result, inputs, True).values():
        q = round(0.3 * len(rows) + 1e-9)
        expected += list(inputs.index[rows[:q]])
    assert sorted(expected) == list(kept)


@pytest.mark.parametrize("name", ["kcenter", "contextual_diversity"])
def test_seeded_start_is_reproducible_and_seed_dependent(name):
    inputs = make_inputs(seed=5)
    a = run(name, inputs, seed=7)["score"].to_numpy()
    assert np.array_equal(a, run(name, inputs, seed=7)["score"].to_numpy())
    others = [run(name, inputs, seed=s)["score"].to_numpy() for s in range(8)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize(
    "name", [m for m in METHODS if m not in ("kcenter", "contextual_diversity")]
)
def test_deterministic_methods_ignore_the_seed(name):
    inputs = make_inputs(seed=6)
    a = run(name, inputs, seed=0)["score"].to_numpy()
    assert np.array_equal(a, run(name, inputs, seed=123)["score"].to_numpy())


@pytest.mark.parametrize("name", METHODS)
def test_the_proxy_device_does_not_change_the_order(name, device):
    """The workflow hands every method the proxy's device (ScoreInputs.device); the set methods
    work on the probe's arrays, so on any device they give the CPU's order and components."""
    inputs = make_inputs(seed=9)
    on_cpu = run(name, inputs, seed=1)
    on_device = ScoreInputs(inputs.index, inputs.labels, probe=inputs.probe, device=device)
    pd.testing.assert_frame_equal(run(name, on_device, seed=1), on_cpu, check_exact=True)


@pytest.mark.parametrize("name", METHODS)
def test_rows_on_demand_match_the_precomputed_matrix(name, monkeypatch):
    """Groups above DENSE_LIMIT compute pairwise rows on demand; the order must not change."""
    inputs = make_inputs(seed=8)
    dense = run(name, inputs)["score"].to_numpy()
    monkeypatch.setattr(greedy, "DENSE_LIMIT", 0)
    monkeypatch.setattr(greedy, "CHUNK_ELEMENTS", 7)  # many small blocks
    assert np.array_equal(dense, run(name, inputs)["score"].to_numpy())


# ------------------------------------------------------------------------------------------------
# each method against a from-scratch greedy reference


@pytest.mark.parametrize("per_class", [True, False])
def test_herding_matches_reference(per_class):
    inputs = make_inputs(seed=10)
    x = inputs.probe.features.astype(np.float64)
    got = orders(run("herding", inputs, per_class=per_class), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        mu = x[rows].mean(axis=0)
        ref = greedy_reference(rows, lambda s, e, mu=mu: -np.linalg.norm(mu - x[s + [e]].mean(0)))
        assert np.array_equal(order, ref)


def test_herding_pulls_the_mean_in_not_out():
    """First pick = the point closest to the mean; every prefix's mean beats DeepCore's argmax."""
    inputs = make_inputs(sizes=(25,), seed=11)
    x = inputs.probe.features.astype(np.float64)
    order = orders(run("herding", inputs), inputs, True)[0]
    mu = x.mean(axis=0)
    assert order[0] == np.argmin(np.linalg.norm(x - mu, axis=1))
    rows = np.arange(len(x))
    deepcore = greedy_reference(rows, lambda s, e: np.linalg.norm(mu - x[s + [e]].mean(axis=0)))
    for m in range(1, len(x)):
        ours = np.linalg.norm(mu - x[order[:m]].mean(axis=0))
        theirs = np.linalg.norm(mu - x[deepcore[:m]].mean(axis=0))
        assert ours <= theirs + 1e-12
    assert np.linalg.norm(mu - x[order[:3]].mean(axis=0)) < 0.5 * np.linalg.norm(
        mu - x[deepcore[:3]].mean(axis=0)
    )


def k_center_reference(rows, first, dist):
    """k-center greedy from `first`: each candidate's distance to its nearest chosen centre."""
    chosen = [int(first)]
    while len(chosen) < len(rows):
        candidates = [int(e) for e in rows if e not in chosen]
        chosen.append(pick(candidates, [min(dist(e, c) for c in chosen) for e in candidates]))
    return np.array(chosen)


@pytest.mark.parametrize("per_class", [True, False])
def test_kcenter_matches_reference(per_class):
    inputs = make_inputs(seed=12)
    x = inputs.probe.features.astype(np.float64)
    got = orders(run("kcenter", inputs, per_class=per_class, seed=3), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        ref = k_center_reference(rows, order[0], lambda a, b: np.linalg.norm(x[a] - x[b]))
        assert np.array_equal(order, ref)
        # the second pick is the point farthest from the first
        assert order[1] == rows[np.argmax(np.linalg.norm(x[rows] - x[order[0]], axis=1))]
    mean_start = orders(run("kcenter", inputs, per_class=per_class, init="mean"), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), mean_start.values(), strict=True):
        assert order[0] == rows[np.argmin(np.linalg.norm(x[rows] - x[rows].mean(0), axis=1))]


def duplicated_inputs(seed: int = 13) -> tuple[ScoreInputs, int]:
    """Eight distinct points and five exact copies of some of them, one class."""
    rng = np.random.default_rng(seed)
    distinct = np.abs(rng.normal(size=(8, 16)))
    feats = np.concatenate([distinct, distinct[[1, 4, 4, 6, 0]]])
    perm = rng.permutation(len(feats))
    return make_inputs(features=feats[perm], labels=np.zeros(len(feats)), seed=seed), 8


def distinct_first(inputs: ScoreInputs, order: np.ndarray, n_distinct: int) -> bool:
    firsts = [tuple(inputs.probe.features[j]) for j in order[:n_distinct]]
    return len(set(firsts)) == n_distinct


@pytest.mark.parametrize(
    ("name", "params"),
    [("kcenter", {}), ("facility_location", {}), ("log_det", {"eps": 1e-3})],
)
def test_duplicates_wait_until_every_distinct_point_is_picked(name, params):
    """kcenter and facility location always; log-det when the distinct points are independent
    (here 8 points in 16 dimensions) and eps is small (a picked point's copy keeps < 2 eps)."""
    inputs, n_distinct = duplicated_inputs()
    for seed in range(3):
        order = orders(run(name, inputs, seed=seed, **params), inputs, True)[0]
        assert distinct_first(inputs, order, n_distinct), (name, seed)


def sym_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.sum(p * np.log(p / q)) + 0.5 * np.sum(q * np.log(q / p)))


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_contextual_diversity_matches_reference(per_class, masked):
    inputs = make_inputs(seed=14, scale=0.6)
    p = inputs.probe.probs
    pred = p.argmax(axis=1)

    def dist(a, b):
        if masked and pred[a] != pred[b]:
            return 0.0
        return sym_kl(p[a], p[b])

    result = run(
        "contextual_diversity", inputs, per_class=per_class, same_prediction_only=masked, seed=2
    )
    got = orders(result, inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        assert np.array_equal(order, k_center_reference(rows, order[0], dist))


def elementwise_kl_row(log_p: np.ndarray, pred: np.ndarray | None):
    """The former per-row form: 0.5 * sum_k (p_ik - p_jk)(log p_ik - log p_jk), elementwise."""
    p = np.exp(log_p)

    def row(j: int) -> np.ndarray:
        d = 0.5 * ((p - p[j]) * (log_p - log_p[j])).sum(axis=1)
        return d if pred is None else np.where(pred == pred[j], d, 0.0)

    return row


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("dense", [True, False])
def test_contextual_diversity_products_equal_the_elementwise_form(classes, dense, monkeypatch):
    """Matrix-product rows (GEMV per pick, or the precomputed matrix) against the elementwise
    form: entries agree to rounding, the diagonal and exact duplicates are exactly 0, nothing
    is negative, and the k-center pick order is identical (masked or not)."""
    monkeypatch.setattr(contextual_diversity, "DENSE_WORK", 0 if dense else 10**9)
    rng = np.random.default_rng(classes)
    n = 400
    for scale in (0.3, 3.0, 30.0):
        z = rng.normal(scale=scale, size=(n, classes))
        z[300:340] = z[:40]  # exact duplicates
        log_p = greedy.log_softmax(z)
        pred = log_p.argmax(axis=1)
        for mask in (None, pred):
            new = contextual_diversity.symmetric_kl_rows(log_p, mask)
            old = elementwise_kl_row(log_p, mask)
            picks = [0, 5, 39, 123, 300, 399]
            got, ref = np.stack([new(j) for j in picks]), np.stack([old(j) for j in picks])
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13 * ref.max())
            assert (got >= 0).all()
            assert (got[np.arange(len(picks)), picks] == 0).all()
            assert (got[0, 300] == 0) and (got[4, 0] == 0) and (got[2, 339] == 0)  # duplicates
            order_new, radius_new = greedy.k_center(new, n, 7, n)
            order_old, radius_old = greedy.k_center(old, n, 7, n)
            assert np.array_equal(order_new, order_old), (scale, mask is None)
            np.testing.assert_allclose(
                radius_new["distance"], radius_old["distance"], rtol=1e-9, atol=1e-15
            )


@pytest.mark.parametrize("per_class", [True, False])
def test_contextual_diversity_dense_and_per_pick_rows_give_the_same_order(per_class, monkeypatch):
    """The precomputed matrix and the per-pick rows are the same distances: the same order."""
    inputs = make_inputs(seed=16, sizes=(30, 25), scale=0.8)
    monkeypatch.setattr(contextual_diversity, "DENSE_WORK", 0)
    dense = run("contextual_diversity", inputs, per_class=per_class, seed=4)
    monkeypatch.setattr(contextual_diversity, "DENSE_WORK", 10**9)
    per_pick = run("contextual_diversity", inputs, per_class=per_class, seed=4)
    assert np.array_equal(dense["score"], per_pick["score"])
    # rounding of the expansion is absolute (~1e-16 of the entropies), not relative
    np.testing.assert_allclose(dense["distance"], per_pick["distance"], rtol=1e-9, atol=1e-14)


def test_contextual_diversity_mean_start_with_an_underflowed_class():
    """A class whose probability underflows to 0 for every sample: the mean start must still
    be the sample nearest the mean prediction (log 0 gave NaN distances, and argmin took row 0)."""
    rng = np.random.default_rng(17)
    logits = rng.normal(size=(20, 3))
    logits[:, 2] = -2000.0  # exp underflows to exactly 0 everywhere
    logits[0] = [4.0, -4.0, -2000.0]  # row 0: far from the mean
    features = np.abs(rng.normal(size=(20, 4)))
    inputs = make_inputs(features=features, labels=np.zeros(20))
    probe = inputs.probe
    head = ProbeData(
        probe.index,
        probe.labels,
        probe.features,
        logits.astype(np.float32),
        probe.last_weight[:1].repeat(3, 0),
        probe.last_bias[:1].repeat(3, 0),
    )
    inputs = ScoreInputs(inputs.index, inputs.labels, probe=head)
    p = greedy.log_softmax(logits.astype(np.float32).astype(np.float64))
    p = np.exp(p[:, :2])
    mean = p.mean(axis=0)
    expected = int(np.argmin(((p - mean) * (np.log(p) - np.log(mean))).sum(axis=1)))
    order = orders(run("contextual_diversity", inputs, init="mean"), inputs, True)[0]
    assert order[0] == expected != 0


def test_contextual_diversity_survives_saturated_softmax():
    """Logit gaps beyond float64's exp range: probabilities are exact zeros, where p log(p / q)
    is NaN; the distance is taken from log-softmax, so every radius stays finite."""
    inputs = make_inputs(seed=15, scale=400.0)
    assert (inputs.probe.probs == 0).any()
    result = run("contextual_diversity", inputs)
    distance = result["distance"].to_numpy()
    assert np.isnan(distance).sum() == 2  # the first center of each class has no radius
    assert np.isfinite(distance[~np.isnan(distance)]).all()


@pytest.mark.parametrize("per_class", [True, False])
def test_facility_location_matches_reference(per_class):
    inputs = make_inputs(seed=16)
    sim = cosine_sim(inputs.probe.features)
    got = orders(run("facility_location", inputs, per_class=per_class), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        value = set_gain(lambda s, rows=rows: sim[np.ix_(rows, s)].max(axis=1).sum())
        assert np.array_equal(order, greedy_reference(rows, value))


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_graph_cut_matches_reference(per_class, lam):
    inputs = make_inputs(seed=17)
    sim = cosine_sim(inputs.probe.features)
    result = run("graph_cut", inputs, per_class=per_class, lam=lam)
    got = orders(result, inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):

        def value(s, rows=rows):
            return sim[np.ix_(rows, s)].sum() - lam * sim[np.ix_(s, s)].sum()

        assert np.array_equal(order, greedy_reference(rows, set_gain(value)))


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("eps", [0.05, 1.0])
def test_log_det_matches_reference(per_class, eps):
    inputs = make_inputs(seed=18)
    sim = cosine_sim(inputs.probe.features)
    got = orders(run("log_det", inputs, per_class=per_class, eps=eps), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):

        def value(s):
            return np.linalg.slogdet(sim[np.ix_(s, s)] + eps * np.eye(len(s)))[1]

        assert np.array_equal(order, greedy_reference(rows, set_gain(value)))


def gradients(inputs: ScoreInputs) -> np.ndarray:
    """Explicit per-sample CE gradients w.r.t. (W, b), built without the probe's helpers."""
    p = inputs.probe.probs
    onehot = np.eye(p.shape[1])[inputs.labels]
    h = np.concatenate([inputs.probe.features.astype(np.float64), np.ones((len(p), 1))], axis=1)
    return np.stack([np.outer(p[i] - onehot[i], h[i]).ravel() for i in range(len(p))])


@pytest.mark.parametrize("per_class", [True, False])
def test_craig_matches_reference(per_class):
    inputs = make_inputs(seed=19, sizes=(9, 8, 7))
    g = gradients(inputs)
    n = len(g)
    dist = np.array([[np.linalg.norm(g[i] - g[j]) for j in range(n)] for i in range(n)])
    same = inputs.labels[:, None] == inputs.labels[None, :]
    top = max(dist[np.ix_(r, r)].max() for r in groups_of(inputs, True))
    sim = np.where(same, top - dist, 0.0)  # per-class similarities, 0 across classes
    result = run("craig", inputs, per_class=per_class)
    got = orders(result, inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        value = set_gain(lambda s, rows=rows: sim[np.ix_(rows, s)].max(axis=1).sum())
        assert np.array_equal(order, greedy_reference(rows, value))
    if per_class:  # weight at pick: the samples whose nearest medoid the pick became
        weights = result["weight_at_pick"].to_numpy()
        for order in got.values():
            first = order[0]
            assert weights[first] == len(order)
            second = order[1]
            closer = dist[order, second] < dist[order, first]
            assert weights[second] == closer.sum()


def test_craig_weights_count_nearest_medoids():
    inputs = make_inputs(seed=20)
    g = gradients(inputs)
    chosen = np.array([0, 3, 5, 8, 12, 17])
    weights = craig_weights(inputs.probe, chosen)
    expected = np.zeros(len(chosen))
    for i in range(len(g)):
        mine = [k for k, j in enumerate(chosen) if inputs.labels[j] == inputs.labels[i]]
        if mine:
            d = [np.linalg.norm(g[i] - g[chosen[k]]) for k in mine]
            expected[mine[int(np.argmin(d))]] += 1
    assert np.array_equal(weights, expected)
    assert weights.sum() == sum(np.isin(inputs.labels, inputs.labels[chosen]))


def omp_reference(g: np.ndarray, rows: np.ndarray, lam: float, nnls: bool, total: bool):
    """OMP with every fit solved from scratch on the explicit gradient matrix."""
    a = g[rows].T  # p x n
    b = a.sum(axis=1) if total else a.mean(axis=1)
    chosen: list[int] = []
    w = np.zeros(0)
    for _ in range(len(rows)):
        resid = b - a[:, chosen] @ w
        candidates = [e for e in range(len(rows)) if e not in chosen]
        values = [a[:, e] @ resid if nnls else abs(a[:, e] @ resid) for e in candidates]
        chosen.append(pick(candidates, values))
        design = np.vstack([a[:, chosen], math.sqrt(lam) * np.eye(len(chosen))])
        target = np.concatenate([b, np.zeros(len(chosen))])
        w = scipy_nnls(design, target)[0] if nnls else np.linalg.lstsq(design, target)[0]
    return rows[np.array(chosen)], w


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize(("nnls", "lam", "target"), [(True, 0.5, "sum"), (False, 1.0, "mean")])
def test_gradmatch_matches_reference(per_class, nnls, lam, target):
    inputs = make_inputs(seed=21, sizes=(12, 10))
    g = gradients(inputs)
    result = run("gradmatch", inputs, per_class=per_class, nnls=nnls, lam=lam, target=target)
    got = orders(result, inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        ref, _ = omp_reference(g, rows, lam, nnls, target == "sum")
        assert np.array_equal(order, ref)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) if the block runs longer than `seconds`."""

    def expired(_signum, _frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_gradmatch_nnls_terminates_on_collinear_gradients_without_ridge():
    """lam = 0 with duplicate and collinear gradients (a singular Gram matrix): every refit
    stays within the 3 t + 30 cap and solves the NNLS; the order is still a permutation."""
    rng = np.random.default_rng(23)
    base = rng.normal(size=(4, 9))
    g = np.concatenate([base, base[[0, 0, 2]], 2.5 * base[[1, 3]], rng.random((3, 1)) * base[0]])
    b = g.sum(axis=0)
    m, c = g @ g.T, g @ b
    with deadline(20):
        solver = gradmatch._GrowingNNLS(len(c))
        w = np.zeros(0)
        for t in range(len(c)):
            w = solver.add(m[t, : t + 1], c[t], c[t] - m[t, :t] @ w).copy()
            assert solver.solves <= 3 * (t + 1) + 30
    assert (w >= 0).all()
    best = scipy_nnls(g.T, b)[0]  # the weights are not unique, the residual is
    assert np.linalg.norm(g.T @ w - b) <= np.linalg.norm(g.T @ best - b) + 1e-9 * np.linalg.norm(b)
    inputs, _ = duplicated_inputs()
    with deadline(20):
        result = run("gradmatch", inputs, lam=0.0)
    assert sorted(result["score"]) == list(range(len(result)))


def test_gradmatch_nnls_cap_raises_naming_gradmatch_the_pick_and_lam(monkeypatch):
    """A refit that needs more active-set steps than the cap is an error naming the fix."""
    m = np.array([[1.0, 0.9], [0.9, 1.0]])
    c = np.array([1.0, 1.5])  # the second variable pushes the first out: two solves
    np.testing.assert_allclose(gradmatch._nnls_gram(m, c), [0.0, 1.5])
    monkeypatch.setattr(gradmatch, "NNLS_STEPS_PER_VARIABLE", 0)
    monkeypatch.setattr(gradmatch, "NNLS_STEPS_EXTRA", 1)
    with pytest.raises(RuntimeError, match=r"gradmatch.*pick 2.*1 active-set steps.*lam > 0"):
        gradmatch._nnls_gram(m, c)
    inputs = make_inputs(seed=7, sizes=(12, 10))  # one refit here drops a variable (lam = 0)
    with pytest.raises(RuntimeError, match=r"'gradmatch' \(class \d, lam=0.0\).*pick \d+.*lam > 0"):
        run("gradmatch", inputs, lam=0.0)
    monkeypatch.setattr(gradmatch, "NNLS_STEPS_EXTRA", 30)
    run("gradmatch", inputs, lam=0.0)  # the default slack alone is enough


def test_gradmatch_weights_match_reference_fit():
    inputs = make_inputs(seed=22)
    g = gradients(inputs)
    chosen = np.array([1, 2, 6, 9, 14, 20])
    for nnls in (True, False):
        weights = gradmatch_weights(inputs.probe, chosen, lam=0.5, nnls=nnls)
        for c in (0, 1):
            mine = np.flatnonzero(inputs.labels[chosen] == c)
            a, b = g[chosen[mine]].T, g[inputs.labels == c].sum(axis=0)
            design = np.vstack([a, math.sqrt(0.5) * np.eye(len(mine))])
            target = np.concatenate([b, np.zeros(len(mine))])
            ref = scipy_nnls(design, target)[0] if nnls else np.linalg.lstsq(design, target)[0]
            np.testing.assert_allclose(weights[mine], ref, rtol=1e-6, atol=1e-8)
        assert (weights >= 0).all() or not nnls


def glister_reference(inputs: ScoreInputs, rows: np.ndarray, eta: float, update: bool):
    """GLISTER greedy with an explicit head: validation gradient recomputed at theta_S."""
    probe = inputs.probe
    h = np.concatenate([probe.features[rows].astype(np.float64), np.ones((len(rows), 1))], axis=1)
    theta = np.concatenate([probe.last_weight, probe.last_bias[:, None]], axis=1).astype(np.float64)
    onehot = np.eye(theta.shape[0])[inputs.labels[rows]]

    def grads(params):
        z = h @ params.T
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return [np.outer(p[i] - onehot[i], h[i]) for i in range(len(rows))]

    train = grads(theta)  # training gradients stay at theta
    current = theta.copy()
    chosen: list[int] = []
    for _ in range(len(rows)):
        val = np.mean(grads(current if update else theta), axis=0)
        candidates = [e for e in range(len(rows)) if e not in chosen]
        chosen.append(pick(candidates, [eta * np.sum(val * train[e]) for e in candidates]))
        current = current - eta * train[chosen[-1]]
    return rows[np.array(chosen)]


@pytest.mark.parametrize("per_class", [True, False])
def test_glister_matches_reference(per_class):
    inputs = make_inputs(seed=24, sizes=(12, 10))
    got = orders(run("glister", inputs, per_class=per_class, eta=2.0), inputs, per_class)
    for rows, order in zip(groups_of(inputs, per_class), got.values(), strict=True):
        assert np.array_equal(order, glister_reference(inputs, rows, 2.0, update=True))


def test_glister_recomputes_the_validation_gradient_after_each_pick():
    """Eight samples along e1, four along e2, one class, a head that knows nothing (p = 1/2).
    The static ranking by the initial gains (DeepCore's) takes the whole e1 cluster first; after a
    few e1 picks the updated head fits e1, the validation gradient is left to the e2 cluster, and
    GLISTER-ONLINE turns to it. Equals the reference that recomputes grad L_V at theta_S."""
    rng = np.random.default_rng(0)
    feats = np.concatenate(
        [[1.0, 0.0] + 0.05 * rng.random((8, 2)), [0.0, 1.0] + 0.05 * rng.random((4, 2))]
    )
    labels = np.zeros(12, dtype=np.int64)
    index = np.arange(12, dtype=np.int64)
    probe = ProbeData(
        index,
        labels,
        feats.astype(np.float32),
        np.zeros((12, 2), np.float32),
        np.zeros((2, 2), np.float32),
        np.zeros(2, np.float32),
    )
    inputs = ScoreInputs(index, labels, probe=probe)
    order = orders(run("glister", inputs, eta=1.0), inputs, True)[0]
    static = glister_reference(inputs, index, 1.0, update=False)
    assert set(static[:8]) == set(range(8))  # static: all of cluster e1 first
    assert set(order[:8]) & set(range(8, 12))  # online: cluster e2 before e1 is exhausted
    assert order[0] == static[0]  # the first pick sees the same (initial) gains
    assert np.array_equal(order, glister_reference(inputs, index, 1.0, update=True))


def test_glister_rejects_a_head_that_does_not_produce_the_logits():
    inputs = make_inputs(seed=24)
    probe = inputs.probe
    broken = ProbeData(
        probe.index,
        probe.labels,
        probe.features,
        probe.logits + 5.0,
        probe.last_weight,
        probe.last_bias,
    )
    with pytest.raises(InputError, match="logits"):
        run("glister", ScoreInputs(inputs.index, inputs.labels, probe=broken))


# ------------------------------------------------------------------------------------------------
# bad parameters and inputs


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("graph_cut", {"lam": -0.1}, "lam"),
        ("gradmatch", {"lam": -1.0}, "lam"),
        ("gradmatch", {"lam": float("nan")}, "lam"),
        ("gradmatch", {"nnls": "yes"}, "nnls"),
        ("gradmatch", {"target": "median"}, "target"),
        ("log_det", {"eps": 0.0}, "eps"),
        ("log_det", {"eps": -1.0}, "eps"),
        ("glister", {"eta": 0.0}, "eta"),
        ("glister", {"validation": "test"}, "validation"),
        ("kcenter", {"init": "farthest"}, "init"),
        ("contextual_diversity", {"same_prediction_only": 1}, "same_prediction_only"),
        ("herding", {"budget": 0.0}, "budget"),
        ("facility_location", {"budget": 1.5}, "budget"),
        ("craig", {"per_class": "yes"}, "per_class"),
        ("herding", {"bandwidth": 1.0}, "bandwidth"),
    ],
)
def test_bad_parameters_raise_input_error_naming_the_key(name, params, key):
    with pytest.raises(InputError, match=key):
        run(name, make_inputs(), **params)


@pytest.mark.parametrize("name", METHODS)
def test_missing_or_misaligned_probe_is_an_input_error(name):
    inputs = make_inputs()
    with pytest.raises(InputError, match="probe"):
        run(name, ScoreInputs(inputs.index, inputs.labels))
    with pytest.raises(InputError, match="probe"):
        run(name, ScoreInputs(inputs.index + 1, inputs.labels, probe=inputs.probe))
    with pytest.raises(InputError, match="seed"):
        run(name, inputs, seed=-1)


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("kcenter", "distance"),
        ("facility_location", "gain"),
        ("log_det", "gain"),
        ("craig", "gain"),
    ],
)
def test_greedy_criteria_never_increase_along_the_order(name, column):
    """k-center radii and submodular marginal gains are non-increasing in pick order."""
    inputs = make_inputs(seed=25, sizes=(20, 16))
    result = run(name, inputs)
    values = result[column].to_numpy()
    for order in orders(result, inputs, True).values():
        seq = values[order][1:] if name == "kcenter" else values[order]
        assert (np.diff(seq) <= 1e-12 * np.abs(seq).max()).all(), name


def test_labels_outside_the_heads_classes_are_an_input_error():
    inputs = make_inputs()
    probe = inputs.probe
    labels = probe.labels.copy()
    labels[0] = probe.logits.shape[1]
    bad = ProbeData(
        probe.index, labels, probe.features, probe.logits, probe.last_weight, probe.last_bias
    )
    with pytest.raises(InputError, match="labels"):
        run("craig", ScoreInputs(inputs.index, labels, probe=bad))
