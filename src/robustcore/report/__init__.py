"""Study tables and figures, generated only from the evaluation files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcore.io import InputError, atomic_path, read_json

METRICS = ("clean_acc", "robust_acc")
ID_COLUMNS = ["regime", "selection", "fraction", "attack"]


def collect(eval_files: list[str | os.PathLike]) -> pd.DataFrame:
    """One row per evaluation file: its run identity and its accuracies."""
    rows = []
    for path in eval_files:
        summary = read_json(path)
        run = summary.get("run", {})
        missing = [k for k in ("regime", "selection", "fraction", "seed", "attack") if k not in run]
        if missing:
            raise InputError(f"{path}: run tags {missing} missing; was it written by evaluate?")
        rows.append(
            {
                **run,
                **{m: summary[m] for m in METRICS},
                "n": summary["n"],
                # The evaluation's hygiene verdict (None: no checks ran, e.g. older files).
                "masking": bool(summary.get("possible_gradient_masking")),
                "path": str(path),
            }
        )
    return pd.DataFrame(rows)


def study_regimes(study: dict[str, Any]) -> list[str]:
    """The regimes a study trains: its `regimes` list, or its single `regime`."""
    return list(study.get("regimes") or [study["regime"]])


def expected_cells(study: dict[str, Any]) -> pd.DataFrame:
    """Every (regime, selection, fraction, attack, seed) the study defines; full data is f = 1."""
    arms = [(s, float(f)) for s in study["selections"] for f in study["fractions"]]
    if study.get("full", True):
        arms.append(("full", 1.0))
    return pd.DataFrame(
        [
            {"regime": r, "selection": s, "fraction": f, "attack": a, "seed": seed}
            for r in study_regimes(study)
            for s, f in arms
            for a in study["attacks"]
            for seed in study["seeds"]
        ]
    )


def summarize(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (selection, fraction, attack); runless cells kept, marked."""
    cells = expected_cells(study)
    if runs.empty:
        runs = pd.DataFrame(columns=[*ID_COLUMNS, "seed", *METRICS, "masking"])
    runs = runs.assign(fraction=runs["fraction"].astype(float))
    merged = cells.merge(
        runs[[*ID_COLUMNS, "seed", *METRICS, "masking"]], on=[*ID_COLUMNS, "seed"], how="left"
    )
    merged["masking"] = merged["masking"].astype("boolean").fillna(False).astype(bool)
    missing = merged[merged["clean_acc"].isna()]
    if len(missing):
        warnings.warn(
            f"study {study['name']}: {len(missing)} of {len(merged)} runs missing or failed: "
            + ", ".join(
                f"{r.regime} {r.selection} f={r.fraction:g} {r.attack} seed {r.seed}"
                for r in missing.head(10).itertuples()
            ),
            stacklevel=2,
        )
    grouped = merged.groupby(ID_COLUMNS, sort=False)
    table = grouped.agg(
        seeds=("clean_acc", "count"),
        seeds_expected=("seed", "count"),
        clean_mean=("clean_acc", "mean"),
        clean_std=("clean_acc", "std"),
        robust_mean=("robust_acc", "mean"),
        robust_std=("robust_acc", "std"),
        masking_flags=("masking", "sum"),
    ).reset_index()
    table["missing"] = table["seeds"] < table["seeds_expected"]
    return table


def _cell(mean: float, std: float, seeds: int, expected: int) -> str:
    """A 'mean ± std' cell in percent, marked when runs are missing."""
    if seeds == 0:
        return "missing"
    text = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else "")
    return text if seeds == expected else f"{text} ({seeds}/{expected} seeds)"


def markdown_table(table: pd.DataFrame) -> str:
    """The study table as Markdown: accuracies in percent, mean ± std over seeds."""
    header = "| regime | selection | fraction | attack | seeds | clean acc. (%) | robust acc. (%) |"
    lines = [header, "|---|---|---:|---|---:|---:|---:|"]
    for r in table.itertuples():
        flag = f" ⚠ possible gradient masking ({r.masking_flags} run(s))" if r.masking_flags else ""
        lines.append(
            f"| {r.regime} | {r.selection} | {r.fraction:g} | {r.attack} | {r.seeds} | "
            f"{_cell(r.clean_mean, r.clean_std, r.seeds, r.seeds_expected)} | "
            f"{_cell(r.robust_mean, r.robust_std, r.seeds, r.seeds_expected)}{flag} |"
        )
    return "\n".join(lines) + "\n"


def plot_fraction(table: pd.DataFrame, study: dict[str, Any], stem: Path) -> None:
    """Clean and robust accuracy against coreset fraction, one line per selection; PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(table["attack"]))
    # Clean accuracy is the same model whatever the attack: one clean panel, one per attack.
    panels = [("clean", attacks[0], "clean accuracy (%)")] + [
        ("robust", attack, f"robust accuracy under {attack} (%)") for attack in attacks
    ]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.8 * nrows), squeeze=False)
    for spare in grid.flat[len(panels) :]:
        spare.set_visible(False)
    axes = grid.reshape(1, -1)[:, : len(panels)]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    regimes = study_regimes(study)
    lines = [(r, s) for r in regimes for s in study["selections"]]
    for ax, (metric, attack, label) in zip(axes[0], panels, strict=True):
        part = table[table["attack"] == attack]
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
                label=selection if len(regimes) == 1 else f"{selection} ({regime})",
                color="black",
                # Every (line style, marker) pair distinct, for up to 32 selections in grey scale.
                linestyle=styles[(i + i // len(markers)) % len(styles)],
                marker=markers[i % len(markers)],
                markerfacecolor="white" if i % 2 else "black",
                capsize=3,
            )
        full = part[(part["selection"] == "full") & (part["seeds"] > 0)]
        for j, row in enumerate(full.itertuples()):
            name = "full data" if len(regimes) == 1 else f"full data ({row.regime})"
            mean = 100 * getattr(row, f"{metric}_mean")
            ax.axhline(mean, color="gray", linestyle=styles[j % 4], linewidth=1, label=name)
        ax.set_xlabel("coreset fraction f (share of training set)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    seeds = len(study["seeds"])
    fig.suptitle(f"{study['name']}: {study['dataset']}, mean ± std over {seeds} seed(s)")
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        with atomic_path(stem.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)


def write_study(
    out_dir: str | os.PathLike, study: dict[str, Any], eval_files: list[str]
) -> pd.DataFrame:
    """Write tables/accuracy.{csv,md} and figures/accuracy_vs_fraction.{png,pdf} for a study."""
    out_dir = Path(out_dir)
    table = summarize(study, collect(eval_files))
    with atomic_path(out_dir / "tables" / "accuracy.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_dir / "tables" / "accuracy.md") as tmp:
        tmp.write_text(markdown_table(table))
    plot_fraction(table, study, out_dir / "figures" / "accuracy_vs_fraction")
    return table


def write_index(out_file: str | os.PathLike, studies: dict[str, Any]) -> None:
    """results/report/index.md: every study's table inline and links to its files."""
    out_file = Path(out_file)
    root = out_file.parent
    lines = ["# robustcore report", ""]
    for name, study in studies.items():
        table_md = root / name / "tables" / "accuracy.md"
        if not table_md.is_file():
            raise InputError(f"{table_md}: study table missing; run the report rule for {name!r}")
        csv = pd.read_csv(root / name / "tables" / "accuracy.csv")
        lines += [
            f"## {name}",
            "",
            f"Dataset `{study['dataset']}`, proxy `{study.get('proxy') or '—'}`, model "
            f"`{study['model']}`, regimes {study_regimes(study)}, seeds {study['seeds']}; "
            "accuracies in % as mean ± std "
            "over seeds (sample std).",
            "",
            table_md.read_text(),
            f"- Table: [CSV]({name}/tables/accuracy.csv), [Markdown]({name}/tables/accuracy.md)",
            f"- Figure: [PNG]({name}/figures/accuracy_vs_fraction.png), "
            f"[PDF]({name}/figures/accuracy_vs_fraction.pdf)",
            "",
            f"![accuracy against fraction]({name}/figures/accuracy_vs_fraction.png)",
            "",
        ]
        if bool(np.any(csv["missing"])):
            lines += ["**Warning:** some runs are missing; their cells are marked.", ""]
        if bool(np.any(csv["masking_flags"] > 0)):
            lines += [
                "**Warning:** the hygiene checks of some evaluations failed (robust accuracy "
                "rising with ε or steps, PGD above FGSM, AutoAttack above PGD, or the attack "
                "losing to random noise): possible gradient masking; cells marked ⚠.",
                "",
            ]
    with atomic_path(out_file) as tmp:
        tmp.write_text("\n".join(lines))
