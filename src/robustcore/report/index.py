"""results/report/index.md: every study's tables and figures; each paper's claims vs this run."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from robustcore.io import InputError, atomic_path, read_json

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


def _pp(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.1f}"


def _where(fraction: float) -> str:
    return "full data" if fraction == 1.0 else f"f={fraction:g}"


def _verdict_counts(rows: pd.DataFrame) -> str:
    counts = rows["verdict"].value_counts()
    parts = [f"{k} at {int(counts.get(k, 0))}" for k in ("supports", "contradicts", "inconclusive")]
    return f"{', '.join(parts)} of {len(rows)} settings"


def compare_claims(study: dict[str, Any], diffs: pd.DataFrame) -> list[str]:
    """One bullet per `compare` entry: the claim, each setting's interval, the tally."""
    lines = []
    for number, entry in enumerate(study.get("compare") or [], start=1):
        rows = diffs[diffs["compare"] == number]
        claim = entry.get("claim") or f"{entry['a']} beats {entry['b']}"
        source = f" ({entry['source']})" if entry.get("source") else ""
        lines.append(f"- **Claim{source}:** {claim}")
        if rows.empty:
            lines.append("  - measured: no paired runs (missing); see the study's warnings")
            continue
        measured = "; ".join(
            f"{r.metric} {r.attack} {_where(r.fraction)}: {_pp(r.diff_mean)} pp "
            f"[{_pp(r.diff_low)}, {_pp(r.diff_high)}] {r.verdict}"
            for r in rows.itertuples()
        )
        lines.append(
            f"  - measured ({entry['a']} − {entry['b']}, paired over seeds, 95 % t interval): "
            f"{measured}"
        )
        lines.append(f"  - verdict: {_verdict_counts(rows)} (interval excludes 0 as claimed)")
    return lines


def _mean_sd(values: list[float]) -> str:
    series = pd.Series(values, dtype=float)
    if len(series) > 1:
        return f"{series.mean():.3g} ± {series.std(ddof=1):.2g} (n = {len(series)})"
    return f"{series.mean():.3g} (n = 1)"


def figure_claims(study: dict[str, Any], root: Path) -> list[str]:
    """Claims the EasyCore paper draws from its figures, next to this run's measurements."""
    figures = study.get("figures") or {}
    lines = []
    folder = root / study["name"] / "figures"
    if "hardness" in figures:
        m = read_json(folder / "hardness_distribution.json")
        right_tail = m["skewness"] > 0 and m["mean"] > m["median"]
        lines += [
            "- **Claim (EasyCore, Fig. 2):** AIGN has a long-tailed distribution; hard samples "
            "keep larger input gradients through training.",
            f"  - measured: skewness {m['skewness']:.2f}, mean {m['mean']:.3g} vs median "
            f"{m['median']:.3g}, 99th percentile {m['p99']:.3g}; last-epoch median input-gradient "
            f"norm easiest {100 * m['share']:.0f} %: {m['easy_final_median']:.3g}, hardest: "
            f"{m['hard_final_median']:.3g}",
            f"  - verdict: {'supports' if right_tail else 'contradicts'} (right tail: skewness "
            f"> 0 and mean > median); "
            f"{'supports' if m['hard_final_median'] > m['easy_final_median'] else 'contradicts'}"
            " (hard > easy at the last epoch)",
        ]
    if "proxy_agreement" in figures:
        table = pd.read_csv(root / study["name"] / "tables" / "proxy_agreement.csv")
        for (a, b), rows in table.groupby(["a", "b"], sort=False):
            low_vs_chance = (rows["overlap_low"] > rows["chance"]).all()
            lines += [
                "- **Claim (EasyCore, Fig. 3):** AIGN is a property of the data, not of the "
                f"proxy: proxies {a} and {b} rank the samples alike.",
                f"  - measured over seeds: Spearman ρ {_mean_sd(rows['spearman'].tolist())}, "
                f"Kendall τ {_mean_sd(rows['kendall'].tolist())}, overlap of the easiest "
                f"f = {figures['proxy_agreement']['fraction']:g}: "
                f"{_mean_sd(rows['overlap_low'].tolist())} (chance {rows['chance'].iloc[0]:.2f})",
                f"  - verdict: {'supports' if (rows['spearman'] >= 0.5).all() else 'contradicts'}"
                f" (rule: ρ ≥ 0.5 in every seed); easiest-set overlap "
                f"{'above' if low_vs_chance else 'not above'} chance in every seed",
            ]
    if "decision_boundary" in figures:
        m = read_json(folder / "decision_boundary.json")
        lines += [
            "- **Claim (EasyCore, Fig. 4):** training on the easiest points gives a less curved "
            "decision boundary than training on all points.",
            "  - measured (total turning of the boundary, radians, over seeds): "
            + "; ".join(f"{k}: {_mean_sd(v['turning'])}" for k, v in m["arms"].items())
            + "; boundary length: "
            + "; ".join(f"{k}: {_mean_sd(v['boundary_length'])}" for k, v in m["arms"].items()),
            f"  - verdict: {m['verdict']} ({m['rule']})",
        ]
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
        lines += [
            "- **Claim (EasyCore, Fig. 5):** easy samples form the core cluster around each "
            "class centroid; hard samples lie away from it.",
            "  - measured (distance to own class centroid in feature space, 1 = average "
            "sample): " + "; ".join(parts),
            f"  - verdict: {', '.join(verdicts)} (rule: every seed's easy distance below every "
            "seed's hard distance, per regime)",
        ]
    if "easy_hard_accuracy" in figures:
        diffs = pd.read_csv(root / study["name"] / "tables" / "easy_hard_accuracy_diffs.csv")
        claims = {
            "easiest": "improves robust accuracy on the easiest test samples (the paper's claim)",
            "hardest": "also improves it on the hardest test samples (the paper's caveat: it "
            "may not)",
        }
        for side, text in claims.items():
            rows = diffs[diffs["bin_name"].str.startswith(side)]
            if rows.empty:
                continue
            first = rows.iloc[0]
            lines += [
                f"- **Claim (EasyCore, Fig. 6):** training on {first.a} rather than {first.b} "
                f"{text}.",
                f"  - measured ({first.a} − {first.b}, robust accuracy under {first.attack} on the "
                f"{first.bin_name} test samples by AIGN, paired over seeds): "
                + "; ".join(
                    f"f={r.fraction:g}: {_pp(r.diff_mean)} pp [{_pp(r.diff_low)}, "
                    f"{_pp(r.diff_high)}] {r.verdict}"
                    for r in rows.itertuples()
                ),
                f"  - verdict: {_verdict_counts(rows)}",
            ]
    return lines


def compute_claims(study: dict[str, Any], root: Path) -> list[str]:
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
    return [
        "- **Compute** (the selective-AT paper claims up to 50 % less adversarial computation "
        "at equal robustness):",
        f"  - measured reduction of counted training passes vs {study['compute_reference']} on "
        f"full data: " + "; ".join(parts),
        f"  - robustness at that compute: see the paired comparisons and `{study['name']}` below",
    ]


def write_index(out_file: str | os.PathLike, studies: dict[str, Any]) -> None:
    """Write index.md: claims per paper, then every study's table, comparisons and figures."""
    out_file = Path(out_file)
    root = out_file.parent
    claims: dict[str, list[str]] = {}
    sections: list[str] = []
    for name, study in studies.items():
        study = {**study, "name": name}
        folder = root / name
        table_md = folder / "tables" / "accuracy.md"
        if not table_md.is_file():
            raise InputError(f"{table_md}: study table missing; run the report rule for {name!r}")
        csv = pd.read_csv(folder / "tables" / "accuracy.csv")
        diffs = pd.read_csv(folder / "tables" / "comparisons.csv")
        paper = study.get("paper") or "other studies"
        claims.setdefault(paper, [])
        claims[paper] += compare_claims(study, diffs)
        claims[paper] += figure_claims(study, root)
        claims[paper] += compute_claims(study, root)
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
            f"[Markdown]({name}/tables/accuracy.md) · [LaTeX]({name}/tables/accuracy.tex); "
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
        "## Claims vs measured",
        "",
    ]
    for paper, items in claims.items():
        if items:
            lines += [f"### {paper}", "", *items, ""]
    lines += sections
    with atomic_path(out_file) as tmp:
        tmp.write_text("\n".join(lines))
