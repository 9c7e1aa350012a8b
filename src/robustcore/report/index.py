"""results/report/index.md and claims.html: each paper's claims vs this run, then every study."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustcore.io import InputError, atomic_path, read_json
from robustcore.report.pages import esc, verdict_badge

# Figure kinds drawn by their own workflow rules: file stem and what the figure shows.
FIGURES = {
    "hardness": [
        ("hardness_examples", "Fig. 1: easiest and hardest training images per class"),
        ("hardness_distribution", "Fig. 2: AIGN distribution and input-gradient trajectories"),
    ],
    "proxy_agreement": [("proxy_agreement", "Fig. 3: AIGN of two proxies, rank agreement")],
    "decision_boundary": [("decision_boundary", "Fig. 4: decision boundary, all vs easiest")],
    "feature_projection": [("feature_projection", "Fig. 5: penultimate features, easy vs hard")],
    "easy_hard_accuracy": [("easy_hard_accuracy", "Fig. 6: robust accuracy by test hardness")],
    "top_vs_bottom": [("top_vs_bottom", "top vs bottom variants over fractions")],
    "sparse_fgsm_signal": [("sparse_fgsm_signal", "Sparse FGSM flip rates per k and ε")],
}
# The paper figure each kind reproduces (for the landing page's list of figures).
PAPER_FIGURES = {
    "hardness_examples": "EasyCore Fig. 1",
    "hardness_distribution": "EasyCore Fig. 2",
    "proxy_agreement": "EasyCore Fig. 3",
    "decision_boundary": "EasyCore Fig. 4",
    "feature_projection": "EasyCore Fig. 5",
    "easy_hard_accuracy": "EasyCore Fig. 6",
    "top_vs_bottom": "Sparse FGSM Fig. 1",
}
# The numbers behind a figure: a table (CSV, Markdown, LaTeX) or a JSON file.
FIGURE_DATA = {
    "hardness": ["figures/hardness_examples.json", "figures/hardness_distribution.json"],
    "proxy_agreement": ["tables/proxy_agreement.csv", "tables/proxy_agreement.md",
                        "tables/proxy_agreement.tex"],
    "decision_boundary": ["figures/decision_boundary.json"],
    "feature_projection": ["figures/feature_projection.json"],
    "easy_hard_accuracy": ["tables/easy_hard_accuracy.csv", "tables/easy_hard_accuracy.md",
                           "tables/easy_hard_accuracy.tex", "tables/easy_hard_accuracy_diffs.csv"],
    "top_vs_bottom": [],
    "sparse_fgsm_signal": ["tables/sparse_fgsm_signal.csv", "tables/sparse_fgsm_signal.md",
                           "tables/sparse_fgsm_signal.tex"],
}  # fmt: skip
VERDICTS = ("supports", "contradicts", "inconclusive")
VERDICT_RULE = (
    "A row's verdict: <i>supports</i> (or <i>contradicts</i>) when at least one setting "
    "supports (contradicts) the claim and none contradicts (supports) it, <i>mixed</i> when "
    "settings do both, <i>inconclusive</i> when none decides; the counts are the settings' own "
    "verdicts. A setting decides when its paired 95 % interval over seeds excludes 0 (or the "
    "figure's stated rule holds or fails). <i>Measured</i> shows the best-powered setting: the "
    "one with the narrowest interval."
)


@dataclass
class Claim:
    """One claim of a paper next to what this run measured."""

    paper: str  # the study's paper, as its report category names it
    study: str
    source: str  # where the paper states it, e.g. "EasyCore, Table 1"
    claim: str
    measured: str  # at the best-powered setting, or the measurement itself
    verdicts: list[str]  # each setting's (or check's) verdict; empty: not judged
    details: list[str] = field(default_factory=list)  # the Markdown bullets of index.md
    target: str = "tables/accuracy.html"  # the study file the row links to

    @property
    def counts(self) -> dict[str, int]:
        """How many settings support, contradict or leave the claim open."""
        return {v: self.verdicts.count(v) for v in VERDICTS}

    @property
    def verdict(self) -> str:
        """supports / contradicts when decisive settings agree, mixed, inconclusive, not judged."""
        if not self.verdicts:
            return "not judged"
        counts = self.counts
        if counts["supports"] and counts["contradicts"]:
            return "mixed"
        if counts["supports"] or counts["contradicts"]:
            return "supports" if counts["supports"] else "contradicts"
        return "inconclusive"


def _pp(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.1f}"


def _where(fraction: float) -> str:
    return "full data" if fraction == 1.0 else f"f={fraction:g}"


def _verdict_counts(rows: pd.DataFrame) -> str:
    counts = rows["verdict"].value_counts()
    parts = [f"{k} at {int(counts.get(k, 0))}" for k in VERDICTS]
    return f"{', '.join(parts)} of {len(rows)} settings"


def _best_powered(rows: pd.DataFrame) -> pd.Series:
    """The setting with the narrowest finite interval (the most seeds first); else the first."""
    finite = rows[rows["diff_low"].notna() & rows["diff_high"].notna()]
    if finite.empty:
        return rows.iloc[0]
    ranked = finite.assign(_width=finite["diff_high"] - finite["diff_low"])
    ranked = ranked.sort_values(["seeds", "_width"], ascending=[False, True], kind="stable")
    return ranked.iloc[0]


def _interval(row: Any) -> str:
    return f"{_pp(row.diff_mean)} pp [{_pp(row.diff_low)}, {_pp(row.diff_high)}]"


def paper_name(study: dict[str, Any]) -> str:
    """The paper a study belongs to, short: its `paper` up to the parenthesis."""
    return (study.get("paper") or "Other studies").split(" (")[0]


def compare_claims(study: dict[str, Any], diffs: pd.DataFrame) -> list[Claim]:
    """One claim per `compare` entry: each setting's interval, the tally, the best-powered one."""
    claims = []
    for number, entry in enumerate(study.get("compare") or [], start=1):
        rows = diffs[diffs["compare"] == number]
        text = entry.get("claim") or f"{entry['a']} beats {entry['b']}"
        source = entry.get("source") or ""
        details = [f"- **Claim{f' ({source})' if source else ''}:** {text}"]
        if rows.empty:
            details.append("  - measured: no paired runs (missing); see the study's warnings")
            claims.append(
                Claim(paper_name(study), study["name"], source, text, "missing", [], details)
            )
            continue
        measured = "; ".join(
            f"{r.metric} {r.attack} {_where(r.fraction)}: {_interval(r)} {r.verdict}"
            for r in rows.itertuples()
        )
        details += [
            f"  - measured ({entry['a']} − {entry['b']}, paired over seeds, 95 % t interval): "
            f"{measured}",
            f"  - verdict: {_verdict_counts(rows)} (interval excludes 0 as claimed)",
        ]
        best = _best_powered(rows)
        claims.append(
            Claim(
                paper_name(study),
                study["name"],
                source,
                text,
                f"{entry['a']} − {entry['b']}, {best.metric} {best.attack} at "
                f"{_where(best.fraction)}: {_interval(best)}",
                rows["verdict"].tolist(),
                details,
            )
        )
    return claims


def _mean_sd(values: list[float]) -> str:
    series = pd.Series(values, dtype=float)
    if len(series) > 1:
        return f"{series.mean():.3g} ± {series.std(ddof=1):.2g} (n = {len(series)})"
    return f"{series.mean():.3g} (n = 1)"


def figure_claims(study: dict[str, Any], root: Path) -> list[Claim]:
    """Claims the EasyCore paper draws from its figures, next to this run's measurements."""
    figures = study.get("figures") or {}
    paper, name = paper_name(study), study["name"]
    claims = []
    folder = root / name / "figures"
    if "hardness" in figures:
        m = read_json(folder / "hardness_distribution.json")
        right_tail = m["skewness"] > 0 and m["mean"] > m["median"]
        harder = m["hard_final_median"] > m["easy_final_median"]
        verdicts = ["supports" if right_tail else "contradicts"]
        verdicts.append("supports" if harder else "contradicts")
        text = (
            "AIGN has a long-tailed distribution; hard samples keep larger input gradients "
            "through training."
        )
        details = [
            f"- **Claim (EasyCore, Fig. 2):** {text}",
            f"  - measured: skewness {m['skewness']:.2f}, mean {m['mean']:.3g} vs median "
            f"{m['median']:.3g}, 99th percentile {m['p99']:.3g}; last-epoch median input-gradient "
            f"norm easiest {100 * m['share']:.0f} %: {m['easy_final_median']:.3g}, hardest: "
            f"{m['hard_final_median']:.3g}",
            f"  - verdict: {verdicts[0]} (right tail: skewness > 0 and mean > median); "
            f"{verdicts[1]} (hard > easy at the last epoch)",
        ]
        measured = (
            f"skewness {m['skewness']:.2f}; last-epoch gradient norm, hardest "
            f"{m['hard_final_median']:.3g} vs easiest {m['easy_final_median']:.3g}"
        )
        claims.append(
            Claim(paper, name, "EasyCore, Fig. 2", text, measured, verdicts, details,
                  "figures/hardness_distribution.png")
        )  # fmt: skip
    if "proxy_agreement" in figures:
        table = pd.read_csv(root / name / "tables" / "proxy_agreement.csv")
        for (a, b), rows in table.groupby(["a", "b"], sort=False):
            low_vs_chance = (rows["overlap_low"] > rows["chance"]).all()
            agree = "supports" if (rows["spearman"] >= 0.5).all() else "contradicts"
            text = (
                f"AIGN is a property of the data, not of the proxy: proxies {a} and {b} rank "
                "the samples alike."
            )
            details = [
                f"- **Claim (EasyCore, Fig. 3):** {text}",
                f"  - measured over seeds: Spearman ρ {_mean_sd(rows['spearman'].tolist())}, "
                f"Kendall τ {_mean_sd(rows['kendall'].tolist())}, overlap of the easiest "
                f"f = {figures['proxy_agreement']['fraction']:g}: "
                f"{_mean_sd(rows['overlap_low'].tolist())} (chance {rows['chance'].iloc[0]:.2f})",
                f"  - verdict: {agree} (rule: ρ ≥ 0.5 in every seed); easiest-set overlap "
                f"{'above' if low_vs_chance else 'not above'} chance in every seed",
            ]
            measured = f"Spearman ρ {_mean_sd(rows['spearman'].tolist())} (rule: ≥ 0.5 per seed)"
            claims.append(
                Claim(paper, name, "EasyCore, Fig. 3", text, measured, [agree], details,
                      "figures/proxy_agreement.png")
            )  # fmt: skip
    if "decision_boundary" in figures:
        m = read_json(folder / "decision_boundary.json")
        text = (
            "Training on the easiest points gives a less curved decision boundary than "
            "training on all points."
        )
        details = [
            f"- **Claim (EasyCore, Fig. 4):** {text}",
            "  - measured (total turning of the boundary, radians, over seeds): "
            + "; ".join(f"{k}: {_mean_sd(v['turning'])}" for k, v in m["arms"].items())
            + "; boundary length: "
            + "; ".join(f"{k}: {_mean_sd(v['boundary_length'])}" for k, v in m["arms"].items()),
            f"  - verdict: {m['verdict']} ({m['rule']})",
        ]
        diff = m["turning_diff"]
        measured = (
            f"turning, easiest − all: {diff['mean']:+.2f} rad "
            f"[{diff['low']:+.2f}, {diff['high']:+.2f}]"
            if diff.get("low") is not None and not math.isnan(diff["low"])
            else f"turning, easiest − all: {diff['mean']:+.2f} rad"
        )
        claims.append(
            Claim(paper, name, "EasyCore, Fig. 4", text, measured, [m["verdict"]], details,
                  "figures/decision_boundary.png")
        )  # fmt: skip
    if "feature_projection" in figures:
        m = read_json(folder / "feature_projection.json")
        parts = [
            f"{regime}: easy {_mean_sd(v['easy_centroid_distance'])}, hard "
            f"{_mean_sd(v['hard_centroid_distance'])}"
            for regime, v in m["regimes"].items()
        ]
        verdicts = [
            "supports" if max(v["easy_centroid_distance"]) < min(v["hard_centroid_distance"])
            else "inconclusive"
            for v in m["regimes"].values()
        ]  # fmt: skip
        text = (
            "Easy samples form the core cluster around each class centroid; hard samples lie "
            "away from it."
        )
        details = [
            f"- **Claim (EasyCore, Fig. 5):** {text}",
            "  - measured (distance to own class centroid in feature space, 1 = average "
            "sample): " + "; ".join(parts),
            f"  - verdict: {', '.join(verdicts)} (rule: every seed's easy distance below every "
            "seed's hard distance, per regime)",
        ]
        measured = "centroid distance (1 = average sample), " + "; ".join(
            f"{regime}: easy {pd.Series(v['easy_centroid_distance']).mean():.2f} vs hard "
            f"{pd.Series(v['hard_centroid_distance']).mean():.2f}"
            for regime, v in m["regimes"].items()
        )
        claims.append(
            Claim(paper, name, "EasyCore, Fig. 5", text, measured, verdicts, details,
                  "figures/feature_projection.png")
        )  # fmt: skip
    if "easy_hard_accuracy" in figures:
        diffs = pd.read_csv(root / name / "tables" / "easy_hard_accuracy_diffs.csv")
        sides = {
            "easiest": "improves robust accuracy on the easiest test samples (the paper's claim)",
            "hardest": "also improves it on the hardest test samples (the paper's caveat: it "
            "may not)",
        }
        for side, what in sides.items():
            rows = diffs[diffs["bin_name"].str.startswith(side)]
            if rows.empty:
                continue
            first = rows.iloc[0]
            text = f"Training on {first.a} rather than {first.b} {what}."
            details = [
                f"- **Claim (EasyCore, Fig. 6):** training on {first.a} rather than {first.b} "
                f"{what}.",
                f"  - measured ({first.a} − {first.b}, robust accuracy under {first.attack} on "
                f"the {first.bin_name} test samples by AIGN, paired over seeds): "
                + "; ".join(
                    f"f={r.fraction:g}: {_interval(r)} {r.verdict}" for r in rows.itertuples()
                ),
                f"  - verdict: {_verdict_counts(rows)}",
            ]
            best = _best_powered(rows)
            measured = (
                f"{first.a} − {first.b}, {first.attack} on the {first.bin_name} at "
                f"f={best.fraction:g}: {_interval(best)}"
            )
            claims.append(
                Claim(paper, name, "EasyCore, Fig. 6", text, measured, rows["verdict"].tolist(),
                      details, "figures/easy_hard_accuracy.png")
            )  # fmt: skip
    return claims


def compute_claims(study: dict[str, Any], root: Path) -> list[Claim]:
    """The compute each arm used relative to the reference regime (selective AT's claim)."""
    if not study.get("compute_reference"):
        return []
    table = pd.read_csv(root / study["name"] / "tables" / "accuracy.csv")
    first = table[table["attack"] == study["attacks"][0]]
    parts = [
        f"{r.regime if r.selection == 'full' else r.selection}: {100 * r.compute_reduction:.0f} %"
        for r in first.itertuples()
        if not math.isnan(r.compute_reduction) and r.regime != study["compute_reference"]
    ]
    reference = study["compute_reference"]
    text = "Selective AT needs up to 50 % less adversarial computation at equal robustness."
    details = [
        "- **Compute** (the selective-AT paper claims up to 50 % less adversarial computation "
        "at equal robustness):",
        f"  - measured reduction of counted training passes vs {reference} on full data: "
        + "; ".join(parts),
        f"  - robustness at that compute: see the paired comparisons and `{study['name']}` below",
    ]
    return [
        Claim(
            paper_name(study),
            study["name"],
            "Selective AT, compute",
            text,
            f"training passes saved vs {reference}: "
            + "; ".join(parts[:4])
            + (f"; {len(parts) - 4} more in the compute table" if len(parts) > 4 else ""),
            [],
            details,
            "tables/compute.html",
        )
    ]


def study_claims(study: dict[str, Any], root: Path) -> list[Claim]:
    """Every claim a study checks: its comparisons, its figures' claims, its compute."""
    diffs = pd.read_csv(root / study["name"] / "tables" / "comparisons.csv")
    return compare_claims(study, diffs) + figure_claims(study, root) + compute_claims(study, root)


def tally(claims: list[Claim]) -> str:
    """'N claims: k supported, … ' over the rows' verdicts."""
    words = {"supports": "supported", "contradicts": "contradicted", "mixed": "mixed",
             "inconclusive": "inconclusive", "not judged": "not judged"}  # fmt: skip
    counts = pd.Series([c.verdict for c in claims], dtype=object).value_counts()
    parts = [f"{int(counts[k])} {w}" for k, w in words.items() if k in counts]
    return f"{len(claims)} claims: " + ", ".join(parts)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_markdown(claims: list[Claim]) -> list[str]:
    """The compact claims table in Markdown: a row per claim, linked to its study's section."""
    lines = [
        "| paper | claim | source | measured (best-powered setting) | verdict (settings: "
        "supports / contradicts / inconclusive) |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        counts = c.counts
        tally_ = f" ({counts['supports']} / {counts['contradicts']} / {counts['inconclusive']})"
        lines.append(
            f"| {_md_cell(c.paper)} | {_md_cell(c.claim)} | {_md_cell(c.source or '—')} · "
            f"[{c.study}](#{c.study}) | {_md_cell(c.measured)} | **{c.verdict}**"
            f"{tally_ if c.verdicts else ''} |"
        )
    return lines


def _open_link(root: Path, study: dict[str, Any], target: str) -> str:
    """A javascript: link that opens a study's file in the HTML report, and its sidebar list."""
    path = (root / study["name"] / target).as_posix()
    content = "html" if target.endswith(".html") else "img"
    view = [f"content:'{content}'", f"contentPath:results['{path}'].data_uri",
            f"resultPath:'{path}'"]  # fmt: skip
    if study.get("category"):
        view = [
            "navbarMode:'subcategory'",
            f"category:'{study['category']}'",
            f"subcategory:'{study['name']}'",
            *view,
        ]
    return "javascript:void(app.setView({" + ",".join(view) + "}))"


CLAIMS_STYLE = """
#robustcore-claims table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px; }
#robustcore-claims th, #robustcore-claims td { padding: 4px 8px; vertical-align: top;
  border-bottom: 1px solid #e5e7eb; text-align: left; }
#robustcore-claims thead th { background: #f3f4f6; }
#robustcore-claims td.measured { font-variant-numeric: tabular-nums; }
#robustcore-claims td.counts { white-space: nowrap; }
#robustcore-claims .verdict { padding: 1px 7px; border-radius: 9px; font-size: 12px;
  white-space: nowrap; }
#robustcore-claims .supports { background: #d5ecf7; color: #08466e; }
#robustcore-claims .contradicts { background: #fbe0d0; color: #7a2e00; }
#robustcore-claims .inconclusive { background: #eceff3; color: #374151; }
#robustcore-claims .mixed { background: #f3e3ee; color: #6b2156; }
#robustcore-claims p.rule { font-size: 12px; color: #4b5563; }
"""


def claims_html(claims: list[Claim], studies: dict[str, Any], root: Path) -> str:
    """The landing page's claims table (an HTML fragment), each row linked to its study."""
    rows = []
    for paper in dict.fromkeys(c.paper for c in claims):
        group = [c for c in claims if c.paper == paper]
        for i, c in enumerate(group):
            study = {**studies[c.study], "name": c.study}
            counts = c.counts
            cells = [f'<th rowspan="{len(group)}">{esc(paper)}</th>'] if i == 0 else []
            cells += [
                f"<td>{esc(c.claim)}</td>",
                f"<td>{esc(c.source or '—')}<br>"
                f'<a href="{esc(_open_link(root, study, c.target))}">{esc(c.study)}</a></td>',
                f'<td class="measured">{esc(c.measured)}</td>',
                f'<td class="counts">{verdict_badge(c.verdict)}'
                + (
                    f" {counts['supports']} / {counts['contradicts']} / {counts['inconclusive']}"
                    if c.verdicts
                    else ""
                )
                + "</td>",
            ]
            rows.append('<tr class="claim">' + "".join(cells) + "</tr>")
    figures = {}
    for name, study in studies.items():
        for kind in study.get("figures") or {}:
            for stem, _ in FIGURES[kind]:
                if stem in PAPER_FIGURES:
                    link = _open_link(root, {**study, "name": name}, f"figures/{stem}.png")
                    figures.setdefault(PAPER_FIGURES[stem], []).append(
                        f'<a href="{esc(link)}">{esc(name)}</a>'
                    )
    tables = " · ".join(
        f'<a href="{esc(_open_link(root, {**s, "name": n}, "tables/accuracy.html"))}">{esc(n)}</a>'
        for n, s in studies.items()
    )
    return "\n".join(
        [
            '<div id="robustcore-claims">',
            f"<style>{CLAIMS_STYLE}</style>",
            f'<p class="tally"><b>{esc(tally(claims))}.</b></p>',
            '<table id="claims"><thead><tr><th>paper</th><th>claim</th><th>source · study</th>'
            "<th>measured (best-powered setting)</th><th>verdict<br><small>supports / "
            "contradicts / inconclusive</small></th></tr></thead><tbody>",
            *rows,
            "</tbody></table>",
            f'<p class="rule">{VERDICT_RULE}</p>',
            f"<p><b>Each study's tables:</b> {tables}</p>",
            "<p><b>The papers' figures:</b> "
            + "; ".join(f"{fig}: {', '.join(links)}" for fig, links in sorted(figures.items()))
            + "</p>",
            "</div>",
        ]
    )


def write_index(out_file: str | os.PathLike, studies: dict[str, Any]) -> None:
    """Write index.md (claims table, contents, claims, every study) and claims.html beside it."""
    out_file = Path(out_file)
    root = out_file.parent
    claims: list[Claim] = []
    sections: list[str] = []
    for name, study in studies.items():
        study = {**study, "name": name}
        folder = root / name
        table_md = folder / "tables" / "accuracy.md"
        if not table_md.is_file():
            raise InputError(f"{table_md}: study table missing; run the report rule for {name!r}")
        csv = pd.read_csv(folder / "tables" / "accuracy.csv")
        diffs = pd.read_csv(folder / "tables" / "comparisons.csv")
        claims += study_claims(study, root)
        sections += [
            f"## {name}",
            "",
            f"Dataset `{study['dataset']}`, proxy `{study.get('proxy') or '—'}`, model "
            f"`{study['model']}`, regimes {study.get('regimes') or [study.get('regime')]}, "
            f"seeds {study['seeds']}; accuracies in % as mean ± std over seeds (sample std).",
            "",
        ]
        if bool(csv["missing"].any()):
            sections += [
                "**Warning:** some runs are missing or failed; their cells are marked "
                "`missing` or `(k/n seeds)`.",
                "",
            ]
        if bool((csv["masking_flags"] > 0).any()):
            sections += [
                "**Warning:** the hygiene checks of some evaluations failed (robust accuracy "
                "rising with ε or steps, PGD above FGSM, AutoAttack above PGD, or the attack "
                "losing to random noise): possible gradient masking; cells marked ⚠.",
                "",
            ]
        sections += [
            table_md.read_text(),
            f"Tables: accuracy [CSV]({name}/tables/accuracy.csv) · "
            f"[Markdown]({name}/tables/accuracy.md) · [LaTeX]({name}/tables/accuracy.tex) · "
            f"[HTML]({name}/tables/accuracy.html); "
            f"paired comparisons [CSV]({name}/tables/comparisons.csv) · "
            f"[Markdown]({name}/tables/comparisons.md) · [LaTeX]({name}/tables/comparisons.tex)",
            "",
        ]
        if len(diffs):
            sections += [(folder / "tables" / "comparisons.md").read_text(), ""]
        if study.get("compute_reference"):
            sections += [
                "Accuracy and counted compute:",
                "",
                (folder / "tables" / "compute.md").read_text(),
                f"[CSV]({name}/tables/compute.csv) · [LaTeX]({name}/tables/compute.tex)",
                "",
            ]
        figures = [
            ("accuracy_vs_fraction", "accuracy against coreset fraction"),
            ("clean_vs_robust", "clean vs robust accuracy trade-off"),
        ]
        if study.get("compute_reference"):
            figures.append(("robust_vs_compute", "robust accuracy against counted compute"))
        for kind in study.get("figures") or {}:
            figures += FIGURES[kind]
        data = [f for kind in study.get("figures") or {} for f in FIGURE_DATA[kind]]
        if data:
            sections += [
                "Numbers behind the figures: "
                + " · ".join(f"[{Path(f).name}]({name}/{f})" for f in data),
                "",
            ]
        for stem, title in figures:
            sections += [
                f"### {title}",
                "",
                f"![{title}]({name}/figures/{stem}.png)",
                "",
                f"[PNG]({name}/figures/{stem}.png) · [PDF]({name}/figures/{stem}.pdf)",
                "",
            ]
    lines = [
        "# robustcore report",
        "",
        "Every number below was computed by this run from its stage files. Claims are quoted "
        "from the papers; a verdict says whether this run's 95 % interval over seeds agrees.",
        "",
        "## Contents",
        "",
        "- [Claims at a glance](#claims-at-a-glance)",
        "- [Claims vs measured](#claims-vs-measured): every setting of every claim",
        "- Studies: " + " · ".join(f"[{name}](#{name})" for name in studies),
        "",
        "## Claims at a glance",
        "",
        f"{tally(claims)}.",
        "",
        *claims_markdown(claims),
        "",
        VERDICT_RULE.replace("<i>", "*").replace("</i>", "*"),
        "",
        "## Claims vs measured",
        "",
    ]
    for paper in dict.fromkeys(studies[c.study].get("paper") or "other studies" for c in claims):
        lines += [f"### {paper}", ""]
        lines += [
            line
            for c in claims
            if (studies[c.study].get("paper") or "other studies") == paper
            for line in c.details
        ]
        lines.append("")
    lines += sections
    with atomic_path(out_file) as tmp:
        tmp.write_text("\n".join(lines))
    with atomic_path(root / "claims.html") as tmp:
        tmp.write_text(claims_html(claims, studies, root) + "\n")
