"""Report: statistics against hand computations, exact rows and columns, missing runs marked."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from robustcore import report
from robustcore.io import write_json
from robustcore.report import tables
from robustcore.report.index import Claim
from robustcore.report.stats import mean_std, paired_interval, verdict

STUDY = {
    "name": "demo",
    "dataset": "digits",
    "proxy": "cnn",
    "model": "cnn",
    "regime": "standard",
    "selections": ["random", "easy"],
    "fractions": [0.1, 0.5],
    "full": True,
    "seeds": [0, 1, 2],
    "attacks": ["pgd"],
}


def _clean(selection, fraction, seed):
    return 0.5 + fraction / 2 + seed / 100


def _robust(selection, fraction, seed):
    return (
        0.1 * (seed + 1)
        + (0.2 if selection == "easy" else 0.0)
        + (seed == 2) * 0.05 * (selection == "easy")
    )


def _write_eval(path, run, clean, robust, **extra):
    write_json(path, {"n": 100, "clean_acc": clean, "robust_acc": robust, "run": run, **extra})
    return str(path)


def _write_evals(tmp_path, skip=(), study=STUDY):
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = []
    arms = [(s, f) for s in study["selections"] for f in study["fractions"]] + [("full", 1.0)]
    for selection, fraction in arms:
        for seed in study["seeds"]:
            if (selection, fraction, seed) in skip:
                continue
            run = {
                "regime": "standard",
                "selection": selection,
                "fraction": fraction,
                "seed": seed,
                "attack": "pgd",
            }
            files.append(
                _write_eval(
                    tmp_path / f"{selection}-{fraction}-{seed}.json",
                    run,
                    _clean(selection, fraction, seed),
                    _robust(selection, fraction, seed),
                )
            )
    return files


def test_mean_std_and_paired_interval_match_hand_computation():
    assert mean_std(np.array([0.3, 0.4, 0.5])) == pytest.approx((0.4, 0.1, 3))
    mean, std, n = mean_std(np.array([0.7, np.nan]))
    assert (mean, n) == (0.7, 1) and math.isnan(std)
    a, b = np.array([0.50, 0.62, 0.55, 0.58]), np.array([0.40, 0.50, 0.52, 0.50])
    d = a - b  # 0.10, 0.12, 0.03, 0.08
    d_mean = d.sum() / 4
    d_sd = math.sqrt(((d - d_mean) ** 2).sum() / 3)
    half = 3.182446305284263 * d_sd / 2  # t(0.975, 3) · sd / √4
    got = paired_interval(a, b)
    assert got["mean"] == pytest.approx(d_mean)
    assert got["std"] == pytest.approx(d_sd)
    assert (got["low"], got["high"]) == pytest.approx((d_mean - half, d_mean + half))
    assert verdict(got["low"], got["high"], "greater") == "supports"
    assert verdict(got["low"], got["high"], "less") == "contradicts"
    assert verdict(-0.1, 0.2, "greater") == "inconclusive"
    one = paired_interval(np.array([0.5]), np.array([0.4]))
    assert one["n"] == 1 and math.isnan(one["low"])
    assert verdict(one["low"], one["high"], "greater") == "inconclusive"


def test_summary_matches_hand_computation(tmp_path):
    table = report.summarize(STUDY, report.collect(_write_evals(tmp_path), STUDY))
    assert list(zip(table["selection"], table["fraction"], strict=True)) == [
        ("random", 0.1),
        ("random", 0.5),
        ("easy", 0.1),
        ("easy", 0.5),
        ("full", 1.0),
    ]
    easy = table[(table["selection"] == "easy") & (table["fraction"] == 0.5)].iloc[0]
    robust = [0.3, 0.4, 0.55]
    mean = sum(robust) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in robust) / 2)  # sample std, n - 1
    assert easy["robust_mean"] == pytest.approx(mean)
    assert easy["robust_std"] == pytest.approx(std)
    assert easy["clean_mean"] == pytest.approx(0.75 + 0.01)
    assert easy["seeds"] == 3 and not easy["missing"]


def test_wide_table_has_exactly_the_rows_and_columns_the_study_defines(tmp_path):
    study = {**STUDY, "regimes": ["standard", "trades"], "attacks": ["pgd", "aa"]}
    with pytest.warns(UserWarning, match="60 of 60 runs missing"):
        table = report.summarize(study, report.collect([], study))
    cells = tables.wide_cells(table, study)
    assert list(cells.index) == [
        ("standard", "random"),
        ("standard", "easy"),
        ("standard", "full"),
        ("trades", "random"),
        ("trades", "easy"),
        ("trades", "full"),
    ]
    assert list(cells.columns) == [
        (f, m) for f in ("f = 0.1", "f = 0.5", "full") for m in ("clean", "pgd", "aa")
    ]
    # Coreset rows are empty in the full column and full rows empty in the fraction columns.
    assert cells.loc[("trades", "easy"), ("full", "pgd")] == ""
    assert cells.loc[("trades", "full"), ("f = 0.1", "clean")] == ""
    assert cells.loc[("trades", "full"), ("full", "aa")] == "missing"
    markdown = tables.markdown_wide(table, study)
    assert markdown.splitlines()[0].count("|") == 2 + 9 + 1
    assert len(markdown.splitlines()) == 2 + 6


def test_missing_runs_are_marked_not_dropped(tmp_path):
    files = _write_evals(
        tmp_path,
        skip={("easy", 0.1, 1), ("random", 0.5, 0), ("random", 0.5, 1), ("random", 0.5, 2)},
    )
    with pytest.warns(UserWarning, match="4 of 15 runs missing"):
        table = report.summarize(STUDY, report.collect(files, STUDY))
    assert len(table) == 5
    row = table[(table["selection"] == "random") & (table["fraction"] == 0.5)].iloc[0]
    assert row["seeds"] == 0 and row["missing"]
    markdown = tables.markdown_wide(table, STUDY)
    random_row = next(line for line in markdown.splitlines() if "| random |" in line)
    assert random_row.split(" | ")[4:6] == ["missing", "missing"]
    assert "(2/3 seeds)" in markdown
    out = tmp_path / "report"
    with pytest.warns(UserWarning):
        report.write_study(out / "demo", STUDY, files)
    report.write_index(out / "index.md", {"demo": STUDY})
    assert "some runs are missing or failed" in (out / "index.md").read_text()


def test_dynamic_regimes_sit_beside_the_coresets_at_their_fraction(tmp_path):
    study = {**STUDY, "dynamic": {"acs_f01": 0.1}, "seeds": [0]}
    files = _write_evals(tmp_path, study=study)
    run = {"regime": "acs_f01", "selection": "full", "fraction": 1.0, "seed": 0, "attack": "pgd"}
    files.append(_write_eval(tmp_path / "acs.json", run, 0.8, 0.35))
    table = report.summarize(study, report.collect(files, study))
    acs = table[table["selection"] == "acs_f01"]
    assert acs[["regime", "fraction", "robust_mean"]].values.tolist() == [["standard", 0.1, 0.35]]
    cells = tables.wide_cells(table, study)
    assert cells.loc[("standard", "acs_f01"), ("f = 0.1", "pgd")] == "35.0"
    assert cells.loc[("standard", "acs_f01"), ("f = 0.5", "pgd")] == ""


def test_best_three_per_column_are_marked(tmp_path):
    study = {**STUDY, "selections": ["a", "b", "c", "d"], "fractions": [0.1], "seeds": [0],
             "mark_best": 3}  # fmt: skip
    files = []
    for i, (selection, robust) in enumerate([("a", 0.2), ("b", 0.5), ("c", 0.4), ("d", 0.3)]):
        run = {"regime": "standard", "selection": selection, "fraction": 0.1, "seed": 0,
               "attack": "pgd"}  # fmt: skip
        files.append(_write_eval(tmp_path / f"{i}.json", run, 0.9 - i / 10, robust))
    run = {"regime": "standard", "selection": "full", "fraction": 1.0, "seed": 0, "attack": "pgd"}
    files.append(_write_eval(tmp_path / "full.json", run, 0.99, 0.9))
    table = report.summarize(study, report.collect(files, study))
    cells = tables.wide_cells(table, study)
    robust = cells[("f = 0.1", "pgd")]
    assert robust.tolist() == ["20.0", "50.0¹", "40.0²", "30.0³", ""]
    clean = cells[("f = 0.1", "clean")]
    assert clean.tolist() == ["90.0¹", "80.0²", "70.0³", "60.0", ""]
    assert cells.loc[("standard", "full"), ("full", "pgd")] == "90.0"  # full is never ranked
    latex = tables.latex_wide(table, study, "caption")
    assert r"\textbf{50.0}" in latex and r"\underline{40.0}" in latex
    assert r"\textit{30.0}" in latex


def test_comparisons_pair_by_seed_and_match_hand_computation(tmp_path):
    study = {**STUDY, "compare": [{"a": "easy", "b": "random", "expect": "greater"}]}
    files = _write_evals(tmp_path, study=study)
    diffs = report.comparisons(study, report.collect(files, study))
    assert diffs[["fraction", "attack", "metric"]].values.tolist() == [
        [0.1, "pgd", "robust"],
        [0.5, "pgd", "robust"],
    ]
    # easy − random per seed: 0.2, 0.2, 0.25 at both fractions.
    d = np.array([0.2, 0.2, 0.25])
    sd = d.std(ddof=1)
    half = 4.302652729911275 * sd / math.sqrt(3)
    row = diffs.iloc[0]
    assert row["diff_mean"] == pytest.approx(d.mean())
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["verdict"] == "supports" and row["seeds"] == 3
    markdown = tables.frame_markdown(tables.comparisons_cells(diffs))
    assert "| easy − random | standard | 0.1 | pgd | robust | 3 | +21.7 |" in markdown


def test_regime_comparison_and_compute_reduction(tmp_path):
    study = {**STUDY, "selections": [], "fractions": [], "regimes": ["pgd", "selective"],
             "seeds": [0, 1], "compute_reference": "pgd",
             "compare": [{"a": "selective", "b": "pgd"}]}  # fmt: skip
    files = []
    for regime, passes, robust in (("pgd", 1000, (0.6, 0.62)), ("selective", 400, (0.58, 0.61))):
        for seed in (0, 1):
            run = {"regime": regime, "selection": "full", "fraction": 1.0, "seed": seed,
                   "attack": "pgd"}  # fmt: skip
            cost = {"forward_total": passes // 2, "backward_total": passes // 2,
                    "wall_seconds": 2.0}  # fmt: skip
            files.append(
                _write_eval(
                    tmp_path / f"{regime}{seed}.json", run, 0.9, robust[seed], train_cost=cost
                )  # fmt: skip
            )
    runs = report.collect(files, study)
    table = report.summarize(study, runs)
    selective = table[table["regime"] == "selective"].iloc[0]
    assert selective["compute_rel"] == pytest.approx(0.4)
    assert selective["compute_reduction"] == pytest.approx(0.6)
    frame = tables.compute_table(table, study)
    assert frame["reduction (%)"].tolist() == ["0", "60"]
    diffs = report.comparisons(study, runs)
    assert diffs["diff_mean"].tolist() == pytest.approx([-0.015])
    assert diffs["verdict"].tolist() == ["inconclusive"]
    report.write_compute(tmp_path / "out", study, files)
    assert (tmp_path / "out/figures/robust_vs_compute.pdf").stat().st_size > 0


def test_write_study_and_index_with_claims(tmp_path):
    study = {
        **STUDY,
        "paper": "EasyCore",
        "compare": [{"a": "easy", "b": "random", "claim": "Easy beats random.", "source": "T1"}],
    }
    files = _write_evals(tmp_path / "evals")
    out = tmp_path / "report"
    report.write_study(out / "demo", study, files)
    for stem in ("tables/accuracy", "tables/comparisons"):
        for suffix in (".csv", ".md", ".tex"):
            assert (out / "demo" / (stem + suffix)).stat().st_size > 0, stem + suffix
    for stem in ("accuracy_vs_fraction", "clean_vs_robust"):
        assert (out / f"demo/figures/{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"demo/figures/{stem}.pdf").read_bytes()[:4] == b"%PDF"
    csv = pd.read_csv(out / "demo/tables/accuracy.csv")
    assert len(csv) == 5
    tex = (out / "demo/tables/accuracy.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex
    report.write_index(out / "index.md", {"demo": study})
    index = (out / "index.md").read_text()
    assert "### EasyCore" in index and "**Claim (T1):** Easy beats random." in index
    assert "supports at 2, contradicts at 0, inconclusive at 0 of 2 settings" in index
    assert "demo/figures/clean_vs_robust.png" in index
    assert (
        "| standard | easy | 56.0 ± 1.0 | 41.7 ± 12.6 | 76.0 ± 1.0 | 41.7 ± 12.6 |  |  |" in index
    )


def test_eval_without_run_tags_is_named(tmp_path):
    path = tmp_path / "bad.json"
    write_json(path, {"n": 1, "clean_acc": 1.0, "robust_acc": 1.0})
    with pytest.raises(ValueError, match="bad.json"):
        report.collect([path], STUDY)


def test_failed_hygiene_is_flagged_in_the_table_and_index(tmp_path):
    files = _write_evals(tmp_path / "evals")
    flagged = tmp_path / "evals" / "easy-0.5-1.json"
    summary = json.loads(flagged.read_text())
    write_json(flagged, {**summary, "possible_gradient_masking": True})
    table = report.summarize(STUDY, report.collect(files, STUDY))
    row = table[(table["selection"] == "easy") & (table["fraction"] == 0.5)].iloc[0]
    assert row["masking_flags"] == 1 and table["masking_flags"].sum() == 1
    assert "⚠" in tables.markdown_wide(table, STUDY)
    out = tmp_path / "report"
    report.write_study(out / "demo", STUDY, files)
    report.write_index(out / "index.md", {"demo": STUDY})
    assert "possible gradient masking" in (out / "index.md").read_text()


def test_report_files_get_the_usual_permissions(tmp_path):
    files = _write_evals(tmp_path / "evals")
    report.write_study(tmp_path / "out", STUDY, files)
    mode = (tmp_path / "out/tables/accuracy.md").stat().st_mode & 0o777
    expected = 0o666 & ~_umask()
    assert mode == expected, oct(mode)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _html_rows(page: str, table: int = 0) -> list[list[str]]:
    """The body rows of the n-th table of an HTML page, as cell texts (tags stripped)."""
    import html
    import re

    body = page.split("<tbody>")[table + 1].split("</tbody>")[0]
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", c))
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body)
    ]


def test_accuracy_table_as_html_with_marks_and_comparisons_only_when_compared(tmp_path):
    study = {**STUDY, "mark_best": 2}
    report.write_study(tmp_path / "plain", study, _write_evals(tmp_path / "evals"))
    page = (tmp_path / "plain/tables/accuracy.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 1, "no empty table"
    rows = _html_rows(page)
    assert [r[:2] for r in rows] == [["standard", "random"], ["standard", "easy"],
                                     ["standard", "full"]]  # fmt: skip
    # Easy's robust accuracy at f = 0.1 is the best of its column, random's the second.
    assert rows[1][3] == "41.7 ± 12.6¹" and rows[0][3] == "20.0 ± 10.0²"
    assert 'class="num best1"' in page and 'class="num best2"' in page
    assert "td.num { text-align: right" in page
    compared = {**study, "compare": [{"a": "easy", "b": "random"}]}
    report.write_study(tmp_path / "cmp", compared, _write_evals(tmp_path / "evals"))
    page = (tmp_path / "cmp/tables/accuracy.html").read_text()
    assert page.count("<table>") == 2
    first = _html_rows(page, 1)[0]
    assert first[:3] == ["easy − random (> 0)", "robust pgd, f = 0.1", "3"]
    assert first[3] == "+21.7 [+14.5, +28.8]" and first[4] == "supports"  # 0.2, 0.2, 0.25


def test_claim_verdicts_from_their_settings():
    def claim(*verdicts):
        return Claim("P", "s", "", "c", "m", list(verdicts))

    assert claim("supports", "inconclusive").verdict == "supports"
    assert claim("contradicts", "inconclusive").verdict == "contradicts"
    assert claim("supports", "contradicts").verdict == "mixed"
    assert claim("inconclusive").verdict == "inconclusive"
    assert claim().verdict == "not judged"
    assert claim("supports", "contradicts", "contradicts").counts == {
        "supports": 1, "contradicts": 2, "inconclusive": 0
    }  # fmt: skip


def test_index_opens_with_the_claims_table_and_contents_and_writes_the_landing_table(tmp_path):
    study = {**STUDY, "paper": "EasyCore (Someone et al.)", "category": "1 · EasyCore",
             "compare": [{"a": "easy", "b": "random", "claim": "Easy beats random.",
                          "source": "T1"}]}  # fmt: skip
    files = _write_evals(tmp_path / "evals")
    # Make f = 0.5 the better-powered setting: its differences vary less over seeds.
    for seed, robust in ((0, 0.32), (1, 0.43), (2, 0.52)):
        path = tmp_path / "evals" / f"easy-0.5-{seed}.json"
        write_json(path, {**json.loads(path.read_text()), "robust_acc": robust})
    out = tmp_path / "report"
    report.write_study(out / "demo", study, files)
    report.write_index(out / "index.md", {"demo": study})
    index = (out / "index.md").read_text()
    head = index.split("## Claims vs measured")[0]
    assert "## Contents" in head and "[demo](#demo)" in head
    row = next(line for line in head.splitlines() if line.startswith("| EasyCore |"))
    assert row == (
        "| EasyCore | Easy beats random. | T1 · [demo](#demo) | easy − random, robust pgd at "
        "f=0.5: +22.3 pp [+20.9, +23.8] | **supports** (2 / 0 / 0) |"
    )
    assert "1 claims: 1 supported" in head
    claims = (out / "claims.html").read_text()
    assert claims.count('<tr class="claim">') == 1 and 'id="claims"' in claims
    assert "Easy beats random." in claims and "+22.3 pp [+20.9, +23.8]" in claims
    import html

    link = "results['" + (out / "demo/tables/accuracy.html").as_posix() + "'].data_uri"
    assert link in html.unescape(claims) and "category:'1 · EasyCore'" in html.unescape(claims)
    assert '<span class="verdict supports">supports</span>' in claims
