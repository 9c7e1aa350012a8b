"""GradMatch as an OMP pick order and its coreset weights (orders, ties, budget: scores.greedy).

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

The NNLS refit is capped at ``3 t + 30`` active-set steps after the ``t``-th pick (a step = one
least-squares solve on the positive set; ``3 t`` is Lawson and Hanson's ``ITMAX = 3 N``, also
``scipy.optimize.nnls``'s default, for a cold start; a warm start usually needs one or two).
Exact arithmetic cannot cycle, rounding on a singular Gram matrix (``lam = 0`` with collinear or
duplicate gradients) could: hitting the cap raises RuntimeError naming the class, the pick and
``lam > 0`` as the fix, instead of returning a truncated fit that would silently change the order.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular

from robustcore.probe import ProbeData
from robustcore.scores.base import ScoreInputs, per_class_rows, register
from robustcore.scores.greedy import (
    Cholesky,
    Rows,
    augmented,
    best,
    choice,
    common,
    complete,
    diagonal,
    flag,
    labelled_probe,
    number,
    residual,
    row_sums,
    run,
    steps,
)

NNLS_STEPS_PER_VARIABLE = 3  # Lawson-Hanson ITMAX = 3 N (scipy.optimize.nnls maxiter default)
NNLS_STEPS_EXTRA = 30  # slack for the warm start's inherited positive set


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
    seed, per_class, budget = common("gradmatch", seed, per_class, budget)
    lam = number("gradmatch", "lam", lam, minimum=0.0, strict=False)
    nnls = flag("gradmatch", "nnls", nnls)
    target = choice("gradmatch", "target", target, ("sum", "mean"))
    probe = labelled_probe("gradmatch", inputs)

    def solve(rows: np.ndarray, label: int | None):
        r = residual(probe, rows)
        h = augmented(probe, rows)
        n = len(rows)
        gram = Rows(lambda idx: (r[idx] @ r.T) * (h[idx] @ h.T), n)
        c = row_sums(gram)  # <g_e, sum_i g_i>
        if target == "mean":
            c /= n
        k = steps(n, budget)
        if nnls:
            where = f"score method 'gradmatch' ({_group(label)}, lam={lam})"
            order, correlation = _omp_nonneg(gram, c, lam, k, where)
        else:
            order, correlation = _omp_ridge(gram, c, lam, k)
        return order, {"correlation": correlation}

    return run(inputs, per_class, solve)


def _group(label: int | None) -> str:
    """The group a greedy run covers, for messages."""
    return "all samples" if label is None else f"class {label}"


def _omp_ridge(gram: Rows, c: np.ndarray, lam: float, k: int):
    """Standard OMP (argmax |<g_e, r>|) with the ridge fit kept by an incremental Cholesky."""
    n = gram.n
    chol = Cholesky(gram.row, diagonal(gram), lam, k)
    proj = c.copy()  # <g_e, b - A_S w>
    z = np.empty(k)
    picked = np.zeros(n, dtype=bool)
    correlation = np.full(n, np.nan)
    order: list[int] = []
    for t in range(k):
        j = best(np.abs(proj), ~picked)
        correlation[j] = proj[j]
        u, pivot, coupling = chol.add(j)
        z[t] = (c[j] - coupling @ z[:t]) / pivot
        proj -= z[t] * u
        picked[j] = True
        order.append(j)
    return complete(order, np.abs(proj), picked), correlation


def _omp_nonneg(gram: Rows, c: np.ndarray, lam: float, k: int, where: str = "gradmatch"):
    """Non-negative OMP: argmax <g_e, r>, then the exact ridge NNLS refit after every pick."""
    n = gram.n
    picked_rows = np.empty((k, n))  # K[S_t, :]
    solver = _GrowingNNLS(k, where)
    proj = c.copy()  # <g_e, b - A_S w>
    picked = np.zeros(n, dtype=bool)
    correlation = np.full(n, np.nan)
    order: list[int] = []
    for t in range(k):
        j = best(proj, ~picked)
        correlation[j] = proj[j]
        picked[j] = True
        order.append(j)
        picked_rows[t] = gram.row(j)
        m_row = picked_rows[t, order]
        m_row[t] += lam
        w = solver.add(m_row, c[j], proj[j])  # 0 outside the positive set
        proj = c - w @ picked_rows[: t + 1]  # no copy of the positive rows
    return complete(order, proj, picked), correlation


class _GrowingNNLS:
    """min 1/2 w'Mw - c'w s.t. w >= 0 over a growing set of variables (M SPD).

    Lawson-Hanson active set, warm-started from the previous solution (a new variable enters at 0),
    with the Cholesky factor of M[P, P] (P = the positive variables) extended in O(|P|^2) when a
    variable enters and rebuilt only when one leaves. At most 3 t + 30 least-squares solves per
    added variable (t = the variables so far); more raise RuntimeError naming `where`.
    """

    def __init__(self, k: int, where: str = "gradmatch") -> None:
        """Room for k variables; `where` names the caller in errors."""
        self.where = where
        self.solves = 0  # least-squares solves in the current `add`
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
        self.solves = 0
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

    def _count(self) -> None:
        """One more least-squares solve in this `add`; RuntimeError past the cap."""
        self.solves += 1
        cap = NNLS_STEPS_PER_VARIABLE * self.t + NNLS_STEPS_EXTRA
        if self.solves > cap:
            raise RuntimeError(
                f"{self.where}: the non-negative least-squares refit after pick {self.t} did not "
                f"converge within {cap} active-set steps ({NNLS_STEPS_PER_VARIABLE} x {self.t} + "
                f"{NNLS_STEPS_EXTRA}): the gradients are (near-)collinear and the ridge term is "
                f"too small to keep the Gram matrix definite; set lam > 0 (default 0.5), or "
                f"nnls=False"
            )

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
            self._count()
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


def _nnls_gram(m: np.ndarray, c: np.ndarray, where: str = "gradmatch") -> np.ndarray:
    """min 1/2 w'Mw - c'w s.t. w >= 0 for a fixed SPD M (variables added one by one)."""
    solver = _GrowingNNLS(len(c), where)
    w = np.zeros(0)
    for t in range(len(c)):
        grad = c[t] - m[t, :t] @ w
        w = solver.add(m[t, : t + 1], c[t], grad).copy()
    return w


def gradmatch_weights(
    probe: ProbeData,
    chosen: np.ndarray,
    *,
    lam: float = 0.5,
    nnls: bool = True,
    target: str = "sum",
) -> np.ndarray:
    """GradMatch weights of a chosen set: per class, argmin_w |A w - b|^2 + lam |w|^2 (w >= 0)."""
    lam = number("gradmatch", "lam", lam, minimum=0.0, strict=False)
    target = choice("gradmatch", "target", target, ("sum", "mean"))
    chosen = np.asarray(chosen, dtype=np.int64)
    weights = np.zeros(len(chosen))
    for label, rows in per_class_rows(probe.labels).items():
        mine = np.flatnonzero(probe.labels[chosen] == label)
        if mine.size == 0:
            continue
        r, h = residual(probe, rows), augmented(probe, rows)
        rc, hc = residual(probe, chosen[mine]), augmented(probe, chosen[mine])
        c = ((rc @ r.T) * (hc @ h.T)).sum(axis=1)
        if target == "mean":
            c /= len(rows)
        m = (rc @ rc.T) * (hc @ hc.T) + lam * np.eye(mine.size)
        if nnls:
            where = f"gradmatch_weights ({_group(label)}, lam={lam})"
            weights[mine] = _nnls_gram(m, c, where)
        else:
            weights[mine] = np.linalg.solve(m, c)
    return weights


__all__ = ["gradmatch", "gradmatch_weights"]
