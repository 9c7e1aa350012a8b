"""Figures: files written, numbers checked against hand computations, and readable: colour with
markers, labels that avoid each other, informative labels, axes that show small differences."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustcore.io import InputError
from robustcore.report import figures, plots


def _assert_saved(stem) -> None:
    """stem.png and stem.pdf exist, are non-empty, and nothing else was left behind."""
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        assert path.is_file() and path.stat().st_size > 0, path
    assert sorted(p.name for p in stem.parent.iterdir()) == [stem.name + ".pdf", stem.name + ".png"]


def test_hardness_examples_indices_ties_and_class_spacing(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.permutation(np.repeat(np.arange(10), 30))
    score = rng.random(n)
    members = np.flatnonzero(labels == 4)
    # Ties at both ends of class 4: the lower index must come first.
    score[members[[7, 2]]] = -1.0
    score[members[[5, 9]]] = 5.0
    images = rng.integers(0, 256, size=(n, 1, 6, 6), dtype=np.uint8)
    names = [f"class {c}" for c in range(10)]
    stem = tmp_path / "fig1"
    out = figures.plot_hardness_examples(images, labels, score, names, stem, 5, 4)
    _assert_saved(stem)
    json.dumps(out)
    # round(linspace(0, 9, 5)) = round([0, 2.25, 4.5, 6.75, 9]) = [0, 2, 4, 7, 9] (half to even).
    assert out["classes"] == [0, 2, 4, 7, 9]
    for c in out["classes"]:
        idx = [i for i in range(n) if labels[i] == c]
        assert out["easy"][str(c)] == sorted(idx, key=lambda i: (score[i], i))[:4]
        assert out["hard"][str(c)] == sorted(idx, key=lambda i: (-score[i], i))[:4]
    assert out["easy"]["4"][:2] == [members[2], members[7]]
    assert out["hard"]["4"][:2] == [members[5], members[9]]


def test_hardness_examples_rgb_all_classes_and_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 2] * 4)
    images = rng.integers(0, 256, size=(12, 3, 5, 5), dtype=np.uint8)
    score = np.arange(12, dtype=float)
    out = figures.plot_hardness_examples(images, labels, score, list("abc"), tmp_path / "f", 5, 2)
    assert out["classes"] == [0, 1, 2]
    assert out["easy"]["1"] == [1, 4] and out["hard"]["1"] == [10, 7]
    with pytest.raises(InputError, match="score"):
        figures.plot_hardness_examples(images, labels, score[:5], list("abc"), tmp_path / "g")
    with pytest.raises(InputError, match="class_names"):
        figures.plot_hardness_examples(images, labels, score, ["a"], tmp_path / "g")


def test_hardness_distribution_skew_and_hand_trajectories(tmp_path):
    rng = np.random.default_rng(2)
    score = rng.lognormal(0.0, 1.0, size=2000)
    out = figures.plot_hardness_distribution(score, rng.random((2000, 4)), tmp_path / "big")
    assert out["skewness"] > 0 and out["p99"] > out["median"]
    assert out["n"] == 2000 and out["median"] == pytest.approx(np.median(score))

    score = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    trajectories = np.arange(10)[:, None] * np.array([1.0, 2.0, 10.0])
    stem = tmp_path / "small" / "fig2"
    out = figures.plot_hardness_distribution(score, trajectories, stem, share=0.2)
    _assert_saved(stem)
    json.dumps(out)
    # k = 2: easy = samples 1, 5; hard = samples 9, 2. Row i is i * (1, 2, 10), mean 13 i / 3.
    assert out["easy_final_median"] == pytest.approx(30.0)
    assert out["hard_final_median"] == pytest.approx(55.0)
    assert out["easy_mean_trajectory_median"] == pytest.approx(13.0)
    assert out["hard_mean_trajectory_median"] == pytest.approx(13 * 5.5 / 3)
    with pytest.raises(InputError, match="share"):
        figures.plot_hardness_distribution(score, trajectories, tmp_path / "x", share=1.0)
    with pytest.raises(InputError, match="trajectories"):
        figures.plot_hardness_distribution(score, trajectories[:9], tmp_path / "x")


def test_rank_agreement_identical_reversed_and_hand_case():
    a = np.random.default_rng(3).random(50)
    same = figures.rank_agreement({"a": a, "b": a.copy()}, 0.1).iloc[0]
    assert same["spearman"] == pytest.approx(1) and same["kendall"] == pytest.approx(1)
    assert same["overlap_low"] == 1 and same["overlap_high"] == 1 and same["chance"] == 0.1
    rev = figures.rank_agreement({"a": a, "b": -a}, 0.3).iloc[0]
    assert rev["spearman"] == pytest.approx(-1) and rev["kendall"] == pytest.approx(-1)
    assert rev["overlap_low"] == 0 and rev["overlap_high"] == 0

    # n = 9, fraction 0.3: k = round(2.7) = 3 (flooring would give 2 and overlap 1/2).
    x = np.arange(9.0)
    y = np.array([0.0, 8, 1, 7, 2, 6, 3, 5, 4])
    table = figures.rank_agreement({"x": x, "y": y, "z": x[::-1].copy()}, 0.3)
    assert list(table.columns) == [
        *["a", "b", "n", "spearman", "kendall", "overlap_low", "overlap_high", "chance"]
    ]
    assert list(zip(table["a"], table["b"], strict=True)) == [("x", "y"), ("x", "z"), ("y", "z")]
    row = table.iloc[0]
    assert row["overlap_low"] == pytest.approx(2 / 3)  # {0,1,2} vs {0,2,4}
    assert row["overlap_high"] == 0  # {6,7,8} vs {1,3,5}
    assert row["chance"] == pytest.approx(1 / 3) and row["n"] == 9


def test_rank_agreement_bad_input(tmp_path):
    with pytest.raises(InputError, match="'a'.*'b'"):
        figures.rank_agreement({"a": np.arange(5.0), "b": np.arange(6.0)}, 0.2)
    with pytest.raises(InputError, match="at least 2"):
        figures.rank_agreement({"a": np.arange(5.0)}, 0.2)
    with pytest.raises(InputError, match="fraction"):
        figures.rank_agreement({"a": np.arange(5.0), "b": np.arange(5.0)}, 0.0)


def test_plot_proxy_agreement_returns_rank_agreement(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.lognormal(size=400)
    scores = {p: base * rng.lognormal(0, 0.3, size=400) for p in ("r18", "r50", "vgg", "wrn")}
    stem = tmp_path / "fig3"
    table = figures.plot_proxy_agreement(scores, 0.1, stem)
    _assert_saved(stem)
    pd.testing.assert_frame_equal(table, figures.rank_agreement(scores, 0.1))
    assert len(table) == 6 and (table["spearman"] > 0.5).all()


class _Ring(nn.Module):
    """Class 1 inside the circle of radius 0.25 around (0.5, 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.linalg.norm(x - 0.5, dim=1)
        return torch.stack([r - 0.25, 0.25 - r], dim=1) * 50


def test_decision_boundary_line_and_circle(tmp_path, device):
    line = nn.Linear(2, 2)
    with torch.no_grad():
        line.weight.copy_(torch.tensor([[0.0, 0.0], [20.0, 0.0]]))
        line.bias.copy_(torch.tensor([0.0, -10.0]))
    line = line.to(device)  # the grid is evaluated where the model is (the ring has no weights)
    rng = np.random.default_rng(5)
    x = rng.random((40, 2)).astype(np.float32)
    y_line = (x[:, 0] > 0.5).astype(np.int64)
    y_ring = (np.hypot(x[:, 0] - 0.5, x[:, 1] - 0.5) < 0.25).astype(np.int64)
    y_ring[:3] = 1 - y_ring[:3]  # three training points the ring model gets wrong
    stem = tmp_path / "fig4"
    out = figures.decision_boundary(
        {"line": line.eval(), "ring": _Ring().eval()},
        {"line": (x, y_line), "ring": (x, y_ring)},
        stem,
    )
    _assert_saved(stem)
    json.dumps(out)
    assert out["line"]["boundary_length"] == pytest.approx(1.0, abs=0.02)
    assert out["line"]["turning"] < 0.05
    assert out["line"]["train_acc"] == 1.0 and out["line"]["n"] == 40
    assert out["ring"]["boundary_length"] == pytest.approx(2 * math.pi * 0.25, rel=0.03)
    assert out["ring"]["turning"] == pytest.approx(2 * math.pi, rel=0.10)
    assert out["ring"]["train_acc"] == pytest.approx(37 / 40)
    with pytest.raises(InputError, match="models, points"):
        figures.decision_boundary({"line": line}, {"other": (x, y_line)}, tmp_path / "x")


def test_feature_projection_easy_close_hard_far(tmp_path):
    rng = np.random.default_rng(6)
    n, d = 240, 6
    labels = np.repeat(np.arange(3), n // 3)
    score = rng.uniform(0.1, 3.0, size=n)
    direction = rng.normal(size=(n, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centres = 10 * np.eye(d)[:3]
    standard = centres[labels] + score[:, None] * direction
    pgd = centres[labels] * 0.5 + score[:, None] * direction
    stem = tmp_path / "fig5"
    out = figures.feature_projection({"standard": standard, "pgd": pgd}, labels, score, stem)
    _assert_saved(stem)
    json.dumps(out)
    assert list(out) == ["standard", "pgd"]
    for values in out.values():
        assert values["easy_centroid_distance"] < 1 < values["hard_centroid_distance"]
        assert 0 < values["explained_variance"] <= 1
    # Independent computation for "standard": per class the 16 lowest / highest of 80.
    dist = np.zeros(n)
    easy, hard = [], []
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        dist[idx] = np.linalg.norm(standard[idx] - standard[idx].mean(axis=0), axis=1)
        easy += sorted(idx, key=lambda i: (score[i], i))[:16]
        hard += sorted(idx, key=lambda i: (-score[i], i))[:16]
    assert out["standard"]["easy_centroid_distance"] == pytest.approx(
        dist[easy].mean() / dist.mean()
    )
    assert out["standard"]["hard_centroid_distance"] == pytest.approx(
        dist[hard].mean() / dist.mean()
    )
    with pytest.raises(InputError, match="features"):
        figures.feature_projection({"standard": standard[:10]}, labels, score, tmp_path / "x")


def _records() -> pd.DataFrame:
    """Two selections x two seeds at f = 0.1 over 6 test samples, plus one seed at f = 0.05."""
    rows = []
    correct = {
        ("random", 0.1, 0): [1, 1, 0, 0, 1, 0],
        ("random", 0.1, 1): [0, 1, 1, 1, 1, 0],
        ("easy", 0.1, 0): [1, 1, 1, 1, 1, 1],
        ("easy", 0.1, 1): [0, 1, 1, 0, 0, 0],
        ("easy", 0.05, 0): [1, 0, 0, 0, 0, 0],
    }
    for (selection, fraction, seed), values in correct.items():
        for index, value in enumerate(values):
            rows.append((selection, fraction, seed, index, bool(value)))
    return pd.DataFrame(rows, columns=["selection", "fraction", "seed", "index", "robust_correct"])


def test_easy_hard_accuracy_hand_table(tmp_path):
    # Ranks by score, ties by lower index: bin 1 = {1, 3}, bin 2 = {4, 2}, bin 3 = {0, 5}.
    test_score = np.array([0.6, 0.1, 0.5, 0.3, 0.3, 0.9])
    stem = tmp_path / "fig6"
    table = figures.easy_hard_accuracy(_records(), test_score, stem, bins=3)
    _assert_saved(stem)
    s = math.sqrt(0.125)  # std (ddof = 1) of {0.5, 1.0} and of {0.0, 0.5}
    expected = pd.DataFrame(
        [
            ("easy", 0.05, 1, 1, 0.0, np.nan),
            ("easy", 0.05, 2, 1, 0.0, np.nan),
            ("easy", 0.05, 3, 1, 0.5, np.nan),
            ("random", 0.1, 1, 2, 0.75, s),
            ("random", 0.1, 2, 2, 0.75, s),
            ("random", 0.1, 3, 2, 0.25, s),
            ("easy", 0.1, 1, 2, 0.75, s),
            ("easy", 0.1, 2, 2, 0.75, s),
            ("easy", 0.1, 3, 2, 0.5, math.sqrt(0.5)),
        ],
        columns=["selection", "fraction", "bin", "seeds", "robust_mean", "robust_std"],
    )
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_easy_hard_accuracy_bad_index(tmp_path):
    records = _records()
    for bad in (6, -1):
        broken = records.copy()
        broken.loc[3, "index"] = bad
        with pytest.raises(InputError, match="index"):
            figures.easy_hard_accuracy(broken, np.arange(6.0), tmp_path / "x", bins=3)


# -- the study figures: style, labels, layout ---------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
    """The figures the study plots would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, stem: kept.append(fig))
    yield kept
    for fig in kept:
        plots.pyplot().close(fig)


def _regime_table(regimes, seeds=3):
    """A study of regimes on full data only: clean ~99 %, robust ~90-94 % (small differences)."""
    rows = []
    for i, regime in enumerate(regimes):
        rows.append(
            {"regime": regime, "selection": "full", "fraction": 1.0, "attack": "pgd",
             "seeds": seeds, "seeds_expected": seeds, "clean_mean": 0.990 - 0.001 * i,
             "clean_std": 0.003, "robust_mean": 0.90 + 0.004 * i, "robust_std": 0.01,
             "train_passes_mean": 1e5 * (i + 1), "train_passes_std": 1e3,
             "masking_flags": 0, "missing": False}
        )  # fmt: skip
    return pd.DataFrame(rows)


REGIMES = ["pgd", "selective_random", "selective_margin", "selective_gradmatch", "standard",
           "trades", "fgsm_rs", "acs", "selective_margin_r50", "selective_random_r50"]  # fmt: skip
REGIME_STUDY = {"name": "sel", "dataset": "digits", "regimes": REGIMES, "seeds": [0, 1, 2],
                "attacks": ["pgd"], "compute_reference": "pgd", "selections": [],
                "fractions": []}  # fmt: skip


def test_arm_styles_pair_a_safe_colour_with_a_marker():
    styles = [plots.arm_style(i) for i in range(30)]
    assert {s["color"] for s in styles} <= set(plots.PALETTE)
    assert len({(s["color"], s["marker"], s["markerfacecolor"]) for s in styles}) == 30
    assert "#F0E442" not in plots.PALETTE, "no yellow on white"


def test_place_labels_never_overlap_and_stay_inside(tmp_path):
    plt = plots.pyplot()
    fig, (ax,) = plots.grid(1)
    rng = np.random.default_rng(0)
    points = [(float(x), float(y)) for x, y in rng.normal(0, 1, (40, 2))]
    points += [(0.0, 0.0)] * 5  # five on one spot
    ax.plot(*zip(*points, strict=True), "o")
    boxes = plots.place_labels(ax, points, [f"label {i}" for i in range(len(points))])
    placed = [b for b in boxes if b is not None]
    frame = ax.get_window_extent()
    assert len(placed) >= 20, "most labels find a place"
    for i, (x0, y0, x1, y1) in enumerate(placed):
        assert frame.x0 <= x0 and x1 <= frame.x1 and frame.y0 <= y0 and y1 <= frame.y1
        for a0, b0, a1, b1 in placed[i + 1 :]:
            assert not (x0 < a1 and a0 < x1 and y0 < b1 and b0 < y1), "labels overlap"
    # The drawn labels are where place_labels says, at the resolution the figure is saved at.
    from matplotlib.text import Text

    fig.canvas.draw()
    drawn = [Text.get_window_extent(t) for t in ax.texts]  # the text, not its leader line
    assert len(drawn) == len(placed)
    for box in placed:
        assert any(abs(t.x0 - box[0]) < 2 and abs(t.y1 - box[3]) < 2 for t in drawn), box
    plt.close(fig)


def test_regime_comparison_labels_name_the_regimes(drawn):
    plots.plot_clean_vs_robust(_regime_table(REGIMES), REGIME_STUDY, None)
    (fig,) = drawn
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert labels and set(labels) <= set(REGIMES), labels
    assert len(labels) == len(set(labels)), "one label per regime"
    points = [c.lines[0] for c in fig.axes[0].containers]  # each arm's markers
    assert len({(p.get_color(), p.get_marker()) for p in points}) == len(REGIMES)


def test_coreset_trade_off_labels_its_fractions(drawn):
    rows = []
    for selection in ("random", "easy"):
        for f in (0.1, 0.5):
            row = _regime_table(["standard"]).iloc[0].to_dict()
            rows.append({**row, "selection": selection, "fraction": f})
    study = {**REGIME_STUDY, "regimes": None, "regime": "standard",
             "selections": ["random", "easy"], "fractions": [0.1, 0.5]}  # fmt: skip
    plots.plot_clean_vs_robust(pd.DataFrame(rows), study, None)
    labels = {t.get_text() for ax in drawn[0].axes for t in ax.texts}
    assert labels <= {"f=0.1", "f=0.5"} and labels


def test_small_differences_get_a_dot_plot_not_a_zero_based_bar_chart(drawn):
    plots.plot_fraction(_regime_table(REGIMES), REGIME_STUDY, None)
    (fig,) = drawn
    clean, robust = fig.axes[:2]
    assert not clean.patches, "no bars"
    assert clean.get_xlim()[0] > 90 and robust.get_xlim()[0] > 80, "the axis fits the data"
    ticks = [t.get_text() for t in clean.get_yticklabels()]
    assert ticks == REGIMES, "one row per arm, the first on top, named"
    assert clean.get_yticks()[0] > clean.get_yticks()[-1]


def test_panels_wrap_at_two_columns_readable_at_report_width(drawn):
    study = {**REGIME_STUDY, "attacks": ["pgd", "pgd40", "aa"]}
    table = pd.concat(
        [_regime_table(REGIMES[:3]).assign(attack=a) for a in study["attacks"]],
        ignore_index=True,
    )
    plots.plot_robust_vs_compute(table, study, None)
    fig = drawn[0]
    width, height = fig.get_size_inches()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3, "one panel per attack"
    assert len({round(ax.get_position().x0, 2) for ax in visible}) == 2, "two columns"
    # At 150 dpi and about 950 px of report width, 8.5-point text stays about 11 px or more.
    scale = min(1.0, 950 / (width * plots.DPI))
    assert 8.5 * plots.DPI / 72 * scale >= 11
