"""Tests for robustcore.select: quotas, ILP vs the greedy reference, constraints, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pulp
import pytest

from robustcore import select as sel
from robustcore.io import InputError
from robustcore.select import class_quotas, greedy_select, select


def expected_total(fraction: float, n: int) -> int:
    """round(f·N) half up on the written decimal, computed independently with Decimal."""
    return int((Decimal(repr(fraction)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_total_rounds_the_written_decimal_half_up():
    # In binary floating point 0.35 * 90 = 31.499999999999996; the user means 31.5 -> 32.
    assert sum(class_quotas(np.arange(90) % 3, 0.35).values()) == 32
    assert sum(class_quotas(np.arange(10) % 2, 0.25).values()) == 3  # 2.5 -> 3


SRC = Path(__file__).resolve().parents[1] / "src"


def make_case(rng, n_classes=4, sizes=None, n_distinct=None, offset=1000):
    """Uneven classes, shuffled non-contiguous index, optional heavy score ties."""
    if sizes is None:
        sizes = rng.integers(5, 60, size=n_classes)
    labels = np.repeat(np.arange(len(sizes)) * 3 + 1, sizes)  # labels 1, 4, 7, ...
    n = labels.shape[0]
    perm = rng.permutation(n)
    labels = labels[perm]
    index = (rng.permutation(n) * 2 + offset).astype(np.int64)  # any order, not 0..N-1
    score = rng.normal(size=n)
    if n_distinct is not None:
        score = np.round(score * n_distinct / 4) / n_distinct  # few distinct values: many ties
    return index, labels.astype(np.int64), score


def ranked(index, score, keep):
    """Samples in keep-order, ties by lower index first (the documented rule)."""
    key = score if keep == "low" else -score
    return np.lexsort((index, key))


# ------------------------------------------------------------------------------------------
# quotas


def test_quotas_property_random_cases():
    rng = np.random.default_rng(12345)
    special = [0.1, 0.5, 1.0, 0.25, 1 / 3, 0.35, 0.05, 0.9, 0.999, 1e-3]
    for case in range(400):
        n_classes = int(rng.integers(1, 25))
        if case % 3 == 0:  # heavily uneven: one big class and small ones
            sizes = np.concatenate([[rng.integers(200, 2000)], rng.integers(1, 10, n_classes - 1)])
        else:
            sizes = rng.integers(1, 500, n_classes)
        f = special[case % len(special)] if case % 2 else float(rng.uniform(1e-4, 1.0))
        labels = rng.permutation(np.repeat(rng.permutation(100)[:n_classes], sizes))
        n = labels.shape[0]
        q = class_quotas(labels, f)
        classes, counts = np.unique(labels, return_counts=True)
        assert list(q) == classes.tolist()
        assert sum(q.values()) == expected_total(f, n), (f, sizes)
        exact = Fraction(repr(f))
        bumped_rem, plain_rem = [], []
        for c, n_c in zip(classes.tolist(), counts.tolist(), strict=True):
            assert 0 <= q[c] <= n_c
            assert abs(q[c] - f * n_c) < 1 + 1e-9, (f, n_c, q[c])
            ideal = exact * n_c
            assert q[c] in (math.floor(ideal), math.floor(ideal) + 1)
            (bumped_rem if q[c] > math.floor(ideal) else plain_rem).append(
                ideal - math.floor(ideal)
            )
        # largest remainder: every class that got the extra sample had a remainder >= all others
        if bumped_rem and plain_rem:
            assert min(bumped_rem) >= max(plain_rem)
        # proportional: a larger class never gets fewer; equal classes differ by at most 1
        for a, n_a in zip(classes.tolist(), counts.tolist(), strict=True):
            for b, n_b in zip(classes.tolist(), counts.tolist(), strict=True):
                if n_a > n_b:
                    assert q[a] >= q[b]
                elif n_a == n_b:
                    assert abs(q[a] - q[b]) <= 1


def test_quota_tie_breaks():
    # remainders 0.5 and 0.5: the larger class gets the extra sample
    assert class_quotas(np.array([0] * 3 + [1] * 5), 0.5) == {0: 1, 1: 3}
    # equal sizes: the smaller label gets it
    assert class_quotas(np.array([7] * 3 + [2] * 3), 0.5) == {2: 2, 7: 1}
    # 0.1 * 3 = 0.30000000000000004 and 0.1 * 43 = 4.3 in floating point, but both remainders
    # are 3/10 as written: a tie, so the larger class wins (float remainders would pick class 0)
    assert class_quotas(np.array([0] * 3 + [1] * 43), 0.1) == {0: 0, 1: 5}
    # the double nearest 0.3 is below 0.3, so exact binary arithmetic would see 5 * 0.3 with a
    # larger remainder than 15 * 0.3; as written (3/10) both remainders are 1/2: larger class wins
    assert class_quotas(np.array([0] * 5 + [1] * 15), 0.3) == {0: 1, 1: 5}
    # a class may round to 0
    assert class_quotas(np.array([0] * 100 + [1] * 3 + [2] * 2), 0.05) == {0: 5, 1: 0, 2: 0}


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.1", True])
def test_quota_bad_fraction(bad):
    with pytest.raises(InputError, match=r"fraction.*\(0, 1\]"):
        class_quotas(np.array([0, 1, 1]), bad)


# ------------------------------------------------------------------------------------------
# the ILP equals the greedy optimum when only quotas apply


@pytest.mark.parametrize("keep", ["low", "high", "random"])
@pytest.mark.parametrize("balanced", [True, False])
def test_ilp_equals_greedy(keep, balanced):
    rng = np.random.default_rng(7)
    for trial in range(4):
        ties = [None, 3, 1][trial % 3]  # 1 distinct value ~ all tied
        index, labels, score = make_case(rng, n_classes=int(rng.integers(2, 6)), n_distinct=ties)
        f = float(rng.choice([0.1, 0.3, 0.5, 0.77]))
        args = (index, labels, score, f)
        kwargs = {"keep": keep, "balanced": balanced, "seed": trial}
        kept, info = select(*args, **kwargs, solver="ilp")
        ref = greedy_select(*args, **kwargs)
        assert info["status"] == "Optimal" and info["solver"] == "pulp-cbc"
        np.testing.assert_array_equal(kept, ref)
        direct, info_direct = select(*args, **kwargs)
        assert info_direct["solver"] == "direct"
        np.testing.assert_array_equal(direct, ref)
        assert info_direct["objective"] == info["objective"]
        assert np.all(np.diff(kept) > 0)  # sorted ascending, unique
        assert set(kept.tolist()) <= set(index.tolist())
        if keep != "random":
            # and greedy itself is the sorted prefix under (score, index) ordering
            order = ranked(index, score, keep)
            if not balanced:
                np.testing.assert_array_equal(np.sort(index[order[: kept.shape[0]]]), kept)
            else:
                for c, q in class_quotas(labels, f).items():
                    in_c = order[labels[order] == c][:q]
                    assert set(index[in_c].tolist()) <= set(kept.tolist())


def test_ties_broken_by_lower_index_both_directions():
    index = np.array([50, 10, 40, 20, 30, 60], dtype=np.int64)
    labels = np.zeros(6, dtype=np.int64)
    score = np.ones(6)
    for keep in ("low", "high"):
        kept, _ = select(index, labels, score, 0.5, keep=keep)
        np.testing.assert_array_equal(kept, [10, 20, 30])
    # a partial tie: the two 0.0 scores are both wanted by "low", the tie at 5.0 by "high"
    score = np.array([0.0, 5.0, 0.0, 5.0, 1.0, 2.0])
    np.testing.assert_array_equal(select(index, labels, score, 1 / 3, keep="low")[0], [40, 50])
    np.testing.assert_array_equal(select(index, labels, score, 1 / 3, keep="high")[0], [10, 20])
    np.testing.assert_array_equal(select(index, labels, score, 0.5, keep="high")[0], [10, 20, 60])


def test_direct_equals_ilp_on_random_requests():
    """Quotas or one total, with exclude, ties, ±inf and every keep: the sort is the ILP's set."""
    rng = np.random.default_rng(21)
    for trial in range(24):
        index, labels, score = make_case(
            rng, n_classes=int(rng.integers(1, 6)), n_distinct=[None, 4, 1][trial % 3]
        )
        n = index.shape[0]
        if trial % 4 == 1:  # infinities of both signs among the scores
            score[rng.random(n) < 0.2] = np.inf
            score[rng.random(n) < 0.2] = -np.inf
        keep = ["low", "high", "random"][trial % 3]
        balanced = trial % 2 == 0
        f = float(rng.choice([0.05, 0.1, 0.3, 0.5, 1.0]))
        exclude = None
        if trial % 5 != 0:  # exclude some ids, leaving every quota (or the total) feasible
            quotas = class_quotas(labels, f) if balanced else None
            room = (
                [
                    np.flatnonzero(labels == c)[: max(0, int((labels == c).sum()) - quotas[c])]
                    for c in np.unique(labels)
                ]
                if balanced
                else [np.arange(n - expected_total(f, n))]
            )
            drop = np.concatenate(room)
            drop = drop[rng.random(drop.shape[0]) < 0.7]
            exclude = index[drop] if drop.size else None
        kwargs = {"keep": keep, "balanced": balanced, "seed": trial, "exclude": exclude}
        ilp, info_ilp = select(index, labels, score, f, **kwargs, solver="ilp")
        direct, info_direct = select(index, labels, score, f, **kwargs, solver="direct")
        auto, info_auto = select(index, labels, score, f, **kwargs)
        np.testing.assert_array_equal(direct, ilp)
        np.testing.assert_array_equal(auto, ilp)
        assert (info_ilp["solver"], info_direct["solver"], info_auto["solver"]) == (
            "pulp-cbc",
            "direct",
            "direct",
        )
        same = ("size", "per_class", "objective", "constraints", "n_excluded", "n_variables")
        assert {k: info_direct[k] for k in same} == {k: info_ilp[k] for k in same}
        assert info_direct["n_constraints"] == info_ilp["n_constraints"]
        if exclude is not None:
            assert not np.isin(direct, exclude).any()


def test_solver_choice_and_the_direct_path_never_calls_cbc(monkeypatch):
    """auto: the sort for quotas/total/exclude, CBC for min_per_class and strata; direct refuses."""
    index = np.arange(30, dtype=np.int64)
    labels = np.repeat([0, 1, 2], 10)
    score = np.arange(30.0)[::-1].copy()
    with_floor, info = select(index, labels, score, 0.3, balanced=False, min_per_class=2)
    assert info["solver"] == "pulp-cbc"
    _, info = select(index, labels, score, 0.3, strata=[("s", labels == 0, 3)])
    assert info["solver"] == "pulp-cbc"

    def no_cbc(_time_limit):
        raise AssertionError("CBC was called")

    monkeypatch.setattr(sel, "_cbc_solver", no_cbc)
    kept, info = select(index, labels, score, 0.3, exclude=np.array([9, 29]))
    np.testing.assert_array_equal(kept, [6, 7, 8, 17, 18, 19, 26, 27, 28])  # 9, 29 excluded
    assert info["solver"] == "direct" and info["status"] == "Optimal"
    kept, info = select(index, labels, score, 0.3, balanced=False, solver="direct")
    np.testing.assert_array_equal(kept, np.arange(21, 30))
    with pytest.raises(InputError, match=r"solver='direct'.*min_per_class=2.*'auto' or 'ilp'"):
        select(index, labels, score, 0.3, balanced=False, min_per_class=2, solver="direct")
    with pytest.raises(InputError, match=r"solver='direct'.*strata\['s'\]=3"):
        select(index, labels, score, 0.3, strata=[("s", labels == 0, 3)], solver="direct")
    with pytest.raises(InputError, match=r"solver.*'auto'.*'ilp'.*'direct'.*'cbc'"):
        select(index, labels, score, 0.3, solver="cbc")
    with pytest.raises(InputError, match=r"exclude: infeasible"):  # prechecks still apply
        select(index, labels, score, 1.0, exclude=np.array([3]), solver="direct")
    assert with_floor.shape[0] == 9


# ------------------------------------------------------------------------------------------
# direction, infinities, NaN


def test_direction_known_answer():
    index = np.arange(100, 112, dtype=np.int64)
    labels = np.array([0] * 6 + [1] * 6, dtype=np.int64)
    score = np.array([9, 1, 8, 2, 7, 3, 0.5, 0.1, 0.9, 0.2, 0.8, 0.3])
    low, info = select(index, labels, score, 0.5, keep="low")
    np.testing.assert_array_equal(low, [101, 103, 105, 107, 109, 111])
    high, _ = select(index, labels, score, 0.5, keep="high")
    np.testing.assert_array_equal(high, [100, 102, 104, 106, 108, 110])
    assert info["per_class"] == {"0": 3, "1": 3}
    # unbalanced: the 6 globally smallest scores are all in class 1
    low_u, info_u = select(index, labels, score, 0.5, keep="low", balanced=False)
    np.testing.assert_array_equal(low_u, np.arange(106, 112))
    assert info_u["per_class"] == {"0": 0, "1": 6}
    assert info_u["empty_classes"] == [0]
    assert "quotas" not in info_u


def test_infinities_order_correctly():
    index = np.arange(8, dtype=np.int64)
    labels = np.zeros(8, dtype=np.int64)
    score = np.array([np.inf, 3.0, -np.inf, 1e308, -1e308, np.inf, 0.0, -np.inf])
    low, _ = select(index, labels, score, 0.25, keep="low")
    np.testing.assert_array_equal(low, [2, 7])
    low3, _ = select(index, labels, score, 3 / 8, keep="low")
    np.testing.assert_array_equal(low3, [2, 4, 7])
    high, _ = select(index, labels, score, 0.25, keep="high")
    np.testing.assert_array_equal(high, [0, 5])
    high3, _ = select(index, labels, score, 3 / 8, keep="high")
    np.testing.assert_array_equal(high3, [0, 3, 5])
    np.testing.assert_array_equal(greedy_select(index, labels, score, 3 / 8, keep="high"), high3)


def test_nan_rejected_naming_count_and_first():
    index = np.array([5, 6, 7, 8, 9], dtype=np.int64)
    score = np.array([0.0, 1.0, 2.0, np.nan, np.nan])
    with pytest.raises(InputError, match=r"2 NaN.*position 3.*index 8"):
        select(index, np.zeros(5, dtype=np.int64), score, 0.5)
    with pytest.raises(InputError, match="NaN"):
        greedy_select(index, np.zeros(5, dtype=np.int64), score, 0.5)


# ------------------------------------------------------------------------------------------
# sizes, full, info


def test_exact_total_per_class_and_info():
    rng = np.random.default_rng(3)
    index, labels, score = make_case(rng, sizes=[97, 3, 41, 12, 1])
    for f in (0.01, 0.1, 0.33, 0.5, 0.9):
        kept, info = select(index, labels, score, f)
        n = labels.shape[0]
        total = expected_total(f, n)
        assert kept.shape[0] == total == info["size"]
        quotas = class_quotas(labels, f)
        kept_labels = labels[np.isin(index, kept)]
        for c, q in quotas.items():
            assert int((kept_labels == c).sum()) == q
        assert info["quotas"] == {str(c): q for c, q in quotas.items()}
        assert info["per_class"] == info["quotas"]
        assert info["empty_classes"] == [c for c, q in quotas.items() if q == 0]
        for key in (
            "fraction",
            "n_total",
            "keep",
            "balanced",
            "solver",
            "status",
            "objective",
            "build_seconds",
            "solve_seconds",
            "seed",
        ):
            assert key in info
        assert info["solver"] == "direct" and info["n_total"] == n and info["fraction"] == f
        json.dumps(info, allow_nan=False)  # JSON-serialisable, strictly
        kept_ilp, info_ilp = select(index, labels, score, f, solver="ilp")
        np.testing.assert_array_equal(kept_ilp, kept)
        assert info_ilp["solver"] == "pulp-cbc" and set(info_ilp) == set(info)
        json.dumps(info_ilp, allow_nan=False)
    assert info["empty_classes"] == []  # f = 0.9 keeps some of every class


def test_full_fraction_returns_everything():
    rng = np.random.default_rng(4)
    index, labels, score = make_case(rng)
    for keep in ("low", "high", "random"):
        for balanced in (True, False):
            kept, info = select(index, labels, score, 1.0, keep=keep, balanced=balanced)
            np.testing.assert_array_equal(kept, np.sort(index))
            assert info["size"] == index.shape[0]


def test_empty_classes_reported():
    labels = np.array([0] * 100 + [1] * 3 + [2] * 2, dtype=np.int64)
    index = np.arange(105, dtype=np.int64)
    kept, info = select(index, labels, np.zeros(105), 0.05)
    assert info["empty_classes"] == [1, 2]
    assert info["per_class"] == {"0": 5, "1": 0, "2": 0}
    np.testing.assert_array_equal(kept, np.arange(5))


# ------------------------------------------------------------------------------------------
# random


def test_random_reproducible_and_balanced():
    rng = np.random.default_rng(5)
    index, labels, _ = make_case(rng, sizes=[40, 25, 60, 9])
    a, info_a = select(index, labels, None, 0.3, keep="random", seed=1)
    b, _ = select(index, labels, None, 0.3, keep="random", seed=1)
    c, _ = select(index, labels, None, 0.3, keep="random", seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert info_a["seed"] == 1
    quotas = class_quotas(labels, 0.3)
    for kept in (a, c):
        kept_labels = labels[np.isin(index, kept)]
        assert {k: int((kept_labels == k).sum()) for k in quotas} == quotas
    # the same samples passed in another row order give the same coreset
    perm = rng.permutation(index.shape[0])
    d, _ = select(index[perm], labels[perm], None, 0.3, keep="random", seed=1)
    np.testing.assert_array_equal(a, d)
    # scores, if given, are ignored (even NaN), but must still be aligned
    noise = rng.normal(size=index.shape[0])
    noise[0] = np.nan
    e, _ = select(index, labels, noise, 0.3, keep="random", seed=1)
    np.testing.assert_array_equal(a, e)
    with pytest.raises(InputError, match="score"):
        select(index, labels, noise[1:], 0.3, keep="random", seed=1)
    # many seeds: not stuck on a few sets, and each sample is picked sometimes
    seen = np.zeros(index.shape[0])
    for s in range(30):
        kept = greedy_select(index, labels, None, 0.3, keep="random", seed=s)
        seen += np.isin(index, kept)
    assert (seen > 0).all() and (seen < 30).all()


# ------------------------------------------------------------------------------------------
# constraints


def greedy_with_floor(index, labels, score, f, m):
    """Reference for unbalanced + min_per_class: the m best of each class, then the best rest."""
    order = ranked(index, score, "low")
    total = expected_total(f, labels.shape[0])
    first = np.concatenate([order[labels[order] == c][:m] for c in np.unique(labels)])
    rest = order[~np.isin(order, first)][: total - first.shape[0]]
    return np.sort(index[np.concatenate([first, rest])])


def test_min_per_class():
    index = np.arange(30, dtype=np.int64)
    labels = np.repeat([0, 1, 2], 10)
    score = np.concatenate([np.arange(10), np.arange(10) + 0.5, np.arange(10) + 100.0])
    free, _ = select(index, labels, score, 0.3, balanced=False)
    assert not np.isin(free, index[labels == 2]).any()  # the unconstrained optimum skips class 2
    kept, info = select(index, labels, score, 0.3, balanced=False, min_per_class=2)
    assert kept.shape[0] == 9
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 10, 11, 12, 20, 21])
    np.testing.assert_array_equal(kept, greedy_with_floor(index, labels, score, 0.3, 2))
    assert info["per_class"] == {"0": 4, "1": 3, "2": 2}
    # random cases against the reference (floor + total is a matroid: greedy is optimal)
    rng = np.random.default_rng(11)
    for _ in range(4):
        index, labels, score = make_case(rng, n_classes=4, n_distinct=5)
        kept, _ = select(index, labels, score, 0.3, balanced=False, min_per_class=3)
        np.testing.assert_array_equal(kept, greedy_with_floor(index, labels, score, 0.3, 3))


def test_min_per_class_infeasible():
    index = np.arange(30, dtype=np.int64)
    labels = np.repeat([0, 1, 2], 10)
    score = np.arange(30.0)
    with pytest.raises(InputError, match="min_per_class=4"):  # 3 x 4 > 9 kept
        select(index, labels, score, 0.3, balanced=False, min_per_class=4)
    with pytest.raises(InputError, match="min_per_class=11"):  # more than a class holds
        select(index, labels, score, 1.0, balanced=False, min_per_class=11)
    with pytest.raises(InputError, match="min_per_class=4.*balanced"):  # quotas are 3
        select(index, labels, score, 0.3, min_per_class=4)
    with pytest.raises(InputError, match="min_per_class"):
        select(index, labels, score, 0.3, balanced=False, min_per_class=-1)


def test_exclude():
    index = np.arange(200, 220, dtype=np.int64)
    labels = np.repeat([0, 1], 10)
    score = np.tile(np.arange(10.0), 2)
    kept, info = select(index, labels, score, 0.3, exclude=np.array([200, 201, 211]))
    np.testing.assert_array_equal(kept, [202, 203, 204, 210, 212, 213])
    assert info["n_excluded"] == 3 and info["per_class"] == {"0": 3, "1": 3}
    kept_u, _ = select(index, labels, score, 0.3, balanced=False, exclude=np.array([200, 210]))
    np.testing.assert_array_equal(kept_u, [201, 202, 203, 211, 212, 213])
    with pytest.raises(InputError, match=r"exclude.*not among.*999"):
        select(index, labels, score, 0.3, exclude=np.array([200, 999]))
    with pytest.raises(InputError, match=r"exclude: infeasible.*class 1"):
        select(index, labels, score, 0.3, exclude=np.arange(210, 219))
    with pytest.raises(InputError, match=r"exclude: infeasible"):
        select(index, labels, score, 1.0, balanced=False, exclude=np.array([205]))


def test_strata():
    index = np.arange(20, dtype=np.int64)
    labels = np.zeros(20, dtype=np.int64)
    score = np.arange(20.0)
    hard = score >= 15
    kept, info = select(index, labels, score, 0.5, strata=[("hard", hard, 3)])
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4, 5, 6, 15, 16, 17])
    assert info["strata"] == [{"name": "hard", "count": 3, "mask_size": 5}]
    # counts fixed per part; inside each part the objective still prefers low scores, so the
    # "hard" part contributes its easiest members (a mask of exactly the hardest m samples with
    # count m is how to force the hardest ones in)
    easy = score < 10
    kept, _ = select(index, labels, score, 0.5, strata=[("easy", easy, 7), ("hard", ~easy, 3)])
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4, 5, 6, 10, 11, 12])
    # with balanced quotas across two classes: 3 of the 4 "top" samples, 3 per class
    labels2 = np.repeat([0, 1], 10)
    score2 = np.concatenate([np.arange(10.0), np.arange(10) + 0.5])
    score2[18:] = [80.0, 90.0]  # class 1's top samples are the worst of all
    top = np.tile(np.arange(10) >= 8, 2)
    kept, info = select(index, labels2, score2, 0.3, strata=[("top", top, 3)])
    assert info["per_class"] == {"0": 3, "1": 3}
    # two top samples from class 0 (ranks 16, 17) beat two from class 1 (ranks 18, 19)
    np.testing.assert_array_equal(kept, [0, 8, 9, 10, 11, 18])
    assert info["objective"] == int(sum(20 - _ranks(index, score2)[kept]))
    # a symmetric case has several optimal sets of equal rank sum: still deterministic, feasible
    sym = np.tile(np.arange(10.0), 2)
    first, _ = select(index, labels2, sym, 0.3, strata=[("top", top, 3)])
    again, _ = select(index, labels2, sym, 0.3, strata=[("top", top, 3)])
    np.testing.assert_array_equal(first, again)
    assert int(top[first].sum()) == 3


def _ranks(index, score):
    rank = np.empty(index.shape[0], dtype=np.int64)
    rank[ranked(index, score, "low")] = np.arange(index.shape[0])
    return rank


def test_strata_infeasible():
    index = np.arange(20, dtype=np.int64)
    labels = np.repeat([0, 1], 10)
    score = np.arange(20.0)
    class0 = labels == 0
    with pytest.raises(InputError, match=r"strata\['few'\].*holds only 10"):
        select(index, labels, score, 1.0, strata=[("few", class0, 11)])
    with pytest.raises(InputError, match=r"strata\['many'\].*only 6"):
        select(index, labels, score, 0.3, strata=[("many", np.ones(20, dtype=bool), 7)])
    # each constraint alone is fine, together they are not: the solver says so, by name
    with pytest.raises(InputError, match=r"quotas.*strata\['c0'\]=5.*Infeasible"):
        select(index, labels, score, 0.3, strata=[("c0", class0, 5)])
    with pytest.raises(InputError, match=r"strata"):
        select(index, labels, score, 0.3, strata=[("a", class0, 1), ("a", ~class0, 1)])
    with pytest.raises(InputError, match=r"boolean"):
        select(index, labels, score, 0.3, strata=[("ints", class0.astype(int), 1)])


def test_non_optimal_solver_status_is_an_error(monkeypatch):
    """CBC stopped by the time limit with an incumbent reports status Optimal but solution
    'integer feasible': that must not be returned as a coreset."""

    class StoppedOnTime(pulp.LpSolver):
        def __init__(self, sol_status, status=pulp.LpStatusOptimal):
            super().__init__()
            self.result = (status, sol_status)

        def actualSolve(self, lp, **kwargs):
            for v in lp.variables():
                v.varValue = 1.0
            lp.assignStatus(*self.result)
            return lp.status

    index = np.arange(10, dtype=np.int64)
    args = (index, np.zeros(10, dtype=np.int64), np.arange(10.0), 0.5)
    monkeypatch.setattr(sel, "_cbc_solver", lambda t: StoppedOnTime(pulp.LpSolutionIntegerFeasible))
    with pytest.raises(RuntimeError, match=r"did not prove an optimum.*quotas"):
        select(*args, time_limit=1.0, solver="ilp")
    monkeypatch.setattr(
        sel, "_cbc_solver", lambda t: StoppedOnTime(pulp.LpSolutionNoSolutionFound, 0)
    )
    with pytest.raises(RuntimeError, match=r"Not Solved"):
        select(*args, solver="ilp")
    # a solver claiming optimality with a wrong answer is caught by the re-check
    monkeypatch.setattr(sel, "_cbc_solver", lambda t: StoppedOnTime(pulp.LpSolutionOptimal))
    with pytest.raises(RuntimeError, match=r"violates"):
        select(*args, solver="ilp")
    with pytest.raises(RuntimeError, match=r"violates.*min_per_class=1"):  # auto goes to CBC
        select(*args, balanced=False, min_per_class=1)


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_name_key_and_allowed_values():
    index = np.arange(6, dtype=np.int64)
    labels = np.array([0, 0, 0, 1, 1, 1])
    score = np.arange(6.0)
    with pytest.raises(InputError, match=r"keep.*'low'.*'high'.*'random'.*'median'"):
        select(index, labels, score, 0.5, keep="median")
    with pytest.raises(InputError, match=r"keep"):
        greedy_select(index, labels, score, 0.5, keep="top")
    for bad in (0, 1.01, -1):
        with pytest.raises(InputError, match=r"fraction.*\(0, 1\]"):
            select(index, labels, score, bad)
    with pytest.raises(InputError, match=r"labels.*length 5.*6"):
        select(index, labels[:5], score, 0.5)
    with pytest.raises(InputError, match=r"score.*length 4.*6"):
        select(index, labels, score[:4], 0.5)
    with pytest.raises(InputError, match=r"score.*required.*keep='low'"):
        select(index, labels, None, 0.5)
    with pytest.raises(InputError, match=r"index.*unique"):
        select(np.array([0, 1, 2, 3, 4, 4]), labels, score, 0.5)
    with pytest.raises(InputError, match=r"labels.*integers"):
        select(index, labels.astype(float), score, 0.5)
    with pytest.raises(InputError, match=r"index.*empty"):
        select(np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([]), 0.5)
    with pytest.raises(InputError, match=r"fraction.*rounds to 0"):
        select(index, labels, score, 0.05)
    with pytest.raises(InputError, match=r"time_limit"):
        select(index, labels, score, 0.5, time_limit=0)
    with pytest.raises(InputError, match=r"seed"):
        select(index, labels, None, 0.5, keep="random", seed=-3)
    with pytest.raises(InputError, match=r"balanced"):
        select(index, labels, score, 0.5, balanced="yes")


# ------------------------------------------------------------------------------------------
# hygiene


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_no_pulp_deprecation_warnings():
    # PULP_CBC_CMD() and LpVariable(...) warn in PuLP 3.x (removed in 4.0); select avoids both
    args = (np.arange(10), np.zeros(10, dtype=np.int64), np.arange(10.0), 0.3)
    kept, info = select(*args, solver="ilp")
    np.testing.assert_array_equal(kept, [0, 1, 2])
    assert info["solver"] == "pulp-cbc"


def test_module_does_not_import_torch():
    code = "import sys, robustcore.select; assert 'torch' not in sys.modules, 'torch imported'"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cifar_scale_ilp_equals_greedy_and_stays_small():
    """50,000 samples, 10 classes: the ILP's set is greedy's, solved in seconds, not minutes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 50_000)
    score = rng.gamma(2.0, size=50_000)
    index = np.arange(50_000)
    kept, info = select(index, labels, score, 0.1, keep="low", solver="ilp")
    assert np.array_equal(kept, greedy_select(index, labels, score, 0.1, keep="low"))
    assert info["size"] == 5_000 and info["status"] == "Optimal"
    seconds = info["build_seconds"] + info["solve_seconds"]
    print(f"50,000: build {info['build_seconds']:.3f} s, solve {info['solve_seconds']:.3f} s")
    # A loose bound (measured ~0.6 s on 2 cores): catches quadratic model building, not noise.
    assert seconds < 30, seconds
    direct, info_direct = select(index, labels, score, 0.1, keep="low")
    assert np.array_equal(direct, kept) and info_direct["solver"] == "direct"
    assert info_direct["solve_seconds"] < 2, info_direct  # measured ~0.002 s: no program built


def test_hybrid_keeps_each_class_lowest_plus_a_share_of_its_highest():
    from robustcore.select import class_quotas, hybrid_select

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=203)
    index = rng.permutation(1000)[:203]  # ids need not be positions
    score = rng.normal(size=203).round(1)  # rounding makes ties
    kept, info = hybrid_select(index, labels, score, 0.3, hard_share=0.25)
    quotas = class_quotas(labels, 0.3)
    assert len(kept) == sum(quotas.values()) == info["size"]
    kept_set = set(kept.tolist())
    for c, q in quotas.items():
        # Reference: a plain loop over the class's samples sorted by (score, id).
        members = sorted(
            (float(s), int(i)) for s, i, y in zip(score, index, labels, strict=True) if y == c
        )
        n_hard = int(q * 0.25 + 0.5)
        easy = [i for _, i in members[: q - n_hard]]
        hard = [i for _, i in sorted(members, key=lambda m: (-m[0], m[1]))[:n_hard]]
        assert {i for _, i in members} & kept_set == set(easy) | set(hard), c
        assert info["hard_per_class"][str(c)] == n_hard


def test_hybrid_share_zero_is_easy_and_one_is_hard():
    from robustcore.select import greedy_select, hybrid_select

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, size=90)
    index = np.arange(90)
    score = rng.normal(size=90)
    low = greedy_select(index, labels, score, 0.2, keep="low")
    high = greedy_select(index, labels, score, 0.2, keep="high")
    assert np.array_equal(hybrid_select(index, labels, score, 0.2, hard_share=0.0)[0], low)
    assert np.array_equal(hybrid_select(index, labels, score, 0.2, hard_share=1.0)[0], high)
    with pytest.raises(InputError, match="hard_share"):
        hybrid_select(index, labels, score, 0.2, hard_share=1.5)
