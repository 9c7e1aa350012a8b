"""Report: statistics against hand computations, exact rows, missing runs marked, files written."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from robustcore import report
from robustcore.io import write_json

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


def _write_evals(tmp_path, skip=()):
    files = []
    for selection, fraction in [(s, f) for s in ("random", "easy") for f in (0.1, 0.5)] + [
        ("full", 1.0)
    ]:
        for seed in (0, 1, 2):
            if (selection, fraction, seed) in skip:
                continue
            path = tmp_path / f"{selection}-{fraction}-{seed}.json"
            clean = 0.5 + fraction / 2 + seed / 100
            robust = 0.1 * (seed + 1) + (0.2 if selection == "easy" else 0.0)
            write_json(
                path,
                {
                    "n": 100,
                    "clean_acc": clean,
                    "robust_acc": robust,
                    "run": {
                        "regime": "standard",
                        "selection": selection,
                        "fraction": fraction,
                        "seed": seed,
                        "attack": "pgd",
                    },
                },
            )
            files.append(str(path))
    return files


def test_mean_and_std_match_hand_computation(tmp_path):
    table = report.summarize(STUDY, report.collect(_write_evals(tmp_path)))
    assert len(table) == 5, "2 selections × 2 fractions + full, one attack"
    assert set(table["regime"]) == {"standard"}
    assert list(zip(table["selection"], table["fraction"], strict=True)) == [
        ("random", 0.1),
        ("random", 0.5),
        ("easy", 0.1),
        ("easy", 0.5),
        ("full", 1.0),
    ]
    easy = table[(table["selection"] == "easy") & (table["fraction"] == 0.5)].iloc[0]
    robust = [0.3, 0.4, 0.5]
    mean = sum(robust) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in robust) / 2)  # sample std, n - 1
    assert easy["robust_mean"] == pytest.approx(mean)
    assert easy["robust_std"] == pytest.approx(std)
    assert easy["clean_mean"] == pytest.approx(0.75 + 0.01)
    assert easy["seeds"] == 3 and not easy["missing"]


def test_missing_runs_are_marked_not_dropped(tmp_path):
    files = _write_evals(
        tmp_path,
        skip={("easy", 0.1, 1), ("random", 0.5, 0), ("random", 0.5, 1), ("random", 0.5, 2)},
    )
    with pytest.warns(UserWarning, match="4 of 15 runs missing"):
        table = report.summarize(STUDY, report.collect(files))
    assert len(table) == 5
    row = table[(table["selection"] == "random") & (table["fraction"] == 0.5)].iloc[0]
    assert row["seeds"] == 0 and row["missing"]
    markdown = report.markdown_table(table)
    assert "| standard | random | 0.5 | pgd | 0 | missing | missing |" in markdown
    assert "(2/3 seeds)" in markdown


def test_write_study_and_index(tmp_path):
    files = _write_evals(tmp_path / "evals")
    out = tmp_path / "report"
    report.write_study(out / "demo", STUDY, files)
    for name in (
        "tables/accuracy.csv",
        "tables/accuracy.md",
        "figures/accuracy_vs_fraction.png",
        "figures/accuracy_vs_fraction.pdf",
    ):
        assert (out / "demo" / name).stat().st_size > 0, name
    assert (out / "demo/figures/accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"
    csv = pd.read_csv(out / "demo/tables/accuracy.csv")
    assert len(csv) == 5
    assert {
        "selection",
        "fraction",
        "attack",
        "seeds",
        "clean_mean",
        "clean_std",
        "robust_mean",
        "robust_std",
        "missing",
    } <= set(csv.columns)
    report.write_index(out / "index.md", {"demo": STUDY})
    index = (out / "index.md").read_text()
    assert "demo/figures/accuracy_vs_fraction.png" in index
    assert "| standard | easy | 0.5 | pgd | 3 | 76.0 ± 1.0 | 40.0 ± 10.0 |" in index


def test_eval_without_run_tags_is_named(tmp_path):
    path = tmp_path / "bad.json"
    write_json(path, {"n": 1, "clean_acc": 1.0, "robust_acc": 1.0})
    with pytest.raises(ValueError, match="bad.json"):
        report.collect([path])


def test_failed_hygiene_is_flagged_in_the_table_and_index(tmp_path):
    files = _write_evals(tmp_path / "evals")
    flagged = tmp_path / "evals" / "easy-0.5-1.json"
    summary = json.loads(flagged.read_text())
    write_json(flagged, {**summary, "possible_gradient_masking": True})
    table = report.summarize(STUDY, report.collect(files))
    row = table[(table["selection"] == "easy") & (table["fraction"] == 0.5)].iloc[0]
    assert row["masking_flags"] == 1
    assert table["masking_flags"].sum() == 1
    markdown = report.markdown_table(table)
    assert "possible gradient masking (1 run(s))" in markdown
    out = tmp_path / "report"
    report.write_study(out / "demo", STUDY, files)
    report.write_index(out / "index.md", {"demo": STUDY})
    assert "possible gradient masking" in (out / "index.md").read_text()
