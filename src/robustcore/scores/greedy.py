"""Greedy set methods written as pick orders (score = position in the greedy sequence, 0 = first).

Every method here is a greedy algorithm that builds a set one sample at a time; its *order* is the
sequence of picks, so the first ``m`` samples of the order are exactly the ``m``-step greedy set
(nested prefixes). Orders are computed per class by default (``per_class=True``: the class's ``n_c``
samples get positions ``0..n_c-1``; :func:`robustcore.select.select` with class quotas then takes
the first ``q_c`` of each class, which is the greedy run for ``q_c`` steps). With
``per_class=False`` one sequence runs over all samples. Ties in a greedy step (criteria within 1e-10
of the largest magnitude among the candidates, so that rounding cannot decide a mathematical tie
such as two mutually nearest points in facility location) go to the lower sample index. Every method
registers with ``kind="order"`` and ``natural="low"`` (keep the first picks).

This module holds what the methods share: parameter checks, the per-group driver (:func:`run`),
pairwise rows computed dense or on demand (:class:`Rows`), the k-center and facility-location
greedy kernels and an incremental Cholesky factor. Each method is its own module of
``robustcore.scores``: ``herding``, ``kcenter``, ``contextual_diversity``, ``craig`` (with
``craig_weights``), ``gradmatch`` (with ``gradmatch_weights``), ``glister``, ``facility_location``,
``graph_cut`` and ``log_det``; its module docstring gives its definition as implemented.

``budget`` (all methods; default None = the full order): run the greedy for only ``ceil(budget *
n)`` steps per group (``n`` = the class size, or N with ``per_class=False``), which is enough for
any coreset fraction ``<= budget``; the remaining samples follow in decreasing order of the method's
*current* selection criterion at the stop (its marginal gain, distance or correlation, as the next
greedy step would see it), ties to the lower index. That tail is a one-shot ranking, not the greedy
continuation.

``facility_location``, ``graph_cut``, ``log_det`` (submodular functions as in submodlib), on the
penultimate features with ``sim(i, j) = (1 + cos(x_i, x_j)) / 2`` in [0, 1] (DeepCore's ``cossim``,
though DeepCore applies it to gradient embeddings): non-negative (facility location and graph cut
need it), a PSD kernel (log-det needs it), with ``sim(i, i) = 1``, no bandwidth to tune (an RBF
would need one) and scale-free in the features.

Pairwise matrices are per group (n_c x n_c with per_class=True, never N x N); a group of at most
``DENSE_LIMIT`` samples has its matrix precomputed (float64), a larger one computes rows on demand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from robustcore.io import InputError
from robustcore.probe import ProbeData
from robustcore.scores.base import ScoreInputs, frame, per_class_rows

DENSE_LIMIT = 8192  # groups up to this size keep their pairwise matrix (<= 512 MiB float64)
CHUNK_ELEMENTS = 1 << 22  # entries per block when a pairwise matrix is built or scanned
_ZERO_FLOOR = 1e-12  # relative rounding floor of squared distances from a Gram expansion
_TIE = 1e-10  # criteria this close (relative to the largest magnitude) count as tied

Solver = Callable[[np.ndarray, "int | None"], "tuple[np.ndarray, dict[str, np.ndarray]]"]


# ------------------------------------------------------------------------------------------------
# checks and shared plumbing


def number(name: str, key: str, value: object, *, minimum: float, strict: bool) -> float:
    """A finite real parameter above (or at) a minimum, else InputError naming the key."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)):
        if float(value) > minimum or (not strict and float(value) == minimum):
            return float(value)
    relation = ">" if strict else ">="
    raise InputError(
        f"score method {name!r}: {key} must be a number {relation} {minimum}, got {value!r}"
    )


def flag(name: str, key: str, value: object) -> bool:
    """A boolean parameter, else InputError naming the key."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"score method {name!r}: {key} must be True or False, got {value!r}")
    return bool(value)


def choice(name: str, key: str, value: object, allowed: tuple[str, ...]) -> str:
    """A string parameter from a fixed set, else InputError naming the key."""
    if value not in allowed:
        raise InputError(
            f"score method {name!r}: {key} must be one of {list(allowed)}, got {value!r}"
        )
    return str(value)


def common(
    name: str, seed: object, per_class: object, budget: object
) -> tuple[int, bool, float | None]:
    """Check the parameters every set method takes."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"score method {name!r}: seed must be an integer >= 0, got {seed!r}")
    per_class = flag(name, "per_class", per_class)
    if budget is not None:
        budget = number(name, "budget", budget, minimum=0.0, strict=True)
        if budget > 1.0:
            raise InputError(
                f"score method {name!r}: budget must be None or in (0, 1], got {budget!r}"
            )
    return int(seed), per_class, budget


def labelled_probe(name: str, inputs: ScoreInputs) -> ProbeData:
    """The probe, checked to describe exactly the samples being scored."""
    probe = inputs.probe
    if probe is None:
        raise InputError(f"score method {name!r} needs the probe (features, logits, head)")
    if probe.index.shape != inputs.index.shape or not np.array_equal(probe.index, inputs.index):
        raise InputError(f"score method {name!r}: the probe's index does not match the samples")
    if not np.array_equal(probe.labels, inputs.labels):
        raise InputError(f"score method {name!r}: the probe's labels do not match the samples")
    classes = probe.logits.shape[1]
    if len(probe.labels) and (probe.labels.min() < 0 or probe.labels.max() >= classes):
        raise InputError(
            f"score method {name!r}: labels must be class indices in [0, {classes}) "
            f"(the probe has {classes} logits)"
        )
    return probe


def steps(n: int, budget: float | None) -> int:
    """Greedy steps for a group of n: all, or ceil(budget * n) (at least 1)."""
    if budget is None:
        return n
    return min(n, max(1, math.ceil(round(budget * n, 9))))


def rng(seed: int, label: int | None) -> np.random.Generator:
    """A generator per (seed, group), independent of the other groups."""
    key = [seed, 0] if label is None else [seed, 1, int(label) % (1 << 63)]
    return np.random.default_rng(np.random.SeedSequence(key))


def best(values: np.ndarray, avail: np.ndarray) -> int:
    """The largest available value; values within _TIE (relative) of it tie: lowest index wins."""
    masked = np.where(avail, values, -np.inf)
    top = float(masked.max())
    if not math.isfinite(top):
        return int(np.argmax(masked))
    scale = float(np.abs(values[avail]).max())
    return int(np.flatnonzero(masked >= top - _TIE * scale)[0])


def complete(prefix: list[int], key: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """The greedy picks, then the unpicked samples by decreasing key (ties: lower index)."""
    rest = np.flatnonzero(~picked)
    rest = rest[np.lexsort((rest, -key[rest]))]
    return np.concatenate([np.asarray(prefix, dtype=np.int64), rest])


def _groups(labels: np.ndarray, per_class: bool) -> list[tuple[int | None, np.ndarray]]:
    """Row positions of each group: the classes, or everything as one group."""
    if per_class:
        return list(per_class_rows(labels).items())
    return [(None, np.arange(len(labels)))]


def run(inputs: ScoreInputs, per_class: bool, solve: Solver) -> pd.DataFrame:
    """Solve each group, write positions as the score and per-sample columns."""
    n = len(inputs.index)
    score = np.empty(n, dtype=np.float64)
    columns: dict[str, np.ndarray] = {}
    for label, rows in _groups(inputs.labels, per_class):
        order, values = solve(rows, label)
        score[rows[order]] = np.arange(len(rows), dtype=np.float64)
        for key, value in values.items():
            columns.setdefault(key, np.full(n, np.nan))[rows] = value
    return frame(inputs, score, **columns)


def _chunks(n: int) -> Iterator[np.ndarray]:
    """Consecutive row blocks of an n-column matrix, CHUNK_ELEMENTS entries each."""
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n, step):
        yield np.arange(start, min(n, start + step))


class Rows:
    """Rows of a symmetric n x n matrix: precomputed if n <= DENSE_LIMIT, else on demand."""

    def __init__(self, func: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        """Wrap `func(rows) -> (len(rows), n)`; precompute it when the group is small."""
        self.func, self.n = func, n
        self.dense: np.ndarray | None = None
        if n <= DENSE_LIMIT:
            dense = np.empty((n, n), dtype=np.float64)
            for idx in _chunks(n):
                dense[idx] = func(idx)
            self.dense = dense

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """Rows idx (a new array)."""
        return self.dense[idx] if self.dense is not None else self.func(idx)

    def row(self, j: int) -> np.ndarray:
        """Row j (read-only use)."""
        return self.dense[j] if self.dense is not None else self.func(np.array([j]))[0]

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All rows, block by block."""
        for idx in _chunks(self.n):
            yield idx, self(idx)


def features(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """Penultimate features of the rows, float64."""
    return probe.features[rows].astype(np.float64)


def augmented(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """[h, 1]: the head's input with the bias coordinate, float64."""
    h = features(probe, rows)
    return np.concatenate([h, np.ones((len(rows), 1))], axis=1)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row log-softmax, float64."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def residual(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """p - onehot(y) of the rows (probe.residual for a group, without an N x C softmax)."""
    residual = np.exp(log_softmax(probe.logits[rows].astype(np.float64)))
    residual[np.arange(len(rows)), probe.labels[rows]] -= 1.0
    return residual


def cosine_rows(x: np.ndarray) -> Rows:
    """sim(i, j) = (1 + cos(x_i, x_j)) / 2 in [0, 1] (zero vectors: cos = 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    def func(idx: np.ndarray) -> np.ndarray:
        sim = (1.0 + unit[idx] @ unit.T) * 0.5
        return np.clip(sim, 0.0, 1.0, out=sim)

    return Rows(func, len(x))


def distance_rows(inner: Callable[[np.ndarray], np.ndarray], sq: np.ndarray) -> Rows:
    """Euclidean distances from a Gram matrix's rows and the squared norms."""

    def func(idx: np.ndarray) -> np.ndarray:
        total = sq[idx, None] + sq[None, :]
        d2 = total - 2.0 * inner(idx)
        d2[d2 <= _ZERO_FLOOR * total] = 0.0
        return np.sqrt(d2, out=d2)

    return Rows(func, len(sq))


def row_sums(rows: Rows) -> np.ndarray:
    """Sum of each row."""
    out = np.empty(rows.n)
    for idx, block in rows.blocks():
        out[idx] = block.sum(axis=1)
    return out


def diagonal(rows: Rows) -> np.ndarray:
    """The matrix diagonal."""
    if rows.dense is not None:
        return rows.dense.diagonal().copy()
    out = np.empty(rows.n)
    for idx, block in rows.blocks():
        out[idx] = block[np.arange(len(idx)), idx]
    return out


# ------------------------------------------------------------------------------------------------
# greedy kernels (one group each; positions are local to the group)


def k_center(row: Callable[[int], np.ndarray], n: int, first: int, k: int):
    """k-center greedy from `first`: repeatedly the point farthest from its nearest center."""
    nearest = np.full(n, np.inf)
    picked = np.zeros(n, dtype=bool)
    distance = np.full(n, np.nan)
    order: list[int] = []
    j = first
    for t in range(k):
        if t:
            j = best(nearest, ~picked)
            distance[j] = nearest[j]
        picked[j] = True
        order.append(j)
        np.minimum(nearest, row(j), out=nearest)
    return complete(order, nearest, picked), {"distance": distance}


def lazy_facility_location(sim: Callable[[np.ndarray], np.ndarray], n: int, k: int):
    """Exact lazy greedy for F(S) = sum_i max_{j in S} sim(i, j), sim >= 0, batched re-evals."""
    cur = np.zeros(n)

    def gains(idx: np.ndarray) -> np.ndarray:
        return np.maximum(sim(idx) - cur, 0.0).sum(axis=1)

    bound = np.empty(n)
    for idx in _chunks(n):
        bound[idx] = gains(idx)
    fresh = np.ones(n, dtype=bool)
    picked = np.zeros(n, dtype=bool)
    gain = np.full(n, np.nan)
    weight = np.full(n, np.nan)
    order: list[int] = []
    for _ in range(k):
        avail = ~picked
        ready = avail & fresh
        best = bound[ready].max() if ready.any() else -np.inf
        batch = 16
        while True:  # re-evaluate stale bounds until none can reach the best fresh gain
            stale = np.flatnonzero(avail & ~fresh & (bound >= best - _TIE * abs(best)))
            if stale.size == 0:
                break
            if stale.size > batch:
                stale = stale[np.argpartition(-bound[stale], batch - 1)[:batch]]
            fresh_gains = gains(stale)
            bound[stale] = fresh_gains
            fresh[stale] = True
            best = max(best, float(fresh_gains.max()))
            batch *= 2
        j = int(np.flatnonzero(avail & fresh & (bound >= best - _TIE * abs(best)))[0])
        row = sim(np.array([j]))[0]
        weight[j] = np.count_nonzero(row > cur)
        gain[j] = best
        np.maximum(cur, row, out=cur)
        picked[j] = True
        order.append(j)
        fresh[:] = False
    rest = np.flatnonzero(~picked)
    for block in _chunks(rest.size):
        bound[rest[block]] = gains(rest[block])
    gain_or_bound = np.where(picked, gain, bound)
    return complete(order, bound, picked), gain, weight, gain_or_bound


class Cholesky:
    """Incremental Cholesky of (K + reg I)_SS as S grows; U[t] = row t of L^-1 (K + reg I)[S, :]."""

    def __init__(self, row: Callable[[int], np.ndarray], diag: np.ndarray, reg: float, k: int):
        """Start from S empty; `resid[e]` = Schur complement K_ee + reg - |U[:, e]|^2."""
        self.row, self.reg = row, reg
        self.U = np.empty((k, len(diag)))
        self.t = 0
        self.resid = diag + reg
        self.floor = 1e-12 * float(np.max(np.abs(diag)) + abs(reg)) + 1e-300

    def add(self, j: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Append j to S; return its new U row, the pivot and L^-1 (K + reg I)[S_old, j]."""
        t = self.t
        coupling = self.U[:t, j].copy()
        pivot = math.sqrt(max(float(self.resid[j]), self.floor))
        row = np.array(self.row(j), dtype=np.float64)
        row[j] += self.reg
        if t:
            row -= coupling @ self.U[:t]
        row /= pivot
        self.U[t] = row
        self.t += 1
        self.resid -= row * row
        return row, pivot, coupling


__all__ = [
    "CHUNK_ELEMENTS",
    "DENSE_LIMIT",
    "Cholesky",
    "Rows",
    "Solver",
    "augmented",
    "best",
    "choice",
    "common",
    "complete",
    "cosine_rows",
    "diagonal",
    "distance_rows",
    "features",
    "flag",
    "k_center",
    "labelled_probe",
    "lazy_facility_location",
    "log_softmax",
    "number",
    "residual",
    "row_sums",
    "rng",
    "run",
    "steps",
]
