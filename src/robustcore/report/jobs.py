"""The report's figure jobs: read stage files, measure over seeds, draw the first seed."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcore.io import InputError, read_json, read_npz, read_parquet, write_json
from robustcore.report import figures, tables
from robustcore.report.stats import mean_std, paired_interval, verdict

_TEST_EPOCH = re.compile(r"test_epoch(\d{3,})\.parquet$")


def _score(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """A score file's values in sample-index order (index must be 0..N-1)."""
    frame = read_parquet(path, ["index", "score"]).sort_values("index")
    index = frame["index"].to_numpy()
    if not np.array_equal(index, np.arange(len(frame))) or (n is not None and len(frame) != n):
        raise InputError(f"{path}: expected one score per training sample, index 0..{n} in order")
    return frame["score"].to_numpy(dtype=np.float64)


def _trajectories(dynamics_dir: str | os.PathLike, n: int) -> np.ndarray:
    """Per-sample input-gradient norm at every proxy epoch, N × E, rows in index order."""
    from robustcore.scores.dynamics import read_dynamics

    epochs = read_dynamics(dynamics_dir)
    columns = []
    for epoch in sorted(epochs):
        frame = epochs[epoch].sort_values("index")
        if len(frame) != n:
            raise InputError(f"{dynamics_dir}: epoch {epoch} has {len(frame)} rows, expected {n}")
        columns.append(frame["input_grad_norm"].to_numpy(dtype=np.float64))
    return np.stack(columns, axis=1)


def test_hardness(dynamics_dirs: list[str], window: tuple[int, int | None]) -> np.ndarray:
    """Each test sample's AIGN (mean input-gradient norm over the window), mean over proxies."""
    per_proxy = []
    for folder in dynamics_dirs:
        files = sorted(
            p for p in Path(folder).glob("test_epoch*.parquet") if _TEST_EPOCH.search(p.name)
        )
        if not files:
            raise InputError(
                f"{folder}: no test_epochNNN.parquet files; the proxy must be rerun (it records "
                "the test samples' dynamics since the report's easy/hard figure was added)"
            )
        epochs = {int(_TEST_EPOCH.search(p.name).group(1)): p for p in files}
        first, last = window[0], window[1] or max(epochs)
        norms = [
            read_parquet(epochs[e], ["index", "input_grad_norm"])
            .sort_values("index")["input_grad_norm"]
            .to_numpy(dtype=np.float64)
            for e in range(first, last + 1)
        ]
        per_proxy.append(np.mean(norms, axis=0))
    return np.mean(per_proxy, axis=0)


def hardness(params: dict[str, Any], out_dir: Path) -> None:
    """Figs. 1 and 2 from the first seed's proxy: examples, distribution, trajectories."""
    from robustcore import data

    meta = data.load_meta(params["data"])
    arrays = read_npz(Path(params["data"]) / "train.npz", ["images", "labels"])
    labels = arrays["labels"]
    score = _score(params["score"], len(labels))
    folder = out_dir / "figures"
    if arrays["images"].ndim == 4:
        shown = figures.plot_hardness_examples(
            arrays["images"], labels, score, meta["classes"], folder / "hardness_examples"
        )
    else:
        raise InputError(
            f"{params['data']}: hardness examples need image data (N×C×H×W); this dataset is "
            "vector data: drop figures.hardness from the study"
        )
    write_json(folder / "hardness_examples.json", shown)
    trajectories = _trajectories(params["dynamics"], len(labels))
    measured = figures.plot_hardness_distribution(
        score, trajectories, folder / "hardness_distribution", share=params.get("share", 0.1)
    )
    write_json(folder / "hardness_distribution.json", measured)


def proxy_agreement(params: dict[str, Any], out_dir: Path) -> None:
    """Fig. 3 (first seed) and the rank agreement of every proxy pair in every seed."""
    fraction = float(params["fraction"])
    rows = []
    for i, seed in enumerate(params["seeds"]):
        scores = {proxy: _score(files[i]) for proxy, files in params["scores"].items()}
        if i == 0:
            frame = figures.plot_proxy_agreement(
                scores, fraction, out_dir / "figures" / "proxy_agreement"
            )
        else:
            frame = figures.rank_agreement(scores, fraction)
        rows.append(frame.assign(seed=seed))
    table = pd.concat(rows, ignore_index=True)
    stem = out_dir / "tables" / "proxy_agreement"
    shown = table.assign(**{c: table[c].round(4) for c in ("spearman", "kendall")})
    _write_table(stem, table, shown, "rank agreement of the score from each proxy pair, per seed")


def _write_table(stem: Path, frame: pd.DataFrame, shown: pd.DataFrame, caption: str) -> None:
    """stem.csv (frame), stem.md, stem.tex and stem.html (shown, with the caption)."""
    from robustcore.report import pages, write_table

    study = stem.parent.parent.name
    page = pages.page(f"{study}: {caption}", [pages.frame_table(shown)])
    write_table(stem, frame, tables.frame_markdown(shown), tables.frame_latex(shown, caption), page)


def _load_model(path: str, device: str = "cpu"):
    from robustcore import models

    return models.load(path, device)


def decision_boundary(params: dict[str, Any], out_dir: Path) -> None:
    """Fig. 4 (first seed) and boundary turning/length of each arm in every seed."""
    from robustcore import data

    train, _ = data.load(params["data"])
    x, y = train.images, train.labels
    arms = params["arms"]  # name -> {"models": [per seed], "coresets": [per seed or null]}
    measured: dict[str, dict[str, list[float]]] = {
        name: {"turning": [], "boundary_length": [], "train_acc": []} for name in arms
    }
    with tempfile.TemporaryDirectory() as scratch:
        for i, _seed in enumerate(params["seeds"]):
            models, points = {}, {}
            for name, arm in arms.items():
                models[name] = _load_model(arm["models"][i])
                coreset = arm["coresets"][i]
                kept = (
                    read_parquet(coreset, ["index"])["index"].to_numpy()
                    if coreset
                    else np.arange(len(y))
                )
                points[name] = (x[kept], y[kept])
            stem = out_dir / "figures" / "decision_boundary" if i == 0 else Path(scratch) / "s"
            result = figures.decision_boundary(models, points, stem)
            for name, values in result.items():
                for key in measured[name]:
                    measured[name][key].append(float(values[key]))
    full, easy = list(arms)[0], list(arms)[1]
    interval = paired_interval(
        np.array(measured[easy]["turning"]), np.array(measured[full]["turning"])
    )
    write_json(
        out_dir / "figures" / "decision_boundary.json",
        {
            "arms": measured,
            "seeds": params["seeds"],
            "turning_diff": interval,
            "verdict": verdict(interval["low"], interval["high"], "less"),
            "rule": f"paired 95 % interval of turning({easy}) − turning({full}) below 0",
        },
    )


def feature_projection(params: dict[str, Any], out_dir: Path) -> None:
    """Fig. 5 (first seed) and easy/hard distances to class centroids in every seed."""
    from robustcore import data
    from robustcore.probe import run_probe

    train, _ = data.load(params["data"])
    meta = data.load_meta(params["data"])
    measured: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for i, _seed in enumerate(params["seeds"]):
            score = _score(params["scores"][i], len(train))
            features = {}
            for regime, paths in params["models"].items():
                model = _load_model(paths[i])
                loader = data.Loader(train, 512, "cpu", image_size=meta.get("image_size"))
                features[regime] = run_probe(model, loader).features
            stem = out_dir / "figures" / "feature_projection" if i == 0 else Path(scratch) / "s"
            result = figures.feature_projection(
                features, train.labels, score, stem, share=params.get("share", 0.2)
            )
            for regime, values in result.items():
                slot = measured.setdefault(regime, {})
                for key, value in values.items():
                    slot.setdefault(key, []).append(value)
    write_json(
        out_dir / "figures" / "feature_projection.json",
        {"regimes": measured, "seeds": params["seeds"], "share": params.get("share", 0.2)},
    )


def easy_hard_accuracy(params: dict[str, Any], out_dir: Path) -> None:
    """Fig. 6: robust accuracy per test-hardness bin; paired differences in the end bins."""
    test_score = test_hardness(params["test_dynamics"], tuple(params["window"]))
    parts = []
    for path in params["evals"]:
        run = read_json(path)["run"]
        frame = read_parquet(Path(path).with_suffix(".parquet"), ["index", "robust_correct"])
        parts.append(
            frame.assign(
                selection=run["selection"], fraction=float(run["fraction"]), seed=run["seed"]
            )
        )
    records = pd.concat(parts, ignore_index=True)
    bins = int(params.get("bins", 5))
    table = figures.easy_hard_accuracy(
        records, test_score, out_dir / "figures" / "easy_hard_accuracy", bins=bins
    )
    shown = table.assign(
        robust=[
            tables.cell_text(m, s, n, len(params["seeds"]))
            for m, s, n in zip(
                table["robust_mean"], table["robust_std"], table["seeds"], strict=True
            )
        ]
    )[["selection", "fraction", "bin", "seeds", "robust"]]
    _write_table(
        out_dir / "tables" / "easy_hard_accuracy",
        table,
        shown,
        f"robust accuracy (%) under {params['attack']} per test-hardness bin (1 = easiest)",
    )
    # Paired over seeds: the first selection minus the second in the easiest and hardest bins.
    a, b = params["selections"][:2]
    records = records.assign(bin=figures.hardness_bins(test_score, bins)[records["index"]])
    per_seed = (
        records.groupby(["selection", "fraction", "seed", "bin"])["robust_correct"]
        .mean()
        .rename("acc")
        .reset_index()
    )
    rows = []
    for fraction in sorted(per_seed["fraction"].unique()):
        for bin_id, bin_name in ((1, "easiest"), (bins, "hardest")):
            part = per_seed[(per_seed["fraction"] == fraction) & (per_seed["bin"] == bin_id)]
            pairs = part[part["selection"] == a].merge(
                part[part["selection"] == b], on="seed", suffixes=("_a", "_b")
            )
            interval = paired_interval(pairs["acc_a"].to_numpy(), pairs["acc_b"].to_numpy())
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "fraction": fraction,
                    "attack": params["attack"],
                    "bin": bin_id,
                    "bin_name": f"{bin_name} {100 // bins} %",
                    "seeds": interval["n"],
                    "diff_mean": interval["mean"],
                    "diff_low": interval["low"],
                    "diff_high": interval["high"],
                    "verdict": verdict(interval["low"], interval["high"], "greater"),
                }
            )
    diffs = pd.DataFrame(rows)
    from robustcore.io import atomic_path

    with atomic_path(out_dir / "tables" / "easy_hard_accuracy_diffs.csv") as tmp:
        diffs.to_csv(tmp, index=False, float_format="%.6f")


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of probabilities (natural log; 0·log 0 = 0)."""
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(1)


def sparse_fgsm_signal(params: dict[str, Any], out_dir: Path) -> None:
    """Sparse-FGSM flip rates per k and ε on every seed's proxy, and ISEF's likeness to entropy.

    If almost no prediction flips, ISEF's invariance term is constant and ISEF ranks like the
    clean entropy: the Spearman ρ between the two tells whether the attack adds anything.
    """
    from scipy import stats

    from robustcore import data
    from robustcore.scores import REGISTRY, ScoreInputs
    from robustcore.sensitivity import flip_rates, sensitivity_table

    train, _ = data.load(params["data"])
    meta = data.load_meta(params["data"])
    index = np.arange(len(train), dtype=np.int64)
    rows = []
    for seed, proxy in zip(params["seeds"], params["proxies"], strict=True):
        model = _load_model(proxy)
        loader = data.Loader(train, 256, "cpu", image_size=meta.get("image_size"))
        for eps in params["eps"]:
            table = sensitivity_table(
                model, loader, eps=float(eps), ks=params["ks"], mode=params["mode"]
            )
            clean = np.concatenate([probs[:, 0] for _, probs in table.prob_blocks([0])])
            entropy = _entropy(clean.astype(np.float64))
            inputs = ScoreInputs(index=index, labels=train.labels, sensitivity=table)
            isef = REGISTRY["isef"](inputs, seed=seed, alpha=params["alpha"])["score"]
            rho = stats.spearmanr(isef.to_numpy(), entropy).statistic
            flips = {f"flip_k{k}": rate for k, rate in flip_rates(table).items()}
            rows.append({"seed": seed, "eps": float(eps), **flips, "rho_isef_entropy": rho})
    table = pd.DataFrame(rows)
    figures.sparse_fgsm_signal(table, out_dir / "figures" / "sparse_fgsm_signal")
    numbers = [c for c in table.columns if c not in ("seed", "eps")]
    summary = table.groupby("eps", sort=True)[numbers].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary = summary.reset_index()
    shown = pd.DataFrame({"eps": summary["eps"].map(lambda e: f"{e:.4g}")})
    for name in numbers:
        mean, std = summary[f"{name}_mean"], summary[f"{name}_std"].fillna(0.0)
        shown[name] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std, strict=True)]
    _write_table(
        out_dir / "tables" / "sparse_fgsm_signal",
        summary,
        shown,
        "Sparse FGSM: share of training samples whose prediction flips at each k, and the "
        "Spearman correlation of ISEF with the clean entropy, per ε (mean ± std over seeds)",
    )


JOBS = {
    "hardness": hardness,
    "proxy_agreement": proxy_agreement,
    "decision_boundary": decision_boundary,
    "feature_projection": feature_projection,
    "easy_hard_accuracy": easy_hard_accuracy,
    "sparse_fgsm_signal": sparse_fgsm_signal,
}


def run(kind: str, params: dict[str, Any], out_dir: str | os.PathLike) -> None:
    """Run one figure job by name."""
    if kind not in JOBS:
        raise InputError(f"figure kind {kind!r} unknown; expected one of {sorted(JOBS)}")
    JOBS[kind](params, Path(out_dir))


__all__ = ["JOBS", "mean_std", "run", "test_hardness"]
