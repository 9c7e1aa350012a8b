"""Tables as self-contained HTML pages: what the HTML report shows inline (in its viewer)."""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

from robustcore.report.tables import MARKS, column_groups, wide_cells

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933;
       margin: 16px 20px; }
h1 { font-size: 18px; margin: 0 0 6px; } h2 { font-size: 15px; margin: 22px 0 6px; }
p.note { color: #4b5563; font-size: 13px; max-width: 62em; margin: 4px 0 10px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e5e7eb; white-space: nowrap; }
thead th { background: #f3f4f6; position: sticky; top: 0; font-weight: 600; }
thead tr.group th { text-align: center; border-bottom: 2px solid #cbd5e1; }
th.row { text-align: left; font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { text-align: left; }
tbody tr:nth-child(even) { background: #f9fafb; }
tbody tr:hover { background: #eef2ff; }
.sd { color: #6b7280; }
.missing { color: #9ca3af; font-style: italic; }
.best1 { font-weight: 700; } .best2 { text-decoration: underline; } .best3 { font-style: italic; }
.verdict { padding: 1px 7px; border-radius: 9px; font-size: 12px; }
.supports { background: #d5ecf7; color: #08466e; }
.contradicts { background: #fbe0d0; color: #7a2e00; }
.inconclusive { background: #eceff3; color: #374151; }
.mixed { background: #f3e3ee; color: #6b2156; }
"""
_NUMBER = re.compile(r"^[\[(]?[−+\-]?\d")
_VERDICTS = ("supports", "contradicts", "inconclusive", "mixed")


def esc(text: Any) -> str:
    """Text escaped for HTML."""
    return html.escape(str(text), quote=True)


def page(title: str, body: list[str], note: str = "") -> str:
    """A complete, self-contained HTML page: a heading, a note and the body's blocks."""
    head = f"<h1>{esc(title)}</h1>" + (f'<p class="note">{note}</p>' if note else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{head}\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def verdict_badge(verdict: str) -> str:
    """A verdict word in a coloured badge (the word itself carries the meaning)."""
    kind = verdict.split()[0] if verdict else ""
    if kind not in _VERDICTS:
        return esc(verdict)
    return f'<span class="verdict {kind}">{esc(verdict)}</span>'


def cell(text: Any, extra: str = "") -> str:
    """One body cell: numbers right-aligned, 'mean ± std' with the std muted, verdicts badged."""
    text = "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text)
    if isinstance(text, str) and text.split(" ")[0] in _VERDICTS:
        return f'<td class="text">{verdict_badge(text)}</td>'
    if text == "missing" or "missing" in text:
        return f'<td class="num missing{extra}">{esc(text)}</td>'
    if _NUMBER.match(text) or text.startswith("n/a"):
        mean, sep, rest = text.partition(" ± ")
        inner = esc(mean) + (f'<span class="sd"> ± {esc(rest)}</span>' if sep else "")
        return f'<td class="num{extra}">{inner}</td>'
    return f'<td class="text{extra}">{esc(text)}</td>'


def frame_table(frame: pd.DataFrame, row_headers: int = 0) -> str:
    """Any small frame of display text as an HTML table (first `row_headers` columns as th)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        shown = [f"{v:g}" if isinstance(v, float) else v for v in values]
        cells = [f'<th class="row">{esc(v)}</th>' for v in shown[:row_headers]]
        cells += [cell(v) for v in shown[row_headers:]]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def wide_table(table: pd.DataFrame, study: dict[str, Any]) -> str:
    """The accuracy table: fractions as column groups, the best ranks marked where asked."""
    cells = wide_cells(table, study)
    groups = column_groups(cells)
    top = '<tr class="group"><th></th><th></th>' + "".join(
        f'<th colspan="{n}">{esc(f)}</th>' for f, n in groups
    )
    second = "<tr><th>regime</th><th>selection</th>" + "".join(
        f"<th>{esc(m)}</th>" for _, m in cells.columns
    )
    body = []
    for (regime, selection), row in cells.iterrows():
        out = [f'<th class="row">{esc(regime)}</th>', f'<th class="row">{esc(selection)}</th>']
        for text in row:
            rank = next((i for i, m in enumerate(MARKS, 1) if text.endswith(m)), 0)
            if rank:
                text = text[: -len(MARKS[rank - 1])]
                inner = cell(text, f" best{rank}" if rank <= 3 else "")
                out.append(inner.replace("</td>", f"<sup>{MARKS[rank - 1]}</sup></td>"))
            else:
                out.append(cell(text))
        body.append("<tr>" + "".join(out) + "</tr>")
    return f"<table><thead>{top}</tr>{second}</tr></thead><tbody>{''.join(body)}</tbody></table>"
