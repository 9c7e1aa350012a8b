"""Study tables as CSV, Markdown and LaTeX: accuracies in %, mean ± std over seeds."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from robustcore.report.study import dynamic_fractions, study_regimes

MARKS = ("¹", "²", "³", "⁴", "⁵")
LATEX_MARKS = (r"\textbf{%s}", r"\underline{%s}", r"\textit{%s}", "%s$^4$", "%s$^5$")


def cell_text(mean: float, std: float, seeds: int, expected: int, scale: float = 100.0) -> str:
    """'mean ± std' (× scale), '(k/n seeds)' when runs are missing, 'missing' when all are."""
    if seeds == 0:
        return "missing"
    text = f"{scale * mean:.1f}" + (f" ± {scale * std:.1f}" if seeds > 1 else "")
    return text if seeds == expected else f"{text} ({seeds}/{expected} seeds)"


def fraction_label(fraction: float) -> str:
    """Column label of a fraction: 'f = 0.1', or 'full' for all data."""
    return "full" if fraction == 1.0 else f"f = {fraction:g}"


def row_order(study: dict[str, Any]) -> list[tuple[str, str]]:
    """(regime, selection) rows in the order the study lists them, full data last per regime."""
    rows = []
    regimes = study_regimes(study)
    for regime in regimes:
        rows += [(regime, s) for s in study["selections"]]
        if regime == regimes[0]:
            rows += [(regime, name) for name in dynamic_fractions(study)]
        if study.get("full", True):
            rows.append((regime, "full"))
    return rows


def column_order(study: dict[str, Any]) -> list[tuple[float, str]]:
    """(fraction, metric) columns: every fraction (full last) × clean and each attack."""
    fractions = sorted(
        {float(f) for f in study["fractions"]} | set(dynamic_fractions(study).values())
    )
    if study.get("full", True):
        fractions.append(1.0)
    metrics = ["clean", *study["attacks"]]
    return [(f, m) for f in fractions for m in metrics]


def best_ranks(table: pd.DataFrame, k: int) -> dict[tuple[str, str, float, str], int]:
    """Rank 1..k of the best means per (fraction, metric) column among non-full rows."""
    ranks: dict[tuple[str, str, float, str], int] = {}
    if k <= 0:
        return ranks
    rows = table[(table["selection"] != "full") & (table["seeds"] > 0)]
    for fraction, part in rows.groupby("fraction"):
        columns = [("clean", part.drop_duplicates(["regime", "selection"]), "clean_mean")]
        columns += [(a, g, "robust_mean") for a, g in part.groupby("attack")]
        for metric, group, value in columns:
            ordered = group.sort_values(value, ascending=False, kind="stable").head(k)
            for rank, row in enumerate(ordered.itertuples(), start=1):
                ranks[(row.regime, row.selection, float(fraction), metric)] = rank
    return ranks


def wide_cells(table: pd.DataFrame, study: dict[str, Any], latex: bool = False) -> pd.DataFrame:
    """Paper layout: one row per (regime, selection), one column per (fraction, metric)."""
    ranks = best_ranks(table, int(study.get("mark_best", 0)))
    by_key = {(r.regime, r.selection, float(r.fraction), r.attack): r for r in table.itertuples()}
    first_attack = study["attacks"][0]
    columns = column_order(study)
    cells = []
    for regime, selection in row_order(study):
        row = []
        for fraction, metric in columns:
            attack = first_attack if metric == "clean" else metric
            r = by_key.get((regime, selection, fraction, attack))
            if r is None:
                row.append("")  # this arm is not trained at this fraction (e.g. full data)
                continue
            prefix = "clean" if metric == "clean" else "robust"
            text = cell_text(
                getattr(r, f"{prefix}_mean"), getattr(r, f"{prefix}_std"), r.seeds, r.seeds_expected
            )
            if metric != "clean" and r.masking_flags:
                text += " ⚠" if not latex else r" $\triangle$"
            rank = ranks.get((regime, selection, fraction, metric))
            if rank:
                text = LATEX_MARKS[rank - 1] % text if latex else f"{text}{MARKS[rank - 1]}"
            row.append(text)
        cells.append(row)
    index = pd.MultiIndex.from_tuples(row_order(study), names=["regime", "selection"])
    header = pd.MultiIndex.from_tuples(
        [(fraction_label(f), m) for f, m in columns], names=["fraction", "metric"]
    )
    return pd.DataFrame(cells, index=index, columns=header)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_wide(table: pd.DataFrame, study: dict[str, Any]) -> str:
    """The accuracy table in Markdown (clean and robust accuracy in %, mean ± std over seeds)."""
    cells = wide_cells(table, study)
    header = ["regime", "selection"] + [f"{f}: {m}" for f, m in cells.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 2 + "---:|" * len(cells.columns),
    ]
    for (regime, selection), row in cells.iterrows():
        lines.append("| " + " | ".join([regime, selection, *(_md_escape(v) for v in row)]) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    """Escape the characters LaTeX treats specially in plain cell text."""
    out = str(text).replace("\\", r"\textbackslash{}")
    for char in "&%$#_{}":
        out = out.replace(char, "\\" + char)
    return out.replace("±", r"$\pm$").replace("⚠", r"$\triangle$")


def column_groups(cells: pd.DataFrame) -> list[tuple[str, int]]:
    """The wide table's fraction groups: (fraction, number of its columns), in column order."""
    groups: list[tuple[str, int]] = []
    for fraction, _ in cells.columns:
        if groups and groups[-1][0] == fraction:
            groups[-1] = (fraction, groups[-1][1] + 1)
        else:
            groups.append((fraction, 1))
    return groups


def latex_wide(table: pd.DataFrame, study: dict[str, Any], caption: str) -> str:
    """The accuracy table as a LaTeX tabular (booktabs) with a caption naming the marks."""
    cells = wide_cells(table, study, latex=True)
    groups = column_groups(cells)
    header = [
        " & & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(f)}}}" for f, n in groups),
        "regime & selection & " + " & ".join(_tex(m) for _, m in cells.columns),
    ]
    # Cells already hold LaTeX marks: escape only their plain parts.
    body = [
        " & ".join([_tex(regime), _tex(selection), *(_latex_cell(v) for v in row)])
        for (regime, selection), row in cells.iterrows()
    ]
    return _latex_table(caption, "ll" + "r" * len(cells.columns), header, body)


def _latex_table(caption: str, columns: str, header: list[str], body: list[str]) -> str:
    """A booktabs table: caption, column spec, header rows and body rows (already LaTeX)."""
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + _tex(caption) + "}"]
    lines += [r"\begin{tabular}{" + columns + "}", r"\toprule"]
    lines += [row + r" \\" for row in header] + [r"\midrule"] + [row + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_cell(text: str) -> str:
    """Escape a cell whose only LaTeX is an outer mark macro or a trailing superscript."""
    for mark in LATEX_MARKS:
        head, _, tail = mark.partition("%s")
        if text.startswith(head) and text.endswith(tail) and (head or tail):
            inner = text[len(head) : len(text) - len(tail)]
            return head + _tex(inner) + tail
    return _tex(text)


def comparisons_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Paired differences as display text: percentage points with their 95 % intervals."""
    rows = []
    for r in frame.itertuples():
        missing = math.isnan(r.diff_mean)
        rows.append(
            {
                "a − b": f"{r.a} − {r.b}",
                "regime": r.regime,
                "fraction": f"{r.fraction:g}",
                "attack": r.attack,
                "metric": r.metric,
                "seeds": str(r.seeds),
                "difference (pp)": "missing" if missing else f"{100 * r.diff_mean:+.1f}",
                "95 % CI (pp)": (
                    "n/a (needs ≥ 2 seeds)"
                    if math.isnan(r.diff_low)
                    else f"[{100 * r.diff_low:+.1f}, {100 * r.diff_high:+.1f}]"
                ),
                "claimed": "a > b" if r.expect == "greater" else "a < b",
                "verdict": r.verdict,
            }
        )
    columns = ["a − b", "regime", "fraction", "attack", "metric", "seeds", "difference (pp)",
               "95 % CI (pp)", "claimed", "verdict"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def compute_table(table: pd.DataFrame, study: dict[str, Any]) -> pd.DataFrame:
    """Accuracy next to counted training compute, relative to the reference regime on full data."""
    first_attack = study["attacks"][0]
    rows = []
    for (regime, selection), _ in wide_cells(table, study).iterrows():
        part = table[(table["regime"] == regime) & (table["selection"] == selection)]
        for fraction, group in part.groupby("fraction", sort=True):
            base = group[group["attack"] == first_attack].iloc[0]
            row = {
                "regime": regime,
                "selection": selection,
                "fraction": fraction_label(fraction),
                "seeds": int(base["seeds"]),
                "clean": cell_text(
                    base["clean_mean"], base["clean_std"], base["seeds"], base["seeds_expected"]
                ),
            }
            for r in group.itertuples():
                row[r.attack] = cell_text(r.robust_mean, r.robust_std, r.seeds, r.seeds_expected)
            row["train passes (M)"] = (
                "missing"
                if math.isnan(base["train_passes_mean"])
                else f"{base['train_passes_mean'] / 1e6:.3f}"
            )
            rel = base.get("compute_rel", math.nan)
            row["compute (× reference)"] = "missing" if math.isnan(rel) else f"{rel:.2f}"
            row["reduction (%)"] = "missing" if math.isnan(rel) else f"{100 * (1 - rel):.0f}"
            row["train time (s)"] = (
                "missing"
                if math.isnan(base["train_seconds_mean"])
                else f"{base['train_seconds_mean']:.2f}"
            )
            rows.append(row)
    return pd.DataFrame(rows)


def frame_markdown(frame: pd.DataFrame) -> str:
    """Any small frame as a Markdown table (text cells as they are)."""
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "---|" * len(frame.columns),
    ]
    for row in frame.itertuples(index=False):
        lines.append(
            "| "
            + " | ".join(_md_escape(f"{v:g}" if isinstance(v, float) else v) for v in row)
            + " |"
        )
    return "\n".join(lines) + "\n"


def frame_latex(frame: pd.DataFrame, caption: str) -> str:
    """Any small frame as a LaTeX tabular."""
    header = [" & ".join(_tex(c) for c in frame.columns)]
    body = [
        " & ".join(_tex(f"{v:g}" if isinstance(v, float) else str(v)) for v in row)
        for row in frame.itertuples(index=False)
    ]
    return _latex_table(caption, "l" * len(frame.columns), header, body)
