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

``budget`` (all methods; default None = the full order): run the greedy for only ``ceil(budget *
n)`` steps per group (``n`` = the class size, or N with ``per_class=False``), which is enough for
any coreset fraction ``<= budget``; the remaining samples follow in decreasing order of the method's
*current* selection criterion at the stop (its marginal gain, distance or correlation, as the next
greedy step would see it), ties to the lower index. That tail is a one-shot ranking, not the greedy
continuation.

Methods (definition, as implemented)
------------------------------------
``herding`` (Welling 2009; Chen, Welling & Smola 2010; the iCaRL form used for coresets), on the
penultimate features ``x``: pick ``argmin_x || mu - (s + x) / (t + 1) ||`` where ``mu`` is the group
mean and ``s`` the sum of the ``t`` picked points, i.e. the point that brings the running mean of
the picked set closest to the mean. DeepCore takes the *argmax* of this distance (pushes the mean
away: a bug). With a linear kernel and equal norms this is Chen et al.'s kernel herding
``argmax <w_t, x>``; in general the two differ by the ``||x||^2`` term. Column ``mean_distance``:
``||mu - mean(S)||`` right after the pick.

``kcenter`` (Sener & Savarese 2018, k-Center-Greedy), Euclidean distance on penultimate features:
repeatedly pick the point farthest from its nearest picked center. The paper starts from the
already-labelled pool; a coreset has none, so the first center is a seeded uniformly random sample
(``init="random"``, as DeepCore and the CDAL code do) or the point closest to the mean
(``init="mean"``). Column ``distance``: distance to the nearest earlier center at the pick (NaN for
the first). Squared distances below the float64 rounding floor of the Gram expansion
(``1e-12 * (|x_i|^2 + |x_j|^2)``) count as 0, so exact duplicates tie at 0.

``contextual_diversity`` (Agarwal et al. 2020, CDAL core-set variant): k-center greedy with the
paper's contextual-diversity distance. For an image the paper keeps, per predicted class ``c``, the
entropy-weighted mean softmax ``P^c`` of the regions predicted ``c`` and defines
``d(I1, I2) = sum_c m^c_1 m^c_2 * [0.5 KL(P^c_1 || P^c_2) + 0.5 KL(P^c_2 || P^c_1)]``
(``m^c`` = class ``c`` is predicted in the image). An image classifier gives one region per image,
so ``P^c = p`` (the entropy weight normalises away) and the distance is the symmetric KL
``0.5 KL(p || q) + 0.5 KL(q || p) = 0.5 * sum_k (p_k - q_k)(log p_k - log q_k)`` between the two
predictive distributions, which is also DeepCore's metric (default). The indicator product would
set the distance of two samples with different predicted classes to 0; ``same_prediction_only=True``
applies it literally (then misclassified samples count as covered by any center of another
predicted class and come last; with ``per_class=False`` the order degenerates to one predicted
class at a time). Computed from log-softmax, so saturated softmax entries cannot give NaN (DeepCore
takes ``log(p / q)`` of float32 probabilities). Initial center as for kcenter. Column ``distance``.

``craig`` (Mirzasoleiman, Bilmes & Leskovec 2020): facility location ``F(S) = sum_i max_{j in S} (C
- ||g_i - g_j||)`` over the last-layer gradient embeddings ``g = (p - y) (x) [h, 1]``
(probe.grad_embedding; distances from the factorised inner product ``<g_i, g_j> = <r_i, r_j> <h~_i,
h~_j>``, never materialising ``g``). ``C`` = the largest distance in the class (the paper's phantom
element at distance ``C`` from every point; with ``per_class=False`` the largest over all classes);
any ``C >= max d`` gives the same order within a class. As in the paper, similarities are per class:
with ``per_class=False`` samples of different classes have similarity 0 (block-diagonal, as
DeepCore), so the global greedy is the merge of the per-class sequences by marginal gain. Columns
``gain`` (marginal gain at the pick) and ``weight_at_pick``: the number of group samples whose
nearest medoid became this sample when it was picked. CRAIG's training weight ``gamma_j`` (how many
samples have ``j`` as their nearest medoid in the final set) depends on the prefix length, so it
cannot be stored once for every prefix; :func:`craig_weights` computes it for an actual coreset.
DeepCore computes its gradients as CE of ``softmax(logits)`` (a double softmax); ours are the true
CE gradients ``p - y``.

``gradmatch`` (Killamsetty et al. 2021, GRAD-MATCH, OMP): orthogonal matching pursuit on the
gradient embeddings towards the group's *total* gradient ``b = sum_i g_i`` (``target="sum"``, as
the paper and CORDS; ``"mean"`` = DeepCore), minimising ``||sum_{j in S} w_j g_j - b||^2 +
lam ||w||^2``. ``nnls=True`` (default, the paper's non-negative variant): pick
``argmax_e <g_e, b - sum_S w_j g_j>`` and refit ``w >= 0`` exactly after each pick (active-set NNLS
on the |S|x|S| Gram system, warm-started); a pick whose fitted weight is 0 stays in the order.
``nnls=False``: standard OMP, ``argmax |<g_e, r>|`` with the unconstrained ridge fit maintained by
an incremental Cholesky factor. ``lam`` default 0.5 (the CORDS GradMatch configs; DeepCore accepts
``lam`` but never passes it on, so it always uses 1). Column ``correlation``: ``<g_e, r>`` at the
pick. Cost per step: O(n |S|) for the correlations plus, for ``nnls=True``, O(|P|^3) for the NNLS
(``P`` = the positive weights); the full order is O(n^3) (exact OMP is O(k n p) with ``p`` the
embedding length; the Gram form replaces ``p`` by ``|S|``). :func:`gradmatch_weights` refits the
weights for an actual coreset.

``glister`` (Killamsetty et al. 2021, GLISTER-ONLINE) on the classifier head ``theta = (W, b)``:
gain(e | S) = ``eta * <grad L_V(theta_S), grad L_e(theta)>`` with
``theta_S = theta - eta * sum_{j in S} grad L_j(theta)`` (the Taylor approximation of the validation
log-likelihood after one step on S). The validation gradient is recomputed after every pick at the
updated head, so the validation probabilities change (DeepCore passes its update hook under a
misspelt keyword, ``upadate_state``, so it is never called and its ranking is static; it also uses
the mean instead of the sum of the selected gradients). ``validation="train"``: the validation set
is the group's own training samples (DeepCore's and CORDS' behaviour without a validation split;
the only option here). ``eta`` default 0.1 (DeepCore's default ``args.lr``, the usual proxy SGD
learning rate). Column ``gain``. Logits are recomputed as ``[h, 1] [W, b]^T`` from the head, which
must agree with the probe's logits.

``facility_location``, ``graph_cut``, ``log_det`` (submodular functions as in submodlib), on the
penultimate features with ``sim(i, j) = (1 + cos(x_i, x_j)) / 2`` in [0, 1] (DeepCore's ``cossim``,
though DeepCore applies it to gradient embeddings): non-negative (facility location and graph cut
need it), a PSD kernel (log-det needs it), with ``sim(i, i) = 1``, no bandwidth to tune (an RBF
would need one) and scale-free in the features.
``facility_location``: ``F(S) = sum_i max_{j in S} sim(i, j)``; exact lazy greedy with the
re-evaluations batched and vectorised (stale bounds are re-evaluated until no stale bound reaches
the best fresh gain, so the result equals the plain greedy including ties).
``graph_cut``: ``F(S) = sum_{i in V, j in S} sim(i, j) - lam * sum_{i, j in S} sim(i, j)`` (ordered
pairs, diagonal included), gain ``colsum_e - lam * (2 sum_{j in S} sim(j, e) + sim(e, e))``.
``lam`` default 1.0: DeepCore's default (DeepCore puts its ``lam`` on the first term, equivalent to
ours ``= 1 / lam_DeepCore``); submodlib notes F is monotone only for ``lam < 0.5``, the greedy order
is defined either way. ``log_det``: ``F(S) = log det(K_S + eps I)``, gain
``log(K_ee + eps - k_eS^T (K_S + eps I)^-1 k_eS)`` maintained for all candidates by an incremental
Cholesky factor (Chen, Zhang & Zhou 2018), O(n |S|) per step; ``eps`` default 1.0 (submodlib's
``lambdaVal`` examples). DeepCore's LogDeterminant gain returns ``k_eS^T K_S^+ k_eS`` (the explained
part, without ``K_ee -`` and the log) and maximises it, so it picks the most redundant point. Column
``gain``.

Pairwise matrices are per group (n_c x n_c with per_class=True, never N x N); a group of at most
``DENSE_LIMIT`` samples has its matrix precomputed (float64), a larger one computes rows on demand.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular

from robustcore.io import InputError
from robustcore.probe import ProbeData
from robustcore.scores.base import ScoreInputs, frame, per_class_rows, register

DENSE_LIMIT = 8192  # groups up to this size keep their pairwise matrix (<= 512 MiB float64)
CHUNK_ELEMENTS = 1 << 22  # entries per block when a pairwise matrix is built or scanned
_ZERO_FLOOR = 1e-12  # relative rounding floor of squared distances from a Gram expansion
_TIE = 1e-10  # criteria this close (relative to the largest magnitude) count as tied

Solver = Callable[[np.ndarray, "int | None"], "tuple[np.ndarray, dict[str, np.ndarray]]"]


# ------------------------------------------------------------------------------------------------
# checks and shared plumbing


def _number(name: str, key: str, value: object, *, minimum: float, strict: bool) -> float:
    """A finite real parameter above (or at) a minimum, else InputError naming the key."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)):
        if float(value) > minimum or (not strict and float(value) == minimum):
            return float(value)
    relation = ">" if strict else ">="
    raise InputError(
        f"score method {name!r}: {key} must be a number {relation} {minimum}, got {value!r}"
    )


def _flag(name: str, key: str, value: object) -> bool:
    """A boolean parameter, else InputError naming the key."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"score method {name!r}: {key} must be True or False, got {value!r}")
    return bool(value)


def _choice(name: str, key: str, value: object, allowed: tuple[str, ...]) -> str:
    """A string parameter from a fixed set, else InputError naming the key."""
    if value not in allowed:
        raise InputError(
            f"score method {name!r}: {key} must be one of {list(allowed)}, got {value!r}"
        )
    return str(value)


def _common(
    name: str, seed: object, per_class: object, budget: object
) -> tuple[int, bool, float | None]:
    """Check the parameters every set method takes."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"score method {name!r}: seed must be an integer >= 0, got {seed!r}")
    per_class = _flag(name, "per_class", per_class)
    if budget is not None:
        budget = _number(name, "budget", budget, minimum=0.0, strict=True)
        if budget > 1.0:
            raise InputError(
                f"score method {name!r}: budget must be None or in (0, 1], got {budget!r}"
            )
    return int(seed), per_class, budget


def _probe(name: str, inputs: ScoreInputs) -> ProbeData:
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


def _steps(n: int, budget: float | None) -> int:
    """Greedy steps for a group of n: all, or ceil(budget * n) (at least 1)."""
    if budget is None:
        return n
    return min(n, max(1, math.ceil(round(budget * n, 9))))


def _rng(seed: int, label: int | None) -> np.random.Generator:
    """A generator per (seed, group), independent of the other groups."""
    key = [seed, 0] if label is None else [seed, 1, int(label) % (1 << 63)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _best(values: np.ndarray, avail: np.ndarray) -> int:
    """The largest available value; values within _TIE (relative) of it tie: lowest index wins."""
    masked = np.where(avail, values, -np.inf)
    top = float(masked.max())
    if not math.isfinite(top):
        return int(np.argmax(masked))
    scale = float(np.abs(values[avail]).max())
    return int(np.flatnonzero(masked >= top - _TIE * scale)[0])


def _complete(prefix: list[int], key: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """The greedy picks, then the unpicked samples by decreasing key (ties: lower index)."""
    rest = np.flatnonzero(~picked)
    rest = rest[np.lexsort((rest, -key[rest]))]
    return np.concatenate([np.asarray(prefix, dtype=np.int64), rest])


def _groups(labels: np.ndarray, per_class: bool) -> list[tuple[int | None, np.ndarray]]:
    """Row positions of each group: the classes, or everything as one group."""
    if per_class:
        return list(per_class_rows(labels).items())
    return [(None, np.arange(len(labels)))]


def _run(inputs: ScoreInputs, per_class: bool, solve: Solver) -> pd.DataFrame:
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


class _Rows:
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


def _features(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """Penultimate features of the rows, float64."""
    return probe.features[rows].astype(np.float64)


def _augmented(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """[h, 1]: the head's input with the bias coordinate, float64."""
    h = _features(probe, rows)
    return np.concatenate([h, np.ones((len(rows), 1))], axis=1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row log-softmax, float64."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _residual(probe: ProbeData, rows: np.ndarray) -> np.ndarray:
    """p - onehot(y) of the rows (probe.residual for a group, without an N x C softmax)."""
    residual = np.exp(_log_softmax(probe.logits[rows].astype(np.float64)))
    residual[np.arange(len(rows)), probe.labels[rows]] -= 1.0
    return residual


def _cosine_rows(x: np.ndarray) -> _Rows:
    """sim(i, j) = (1 + cos(x_i, x_j)) / 2 in [0, 1] (zero vectors: cos = 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    def func(idx: np.ndarray) -> np.ndarray:
        sim = (1.0 + unit[idx] @ unit.T) * 0.5
        return np.clip(sim, 0.0, 1.0, out=sim)

    return _Rows(func, len(x))


def _distance_rows(inner: Callable[[np.ndarray], np.ndarray], sq: np.ndarray) -> _Rows:
    """Euclidean distances from a Gram matrix's rows and the squared norms."""

    def func(idx: np.ndarray) -> np.ndarray:
        total = sq[idx, None] + sq[None, :]
        d2 = total - 2.0 * inner(idx)
        d2[d2 <= _ZERO_FLOOR * total] = 0.0
        return np.sqrt(d2, out=d2)

    return _Rows(func, len(sq))


def _row_sums(rows: _Rows) -> np.ndarray:
    """Sum of each row."""
    out = np.empty(rows.n)
    for idx, block in rows.blocks():
        out[idx] = block.sum(axis=1)
    return out


def _diagonal(rows: _Rows) -> np.ndarray:
    """The matrix diagonal."""
    if rows.dense is not None:
        return rows.dense.diagonal().copy()
    out = np.empty(rows.n)
    for idx, block in rows.blocks():
        out[idx] = block[np.arange(len(idx)), idx]
    return out


# ------------------------------------------------------------------------------------------------
# greedy kernels (one group each; positions are local to the group)


def _k_center(row: Callable[[int], np.ndarray], n: int, first: int, k: int):
    """k-center greedy from `first`: repeatedly the point farthest from its nearest center."""
    nearest = np.full(n, np.inf)
    picked = np.zeros(n, dtype=bool)
    distance = np.full(n, np.nan)
    order: list[int] = []
    j = first
    for t in range(k):
        if t:
            j = _best(nearest, ~picked)
            distance[j] = nearest[j]
        picked[j] = True
        order.append(j)
        np.minimum(nearest, row(j), out=nearest)
    return _complete(order, nearest, picked), {"distance": distance}


def _facility_location(sim: Callable[[np.ndarray], np.ndarray], n: int, k: int):
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
    return _complete(order, bound, picked), gain, weight, gain_or_bound


class _Cholesky:
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


class _GrowingNNLS:
    """min 1/2 w'Mw - c'w s.t. w >= 0 over a growing set of variables (M SPD).

    Lawson-Hanson active set, warm-started from the previous solution (a new variable enters at 0),
    with the Cholesky factor of M[P, P] (P = the positive variables) extended in O(|P|^2) when a
    variable enters and rebuilt only when one leaves.
    """

    def __init__(self, k: int) -> None:
        """Room for k variables."""
        self.m = np.empty((k, k))
        self.c = np.empty(k)
        self.w = np.zeros(k)
        self.chol = np.zeros((k, k))  # lower factor of m[P, P], rows in `passive` order
        self.y = np.zeros(k)  # chol^-1 c[P]
        self.passive: list[int] = []
        self.t = 0

    def add(self, m_row: np.ndarray, c_new: float, grad_new: float) -> np.ndarray:
        """Add a variable (its row of M over the variables so far and itself) and re-solve."""
        t = self.t
        self.m[t, : t + 1] = m_row
        self.m[: t + 1, t] = m_row
        self.c[t] = c_new
        self.t += 1
        tol = 1e-12 * max(float(np.abs(self.c[: self.t]).max()), 1e-300)
        enter = t if grad_new > tol else None  # the others stay optimal: only t can enter first
        while enter is not None:
            self._extend(enter)
            self._solve_passive(tol)
            zero = np.setdiff1d(np.arange(self.t), self.passive, assume_unique=True)
            enter = None
            if zero.size:
                grad = self.c[zero] - self.m[np.ix_(zero, self.passive)] @ self.w[self.passive]
                best = int(np.argmax(grad))
                if grad[best] > tol:
                    enter = int(zero[best])
        return self.w[: self.t]

    def _extend(self, j: int) -> None:
        """Append variable j to P and its row to the Cholesky factor."""
        p = len(self.passive)
        if p:
            coupling = solve_triangular(
                self.chol[:p, :p], self.m[self.passive, j], lower=True, check_finite=False
            )
            self.chol[p, :p] = coupling
            pivot = math.sqrt(max(self.m[j, j] - coupling @ coupling, 1e-300))
            self.y[p] = (self.c[j] - coupling @ self.y[:p]) / pivot
        else:
            pivot = math.sqrt(max(self.m[j, j], 1e-300))
            self.y[p] = self.c[j] / pivot
        self.chol[p, p] = pivot
        self.passive.append(j)

    def _rebuild(self) -> None:
        """Refactor M[P, P] after variables left P."""
        p = len(self.passive)
        if p:
            lower = np.linalg.cholesky(self.m[np.ix_(self.passive, self.passive)])
            self.chol[:p, :p] = lower
            self.y[:p] = solve_triangular(
                lower, self.c[self.passive], lower=True, check_finite=False
            )

    def _solve_passive(self, tol: float) -> None:
        """Inner loop: least squares on P, stepping back while a coefficient is not positive."""
        while self.passive:
            p = len(self.passive)
            z = solve_triangular(
                self.chol[:p, :p], self.y[:p], trans="T", lower=True, check_finite=False
            )
            if (z > 0).all():
                self.w[self.passive] = z
                return
            cur = self.w[self.passive]
            neg = z <= 0
            alpha = float(np.min(cur[neg] / (cur[neg] - z[neg])))
            cur = cur + alpha * (z - cur)
            keep = (cur > tol) & ~(neg & (cur <= tol))
            self.w[self.passive] = np.where(keep, cur, 0.0)
            self.passive = [v for v, kept in zip(self.passive, keep, strict=True) if kept]
            self._rebuild()


def _nnls_gram(m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """min 1/2 w'Mw - c'w s.t. w >= 0 for a fixed SPD M (variables added one by one)."""
    solver = _GrowingNNLS(len(c))
    w = np.zeros(0)
    for t in range(len(c)):
        grad = c[t] - m[t, :t] @ w
        w = solver.add(m[t, : t + 1], c[t], grad).copy()
    return w


# ------------------------------------------------------------------------------------------------
# the methods


@register("herding", natural="low", needs=("probe",), kind="order", per_class=True, budget=None)
def herding(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None
) -> pd.DataFrame:
    """Herding: each pick brings the running mean of the picked features closest to the mean."""
    seed, per_class, budget = _common("herding", seed, per_class, budget)
    probe = _probe("herding", inputs)

    def solve(rows: np.ndarray, label: int | None):
        x = _features(probe, rows)
        n = len(rows)
        gram = _Rows(lambda idx: x[idx] @ x.T, n)
        mu = x.mean(axis=0)
        m = x @ mu  # <mu, x_i>
        sq = np.einsum("ij,ij->i", x, x)
        mu_sq = float(mu @ mu)
        acc = np.zeros(n)  # <s, x_i>, s = sum of the picked points
        s_mu = s_sq = 0.0  # <s, mu>, |s|^2
        picked = np.zeros(n, dtype=bool)
        mean_distance = np.full(n, np.nan)
        order: list[int] = []
        k = _steps(n, budget)
        for t in range(k):
            # |(t+1) mu - s - x_i|^2 up to a constant of the step
            crit = sq - 2.0 * ((t + 1) * m - acc)
            j = _best(-crit, ~picked)
            s_sq += 2.0 * acc[j] + sq[j]
            s_mu += m[j]
            size = t + 1
            d2 = size * size * mu_sq - 2.0 * size * s_mu + s_sq
            mean_distance[j] = math.sqrt(max(d2, 0.0)) / size
            picked[j] = True
            order.append(j)
            acc += gram.row(j)
        key = -(sq - 2.0 * ((k + 1) * m - acc))
        return _complete(order, key, picked), {"mean_distance": mean_distance}

    return _run(inputs, per_class, solve)


@register(
    "kcenter",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    init="random",
)
def kcenter(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, init: str
) -> pd.DataFrame:
    """k-Center-Greedy on penultimate features: the point farthest from its nearest center next."""
    seed, per_class, budget = _common("kcenter", seed, per_class, budget)
    init = _choice("kcenter", "init", init, ("random", "mean"))
    probe = _probe("kcenter", inputs)

    def solve(rows: np.ndarray, label: int | None):
        x = _features(probe, rows)
        n = len(rows)
        sq = np.einsum("ij,ij->i", x, x)
        dist = _distance_rows(lambda idx: x[idx] @ x.T, sq)
        if init == "random":
            first = int(_rng(seed, label).integers(n))
        else:
            mu = x.mean(axis=0)
            first = int(np.argmin(sq - 2.0 * (x @ mu)))
        return _k_center(dist.row, n, first, _steps(n, budget))

    return _run(inputs, per_class, solve)


@register(
    "contextual_diversity",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    init="random",
    same_prediction_only=False,
)
def contextual_diversity(
    inputs: ScoreInputs,
    *,
    seed: int,
    per_class: bool,
    budget: float | None,
    init: str,
    same_prediction_only: bool,
) -> pd.DataFrame:
    """Contextual Diversity: k-center greedy under the symmetric KL of the predictions."""
    name = "contextual_diversity"
    seed, per_class, budget = _common(name, seed, per_class, budget)
    init = _choice(name, "init", init, ("random", "mean"))
    masked = _flag(name, "same_prediction_only", same_prediction_only)
    probe = _probe(name, inputs)

    def solve(rows: np.ndarray, label: int | None):
        log_p = _log_softmax(probe.logits[rows].astype(np.float64))
        p = np.exp(log_p)
        pred = np.argmax(log_p, axis=1)
        n = len(rows)

        def row(j: int) -> np.ndarray:
            d = 0.5 * ((p - p[j]) * (log_p - log_p[j])).sum(axis=1)
            return np.where(pred == pred[j], d, 0.0) if masked else d

        if init == "random":
            first = int(_rng(seed, label).integers(n))
        else:  # the sample closest (in this distance) to the group's mean prediction
            mean = p.mean(axis=0)
            first = int(np.argmin(0.5 * ((p - mean) * (log_p - np.log(mean))).sum(axis=1)))
        return _k_center(row, n, first, _steps(n, budget))

    return _run(inputs, per_class, solve)


def _craig_class(probe: ProbeData, rows: np.ndarray, k: int):
    """CRAIG on one class: facility location on C - |g_i - g_j| of the gradient embeddings."""
    r = _residual(probe, rows)
    h = _augmented(probe, rows)
    sq = (r * r).sum(axis=1) * (h * h).sum(axis=1)
    dist = _distance_rows(lambda idx: (r[idx] @ r.T) * (h[idx] @ h.T), sq)
    top = max(float(block.max()) for _, block in dist.blocks())
    return (*_facility_location(lambda idx: top - dist(idx), len(rows), k), top)


@register("craig", natural="low", needs=("probe",), kind="order", per_class=True, budget=None)
def craig(inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None) -> pd.DataFrame:
    """CRAIG: greedy facility location (medoids) on per-class last-layer gradient distances."""
    seed, per_class, budget = _common("craig", seed, per_class, budget)
    probe = _probe("craig", inputs)
    n = len(inputs.index)
    columns = {"gain": np.full(n, np.nan), "weight_at_pick": np.full(n, np.nan)}
    score = np.empty(n, dtype=np.float64)
    sequences, tops = [], []
    for rows in per_class_rows(inputs.labels).values():
        order, gain, weight, key, top = _craig_class(probe, rows, _steps(len(rows), budget))
        columns["gain"][rows] = gain
        columns["weight_at_pick"][rows] = weight
        score[rows[order]] = np.arange(len(rows), dtype=np.float64)
        sequences.append((rows[order], key[order]))
        tops.append(top)
    if not per_class:
        # Block-diagonal similarity with one phantom distance C = the largest distance of any
        # class: only a class's first gain depends on C (n_c * C - sum_i d_ie), so shift it from
        # the class's own C. The global greedy then interleaves the class sequences by gain (with a
        # budget, a class's samples after its greedy prefix carry their gain at the stop).
        for (members, gains), top in zip(sequences, tops, strict=True):
            gains[0] += len(members) * (max(tops) - top)
            columns["gain"][members[0]] = gains[0]
        heap = [(-float(g[0]), int(m[0]), c, 0) for c, (m, g) in enumerate(sequences)]
        heapq.heapify(heap)
        position = 0
        while heap:
            _, member, c, at = heapq.heappop(heap)
            score[member] = position
            position += 1
            members, gains = sequences[c]
            if at + 1 < len(members):
                heapq.heappush(heap, (-float(gains[at + 1]), int(members[at + 1]), c, at + 1))
    return frame(inputs, score, **columns)


@register(
    "gradmatch",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    lam=0.5,
    nnls=True,
    target="sum",
)
def gradmatch(
    inputs: ScoreInputs,
    *,
    seed: int,
    per_class: bool,
    budget: float | None,
    lam: float,
    nnls: bool,
    target: str,
) -> pd.DataFrame:
    """GradMatch: OMP selection order matching the class's total last-layer gradient."""
    seed, per_class, budget = _common("gradmatch", seed, per_class, budget)
    lam = _number("gradmatch", "lam", lam, minimum=0.0, strict=False)
    nnls = _flag("gradmatch", "nnls", nnls)
    target = _choice("gradmatch", "target", target, ("sum", "mean"))
    probe = _probe("gradmatch", inputs)

    def solve(rows: np.ndarray, label: int | None):
        r = _residual(probe, rows)
        h = _augmented(probe, rows)
        n = len(rows)
        gram = _Rows(lambda idx: (r[idx] @ r.T) * (h[idx] @ h.T), n)
        c = _row_sums(gram)  # <g_e, sum_i g_i>
        if target == "mean":
            c /= n
        k = _steps(n, budget)
        order, correlation = (_omp_nonneg if nnls else _omp_ridge)(gram, c, lam, k)
        return order, {"correlation": correlation}

    return _run(inputs, per_class, solve)


def _omp_ridge(gram: _Rows, c: np.ndarray, lam: float, k: int):
    """Standard OMP (argmax |<g_e, r>|) with the ridge fit kept by an incremental Cholesky."""
    n = gram.n
    chol = _Cholesky(gram.row, _diagonal(gram), lam, k)
    proj = c.copy()  # <g_e, b - A_S w>
    z = np.empty(k)
    picked = np.zeros(n, dtype=bool)
    correlation = np.full(n, np.nan)
    order: list[int] = []
    for t in range(k):
        j = _best(np.abs(proj), ~picked)
        correlation[j] = proj[j]
        u, pivot, coupling = chol.add(j)
        z[t] = (c[j] - coupling @ z[:t]) / pivot
        proj -= z[t] * u
        picked[j] = True
        order.append(j)
    return _complete(order, np.abs(proj), picked), correlation


def _omp_nonneg(gram: _Rows, c: np.ndarray, lam: float, k: int):
    """Non-negative OMP: argmax <g_e, r>, then the exact ridge NNLS refit after every pick."""
    n = gram.n
    picked_rows = np.empty((k, n))  # K[S_t, :]
    solver = _GrowingNNLS(k)
    proj = c.copy()  # <g_e, b - A_S w>
    picked = np.zeros(n, dtype=bool)
    correlation = np.full(n, np.nan)
    order: list[int] = []
    for t in range(k):
        j = _best(proj, ~picked)
        correlation[j] = proj[j]
        picked[j] = True
        order.append(j)
        picked_rows[t] = gram.row(j)
        m_row = picked_rows[t, order]
        m_row[t] += lam
        w = solver.add(m_row, c[j], proj[j])
        active = np.flatnonzero(w > 0)
        proj = c - w[active] @ picked_rows[active] if active.size else c.copy()
    return _complete(order, proj, picked), correlation


@register(
    "glister",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    eta=0.1,
    validation="train",
)
def glister(
    inputs: ScoreInputs,
    *,
    seed: int,
    per_class: bool,
    budget: float | None,
    eta: float,
    validation: str,
) -> pd.DataFrame:
    """GLISTER-ONLINE: greedy validation-likelihood gain, the head updated after every pick."""
    seed, per_class, budget = _common("glister", seed, per_class, budget)
    eta = _number("glister", "eta", eta, minimum=0.0, strict=True)
    _choice("glister", "validation", validation, ("train",))
    probe = _probe("glister", inputs)
    head = np.concatenate(
        [probe.last_weight.astype(np.float64), probe.last_bias.astype(np.float64)[:, None]], axis=1
    )
    if head.shape[1] != probe.features.shape[1] + 1:
        raise InputError("score method 'glister': the head's width does not match the features")

    def solve(rows: np.ndarray, label: int | None):
        h = _augmented(probe, rows)
        n = len(rows)
        z = h @ head.T  # validation logits at theta_S (validation = the group's own samples)
        given = probe.logits[rows].astype(np.float64)
        if not np.allclose(z, given, rtol=1e-3, atol=1e-3 * (1.0 + float(np.abs(given).max()))):
            raise InputError(
                "score method 'glister': probe logits differ from [features, 1] @ [W, b]^T; "
                "the probe's head does not produce its logits"
            )
        onehot = np.zeros_like(z)
        onehot[np.arange(n), inputs.labels[rows]] = 1.0
        r = _softmax(z) - onehot  # training gradients at theta: r_e (x) h_e
        gram = _Rows(lambda idx: h[idx] @ h.T, n)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []

        def gains() -> np.ndarray:
            val_grad = (_softmax(z) - onehot).T @ h / n  # C x (d + 1), at theta_S
            return eta * np.einsum("ic,ic->i", r, h @ val_grad.T)

        for _ in range(_steps(n, budget)):
            current = gains()
            j = _best(current, ~picked)
            gain[j] = current[j]
            z -= eta * np.outer(gram.row(j), r[j])  # theta_S <- theta_S - eta * g_j
            picked[j] = True
            order.append(j)
        return _complete(order, gains(), picked), {"gain": gain}

    return _run(inputs, per_class, solve)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax, float64."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@register(
    "facility_location", natural="low", needs=("probe",), kind="order", per_class=True, budget=None
)
def facility_location(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None
) -> pd.DataFrame:
    """Facility location on (1 + cos) / 2 of penultimate features, exact lazy greedy order."""
    seed, per_class, budget = _common("facility_location", seed, per_class, budget)
    probe = _probe("facility_location", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = _cosine_rows(_features(probe, rows))
        order, gain, _, _ = _facility_location(sim, len(rows), _steps(len(rows), budget))
        return order, {"gain": gain}

    return _run(inputs, per_class, solve)


@register(
    "graph_cut",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    lam=1.0,
)
def graph_cut(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, lam: float
) -> pd.DataFrame:
    """Graph cut sum_{V,S} sim - lam sum_{S,S} sim on (1 + cos) / 2 features, greedy order."""
    seed, per_class, budget = _common("graph_cut", seed, per_class, budget)
    lam = _number("graph_cut", "lam", lam, minimum=0.0, strict=False)
    probe = _probe("graph_cut", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = _cosine_rows(_features(probe, rows))
        n = len(rows)
        colsum = _row_sums(sim)
        diag = _diagonal(sim)
        acc = np.zeros(n)  # sum_{j in S} sim(j, e)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []
        for _ in range(_steps(n, budget)):
            current = colsum - lam * (2.0 * acc + diag)
            j = _best(current, ~picked)
            gain[j] = current[j]
            acc += sim.row(j)
            picked[j] = True
            order.append(j)
        return _complete(order, colsum - lam * (2.0 * acc + diag), picked), {"gain": gain}

    return _run(inputs, per_class, solve)


@register(
    "log_det",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    eps=1.0,
)
def log_det(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, eps: float
) -> pd.DataFrame:
    """Log-determinant log det(K_S + eps I) of (1 + cos) / 2 features, incremental Cholesky."""
    seed, per_class, budget = _common("log_det", seed, per_class, budget)
    eps = _number("log_det", "eps", eps, minimum=0.0, strict=True)
    probe = _probe("log_det", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = _cosine_rows(_features(probe, rows))
        n = len(rows)
        k = _steps(n, budget)
        chol = _Cholesky(sim.row, _diagonal(sim), eps, k)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []
        for _ in range(k):
            j = _best(chol.resid, ~picked)
            gain[j] = math.log(max(float(chol.resid[j]), chol.floor))
            chol.add(j)
            picked[j] = True
            order.append(j)
        return _complete(order, chol.resid, picked), {"gain": gain}

    return _run(inputs, per_class, solve)


# ------------------------------------------------------------------------------------------------
# weights for an actual coreset


def craig_weights(probe: ProbeData, chosen: np.ndarray) -> np.ndarray:
    """CRAIG's gamma: per chosen row, the same-class samples whose nearest chosen medoid it is."""
    chosen = np.asarray(chosen, dtype=np.int64)
    weights = np.zeros(len(chosen))
    for label, rows in per_class_rows(probe.labels).items():
        mine = np.flatnonzero(probe.labels[chosen] == label)
        if mine.size == 0:
            continue
        r, h = _residual(probe, rows), _augmented(probe, rows)
        rc, hc = _residual(probe, chosen[mine]), _augmented(probe, chosen[mine])
        sq = (r * r).sum(axis=1) * (h * h).sum(axis=1)
        sqc = (rc * rc).sum(axis=1) * (hc * hc).sum(axis=1)
        d2 = sq[:, None] + sqc[None, :] - 2.0 * (r @ rc.T) * (h @ hc.T)
        nearest = np.argmin(d2, axis=1)  # ties: the first chosen
        weights[mine] = np.bincount(nearest, minlength=mine.size)
    return weights


def gradmatch_weights(
    probe: ProbeData,
    chosen: np.ndarray,
    *,
    lam: float = 0.5,
    nnls: bool = True,
    target: str = "sum",
) -> np.ndarray:
    """GradMatch weights of a chosen set: per class, argmin_w |A w - b|^2 + lam |w|^2 (w >= 0)."""
    lam = _number("gradmatch", "lam", lam, minimum=0.0, strict=False)
    target = _choice("gradmatch", "target", target, ("sum", "mean"))
    chosen = np.asarray(chosen, dtype=np.int64)
    weights = np.zeros(len(chosen))
    for label, rows in per_class_rows(probe.labels).items():
        mine = np.flatnonzero(probe.labels[chosen] == label)
        if mine.size == 0:
            continue
        r, h = _residual(probe, rows), _augmented(probe, rows)
        rc, hc = _residual(probe, chosen[mine]), _augmented(probe, chosen[mine])
        c = ((rc @ r.T) * (hc @ h.T)).sum(axis=1)
        if target == "mean":
            c /= len(rows)
        m = (rc @ rc.T) * (hc @ hc.T) + lam * np.eye(mine.size)
        if nnls:
            weights[mine] = _nnls_gram(m, c)
        else:
            weights[mine] = np.linalg.solve(m, c)
    return weights


__all__ = [
    "DENSE_LIMIT",
    "contextual_diversity",
    "craig",
    "craig_weights",
    "facility_location",
    "glister",
    "gradmatch",
    "gradmatch_weights",
    "graph_cut",
    "herding",
    "kcenter",
    "log_det",
]
