"""Figures of the EasyCore paper from loaded arrays: each saved as PNG and PDF, numbers returned."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from robustcore.io import InputError
from robustcore.report.plots import PALETTE, arm_style
from robustcore.report.plots import pyplot as _pyplot
from robustcore.report.plots import save as _save

if TYPE_CHECKING:
    import torch

SCORE_LABEL = "AIGN (input-gradient L2 norm, mean over epochs)"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
STYLES = ["-", "--", ":", "-."]
# Paul Tol's "muted" scheme (safe for colour-blind readers) and a dark grey: up to 10 classes,
# each also with its own marker.
CLASS_COLORS = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
                "#882255", "#AA4499", "#555555"]  # fmt: skip
# Predicted-class regions and the two classes' points (Okabe–Ito blue and vermillion).
REGION_COLORS = ["#d6e6f2", "#f7dccb"]


def _vector(name: str, values: np.ndarray, n: int | None = None) -> np.ndarray:
    """`values` as a finite 1-D float array (of length `n` if given), else InputError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise InputError(f"{name}: length {len(array)} disagrees with the expected {n}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: expected finite values, found NaN or inf")
    return array


def _labels(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """`values` as a 1-D integer label array of length `n`, else InputError."""
    array = np.asarray(values)
    if array.ndim != 1 or len(array) != n:
        raise InputError(f"{name}: expected a 1-D array of length {n}, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name}: expected integer labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def _share(name: str, value: float) -> float:
    """`value` checked to lie strictly inside (0, 1)."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise InputError(f"{name}: expected a fraction in (0, 1), got {value}")
    return value


def _lowest(score: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` lowest scores, ascending, ties by lower position."""
    return np.argsort(score, kind="stable")[:k]


def _highest(score: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` highest scores, descending, ties by lower position."""
    return np.argsort(-score, kind="stable")[:k]


def _count(fraction: float, n: int) -> int:
    """max(1, round(fraction · n)) (round half to even)."""
    return max(1, int(round(fraction * n)))


def shown_classes(labels: np.ndarray, n_classes: int) -> list[int]:
    """`n_classes` distinct labels at positions round(linspace(0, L-1, n)) of the sorted labels."""
    distinct = np.unique(labels)
    if len(distinct) <= n_classes:
        return [int(c) for c in distinct]
    positions = np.round(np.linspace(0, len(distinct) - 1, n_classes)).astype(int)
    return [int(c) for c in distinct[positions]]


def plot_hardness_examples(
    images: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray,
    class_names: list[str],
    stem: Path,
    n_classes: int = 5,
    per_end: int = 10,
) -> dict:
    """Fig. 1: per shown class the `per_end` easiest and hardest images; indices returned.

    Classes shown: the sorted distinct labels at positions round(linspace(0, L-1, n_classes))
    (numpy round, half to even; 10 labels, 5 classes -> [0, 2, 4, 7, 9]); all if L <= n_classes.
    Easiest: ascending score; hardest: descending score; ties by lower index in both.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"images: expected N x C x H x W with C in (1, 3), got {images.shape}")
    n = len(images)
    labels = _labels("labels", labels, n)
    score = _vector("score", score, n)
    if n_classes < 1 or per_end < 1:
        raise InputError(f"n_classes, per_end: expected >= 1, got {n_classes}, {per_end}")
    if n == 0:
        raise InputError("images: expected at least one sample")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise InputError(
            f"class_names: {len(class_names)} names do not cover labels "
            f"{labels.min()}..{labels.max()}"
        )
    classes = shown_classes(labels, n_classes)
    easy: dict[str, list[int]] = {}
    hard: dict[str, list[int]] = {}
    for c in classes:
        members = np.flatnonzero(labels == c)
        k = min(per_end, len(members))
        easy[str(c)] = [int(i) for i in members[_lowest(score[members], k)]]
        hard[str(c)] = [int(i) for i in members[_highest(score[members], k)]]

    plt = _pyplot()
    ncols = 2 * per_end + 1
    fig, grid = plt.subplots(
        len(classes),
        ncols,
        figsize=(0.6 * ncols, 0.7 * len(classes) + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * per_end + [0.4] + [1] * per_end},
    )
    fig.subplots_adjust(left=0.08, right=0.99, top=0.85, bottom=0.02, wspace=0.05, hspace=0.1)
    for row, c in enumerate(classes):
        cells = [*easy[str(c)], *[None] * (per_end - len(easy[str(c)]))]
        cells += [None] + hard[str(c)] + [None] * (per_end - len(hard[str(c)]))
        for col, index in enumerate(cells):
            ax = grid[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if index is None:
                continue
            image = images[index]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
        grid[row, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=9)
    left, right = grid[0, 0].get_position(), grid[0, per_end - 1].get_position()
    top = left.y1 + 0.02
    fig.text((left.x0 + right.x1) / 2, top, "easiest (lowest AIGN)", ha="center", va="bottom")
    left, right = grid[0, per_end + 1].get_position(), grid[0, -1].get_position()
    fig.text((left.x0 + right.x1) / 2, top, "hardest (highest AIGN)", ha="center", va="bottom")
    fig.suptitle(f"Easiest and hardest {per_end} training images per class by AIGN", y=0.99)
    _save(fig, stem)
    return {"classes": classes, "easy": easy, "hard": hard}


def plot_hardness_distribution(
    score: np.ndarray, trajectories: np.ndarray, stem: Path, share: float = 0.1
) -> dict:
    """Fig. 2: score histogram (median, p99) and easy/hard gradient-norm trajectories.

    Easy/hard sets: the k = max(1, round(share · N)) lowest / highest scores, ties by lower index.
    """
    score = _vector("score", score)
    n = len(score)
    share = _share("share", share)
    trajectories = np.asarray(trajectories, dtype=np.float64)
    if trajectories.ndim != 2 or len(trajectories) != n or trajectories.shape[1] < 1:
        raise InputError(
            f"trajectories: expected N x E with N = {n} (len(score)), got {trajectories.shape}"
        )
    if n < 2:
        raise InputError(f"score: expected at least 2 samples, got {n}")
    k = _count(share, n)
    easy = trajectories[_lowest(score, k)]
    hard = trajectories[_highest(score, k)]
    median = float(np.median(score))
    p99 = float(np.percentile(score, 99))
    result = {
        "n": int(n),
        "mean": float(np.mean(score)),
        "median": median,
        "p99": p99,
        "skewness": float(stats.skew(score, bias=True)),
        "share": share,
        "easy_final_median": float(np.median(easy[:, -1])),
        "hard_final_median": float(np.median(hard[:, -1])),
        "easy_mean_trajectory_median": float(np.median(easy.mean(axis=1))),
        "hard_mean_trajectory_median": float(np.median(hard.mean(axis=1))),
    }

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.hist(score, bins=50, color=PALETTE[0], alpha=0.75, edgecolor="white", linewidth=0.4)
    left.axvline(median, color="black", linestyle="--", label=f"median = {median:.3g}")
    left.axvline(p99, color="black", linestyle=":", label=f"99th percentile = {p99:.3g}")
    left.set_xlabel(SCORE_LABEL)
    left.set_ylabel("number of training samples")
    left.set_title(f"Distribution of AIGN (N = {n}, skewness = {result['skewness']:.2f})")
    left.legend(fontsize=8)
    epochs = np.arange(1, trajectories.shape[1] + 1)
    pct = f"{100 * share:g} %"
    for group, name, style, marker, color in (
        (easy, f"easiest {pct} (lowest AIGN)", "-", "o", PALETTE[0]),
        (hard, f"hardest {pct} (highest AIGN)", "--", "s", PALETTE[1]),
    ):
        q1, mid, q3 = np.percentile(group, [25, 50, 75], axis=0)
        right.fill_between(epochs, q1, q3, facecolor=color, linewidth=0, alpha=0.2)
        right.plot(
            epochs, mid, color=color, linestyle=style, marker=marker, markersize=3.5, label=name
        )
    right.set_xlabel("proxy training epoch")
    right.set_ylabel("input-gradient L2 norm (median, IQR band)")
    right.set_title(f"Gradient-norm trajectories of the easiest / hardest {pct}")
    right.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, stem)
    return result


def _check_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """At least two finite 1-D score arrays of one common length >= 2."""
    if len(scores) < 2:
        raise InputError(f"scores: expected at least 2 score arrays, got {len(scores)}")
    arrays = {name: _vector(f"scores[{name!r}]", values) for name, values in scores.items()}
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"scores: arrays must have one length, got {lengths}")
    if next(iter(lengths.values())) < 2:
        raise InputError(f"scores: expected at least 2 samples, got {lengths}")
    return arrays


def rank_agreement(scores: dict[str, np.ndarray], fraction: float) -> pd.DataFrame:
    """Spearman, Kendall tau-b and lowest/highest-k overlap for every pair of score arrays.

    k = max(1, round(fraction · n)); sets ties by lower index; chance = k / n.
    """
    arrays = _check_scores(scores)
    fraction = _share("fraction", fraction)
    names = list(arrays)
    n = len(arrays[names[0]])
    k = _count(fraction, n)
    low = {name: _lowest(a, k) for name, a in arrays.items()}
    high = {name: _highest(a, k) for name, a in arrays.items()}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "n": int(n),
                    "spearman": float(stats.spearmanr(arrays[a], arrays[b])[0]),
                    "kendall": float(stats.kendalltau(arrays[a], arrays[b])[0]),
                    "overlap_low": len(np.intersect1d(low[a], low[b])) / k,
                    "overlap_high": len(np.intersect1d(high[a], high[b])) / k,
                    "chance": k / n,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["a", "b", "n", "spearman", "kendall", "overlap_low", "overlap_high", "chance"],
    )


def plot_proxy_agreement(
    scores: dict[str, np.ndarray], fraction: float, stem: Path
) -> pd.DataFrame:
    """Fig. 3: normalized score distributions and pairwise percentile-rank scatter plots."""
    table = rank_agreement(scores, fraction)
    arrays = _check_scores(scores)
    for name, a in arrays.items():
        if not a.max() > 0:
            raise InputError(f"scores[{name!r}]: expected a positive maximum to normalize by")
    normalized = {name: a / a.max() for name, a in arrays.items()}
    n = len(next(iter(arrays.values())))
    ranks = {name: (stats.rankdata(a) - 1) / (n - 1) * 100 for name, a in arrays.items()}

    plt = _pyplot()
    panels = 1 + len(table)
    ncols = min(2, panels)
    nrows = -(-panels // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    axes = grid.flat
    for spare in list(grid.flat)[panels:]:
        spare.set_visible(False)
    ax = axes[0]
    lo = min(float(v.min()) for v in normalized.values())
    bins = np.linspace(min(lo, 0.0), 1.0, 51)
    for i, (name, values) in enumerate(normalized.items()):
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            color=PALETTE[i % len(PALETTE)],
            linestyle=STYLES[i % len(STYLES)],
            linewidth=1.5,
            label=name,
        )
    ax.set_xlabel("normalized score (score / max score)")
    ax.set_ylabel("number of training samples")
    ax.set_title("Normalized score distribution per proxy")
    ax.legend(fontsize=8)
    pct = f"{100 * fraction:g} %"
    for ax, row in zip(list(grid.flat)[1:panels], table.itertuples(), strict=True):
        ax.scatter(
            ranks[row.a], ranks[row.b], s=2, color=PALETTE[0], alpha=0.5, linewidths=0,
            rasterized=True,
        )  # fmt: skip
        ax.plot([0, 100], [0, 100], color="black", linestyle="--", linewidth=1)
        ax.text(
            0.03,
            0.97,
            f"Spearman ρ = {row.spearman:.3f}\nKendall τ = {row.kendall:.3f}\n"
            f"lowest-{pct} overlap = {row.overlap_low:.3f} (chance {row.chance:.3f})",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "black", "alpha": 0.9},
        )
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"percentile rank by {row.a} (%)")
        ax.set_ylabel(f"percentile rank by {row.b} (%)")
        ax.set_title(f"{row.b} vs {row.a}")
    fig.tight_layout()
    _save(fig, stem)
    return table


def _polyline_measures(vertices: np.ndarray) -> tuple[float, float]:
    """Length and total absolute turning angle (radians) of a polyline; closed if ends meet."""
    steps = np.diff(np.asarray(vertices, dtype=np.float64), axis=0)
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    steps = steps[lengths > 1e-12]
    length = float(lengths.sum())
    if len(vertices) > 3 and np.allclose(vertices[0], vertices[-1]):
        steps = np.vstack([steps, steps[:1]])  # the turn at the closing vertex
    if len(steps) < 2:
        return length, 0.0
    a, b = steps[:-1], steps[1:]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = np.einsum("ij,ij->i", a, b)
    return length, float(np.abs(np.arctan2(cross, dot)).sum())


def _predict_proba(model: torch.nn.Module, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Softmax probability of class 1 for float32 (B, 2) inputs, in batches, without grad."""
    import torch

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = torch.as_tensor(x[start : start + batch], dtype=torch.float32, device=device)
            logits = model(chunk)
            out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def decision_boundary(
    models: dict[str, torch.nn.Module],
    points: dict[str, tuple[np.ndarray, np.ndarray]],
    stem: Path,
    resolution: int = 200,
) -> dict:
    """Fig. 4: each model's 2-D decision regions and p = 0.5 boundary; length and turning measured.

    boundary_length: summed length of the p(class 1) = 0.5 contour on a resolution² grid over
    [0, 1]²; turning: summed |direction change| (radians) along its polylines (closed loops
    include the closing vertex); train_acc: accuracy (fraction) on the model's own points.
    """
    if list(models) != list(points):
        raise InputError(
            f"models, points: expected the same keys in the same order, got {list(models)} "
            f"and {list(points)}"
        )
    if not models:
        raise InputError("models: expected at least one model")
    if int(resolution) < 3:
        raise InputError(f"resolution: expected >= 3, got {resolution}")
    resolution = int(resolution)
    checked = {}
    for name, pair in points.items():
        x, y = pair
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != 2:
            raise InputError(f"points[{name!r}]: expected x of shape N x 2, got {x.shape}")
        y = _labels(f"points[{name!r}] y", y, len(x))
        if not np.isin(y, (0, 1)).all():
            raise InputError(f"points[{name!r}]: expected labels in {{0, 1}}")
        checked[name] = (x, y)

    axis = np.linspace(0.0, 1.0, resolution)
    gx, gy = np.meshgrid(axis, axis)
    grid_points = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)

    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ncols = min(2, len(models))
    nrows = -(-len(models) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.6 * nrows), squeeze=False)
    for spare in list(grid.flat)[len(models) :]:
        spare.set_visible(False)
    result = {}
    for ax, (name, model) in zip(grid.flat, models.items(), strict=False):
        x, y = checked[name]
        prob = _predict_proba(model, grid_points).reshape(resolution, resolution)
        ax.contourf(gx, gy, prob, levels=[0.0, 0.5, 1.0], colors=REGION_COLORS)
        contour = ax.contour(gx, gy, prob, levels=[0.5], colors="black", linewidths=1.5)
        measures = [_polyline_measures(seg) for seg in contour.allsegs[0] if len(seg) > 1]
        length = float(sum(m[0] for m in measures))
        turning = float(sum(m[1] for m in measures))
        accuracy = float(np.mean((_predict_proba(model, x) > 0.5) == (y == 1))) if len(x) else 0.0
        zero, one = x[y == 0], x[y == 1]
        ax.scatter(
            zero[:, 0], zero[:, 1], marker="o", s=18, facecolors="none", edgecolors=PALETTE[0]
        )
        ax.scatter(one[:, 0], one[:, 1], marker="^", s=18, color=PALETTE[1])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("input feature x₁ (unitless, in [0, 1])")
        ax.set_ylabel("input feature x₂ (unitless, in [0, 1])")
        # The measures go in the title: a text box inside the square would hide points.
        ax.set_title(
            f"{name} (n = {len(x)})\nboundary length {length:.2f}, turning {turning:.2f} rad, "
            f"train acc. {accuracy:.1%}",
            fontsize=9,
        )
        result[name] = {
            "boundary_length": length,
            "turning": turning,
            "train_acc": accuracy,
            "n": int(len(x)),
        }
    handles = [
        Patch(facecolor=REGION_COLORS[0], edgecolor="black", label="predicted class 0"),
        Patch(facecolor=REGION_COLORS[1], edgecolor="black", label="predicted class 1"),
        Line2D([], [], color="black", label="boundary p(class 1) = 0.5"),
        Line2D([], [], marker="o", color=PALETTE[0], mfc="none", ls="", label="class 0"),
        Line2D([], [], marker="^", color=PALETTE[1], ls="", label="class 1"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    _save(fig, stem)
    return result


def _per_class_extremes(
    labels: np.ndarray, score: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced easy/hard sets: per class the max(1, round(share · n_c)) lowest/highest."""
    easy, hard = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = _count(share, len(members))
        easy.append(members[_lowest(score[members], k)])
        hard.append(members[_highest(score[members], k)])
    return np.sort(np.concatenate(easy)), np.sort(np.concatenate(hard))


def feature_projection(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    score: np.ndarray,
    stem: Path,
    share: float = 0.2,
) -> dict:
    """Fig. 5: 2-D PCA of each model's features, easy vs hard sets; centroid distances measured.

    Easy/hard: per class the max(1, round(share · n_c)) lowest/highest scores, ties by lower
    index. *_centroid_distance: mean distance of the set to its class centroid (full feature
    space, centroid over all class samples) divided by that mean over all N samples.
    """
    if not features:
        raise InputError("features: expected at least one model's features")
    share = _share("share", share)
    score = _vector("score", score)
    n = len(score)
    labels = _labels("labels", labels, n)
    if n < 2:
        raise InputError(f"score: expected at least 2 samples, got {n}")
    easy, hard = _per_class_extremes(labels, score, share)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)

    projections: dict[str, np.ndarray] = {}
    pc1_share: dict[str, float] = {}
    result: dict[str, dict[str, float]] = {}
    for name, values in features.items():
        f = np.asarray(values, dtype=np.float64)
        if f.ndim != 2 or len(f) != n or f.shape[1] < 2:
            raise InputError(
                f"features[{name!r}]: expected N x D with N = {n} (len(labels)) and D >= 2, "
                f"got {f.shape}"
            )
        centred = f - f.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:2]
        # Deterministic signs: the largest-magnitude loading of each component is positive.
        signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
        components = components * np.where(signs == 0, 1.0, signs)[:, None]
        projected = centred @ components.T
        total = float(np.sum(singular**2))
        explained = float(np.sum(singular[:2] ** 2) / total) if total > 0 else 0.0
        centroids = np.zeros((len(classes), f.shape[1]))
        np.add.at(centroids, inverse, f)
        centroids /= counts[:, None]
        distance = np.linalg.norm(f - centroids[inverse], axis=1)
        mean = float(distance.mean())
        result[name] = {
            "easy_centroid_distance": float(distance[easy].mean() / mean) if mean > 0 else np.nan,
            "hard_centroid_distance": float(distance[hard].mean() / mean) if mean > 0 else np.nan,
            "explained_variance": explained,
        }
        pc1_share[name] = float(singular[0] ** 2 / total) if total > 0 else 0.0
        projections[name] = projected

    plt = _pyplot()
    fig, grid = plt.subplots(
        len(features),
        2,
        figsize=(10, 4.4 * len(features)),
        squeeze=False,
        sharex="row",
        sharey="row",
    )
    pct = f"{100 * share:g} %"
    for row, (name, projected) in enumerate(projections.items()):
        centres = np.zeros((len(classes), 2))
        np.add.at(centres, inverse, projected)
        centres /= counts[:, None]
        pc1 = 100 * pc1_share[name]
        pc2 = 100 * result[name]["explained_variance"] - pc1
        for ax, members, title in (
            (grid[row, 0], easy, f"{name}: easiest {pct} (lowest AIGN)"),
            (grid[row, 1], hard, f"{name}: hardest {pct} (highest AIGN)"),
        ):
            member_class = inverse[members]
            for j, c in enumerate(classes):
                chosen = projected[members[member_class == j]]
                ax.scatter(
                    chosen[:, 0],
                    chosen[:, 1],
                    s=6,
                    marker=MARKERS[j % len(MARKERS)],
                    color=CLASS_COLORS[j % len(CLASS_COLORS)],
                    linewidths=0.3,
                    rasterized=True,
                    label=f"class {c}",
                )
            ax.scatter(centres[:, 0], centres[:, 1], s=120, marker="X", color="black")
            for j, c in enumerate(classes):
                ax.annotate(
                    str(c),
                    centres[j],
                    xytext=(5, 5),
                    textcoords="offset points",
                    fontsize=9,
                    fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "black", "pad": 1},
                )
            ax.set_xlabel(f"principal component 1 ({pc1:.1f} % of feature variance)")
            ax.set_ylabel(f"principal component 2 ({pc2:.1f} % of feature variance)")
            ax.set_title(title)
    handles, names = grid[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2
    )
    fig.suptitle("Penultimate features (2-D PCA); large X = class centroid over all samples")
    fig.tight_layout()
    _save(fig, stem)
    return result


def _quantile_name(bins: int) -> str:
    """The usual name of an equal-count split into `bins` groups."""
    return {2: "half", 3: "tercile", 4: "quartile", 5: "quintile", 10: "decile"}.get(
        bins, f"{bins}-quantile"
    )


def hardness_bins(test_score: np.ndarray, bins: int) -> np.ndarray:
    """Equal-count bin 1..bins of each sample by rank of score (1 = lowest), ties lower index."""
    m = len(test_score)
    rank = np.empty(m, dtype=np.int64)
    rank[np.argsort(test_score, kind="stable")] = np.arange(m)
    return rank * bins // m + 1


def easy_hard_accuracy(
    records: pd.DataFrame, test_score: np.ndarray, stem: Path, bins: int = 5
) -> pd.DataFrame:
    """Fig. 6: robust accuracy (fraction, 0..1) per test-hardness bin, mean ± std over seeds.

    Bin b of sample i: rank(i) · bins // M + 1 with rank by ascending test_score, ties by lower
    index (bin sizes differ by at most 1). Std is the sample std (ddof = 1), NaN for one seed.
    """
    needed = ["selection", "fraction", "seed", "index", "robust_correct"]
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise InputError(f"records: columns {missing} missing; expected {needed}")
    if records.empty:
        raise InputError("records: expected at least one record")
    test_score = _vector("test_score", test_score)
    m = len(test_score)
    if not 1 <= int(bins) <= m:
        raise InputError(f"bins: expected 1 <= bins <= len(test_score) = {m}, got {bins}")
    bins = int(bins)
    index = records["index"].to_numpy()
    if not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"records: column 'index' must be integer, got {index.dtype}")
    bad = (index < 0) | (index >= m)
    if bad.any():
        raise InputError(
            f"records: {int(bad.sum())} 'index' values outside 0..{m - 1} (len(test_score)), "
            f"e.g. {int(index[bad][0])}"
        )
    frame = pd.DataFrame(
        {
            "selection": records["selection"].astype(str).to_numpy(),
            "fraction": records["fraction"].astype(float).to_numpy(),
            "seed": records["seed"].to_numpy(),
            "bin": hardness_bins(test_score, bins)[index],
            "correct": records["robust_correct"].astype(bool).to_numpy().astype(np.float64),
        }
    )
    per_seed = (
        frame.groupby(["selection", "fraction", "seed", "bin"], sort=False)["correct"]
        .mean()
        .reset_index()
    )
    table = (
        per_seed.groupby(["selection", "fraction", "bin"], sort=False)["correct"]
        .agg(seeds="count", robust_mean="mean", robust_std="std")
        .reset_index()
    )
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["selection"]))}
    table = (
        table.assign(_order=table["selection"].map(order))
        .sort_values(["fraction", "_order", "bin"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    table = table[["selection", "fraction", "bin", "seeds", "robust_mean", "robust_std"]]
    table["bin"] = table["bin"].astype(int)
    table["seeds"] = table["seeds"].astype(int)

    plt = _pyplot()
    fractions = list(dict.fromkeys(table["fraction"]))
    ncols = min(2, len(fractions))
    nrows = -(-len(fractions) // ncols)
    width = 6.4 if ncols == 1 else 4.6
    fig, grid = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.8 * nrows), squeeze=False)
    for spare in list(grid.flat)[len(fractions) :]:
        spare.set_visible(False)
    quantile = _quantile_name(bins)
    for ax, fraction in zip(grid.flat, fractions, strict=False):
        part = table[table["fraction"] == fraction]
        for i, selection in enumerate(order):
            line = part[part["selection"] == selection]
            if line.empty:
                continue
            ax.errorbar(
                line["bin"],
                100 * line["robust_mean"],
                yerr=100 * line["robust_std"].fillna(0),
                label=selection,
                capsize=3,
                **arm_style(i),
            )
        ax.set_xticks(range(1, bins + 1))
        ax.set_xlabel(f"test-sample hardness {quantile} (1 = lowest AIGN)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"coreset fraction f = {fraction:g}")
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # every selection once, whichever panel first shows it
    for ax in grid.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    if legend:
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=8,
        )
    fig.suptitle("Robust accuracy by test-sample hardness, mean ± std over seeds")
    fig.tight_layout()
    _save(fig, stem)
    return table


def sparse_fgsm_signal(rates: pd.DataFrame, stem: Path) -> None:
    """Flip rate against k, one line per ε (mean ± std over seeds), from a signal table."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ks = sorted(int(c.removeprefix("flip_k")) for c in rates.columns if c.startswith("flip_k"))
    for i, (eps, group) in enumerate(rates.groupby("eps", sort=True)):
        values = group[[f"flip_k{k}" for k in ks]].to_numpy(dtype=np.float64)
        ax.errorbar(
            ks, values.mean(0), yerr=values.std(0, ddof=1) if len(values) > 1 else None,
            capsize=3, label=f"ε = {eps:.4g}", **arm_style(i),
        )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (perturbed positions)")
    ax.set_ylabel("share of training samples whose prediction flips")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False)
    ax.set_title("Sparse FGSM on the proxy: does it flip anything?")
    _save(fig, stem)
