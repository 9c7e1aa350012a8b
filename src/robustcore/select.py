"""Coreset selection: keep a fraction of the training samples by score, as a small integer program.

Given per-sample scores, :func:`select` keeps the lowest (``keep="low"``), the highest
(``keep="high"``) or a uniformly random (``keep="random"``) fraction ``f`` of the ``N`` samples,
class-balanced by default. The choice is a 0/1 program

    maximize  sum_i w_i x_i   subject to  per-class quotas (or one total), min_per_class,
                                          exclude, strata;   x_i in {0, 1}

so that further requirements are only more constraints. With quotas (or one total) and exclude
only, its unique optimum is the per-class (or global) sort, which ``solver="auto"`` (default)
computes directly in O(N) (info ``solver: "direct"``); min_per_class or strata go to PuLP + CBC
(``"pulp-cbc"``). ``solver="ilp"`` sends every request to CBC, ``solver="direct"`` refuses what the
sort cannot solve. At 1.28 M samples building and writing the program for CBC costs far more than
solving it, hence the direct path.

Weights are integer *ranks*, not the raw scores: the samples are ordered by (score, index) for
``keep="low"``, by (-score, index) for ``keep="high"`` and by a seeded random permutation for
``keep="random"``; the sample in first place gets weight ``N``, the last weight ``1``. Hence

* ties in score are broken by the sample index, lower index first, in both directions;
* ``±inf`` scores order correctly (they never enter the objective);
* the objective is an exact integer (at most ``N**2 / 2``; exact in double precision), so CBC's
  tolerances cannot pick a different set, and with quotas only the optimum is unique and equals
  the per-class greedy choice (:func:`greedy_select`).

Only order matters, never the scale of a score: selection is invariant under any strictly
increasing transform of the scores. Exclusions are applied by leaving the excluded samples out of
the program (equivalent to fixing ``x_i = 0``).

This module deliberately does not import torch (coreset jobs should start fast).
"""

from __future__ import annotations

import math
import os
import time
from fractions import Fraction
from typing import Any

import numpy as np
import pulp

from robustcore.io import InputError

KEEPS = ("low", "high", "random")
SOLVER = "pulp-cbc"
DIRECT = "direct"
SOLVERS = ("auto", "ilp", "direct")

__all__ = ["KEEPS", "class_quotas", "greedy_select", "hybrid_select", "select"]


# --------------------------------------------------------------------------------------------
# validation helpers


def _int_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(
        fraction, (int, float, np.integer, np.floating)
    ):
        raise InputError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    value = float(fraction)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise InputError(f"fraction: must be in (0, 1] (0 excluded, 1 included), got {fraction!r}")
    return value


def _check_keep(keep: Any) -> str:
    if keep not in KEEPS:
        allowed = ", ".join(repr(k) for k in KEEPS)
        raise InputError(f"keep: must be one of {allowed}, got {keep!r}")
    return keep


def _check_solver(solver: Any) -> str:
    if solver not in SOLVERS:
        allowed = ", ".join(repr(k) for k in SOLVERS)
        raise InputError(f"solver: must be one of {allowed}, got {solver!r}")
    return solver


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_score(score: Any, n: int, index: np.ndarray) -> np.ndarray:
    arr = np.asarray(score)
    if arr.ndim != 1:
        raise InputError(f"score: expected a 1-D array, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"score: length {arr.shape[0]} does not match index length {n}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"score: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    nan = np.isnan(arr)
    if nan.any():
        first = int(np.flatnonzero(nan)[0])
        raise InputError(
            f"score: {int(nan.sum())} NaN value(s); the first at position {first} "
            f"(index {int(index[first])}); ±inf is allowed, NaN is not"
        )
    return arr


def _check_samples(index: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    index = _int_array("index", index)
    labels = _int_array("labels", labels)
    if labels.shape[0] != index.shape[0]:
        raise InputError(
            f"labels: length {labels.shape[0]} does not match index length {index.shape[0]}"
        )
    if index.shape[0] == 0:
        raise InputError("index: no samples to select from (empty)")
    uniq, counts = np.unique(index, return_counts=True)
    if uniq.shape[0] != index.shape[0]:
        dup = uniq[counts > 1]
        raise InputError(
            f"index: sample ids must be unique; {dup.shape[0]} id(s) repeat, e.g. {int(dup[0])}"
        )
    return index, labels


# --------------------------------------------------------------------------------------------
# quotas and priorities


def _total(fraction: float, n: int) -> int:
    """round(f·N), half up, on the decimal the user wrote (0.35 · 90 = 31.5 → 32, not 31)."""
    return int(math.floor(Fraction(repr(float(fraction))) * n + Fraction(1, 2)))


def _quotas(classes: np.ndarray, sizes: np.ndarray, fraction: float) -> dict[int, int]:
    n = int(sizes.sum())
    total = _total(fraction, n)
    # Exact decimal value of the fraction the user wrote (0.1 means 1/10, not the binary double
    # 0.1000000000000000055...), so remainders that are equal on paper compare equal here and
    # the documented tie-break (larger class, then smaller label) is what decides.
    exact = Fraction(repr(float(fraction)))
    ideal = [exact * int(s) for s in sizes]
    floors = [math.floor(v) for v in ideal]
    deficit = total - sum(floors)
    order = sorted(
        range(len(classes)),
        key=lambda k: (-(ideal[k] - floors[k]), -int(sizes[k]), int(classes[k])),
    )
    if not 0 <= deficit <= sum(1 for k in order if ideal[k] != floors[k]):
        # cannot happen for f in (0, 1]; guards the float/decimal mix above
        raise RuntimeError(
            f"class quotas: cannot apportion {total} over classes (deficit {deficit})"
        )
    quotas = list(floors)
    for k in order[:deficit]:
        quotas[k] += 1
    return {int(c): int(q) for c, q in zip(classes, quotas, strict=True)}


def class_quotas(labels: np.ndarray, fraction: float) -> dict[int, int]:
    """Per-class sample counts for keeping `fraction` of the samples, class-balanced.

    Quotas are proportional to class size with largest-remainder rounding, so they sum to exactly
    ``fraction * N`` rounded half up (on the written decimal); each quota is ``floor`` or ``ceil``
    of ``fraction * n_c``. Equal remainders go to the larger class first, then the smaller label.
    Returns ``{label: quota}`` for every label present (sorted by label; a quota may be 0).
    """
    labels = _int_array("labels", labels)
    fraction = _check_fraction(fraction)
    if labels.shape[0] == 0:
        raise InputError("labels: no samples to select from (empty)")
    classes, sizes = np.unique(labels, return_counts=True)
    return _quotas(classes, sizes, fraction)


def _priority(index: np.ndarray, score: np.ndarray | None, keep: str, seed: int) -> np.ndarray:
    """Rank of every sample, 0 = kept first. Ties in score go to the lower sample index."""
    n = index.shape[0]
    if keep == "random":
        # The permutation is attached to samples in index order, so the result does not depend on
        # the order in which the rows were passed.
        by_index = np.argsort(index, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[by_index] = np.random.default_rng(seed).permutation(n)
        return rank
    assert score is not None
    key = score if keep == "low" else -score
    order = np.lexsort((index, key))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


def _prepare(index, labels, score, fraction, keep, seed):
    index, labels = _check_samples(index, labels)
    fraction = _check_fraction(fraction)
    keep = _check_keep(keep)
    seed = _check_int("seed", seed, minimum=0)
    n = index.shape[0]
    if _total(fraction, n) == 0:
        raise InputError(
            f"fraction: {fraction} of {n} samples rounds to 0 kept; a coreset needs at least "
            f"one sample (fraction >= {0.5 / n:.3g} for N = {n}), within (0, 1]"
        )
    if keep == "random":
        # scores are not used; a length mismatch still means misaligned inputs
        if score is not None and np.shape(score) != (n,):
            raise InputError(f"score: shape {np.shape(score)} does not match index length {n}")
        score = None
    elif score is None:
        raise InputError(f"score: required for keep={keep!r} (only keep='random' needs none)")
    else:
        score = _check_score(score, n, index)
    rank = _priority(index, score, keep, seed)
    return index, labels, fraction, keep, seed, rank


# --------------------------------------------------------------------------------------------
# reference without a solver


def greedy_select(
    index: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray | None,
    fraction: float,
    *,
    keep: str = "low",
    balanced: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Reference without a solver: per-class sort and take the quota (for tests and benchmarks)."""
    index, labels, fraction, keep, seed, rank = _prepare(index, labels, score, fraction, keep, seed)
    order = np.argsort(rank, kind="stable")  # best first
    if balanced:
        classes, sizes = np.unique(labels, return_counts=True)
        quotas = _quotas(classes, sizes, fraction)
        ordered_labels = labels[order]
        picked = [order[ordered_labels == c][:q] for c, q in quotas.items()]
        chosen = np.concatenate(picked)
    else:
        chosen = order[: _total(fraction, index.shape[0])]
    return np.sort(index[chosen])


def hybrid_select(
    index: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray,
    fraction: float,
    *,
    hard_share: float,
) -> tuple[np.ndarray, dict]:
    """Per class, the lowest-scored samples plus a `hard_share` of the quota from the highest.

    The EasyCore paper's open question (can a few hard samples restore clean accuracy?): each
    class keeps its balanced quota q_c, of which round(hard_share · q_c) (half up) are the
    class's highest scores and the rest its lowest; ties go to the lower sample index.
    """
    if isinstance(hard_share, bool) or not isinstance(hard_share, (int, float, np.number)):
        raise InputError(f"hard_share: expected a number in [0, 1], got {hard_share!r}")
    if not 0.0 <= float(hard_share) <= 1.0:
        raise InputError(f"hard_share: expected a value in [0, 1], got {hard_share}")
    index, labels, fraction, _, _, low_rank = _prepare(index, labels, score, fraction, "low", 0)
    high_rank = _priority(index, _check_score(score, index.shape[0], index), "high", 0)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = _quotas(classes, sizes, fraction)
    share = Fraction(repr(float(hard_share)))
    low_order = np.argsort(low_rank, kind="stable")
    high_order = np.argsort(high_rank, kind="stable")
    picked, hard_counts = [], {}
    for c, q in quotas.items():
        n_hard = int(math.floor(share * q + Fraction(1, 2)))
        hard = high_order[labels[high_order] == c][:n_hard]
        # A class's quota never exceeds its size, so easy and hard parts cannot overlap.
        easy = low_order[labels[low_order] == c][: q - n_hard]
        picked += [easy, hard]
        hard_counts[str(c)] = n_hard
    chosen = np.sort(index[np.concatenate(picked)])
    info = {
        "size": int(chosen.shape[0]),
        "n_total": int(index.shape[0]),
        "fraction": float(fraction),
        "hard_share": float(hard_share),
        "hard_per_class": hard_counts,
        "solver": "greedy per class (the integer program's unique optimum)",
    }
    return chosen, info


# --------------------------------------------------------------------------------------------
# the integer program


def _cbc_solver(time_limit: float | None) -> pulp.LpSolver:
    """CBC through PuLP's command-line interface, silent, without CBC's preprocessing.

    PuLP bundles a CBC binary; ``PULP_CBC_CMD`` (its wrapper) is deprecated in PuLP 3.x, so the
    bundled binary is driven through ``COIN_CMD`` with an explicit path; a system CBC (or
    ``pulp[cbc]``) is the fallback. ``preprocess off``: CglPreProcess spends ~2 s on 50,000
    binaries and does nothing useful for a program with a handful of rows (the root LP is solved
    in milliseconds and is integral, or nearly, since a basic solution has at most one fractional
    variable per row).
    """
    options = {"msg": False, "timeLimit": time_limit, "options": ["preprocess off"]}
    bundled = getattr(pulp.PULP_CBC_CMD, "pulp_cbc_path", None)
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return pulp.COIN_CMD(path=bundled, **options)
    solver = pulp.COIN_CMD(**options)
    if not solver.available():
        raise RuntimeError(
            "select: no CBC solver found (PuLP's bundled cbc is missing and no `cbc` on PATH); "
            "install `pulp[cbc]` or CBC"
        )
    return solver


def _check_exclude(exclude: Any, index: np.ndarray) -> np.ndarray:
    """Boolean mask over the samples of the excluded ones (exclude holds sample ids)."""
    if exclude is None:
        return np.zeros(index.shape[0], dtype=bool)
    ids = _int_array("exclude", exclude)
    mask = np.isin(index, ids)
    known = np.isin(ids, index)
    if not known.all():
        raise InputError(
            f"exclude: {int((~known).sum())} id(s) are not among the samples' index values, "
            f"e.g. {int(ids[~known][0])}"
        )
    return mask


def _check_strata(strata: Any, n: int) -> list[tuple[str, np.ndarray, int]]:
    if strata is None:
        return []
    if not isinstance(strata, (list, tuple)):
        raise InputError("strata: expected a list of (name, boolean mask, count) tuples")
    checked: list[tuple[str, np.ndarray, int]] = []
    seen: set[str] = set()
    for k, item in enumerate(strata):
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise InputError(f"strata[{k}]: expected a (name, boolean mask, count) tuple")
        name, mask, count = item
        if not isinstance(name, str) or not name:
            raise InputError(f"strata[{k}]: the name must be a non-empty string, got {name!r}")
        if name in seen:
            raise InputError(f"strata: the name {name!r} appears twice")
        seen.add(name)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise InputError(
                f"strata[{name!r}]: the mask must be a boolean array of length {n} (one entry "
                f"per sample), got dtype {mask.dtype} and shape {mask.shape}"
            )
        count = _check_int(f"strata[{name!r}] count", count, minimum=0)
        checked.append((name, mask, count))
    return checked


def _precheck(
    labels: np.ndarray,
    excluded: np.ndarray,
    total: int,
    quotas: dict[int, int] | None,
    min_per_class: int,
    strata: list[tuple[str, np.ndarray, int]],
) -> None:
    """Catch the infeasible requests that can be named precisely before the solver runs."""
    classes, sizes = np.unique(labels, return_counts=True)
    n_excl = np.bincount(np.searchsorted(classes, labels[excluded]), minlength=classes.shape[0])
    available = sizes - n_excl
    if quotas is not None:
        for c, a in zip(classes.tolist(), available.tolist(), strict=True):
            q = quotas[c]
            if q > a:
                raise InputError(
                    f"exclude: infeasible; class {c} has quota {q} but only {a} sample(s) are "
                    f"not excluded"
                )
            if min_per_class > q:
                raise InputError(
                    f"min_per_class={min_per_class} is infeasible with balanced quotas: class {c} "
                    f"has quota {q} (use balanced=False for a floor per class)"
                )
    else:
        if total > int(available.sum()):
            raise InputError(
                f"exclude: infeasible; {total} samples are to be kept but only "
                f"{int(available.sum())} are not excluded"
            )
        if min_per_class:
            for c, a in zip(classes.tolist(), available.tolist(), strict=True):
                if min_per_class > a:
                    raise InputError(
                        f"min_per_class={min_per_class} is infeasible: class {c} has only {a} "
                        f"selectable sample(s)"
                    )
            if min_per_class * classes.shape[0] > total:
                raise InputError(
                    f"min_per_class={min_per_class} is infeasible: {classes.shape[0]} classes "
                    f"× {min_per_class} = {min_per_class * classes.shape[0]} > {total} samples kept"
                )
    for name, mask, count in strata:
        room = int((mask & ~excluded).sum())
        if count > room:
            raise InputError(
                f"strata[{name!r}]: count {count} is infeasible, the mask holds only {room} "
                f"selectable sample(s)"
            )
        if count > total:
            raise InputError(
                f"strata[{name!r}]: count {count} is infeasible, only {total} samples are kept"
            )


def select(
    index: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray | None,
    fraction: float,
    *,
    keep: str = "low",
    balanced: bool = True,
    seed: int = 0,
    min_per_class: int = 0,
    exclude: np.ndarray | None = None,
    strata: list[tuple[str, np.ndarray, int]] | None = None,
    time_limit: float | None = 60.0,
    solver: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Return the kept sample indices (sorted ascending, values from `index`) and an info dict.

    `index` holds the samples' ids (any order), `labels` and `score` are aligned with it; `score`
    may be None only for ``keep="random"`` (for which it is ignored). Exactly ``fraction * N``
    (rounded half up, on the written decimal) samples are kept: per class as :func:`class_quotas`
    says when `balanced`, else in total with at least `min_per_class` of every class.
    `exclude` holds sample ids (values of `index`) that must not be kept; each stratum
    ``(name, mask, count)`` has a boolean mask aligned with `index` and requires exactly `count`
    kept samples inside it. An infeasible request raises InputError naming the constraint; a
    solver that does not prove optimality (e.g. `time_limit` seconds ran out) raises
    RuntimeError; no partial result is ever returned. `solver`: "auto" sorts directly when only
    quotas (or the total) and exclude apply and runs CBC otherwise; "ilp" always runs CBC;
    "direct" always sorts and refuses min_per_class and strata (info["solver"] says which ran).
    """
    index, labels, fraction, keep, seed, rank = _prepare(index, labels, score, fraction, keep, seed)
    solver = _check_solver(solver)
    if not isinstance(balanced, (bool, np.bool_)):
        raise InputError(f"balanced: expected True or False, got {balanced!r}")
    balanced = bool(balanced)
    min_per_class = _check_int("min_per_class", min_per_class, minimum=0)
    if time_limit is not None:
        if (
            isinstance(time_limit, bool)
            or not isinstance(time_limit, (int, float, np.integer, np.floating))
            or not (math.isfinite(float(time_limit)) and time_limit > 0)
        ):
            raise InputError(f"time_limit: expected seconds > 0 or None, got {time_limit!r}")
        time_limit = float(time_limit)
    n = index.shape[0]
    excluded = _check_exclude(exclude, index)
    strata_checked = _check_strata(strata, n)

    classes, sizes = np.unique(labels, return_counts=True)
    total = _total(fraction, n)
    quotas = _quotas(classes, sizes, fraction) if balanced else None
    _precheck(labels, excluded, total, quotas, min_per_class, strata_checked)

    constraint_sets = ["quotas" if balanced else "total"]
    if min_per_class:
        constraint_sets.append(f"min_per_class={min_per_class}")
    if excluded.any():
        constraint_sets.append(f"exclude ({int(excluded.sum())} samples)")
    constraint_sets += [f"strata[{name!r}]={count}" for name, _, count in strata_checked]
    described = ", ".join(constraint_sets)

    extra = [c for c in constraint_sets if c.startswith(("min_per_class", "strata"))]
    if solver == "direct" and extra:
        raise InputError(
            f"solver='direct' sorts under class quotas (or one total) and exclude only; this "
            f"request also has {', '.join(extra)}: use solver='auto' or 'ilp'"
        )
    if solver == "direct" or (solver == "auto" and not extra):
        t0 = time.perf_counter()
        chosen = _direct(rank, labels, excluded, classes, quotas, total)
        program: dict[str, Any] = {
            "solver": DIRECT,
            "status": "Optimal",  # the program's unique optimum (distinct weights), no solver
            "solution_status": "unique optimum: sorted" + (" per class" if balanced else ""),
            "build_seconds": 0.0,
            "solve_seconds": round(time.perf_counter() - t0, 6),
            "n_variables": int((~excluded).sum()),
            "n_constraints": int(np.unique(labels[~excluded]).shape[0]) if balanced else 1,
        }
    else:
        chosen, program = _ilp(
            rank,
            labels,
            excluded,
            quotas,
            total,
            classes,
            min_per_class,
            strata_checked,
            time_limit,
            described,
        )
    _verify(
        chosen, labels, classes, total, quotas, min_per_class, excluded, strata_checked, described
    )

    counts = _class_counts(classes, labels, chosen).tolist()
    per_class = dict(zip(classes.tolist(), counts, strict=True))
    info: dict[str, Any] = {
        "size": int(chosen.shape[0]),
        "fraction": fraction,
        "n_total": int(n),
        "per_class": {str(c): k for c, k in per_class.items()},
        "keep": keep,
        "balanced": balanced,
        "solver": program["solver"],
        "status": program["status"],
        "solution_status": program["solution_status"],
        # sum over kept samples of N - rank (rank 0 = first to keep): an exact integer
        "objective": int((n - rank[chosen]).sum()),
        "build_seconds": program["build_seconds"],
        "solve_seconds": program["solve_seconds"],
        "seed": seed,
        "empty_classes": [c for c, k in per_class.items() if k == 0],
        "constraints": constraint_sets,
        "min_per_class": min_per_class,
        "n_excluded": int(excluded.sum()),
        "strata": [
            {"name": name, "count": count, "mask_size": int(mask.sum())}
            for name, mask, count in strata_checked
        ],
        "n_variables": program["n_variables"],
        "n_constraints": program["n_constraints"],
        "time_limit": time_limit,
    }
    if quotas is not None:
        info["quotas"] = {str(c): q for c, q in quotas.items()}
    return np.sort(index[chosen]), info


def _direct(
    rank: np.ndarray,
    labels: np.ndarray,
    excluded: np.ndarray,
    classes: np.ndarray,
    quotas: dict[int, int] | None,
    total: int,
) -> np.ndarray:
    """The program's optimum without a solver: per class (or overall) the best-ranked samples.

    The weights N - rank are distinct, so under per-class counts (or one total) the unique
    optimum keeps each class's q_c best-ranked candidates (or the `total` best overall); O(N).
    """
    n = rank.shape[0]
    order = np.empty(n, dtype=np.int64)
    order[rank] = np.arange(n, dtype=np.int64)  # positions, best first
    order = order[~excluded[order]]
    if quotas is None:
        return np.sort(order[:total])
    code = np.searchsorted(classes, labels[order])
    by_class = np.argsort(code, kind="stable")  # grouped by class, best first within each
    grouped = code[by_class]
    first = np.searchsorted(grouped, np.arange(classes.shape[0]))  # each class's first slot
    quota = np.array([quotas[c] for c in classes.tolist()], dtype=np.int64)
    keep = np.arange(grouped.shape[0]) - first[grouped] < quota[grouped]
    return np.sort(order[by_class[keep]])


def _ilp(
    rank: np.ndarray,
    labels: np.ndarray,
    excluded: np.ndarray,
    quotas: dict[int, int] | None,
    total: int,
    classes: np.ndarray,
    min_per_class: int,
    strata_checked: list[tuple[str, np.ndarray, int]],
    time_limit: float | None,
    described: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Build the 0/1 program, solve it with CBC, check the answer; chosen positions and info."""
    n = rank.shape[0]
    balanced = quotas is not None
    # ---- build
    t0 = time.perf_counter()
    candidates = np.flatnonzero(~excluded)  # positions that may be kept
    weight = (n - rank[candidates]).tolist()  # rank 0 -> weight N; all >= 1
    prob = pulp.LpProblem("coreset", pulp.LpMaximize)
    xs = [prob.add_variable(f"x{p}", cat=pulp.LpBinary) for p in candidates.tolist()]
    prob.setObjective(pulp.LpAffineExpression(zip(xs, weight, strict=True)))

    n_rows = [0]

    def add(name: str, members: np.ndarray, sense: int, rhs: int) -> None:
        """Constraint over the candidates selected by the boolean `members` (candidate order)."""
        picked = np.flatnonzero(members).tolist()
        if not picked:  # prechecks guarantee rhs == 0 here for == and >=
            return
        expr = pulp.LpAffineExpression([(xs[k], 1) for k in picked])
        prob.addConstraint(pulp.LpConstraint(expr, sense, name, rhs))
        n_rows[0] += 1

    cand_labels = labels[candidates]
    if balanced:
        assert quotas is not None
        for k, (c, q) in enumerate(quotas.items()):  # row names by position: labels may be < 0
            add(f"quota_{k}", cand_labels == c, pulp.LpConstraintEQ, q)
    else:
        add("total", np.ones(candidates.shape[0], dtype=bool), pulp.LpConstraintEQ, total)
        if min_per_class:
            for k, c in enumerate(classes.tolist()):
                add(f"min_{k}", cand_labels == c, pulp.LpConstraintGE, min_per_class)
    for k, (_, mask, count) in enumerate(strata_checked):
        add(f"stratum_{k}", mask[candidates], pulp.LpConstraintEQ, count)
    build_seconds = time.perf_counter() - t0

    # ---- solve
    t1 = time.perf_counter()
    try:
        prob.solve(_cbc_solver(time_limit))
    except pulp.PulpSolverError as err:
        raise RuntimeError(f"select: CBC failed on constraints {described}: {err}") from err
    solve_seconds = time.perf_counter() - t1
    status = pulp.LpStatus[prob.status]
    sol_status = pulp.LpSolution[prob.sol_status]
    if prob.status == pulp.LpStatusInfeasible:
        raise InputError(
            f"select: no coreset satisfies the constraints together: {described} "
            f"(solver status {status})"
        )
    if prob.status != pulp.LpStatusOptimal or prob.sol_status != pulp.LpSolutionOptimal:
        raise RuntimeError(
            f"select: CBC did not prove an optimum for constraints {described} "
            f"(status {status!r}, solution {sol_status!r}, time_limit={time_limit})"
        )

    values = np.array([x.varValue if x.varValue is not None else 0.0 for x in xs])
    return np.sort(candidates[values > 0.5]), {
        "solver": SOLVER,
        "status": status,
        "solution_status": sol_status,
        "build_seconds": round(build_seconds, 6),
        "solve_seconds": round(solve_seconds, 6),
        "n_variables": len(xs),
        "n_constraints": n_rows[0],
    }


def _class_counts(classes: np.ndarray, labels: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Kept samples per class (classes sorted, every label among them), in one pass."""
    return np.bincount(np.searchsorted(classes, labels[chosen]), minlength=classes.shape[0])


def _verify(
    chosen: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    total: int,
    quotas: dict[int, int] | None,
    min_per_class: int,
    excluded: np.ndarray,
    strata: list[tuple[str, np.ndarray, int]],
    described: str,
) -> None:
    """Re-check the solver's answer against every constraint (it is cheap, and CBC works with
    tolerances): a violation is a bug or a solver failure, never a partial result."""
    problems = []
    if chosen.shape[0] != total:
        problems.append(f"size {chosen.shape[0]} != {total}")
    counts = _class_counts(classes, labels, chosen).tolist()
    if quotas is not None:
        for c, got in zip(classes.tolist(), counts, strict=True):
            if got != quotas[c]:
                problems.append(f"class {c}: {got} != quota {quotas[c]}")
    elif min_per_class:
        for c, got in zip(classes.tolist(), counts, strict=True):
            if got < min_per_class:
                problems.append(f"class {c}: {got} < min_per_class {min_per_class}")
    if excluded[chosen].any():
        problems.append(f"{int(excluded[chosen].sum())} excluded sample(s) kept")
    for name, mask, count in strata:
        got = int(mask[chosen].sum())
        if got != count:
            problems.append(f"strata[{name!r}]: {got} != {count}")
    if problems:
        raise RuntimeError(
            f"select: the solver's answer violates {described}: " + "; ".join(problems)
        )
