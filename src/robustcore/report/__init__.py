"""Study tables and figures, generated only from the workflow's stage files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from robustcore.io import atomic_path
from robustcore.report import pages, plots, tables
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


def write_table(
    stem: Path, frame: pd.DataFrame, markdown: str, latex: str, page: str | None = None
) -> None:
    """stem.csv (all digits), stem.md and stem.tex; stem.html when a page is given."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    _write_text(stem.with_suffix(".md"), markdown)
    _write_text(stem.with_suffix(".tex"), latex)
    if page is not None:
        _write_text(stem.with_suffix(".html"), page)


def _caption(study: dict[str, Any], what: str) -> str:
    return (
        f"{study['name']} on {study['dataset']}: {what}; mean ± std over "
        f"{len(study['seeds'])} seeds (sample std)."
    )


def _setting(study: dict[str, Any]) -> str:
    """What a study trained and how its cells summarize the seeds, for a table's note."""
    regimes = study.get("regimes") or [study.get("regime")]
    return (
        f"Dataset <code>{pages.esc(study['dataset'])}</code>, model "
        f"<code>{pages.esc(study['model'])}</code>, proxy "
        f"<code>{pages.esc(study.get('proxy') or '—')}</code>, regimes "
        f"{', '.join(f'<code>{pages.esc(r)}</code>' for r in regimes)}; mean ± sample std over "
        f"{len(study['seeds'])} seeds."
    )


def comparison_rows(diffs: pd.DataFrame, regimes: bool = False) -> pd.DataFrame:
    """Paired differences as a narrow display table: comparison, setting (with the regime if
    `regimes`), seeds, difference with its interval, verdict."""
    rows = []
    for r in diffs.itertuples():
        where = "full data" if r.fraction == 1.0 else f"f = {r.fraction:g}"
        interval = "missing" if pd.isna(r.diff_mean) else f"{100 * r.diff_mean:+.1f}"
        if not pd.isna(r.diff_low):
            interval += f" [{100 * r.diff_low:+.1f}, {100 * r.diff_high:+.1f}]"
        rows.append(
            {
                "a − b (claimed)": f"{r.a} − {r.b} ({'>' if r.expect == 'greater' else '<'} 0)",
                "setting": f"{r.metric} {r.attack}, {where}"
                + (f", {r.regime}" if regimes and r.regime not in (r.a, r.b) else ""),
                "seeds": str(r.seeds),
                "difference (pp) [95 % CI]": interval,
                "verdict": r.verdict,
            }
        )
    return pd.DataFrame(rows)


def study_page(study: dict[str, Any], table: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """tables/accuracy.html: the accuracy table, then the paired comparisons if there are any."""
    best = int(study.get("mark_best", 0))
    warnings = []
    if bool(table["missing"].any()):
        warnings.append("Some runs are missing or failed: their cells say so.")
    if bool((table["masking_flags"] > 0).any()):
        warnings.append("⚠ marks cells whose evaluation failed a hygiene check (possible masking).")
    note = (
        _setting(study)
        + " Clean accuracy, then robust accuracy under each attack, per coreset fraction."
        + (
            f" The best {best} coreset rows per column are marked ¹ ² ³ (bold, underlined, italic)."
            if best
            else ""
        )
        + "".join(f" <b>{pages.esc(w)}</b>" for w in warnings)
    )
    body = [pages.wide_table(table, study)]
    if len(diffs):
        body += [
            "<h2>Paired comparisons: a − b in percentage points</h2>",
            '<p class="note">Paired by seed; the 95 % Student-t interval of the mean difference. '
            "<i>supports</i>: the interval excludes 0 on the claimed side; <i>contradicts</i>: on "
            "the other side; <i>inconclusive</i>: it contains 0 (or fewer than two seeds).</p>",
            pages.frame_table(comparison_rows(diffs, len(study_regimes(study)) > 1), row_headers=1),
        ]
    return pages.page(f"{study['name']}: clean and robust accuracy (%)", body, note)


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
    _write_text(out_dir / "tables" / "accuracy.html", study_page(study, table, diffs))
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
    note = (
        _setting(study) + f" <i>train passes</i>: sample forward + backward passes counted by the "
        f"training loop (attack steps included), millions; <i>compute</i>: relative to "
        f"<code>{pages.esc(reference)}</code> on full data; <i>train time</i>: wall seconds on the "
        "machine that ran the job (not comparable across machines)."
    )
    write_table(
        out_dir / "tables" / "compute",
        frame,
        tables.frame_markdown(frame),
        tables.frame_latex(frame, caption),
        pages.page(
            f"{study['name']}: accuracy and counted compute",
            [pages.frame_table(frame, row_headers=2)],
            note,
        ),
    )
    plots.plot_robust_vs_compute(table, study, out_dir / "figures" / "robust_vs_compute")


def write_top_vs_bottom(
    out_dir: str | os.PathLike, study: dict[str, Any], eval_files: list[str]
) -> None:
    """figures/top_vs_bottom.*: each listed score's two ends against random, over fractions."""
    table = summarize(study, collect(eval_files, study))
    scores = study["figures"]["top_vs_bottom"]["scores"]
    plots.plot_top_vs_bottom(table, study, scores, Path(out_dir) / "figures" / "top_vs_bottom")
