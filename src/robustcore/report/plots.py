"""Study figures drawn from the summary table: accuracy curves, trade-offs and compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from robustcore.io import atomic_path
from robustcore.report.study import study_regimes

STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> None:
    """Write a figure as PNG and PDF, atomically, and close it."""
    for suffix in (".png", ".pdf"):
        with atomic_path(stem.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight")
    pyplot().close(fig)


def line_style(i: int) -> dict[str, Any]:
    """The i-th grey-scale line: every (line style, marker, fill) triple distinct up to 32."""
    return {
        "color": "black",
        "linestyle": STYLES[(i + i // len(MARKERS)) % len(STYLES)],
        "marker": MARKERS[i % len(MARKERS)],
        "markerfacecolor": "white" if i % 2 else "black",
    }


def _grid(n_panels: int, width: float = 5.0, height: float = 4.0):
    plt = pyplot()
    ncols = min(3, n_panels)
    nrows = -(-n_panels // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for spare in grid.flat[n_panels:]:
        spare.set_visible(False)
    return fig, list(grid.flat[:n_panels])


def _legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def _suptitle(fig, study: dict[str, Any], what: str) -> None:
    seeds = len(study["seeds"])
    fig.suptitle(f"{study['name']} ({study['dataset']}): {what}, mean ± std over {seeds} seed(s)")
    fig.tight_layout()


def _arms(table: pd.DataFrame, study: dict[str, Any]) -> list[tuple[str, str]]:
    """(regime, selection) lines of non-full arms in table order."""
    part = table[table["selection"] != "full"]
    return list(dict.fromkeys(zip(part["regime"], part["selection"], strict=True)))


def _label(regime: str, selection: str, study: dict[str, Any]) -> str:
    return selection if len(study_regimes(study)) == 1 else f"{selection} ({regime})"


def plot_fraction(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """Clean and robust accuracy against coreset fraction, one line per arm; full data as bars."""
    attacks = list(study["attacks"])
    # Clean accuracy is the same model whatever the attack: one clean panel, one per attack.
    panels = [("clean", attacks[0], "clean accuracy (%)")] + [
        ("robust", a, f"robust accuracy under {a} (%)") for a in attacks
    ]
    fig, axes = _grid(len(panels))
    regimes = study_regimes(study)
    lines = _arms(table, study)
    for ax, (metric, attack, label) in zip(axes, panels, strict=True):
        part = table[table["attack"] == attack]
        ax.set_title(label.replace(" (%)", ""))
        if not lines:  # full data only: one bar per regime
            full = part[part["selection"] == "full"].set_index("regime").loc[regimes]
            ax.bar(
                range(len(regimes)),
                100 * full[f"{metric}_mean"],
                yerr=100 * full[f"{metric}_std"].fillna(0),
                color="lightgray",
                edgecolor="black",
                capsize=3,
            )
            ax.set_xticks(range(len(regimes)), regimes, rotation=30, ha="right")
            ax.set_xlabel("training regime (full data)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, axis="y")
            continue
        for i, (regime, selection) in enumerate(lines):
            line = part[(part["selection"] == selection) & (part["regime"] == regime)]
            line = line.sort_values("fraction")
            ax.errorbar(
                line["fraction"],
                100 * line[f"{metric}_mean"],
                yerr=100 * line[f"{metric}_std"].fillna(0),
                label=_label(regime, selection, study),
                capsize=3,
                **line_style(i),
            )
        full = part[(part["selection"] == "full") & (part["seeds"] > 0)]
        for j, row in enumerate(full.itertuples()):
            name = "full data" if len(regimes) == 1 else f"full data ({row.regime})"
            mean = 100 * getattr(row, f"{metric}_mean")
            ax.axhline(mean, color="gray", linestyle=STYLES[j % 4], linewidth=1, label=name)
        ax.set_xlabel("coreset fraction f (share of training set)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    _suptitle(fig, study, "accuracy")
    save(fig, stem)


def plot_clean_vs_robust(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """The clean–robust trade-off: each arm's fractions joined in order, error bars both ways."""
    attacks = list(study["attacks"])
    fig, axes = _grid(len(attacks))
    arms = list(dict.fromkeys(zip(table["regime"], table["selection"], strict=True)))
    for ax, attack in zip(axes, attacks, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        for i, (regime, selection) in enumerate(arms):
            line = part[(part["regime"] == regime) & (part["selection"] == selection)]
            line = line.sort_values("fraction")
            if line.empty:
                continue
            ax.errorbar(
                100 * line["clean_mean"],
                100 * line["robust_mean"],
                xerr=100 * line["clean_std"].fillna(0),
                yerr=100 * line["robust_std"].fillna(0),
                label=_label(regime, selection, study),
                capsize=2,
                **line_style(i),
            )
            for row in line.itertuples():
                ax.annotate(
                    f"{row.fraction:g}",
                    (100 * row.clean_mean, 100 * row.robust_mean),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
        ax.set_title(f"trade-off under {attack} (labels: fraction f)")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"robust accuracy under {attack} (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    _suptitle(fig, study, "clean vs robust accuracy")
    save(fig, stem)


def plot_top_vs_bottom(
    table: pd.DataFrame, study: dict[str, Any], scores: list[str], stem: Path
) -> None:
    """Each score's top and bottom variants over fractions (clean accuracy, then each attack)."""
    panels = [(s, "clean", study["attacks"][0]) for s in scores] + [
        (s, "robust", a) for a in study["attacks"] for s in scores
    ]
    fig, axes = _grid(len(panels))
    for ax, (score, metric, attack) in zip(axes, panels, strict=True):
        part = table[table["attack"] == attack]
        for i, (selection, name) in enumerate(
            [(f"{score}_top", "top"), (f"{score}_bottom", "bottom"), ("random", "random")]
        ):
            line = part[part["selection"] == selection].sort_values("fraction")
            if line.empty:
                continue
            ax.errorbar(
                line["fraction"],
                100 * line[f"{metric}_mean"],
                yerr=100 * line[f"{metric}_std"].fillna(0),
                label=name,
                capsize=3,
                **line_style(i),
            )
        what = "clean accuracy" if metric == "clean" else f"robust accuracy under {attack}"
        ax.set_title(f"{score}: {what}")
        ax.set_xlabel("coreset fraction f (share of training set)")
        ax.set_ylabel(f"{what} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, study, "top vs bottom variants")
    save(fig, stem)


def plot_robust_vs_compute(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """Robust accuracy against counted training compute, one point per arm, per attack."""
    attacks = list(study["attacks"])
    fig, axes = _grid(len(attacks))
    for ax, attack in zip(axes, attacks, strict=True):
        part = table[(table["attack"] == attack) & (table["seeds"] > 0)]
        part = part[part["train_passes_mean"].notna()]
        for i, row in enumerate(part.itertuples()):
            name = row.regime if row.selection == "full" else f"{row.selection} f={row.fraction:g}"
            style = line_style(i)
            x, y = row.train_passes_mean / 1e6, 100 * row.robust_mean
            ax.errorbar(
                x,
                y,
                xerr=0 if pd.isna(row.train_passes_std) else row.train_passes_std / 1e6,
                yerr=0 if pd.isna(row.robust_std) else 100 * row.robust_std,
                color="black",
                marker=style["marker"],
                markerfacecolor=style["markerfacecolor"],
                linestyle="none",
                capsize=3,
            )
            # Each point named beside it: markers alone do not tell a dozen arms apart in grey.
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_title(f"robust accuracy under {attack} vs compute")
        ax.set_xlabel("training compute (million sample passes, fwd + bwd)")
        ax.set_ylabel(f"robust accuracy under {attack} (%)")
        ax.grid(alpha=0.3)
    _suptitle(fig, study, "robustness per unit of compute")
    save(fig, stem)
