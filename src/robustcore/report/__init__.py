"""Study tables and figures, generated only from the workflow's stage files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from robustcore.io import atomic_path
from robustcore.report import plots, tables
from robustcore.report.index import write_index
from robustcore.report.study import (
    collect,
    comparisons,
    expected_cells,
    study_regimes,
    summarize,
)

__all__ = [
    "collect",
    "comparisons",
    "expected_cells",
    "study_regimes",
    "summarize",
    "write_compute",
    "write_index",
    "write_study",
    "write_top_vs_bottom",
]


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(stem: Path, frame: pd.DataFrame, markdown: str, latex: str) -> None:
    """stem.csv (all digits), stem.md and stem.tex."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    _write_text(stem.with_suffix(".md"), markdown)
    _write_text(stem.with_suffix(".tex"), latex)


def _caption(study: dict[str, Any], what: str) -> str:
    return (
        f"{study['name']} on {study['dataset']}: {what}; mean ± std over "
        f"{len(study['seeds'])} seeds (sample std)."
    )


def write_study(
    out_dir: str | os.PathLike, study: dict[str, Any], eval_files: list[str]
) -> pd.DataFrame:
    """Write the accuracy and comparison tables and the accuracy and trade-off figures."""
    out_dir = Path(out_dir)
    runs = collect(eval_files, study)
    table = summarize(study, runs)
    best = int(study.get("mark_best", 0))
    caption = _caption(study, "clean and robust test accuracy (%)") + (
        f" The best {best} per column (coreset rows) are marked: bold, underlined, italic."
        if best
        else ""
    )
    write_table(
        out_dir / "tables" / "accuracy",
        table,
        tables.markdown_wide(table, study)
        + (f"\nMarks ¹ ² ³: the best {best} per column among coreset rows.\n" if best else ""),
        tables.latex_wide(table, study, caption),
    )
    diffs = comparisons(study, runs)
    shown = tables.comparisons_cells(diffs)
    write_table(
        out_dir / "tables" / "comparisons",
        diffs,
        tables.frame_markdown(shown),
        tables.frame_latex(
            shown, _caption(study, "paired differences a − b over seeds with 95 % t intervals")
        ),
    )
    plots.plot_fraction(table, study, out_dir / "figures" / "accuracy_vs_fraction")
    plots.plot_clean_vs_robust(table, study, out_dir / "figures" / "clean_vs_robust")
    return table


def write_compute(out_dir: str | os.PathLike, study: dict[str, Any], eval_files: list[str]) -> None:
    """tables/compute.* and figures/robust_vs_compute.*: accuracy against counted compute."""
    out_dir = Path(out_dir)
    table = summarize(study, collect(eval_files, study))
    frame = tables.compute_table(table, study)
    reference = study["compute_reference"]
    caption = _caption(
        study,
        f"accuracy (%) and counted training compute (sample forward + backward passes) relative "
        f"to {reference} on full data",
    )
    write_table(
        out_dir / "tables" / "compute",
        frame,
        tables.frame_markdown(frame),
        tables.frame_latex(frame, caption),
    )
    plots.plot_robust_vs_compute(table, study, out_dir / "figures" / "robust_vs_compute")


def write_top_vs_bottom(
    out_dir: str | os.PathLike, study: dict[str, Any], eval_files: list[str]
) -> None:
    """figures/top_vs_bottom.*: each listed score's two ends against random, over fractions."""
    table = summarize(study, collect(eval_files, study))
    scores = study["figures"]["top_vs_bottom"]["scores"]
    plots.plot_top_vs_bottom(table, study, scores, Path(out_dir) / "figures" / "top_vs_bottom")
