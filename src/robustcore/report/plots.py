"""Study figures drawn from the summary table: accuracy curves, trade-offs and compute.

Every figure is drawn for the HTML report's width (about 950 px): panels wrap at two columns and
are saved at 150 dpi, so a two-column figure is shrunk by about a third and its 9-point text
stays readable. Arms are told apart by colour (Okabe–Ito, safe for colour-blind readers) and
marker shape together; each arm keeps its style in every figure of a study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcore.io import atomic_path
from robustcore.report.study import study_regimes

# Okabe & Ito (2008), without yellow (too faint on white), then black.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
STYLES = ("-", "--", ":", "-.")
GREY = "#6b6b6b"
COLUMNS = 2  # panels per row
PANEL = (4.6, 3.5)  # inches per panel when there are two columns
SINGLE = (6.4, 4.2)  # inches of a figure with one panel
DPI = 150
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, with the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({**RC, "axes.prop_cycle": matplotlib.cycler(color=PALETTE)})
    return plt


def save(fig, stem: Path) -> None:
    """Write a figure as PNG and PDF, atomically, and close it."""
    for suffix in (".png", ".pdf"):
        with atomic_path(stem.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)


def arm_style(i: int) -> dict[str, Any]:
    """The i-th arm: colour and marker together (distinct pairs up to 70), solid then dashed."""
    color = PALETTE[i % len(PALETTE)]
    return {
        "color": color,
        "marker": MARKERS[i % len(MARKERS)],
        "markerfacecolor": color if (i // len(PALETTE)) % 2 == 0 else "white",
        "markeredgecolor": color,
        "linestyle": STYLES[(i // len(PALETTE)) % len(STYLES)],
    }


def grid(n_panels: int, columns: int = COLUMNS, sharey: bool = False):
    """A figure of `n_panels` axes wrapped at `columns` per row (constrained layout), about
    9.2 inches wide from two columns on (narrower panels beyond two)."""
    plt = pyplot()
    ncols = max(1, min(columns, n_panels))
    nrows = -(-n_panels // ncols)
    width, height = SINGLE if ncols == 1 else PANEL
    if ncols > COLUMNS:
        width, height = COLUMNS * PANEL[0] / ncols * 1.15, PANEL[1] * 0.9
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
        dpi=DPI,  # labels are placed in pixels: place them at the resolution they are saved at
    )
    for spare in axes.flat[n_panels:]:
        spare.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def legend_below(fig, handles: list, labels: list[str]) -> None:
    """One legend for the whole figure, under the panels, in up to four columns."""
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False
        )


def _suptitle(fig, study: dict[str, Any], what: str) -> None:
    seeds = len(study["seeds"])
    fig.suptitle(f"{study['name']} ({study['dataset']}): {what}, mean ± std over {seeds} seed(s)")


def errorbar(ax, x, y, xerr=None, yerr=None, **style: Any):
    """ax.errorbar with the arm's style and lighter bars, so that labels stay readable."""
    drawn = ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=2.5, elinewidth=0.9, **style)
    for bars in drawn[2]:
        bars.set_alpha(0.55)
    return drawn


# -- labels that avoid each other ------------------------------------------------------------

# Candidate label positions around a point, nearest first: (dx, dy) directions in points.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_RADII = (4.0, 9.0, 16.0, 26.0, 38.0, 52.0)


def _overlaps(box: tuple[float, float, float, float], others: np.ndarray) -> bool:
    """Whether a box (x0, y0, x1, y1) overlaps any row of an n × 4 array of boxes."""
    x0, y0, x1, y1 = box
    o = others
    return bool(np.any((x0 < o[:, 2]) & (o[:, 0] < x1) & (y0 < o[:, 3]) & (o[:, 1] < y1)))


def _line_boxes(ax, half: float) -> list[tuple[float, float, float, float]]:
    """Small boxes every few pixels along the drawn lines of an axes (display pixels)."""
    boxes = []
    for line in ax.get_lines():
        if line.get_linestyle() in ("None", "none", "", " ") or not line.get_visible():
            continue
        path = line.get_transform().transform(line.get_xydata())
        path = path[np.isfinite(path).all(axis=1)]
        for (x0, y0), (x1, y1) in zip(path[:-1], path[1:], strict=True):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / (2 * half)))
            for t in np.linspace(0.0, 1.0, steps + 1):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                boxes.append((x - half, y - half, x + half, y + half))
    return boxes


def place_labels(
    ax,
    points: list[tuple[float, float]],
    texts: list[str],
    colors: list[str] | None = None,
    fontsize: float = 8.0,
    marker_radius: float = 4.0,
) -> list[tuple[float, float, float, float] | None]:
    """Label points (data coordinates) so that no label overlaps another label, a marker, a
    drawn line or the axes' edge; a label that fits nowhere within 52 points of its marker is
    left out.

    Call after everything that changes the layout (legends, titles) is drawn. Returns each
    label's box in display pixels (x0, y0, x1, y1), None where it was left out.
    """
    from matplotlib import patheffects

    fig = ax.figure
    fig.canvas.draw()  # the final layout: axes positions and data limits
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    pixels = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    r = marker_radius * scale
    taken = [(x - r, y - r, x + r, y + r) for x, y in pixels if np.isfinite([x, y]).all()]
    taken = np.array(taken + _line_boxes(ax, 1.5 * scale), dtype=float).reshape(-1, 4)
    colors = colors or ["black"] * len(texts)
    # The most crowded points first: they get the nearest free spots.
    near = [int((np.hypot(*(pixels - p).T) < 30 * scale).sum()) for p in pixels]
    boxes: list[tuple[float, float, float, float] | None] = [None] * len(texts)
    for k in sorted(range(len(texts)), key=lambda k: -near[k]):
        (x, y), text, color = pixels[k], texts[k], colors[k]
        probe = ax.text(0, 0, text, fontsize=fontsize, transform=None)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        width, height = extent.width, extent.height
        chosen = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                norm = math.hypot(dx, dy)
                ox, oy = dx / norm * radius * scale, dy / norm * radius * scale
                left = x + ox - (width if dx < 0 else width / 2 if dx == 0 else 0)
                bottom = y + oy - (height if dy < 0 else height / 2 if dy == 0 else 0)
                box = (left, bottom, left + width, bottom + height)
                inside = (
                    frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1]
                    and box[3] <= frame.y1
                )  # fmt: skip
                if inside and not _overlaps(box, taken):
                    chosen = (box, ox / scale, oy / scale, dx, dy, radius)
                    break
            if chosen:
                break
        if chosen is None or not np.isfinite([x, y]).all():
            continue
        box, ox, oy, dx, dy, radius = chosen
        label = ax.annotate(
            text,
            ax.transData.inverted().transform((x, y)),
            xytext=(ox, oy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            fontsize=fontsize,
            color=color,
            arrowprops=(
                {"arrowstyle": "-", "color": color, "lw": 0.6, "shrinkA": 0, "shrinkB": 3}
                if radius > _RADII[1]
                else None
            ),
        )
        label.set_in_layout(False)  # labels never move the panels they were placed in
        label.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="white")])
        taken = np.vstack([taken, box])
        boxes[k] = box
    return boxes


# -- the study figures ----------------------------------------------------------------------


def arms(table: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (regime, selection) of the table in its order: the index of an arm's style."""
    return list(dict.fromkeys(zip(table["regime"], table["selection"], strict=True)))


def arm_label(regime: str, selection: str, study: dict[str, Any]) -> str:
    """How figures name an arm: the regime for full data, else the selection (and regime)."""
    if selection == "full":
        return "full data" if len(study_regimes(study)) == 1 else regime
    return selection if len(study_regimes(study)) == 1 else f"{selection} ({regime})"


def _metric_panels(study: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, attack, axis label): clean accuracy once, then robust accuracy per attack."""
    attacks = list(study["attacks"])
    return [("clean", attacks[0], "clean accuracy (%)")] + [
        ("robust", a, f"robust accuracy under {a} (%)") for a in attacks
    ]


def plot_fraction(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """Accuracy against coreset fraction, one line per arm; a dot plot where f does not vary."""
    coreset_fractions = set(table.loc[table["selection"] != "full", "fraction"])
    if len(coreset_fractions) <= 1:
        plot_dots(table, study, stem)
        return
    panels = _metric_panels(study)
    fig, axes = grid(len(panels))
    order = arms(table)
    for ax, (metric, attack, label) in zip(axes, panels, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        ax.set_title(label.replace(" (%)", ""))
        for i, (regime, selection) in enumerate(order):
            line = part[(part["selection"] == selection) & (part["regime"] == regime)]
            if line.empty:
                continue
            name = arm_label(regime, selection, study)
            if selection == "full":
                style = arm_style(i)
                ax.axhline(
                    100 * line[f"{metric}_mean"].iloc[0],
                    color=style["color"],
                    linestyle="--",
                    linewidth=1.2,
                    label=name,
                )
                continue
            line = line.sort_values("fraction")
            errorbar(
                ax,
                line["fraction"],
                100 * line[f"{metric}_mean"],
                yerr=100 * line[f"{metric}_std"].fillna(0),
                label=name,
                markersize=5,
                **arm_style(i),
            )
        ax.set_xlabel("coreset fraction f (share of training set)")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(coreset_fractions))
    legend_below(fig, *axes[0].get_legend_handles_labels())
    _suptitle(fig, study, "accuracy against coreset fraction")
    save(fig, stem)


def plot_dots(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """A dot plot: one row per arm, its mean ± std per metric; the axis fits the data, not 0."""
    panels = _metric_panels(study)
    order = arms(table)
    fig, axes = grid(len(panels), sharey=True)
    rows = np.arange(len(order))[::-1]  # the first arm on top
    reference = study.get("compute_reference")
    for ax, (metric, attack, label) in zip(axes, panels, strict=True):
        part = table[table["attack"] == attack].set_index(["regime", "selection"])
        for i, (arm, y) in enumerate(zip(order, rows, strict=True)):
            if arm not in part.index or part.loc[arm, "seeds"] == 0:
                continue
            row = part.loc[arm]
            style = arm_style(i)
            errorbar(
                ax,
                100 * row[f"{metric}_mean"],
                y,
                xerr=0 if pd.isna(row[f"{metric}_std"]) else 100 * row[f"{metric}_std"],
                markersize=6,
                **{**style, "linestyle": "none"},
            )
            if reference and arm == (reference, "full"):
                ax.axvline(100 * row[f"{metric}_mean"], color=GREY, linestyle=":", linewidth=1)
        ax.set_title(label.replace(" (%)", ""))
        ax.set_xlabel(label)
        ax.grid(axis="y", alpha=0)
        ax.margins(x=0.12)
    fractions = {float(f) for f in table["fraction"]}
    axes[0].set_yticks(rows, [arm_label(r, s, study) for r, s in order])
    axes[0].set_ylim(-0.7, len(order) - 0.3)
    where = (
        "full data"
        if fractions == {1.0}
        else "coreset fraction f = " + ", ".join(f"{f:g}" for f in sorted(fractions - {1.0}))
    )
    note = f"; dotted: {reference} on full data" if reference else ""
    _suptitle(fig, study, f"accuracy per arm ({where}{note})")
    save(fig, stem)


def plot_clean_vs_robust(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """The clean–robust trade-off: an arm's fractions joined in order (labelled f), a single
    point labelled by its arm (a regime, or full data); error bars ± std both ways."""
    attacks = list(study["attacks"])
    fig, axes = grid(len(attacks))
    order = arms(table)
    labels: list[list[tuple[tuple[float, float], str, str]]] = []
    for ax, attack in zip(axes, attacks, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        panel_labels = []
        for i, (regime, selection) in enumerate(order):
            line = part[(part["regime"] == regime) & (part["selection"] == selection)]
            line = line.sort_values("fraction")
            if line.empty:
                continue
            style = arm_style(i)
            name = arm_label(regime, selection, study)
            errorbar(
                ax,
                100 * line["clean_mean"],
                100 * line["robust_mean"],
                xerr=100 * line["clean_std"].fillna(0),
                yerr=100 * line["robust_std"].fillna(0),
                label=name,
                markersize=5,
                **style,
            )
            for row in line.itertuples():
                text = f"f={row.fraction:g}" if len(line) > 1 else name
                xy = (100 * row.clean_mean, 100 * row.robust_mean)
                panel_labels.append((xy, text, style["color"]))
        ax.set_title(f"trade-off under {attack}")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"robust accuracy under {attack} (%)")
        ax.margins(0.08)
        labels.append(panel_labels)
    legend_below(fig, *axes[0].get_legend_handles_labels())
    _suptitle(fig, study, "clean vs robust accuracy")
    for ax, panel_labels in zip(axes, labels, strict=True):
        if panel_labels:
            points, texts, colors = zip(*panel_labels, strict=True)
            place_labels(ax, list(points), list(texts), list(colors))
    save(fig, stem)


def plot_top_vs_bottom(
    table: pd.DataFrame, study: dict[str, Any], scores: list[str], stem: Path
) -> None:
    """Each score's top and bottom variants over fractions (clean accuracy, then each attack)."""
    panels = [(s, "clean", study["attacks"][0]) for s in scores] + [
        (s, "robust", a) for a in study["attacks"] for s in scores
    ]
    # One column per score, one row per metric (at most three columns).
    fig, axes = grid(len(panels), columns=min(3, len(scores)) if len(scores) > 2 else COLUMNS)
    variants = [("top", "top (the paper's end)"), ("bottom", "bottom"), ("random", "random")]
    for ax, (score, metric, attack) in zip(axes, panels, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        for i, (end, name) in enumerate(variants):
            selection = "random" if end == "random" else f"{score}_{end}"
            line = part[part["selection"] == selection].sort_values("fraction")
            if line.empty:
                continue
            errorbar(
                ax,
                line["fraction"],
                100 * line[f"{metric}_mean"],
                yerr=100 * line[f"{metric}_std"].fillna(0),
                label=name,
                markersize=5,
                **arm_style(i),
            )
        ax.set_xticks(sorted(set(part.loc[part["selection"] != "full", "fraction"])))
        what = "clean accuracy" if metric == "clean" else f"robust acc. under {attack}"
        ax.set_title(f"{score}: {what}")
        ax.set_xlabel("coreset fraction f")
        ax.set_ylabel(f"{what} (%)")
    legend_below(fig, *axes[0].get_legend_handles_labels())
    _suptitle(fig, study, "top vs bottom variants")
    save(fig, stem)


def plot_robust_vs_compute(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """Robust accuracy against counted training compute, one labelled point per arm, per attack."""
    attacks = list(study["attacks"])
    fig, axes = grid(len(attacks))
    order = arms(table)
    labels = []
    for ax, attack in zip(axes, attacks, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        part = part[part["train_passes_mean"].notna()]
        panel = []
        for row in part.itertuples():
            i = order.index((row.regime, row.selection))
            style = arm_style(i)
            name = arm_label(row.regime, row.selection, study)
            if row.selection != "full":
                name += f" f={row.fraction:g}"
            x, y = row.train_passes_mean / 1e6, 100 * row.robust_mean
            errorbar(
                ax,
                x,
                y,
                xerr=0 if pd.isna(row.train_passes_std) else row.train_passes_std / 1e6,
                yerr=0 if pd.isna(row.robust_std) else 100 * row.robust_std,
                markersize=6,
                label=name,
                **{**style, "linestyle": "none"},
            )
            panel.append(((x, y), name, style["color"]))
        ax.set_title(f"robust accuracy under {attack} vs compute")
        ax.set_xlabel("training compute (million sample passes, fwd + bwd)")
        ax.set_ylabel(f"robust accuracy under {attack} (%)")
        ax.margins(0.1)
        labels.append(panel)
    legend_below(fig, *axes[0].get_legend_handles_labels())
    _suptitle(fig, study, "robustness per unit of compute")
    for ax, panel in zip(axes, labels, strict=True):
        if panel:
            points, texts, colors = zip(*panel, strict=True)
            place_labels(ax, list(points), list(texts), list(colors))
    save(fig, stem)
