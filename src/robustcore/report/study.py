"""A study's runs: collect the evaluation files, summarize over seeds, compare arms."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from robustcore.io import InputError, read_json
from robustcore.report.stats import mean_std, paired_interval, verdict

METRICS = ("clean_acc", "robust_acc")
ID_COLUMNS = ["regime", "selection", "fraction", "attack"]
RUN_TAGS = ("regime", "selection", "fraction", "seed", "attack")


def study_regimes(study: dict[str, Any]) -> list[str]:
    """The regimes a study trains coresets under: its `regimes` list, or its single `regime`."""
    return list(study.get("regimes") or [study["regime"]])


def dynamic_fractions(study: dict[str, Any]) -> dict[str, float]:
    """Dynamic-selection regimes (ACS) shown as rows at the fraction they train on per epoch."""
    return {name: float(f) for name, f in (study.get("dynamic") or {}).items()}


def collect(eval_files: list[str | os.PathLike], study: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluation file: its run identity, accuracies and training compute."""
    dynamic = dynamic_fractions(study)
    main_regime = study_regimes(study)[0]
    rows = []
    for path in eval_files:
        summary = read_json(path)
        run = summary.get("run", {})
        missing = [k for k in RUN_TAGS if k not in run]
        if missing:
            raise InputError(f"{path}: run tags {missing} missing; was it written by evaluate?")
        row = {k: run[k] for k in RUN_TAGS}
        if row["regime"] in dynamic:
            # ACS selects a fraction of the full set every epoch: a row beside the coresets.
            row["selection"] = row["regime"]
            row["fraction"] = dynamic[row["regime"]]
            row["regime"] = main_regime
        cost = summary.get("train_cost") or {}
        passes = cost.get("forward_total", np.nan) + cost.get("backward_total", np.nan)
        rows.append(
            {
                **row,
                "trained_as": run["regime"],
                **{m: summary[m] for m in METRICS},
                "n": summary["n"],
                # The evaluation's hygiene verdict (absent: no checks ran).
                "masking": bool(summary.get("possible_gradient_masking")),
                "train_passes": float(passes),
                "train_seconds": float(cost.get("wall_seconds", np.nan)),
                "path": str(path),
            }
        )
    columns = [*RUN_TAGS, "trained_as", *METRICS, "n", "masking", "train_passes"]
    frame = pd.DataFrame(rows, columns=[*columns, "train_seconds", "path"])
    return frame.assign(fraction=frame["fraction"].astype(float))


def expected_cells(study: dict[str, Any]) -> pd.DataFrame:
    """Every (regime, selection, fraction, attack, seed) the study defines; full data is f = 1."""
    regimes = study_regimes(study)
    arms = [
        (r, s, float(f)) for r in regimes for s in study["selections"] for f in study["fractions"]
    ]
    arms += [(regimes[0], name, f) for name, f in dynamic_fractions(study).items()]
    if study.get("full", True):
        arms += [(r, "full", 1.0) for r in regimes]
    return pd.DataFrame(
        [
            {"regime": r, "selection": s, "fraction": f, "attack": a, "seed": seed}
            for r, s, f in arms
            for a in study["attacks"]
            for seed in study["seeds"]
        ],
        columns=[*ID_COLUMNS, "seed"],
    )


def merge_runs(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """The expected cells with their runs' values; runless cells keep NaN, with a warning."""
    cells = expected_cells(study)
    keep = [*ID_COLUMNS, "seed", *METRICS, "masking", "train_passes", "train_seconds"]
    if runs.empty:
        runs = pd.DataFrame(columns=keep)
    merged = cells.merge(runs[keep], on=[*ID_COLUMNS, "seed"], how="left", validate="one_to_one")
    merged["masking"] = merged["masking"].astype("boolean").fillna(False).astype(bool)
    for column in (*METRICS, "train_passes", "train_seconds"):
        merged[column] = merged[column].astype(float)
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
    return merged


def summarize(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (regime, selection, fraction, attack); runless cells marked."""
    merged = merge_runs(study, runs)
    rows = []
    for key, group in merged.groupby(ID_COLUMNS, sort=False):
        clean = mean_std(group["clean_acc"].to_numpy())
        robust = mean_std(group["robust_acc"].to_numpy())
        passes = mean_std(group["train_passes"].to_numpy())
        seconds = mean_std(group["train_seconds"].to_numpy())
        rows.append(
            {
                **dict(zip(ID_COLUMNS, key, strict=True)),
                "seeds": clean[2],
                "seeds_expected": len(group),
                "clean_mean": clean[0],
                "clean_std": clean[1],
                "robust_mean": robust[0],
                "robust_std": robust[1],
                "train_passes_mean": passes[0],
                "train_passes_std": passes[1],
                "train_seconds_mean": seconds[0],
                "masking_flags": int(group["masking"].sum()),
            }
        )
    table = pd.DataFrame(rows)
    table["missing"] = table["seeds"] < table["seeds_expected"]
    reference = study.get("compute_reference")
    if reference:
        ref = table[(table["regime"] == reference) & (table["selection"] == "full")]
        ref_passes = float(ref["train_passes_mean"].iloc[0]) if len(ref) else np.nan
        table["compute_rel"] = table["train_passes_mean"] / ref_passes
        table["compute_reduction"] = 1.0 - table["compute_rel"]
    return table


def _arm_rows(merged: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
    """The runs of a compared arm, and whether the name is a selection or a regime."""
    if (merged["selection"] == name).any():
        return merged[merged["selection"] == name], "selection"
    if (merged["regime"] == name).any():
        return merged[merged["regime"] == name], "regime"
    raise InputError(f"compare: {name!r} is neither a selection nor a regime of this study")


def comparisons(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """Paired differences a − b over seeds, with 95 % t intervals, for each `compare` entry."""
    merged = merge_runs(study, runs) if study.get("compare") else None
    rows = []
    for number, entry in enumerate(study.get("compare") or [], start=1):
        a_rows, a_kind = _arm_rows(merged, entry["a"])
        b_rows, b_kind = _arm_rows(merged, entry["b"])
        # Pair on everything the two arms share: seed, attack, and the fraction; also the regime
        # when two selections are compared, the selection when two regimes are.
        key = ["fraction", "attack", "seed"]
        if a_kind == b_kind:
            key.append("regime" if a_kind == "selection" else "selection")
        pairs = a_rows.merge(b_rows, on=key, suffixes=("_a", "_b"))
        attacks = [entry["attack"]] if entry.get("attack") else list(study["attacks"])
        metrics = (
            ["clean", "robust"]
            if entry.get("metric", "robust") == "both"
            else [entry.get("metric", "robust")]
        )
        group_key = [c for c in key if c != "seed"]
        for values, group in pairs.groupby(group_key, sort=True):
            where = dict(zip(group_key, values, strict=True))
            if where["attack"] not in attacks:
                continue
            regime_a = group["regime_a"].iloc[0] if "regime_a" in group else None
            for metric in metrics:
                column = f"{metric}_acc"
                both = group[[f"{column}_a", f"{column}_b"]].dropna()
                interval = paired_interval(
                    both[f"{column}_a"].to_numpy(), both[f"{column}_b"].to_numpy()
                )
                rows.append(
                    {
                        "compare": number,
                        "a": entry["a"],
                        "b": entry["b"],
                        "regime": where["regime"] if "regime" in where else regime_a,
                        "fraction": where["fraction"],
                        "attack": where["attack"],
                        "metric": metric,
                        "seeds": interval["n"],
                        "diff_mean": interval["mean"],
                        "diff_low": interval["low"],
                        "diff_high": interval["high"],
                        "expect": entry.get("expect", "greater"),
                        "verdict": verdict(
                            interval["low"], interval["high"], entry.get("expect", "greater")
                        ),
                    }
                )
    columns = [
        "compare", "a", "b", "regime", "fraction", "attack", "metric", "seeds",
        "diff_mean", "diff_low", "diff_high", "expect", "verdict",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
