"""The workflow end to end on a tiny config, what reruns after a change, bad config stops early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "datasets": {"digits": {"source": "digits"}},
    "models": {"mlp": {"arch": "mlp", "kwargs": {"hidden": [32]}}},
    "regimes": {"quick": {"epochs": 2, "batch_size": 128, "lr": 0.05}},
    "proxies": {"mlp": {"model": "mlp", "regime": "quick"}},
    "scores": {"aign": {"method": "aign"}},
    "selections": {"random": {"keep": "random"}, "easy": {"score": "aign", "keep": "low"}},
    "attacks": {"pgd": {"type": "pgd", "eps": 0.05, "steps": 2, "step_size": 0.025}},
    "studies": {
        "tiny": {
            "dataset": "digits",
            "proxy": "mlp",
            "model": "mlp",
            "regime": "quick",
            "selections": ["random", "easy"],
            "fractions": [0.5],
            "full": False,
            "seeds": [0],
            "attacks": ["pgd"],
        }
    },
}


def snakemake(workdir: Path, *args: str, config: dict | None = None):
    """Run the repository's workflow in `workdir` with `config` as its config.yaml."""
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# Tests that run workflow jobs: each job is a subprocess that picks its own device (config
# `device`), not the test device, and the runs take minutes; dry runs and config checks run
# no model and need no marker.
WORKFLOW_RUN = pytest.mark.cpu_only(
    "runs the workflow's jobs, which choose their own device (config `device`), not the test one"
)


def planned_jobs(result) -> dict[str, int]:
    """The dry-run's job table as {rule: count}."""
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@WORKFLOW_RUN
def test_end_to_end_then_nothing_to_do_then_only_the_changed_fraction(tmp_path):
    run = snakemake(tmp_path, config=TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results/report/tiny/tables/accuracy.csv")
    assert list(table["selection"]) == ["random", "easy"]
    assert table["seeds"].tolist() == [1, 1]
    assert ((table["robust_mean"] <= table["clean_mean"]) & (table["clean_mean"] > 0.3)).all()
    coreset = pd.read_parquet(tmp_path / "results/coresets/digits/easy-f0.5-mlp-seed0.parquet")
    assert len(coreset) == round(0.5 * 1347)
    scores = pd.read_parquet(tmp_path / "results/scores/digits/mlp/seed0/aign.parquet")
    kept = set(coreset["index"])
    # Easy keeps each class's lowest AIGN: no dropped sample of a class scores below a kept one.
    for label, group in scores.groupby("label"):
        inside = group[group["index"].isin(kept)]["score"]
        outside = group[~group["index"].isin(kept)]["score"]
        assert inside.max() <= outside.min(), label
    dynamics = pd.read_parquet(
        tmp_path / "results/proxy/digits/mlp/seed0/dynamics/epoch002.parquet"
    )
    assert len(dynamics) == 1347
    assert (tmp_path / "results/report/index.md").is_file()
    assert (tmp_path / "logs/train_model").is_dir() and (tmp_path / "logs/benchmarks").is_dir()

    again = snakemake(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    changed = {**TINY, "studies": {"tiny": {**TINY["studies"]["tiny"], "fractions": [0.3]}}}
    plan = snakemake(tmp_path, "-n", config=changed)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert planned_jobs(plan) == {
        "select_coreset": 2,
        "train_model": 2,
        "evaluate_model": 2,
        "report_study": 1,
        "report_index": 1,
        "all": 1,
    }


@WORKFLOW_RUN
def test_every_method_yields_a_coreset_at_every_fraction(tmp_path):
    """All registered methods run through the workflow on digits (coresets only, no training)."""
    from robustcore.scores import REGISTRY

    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["scores"] = {name: {"method": name} for name in REGISTRY}
    config["proxies"]["mlp"]["sparse_fgsm"] = {"ks": [1, 4]}
    config["studies"]["tiny"].update(
        {"selections": ["random"], "scores": sorted(REGISTRY), "fractions": [0.1, 0.5]}
    )
    run = snakemake(tmp_path, "all_coresets", config=config)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in REGISTRY:
        kept = {}
        for end in ("top", "bottom"):
            for fraction in (0.1, 0.5):
                path = (
                    tmp_path / f"results/coresets/digits/{name}_{end}-f{fraction}-mlp-seed0.parquet"
                )
                coreset = pd.read_parquet(path)
                assert len(coreset) == round(fraction * 1347), (name, end, fraction)
                kept[end, fraction] = set(coreset["index"])
        # The two ends of a ranking at 10 % are different samples.
        assert kept["top", 0.1] != kept["bottom", 0.1], name
        # A prefix of an order (or of a ranking) grows: the 10 % set lies inside the 50 % set.
        assert kept["top", 0.1] <= kept["top", 0.5], name
    assert not (tmp_path / "results/runs").exists(), "all_coresets trains nothing"


def test_each_study_keeps_its_own_regimes(tmp_path):
    """Schema defaults must not be shared between studies (a list default once was)."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["regimes"]["adv"] = {"type": "pgd", "epochs": 1, "eps": 0.05, "steps": 1}
    config["studies"]["robust"] = {
        "dataset": "digits",
        "model": "mlp",
        "regime": "adv",
        "full": True,
        "seeds": [0],
        "attacks": ["pgd"],
    }
    plan = snakemake(tmp_path, "-n", config=config)
    assert plan.returncode == 0, plan.stderr[-2000:]
    # tiny: random and easy at f = 0.5 under quick; robust: full data under adv. Nothing else.
    assert planned_jobs(plan)["train_model"] == 3


BAD = [
    (["scores", "aign", "method"], "aign_v2", "scores.aign.method = 'aign_v2': expected one of"),
    (["studies", "tiny", "dataset"], "cifar11", "studies.tiny.dataset = 'cifar11' is not defined"),
    (["models", "mlp", "arch"], "resnet9", "models.mlp.arch = 'resnet9': expected one of"),
    (
        ["studies", "tiny", "fractions"],
        [0.5, 1.5],
        "studies.tiny.fractions.1 = 1.5: expected a value in (0, 1]",
    ),
    (
        ["studies", "tiny", "fractions"],
        [0],
        "studies.tiny.fractions.0 = 0: expected a value in (0, 1]",
    ),
    (["studies", "tiny", "selections"], ["random", "eazy"], "studies.tiny.selections = 'eazy'"),
    (["regimes", "quick", "epoch"], 3, "regimes.quick: unknown key(s) ['epoch']; allowed keys:"),
    (["scores", "aign", "windw"], 3, "scores.aign: unknown key(s) ['windw']; allowed keys:"),
    (["proxies", "mlp", "sparse_fgsm"], {"eps": -0.1}, "sparse_fgsm.eps = -0.1: expected a value"),
    (["proxies", "mlp", "sparse_fgsm"], {"ks": [0, 4]}, "sparse_fgsm.ks.0 = 0: expected a value"),
    (["proxies", "mlp", "sparse_fgsm"], {"ks": [1.5]}, "sparse_fgsm.ks.0: 1.5 is not of type"),
    (["scores", "cs"], {"method": "fgsm_cs", "weights": [0.5, 0.3, 0.1]}, "must sum to 1"),
    (["scores", "i"], {"method": "isef", "alpha": 1.5}, "scores.i.alpha = 1.5: expected a value"),
    (
        ["regimes", "sel"],
        {"type": "selective", "rho": 1.5},
        "regimes.sel.rho = 1.5: expected a value in (0, 1]",
    ),
    (
        ["regimes", "sel"],
        {"type": "selective", "rho": 0},
        "regimes.sel.rho = 0: expected a value in (0, 1]",
    ),
    (
        ["regimes", "t"],
        {"type": "trades", "beta": -1},
        "regimes.t.beta = -1: expected a value in [0, inf)",
    ),
    (
        ["regimes", "p"],
        {"type": "pgd", "eps": -0.1},
        "regimes.p.eps = -0.1: expected a value in [0, inf)",
    ),
    (
        ["regimes", "sel"],
        {"type": "selective", "criterion": "loss"},
        "regimes.sel.criterion = 'loss': expected one of",
    ),
    (["regimes", "p"], {"type": "pgd", "rho": 0.5}, "regimes.p: unknown key(s) ['rho']"),
    (
        ["attacks", "aa"],
        {"type": "autoattack", "eps": 0.1, "version": "fast"},
        "attacks.aa.version = 'fast': expected one of",
    ),
    (
        ["studies", "tiny", "compare"],
        [{"a": "easy", "b": "hard"}],
        "studies.tiny.compare.0.b = 'hard' is not defined; expected one of",
    ),
    (
        ["studies", "tiny", "compare"],
        [{"a": "easy", "b": "random", "expect": "bigger"}],
        "studies.tiny.compare.0.expect = 'bigger': expected one of",
    ),
    (
        ["studies", "tiny", "figures"],
        {"hardness": {"score": "grand"}},
        "studies.tiny.figures.hardness.score = 'grand' is not defined",
    ),
    (
        ["studies", "tiny", "figures"],
        {"proxy_agreement": {"proxies": ["mlp"]}},
        "studies.tiny.figures.proxy_agreement.proxies: [",
    ),
    (
        ["studies", "tiny", "figures"],
        {"easy_hard_accuracy": {"selections": ["easy", "hard"], "attack": "pgd"}},
        "studies.tiny.figures.easy_hard_accuracy.selections = 'hard' is not defined",
    ),
    (
        ["studies", "tiny", "figures"],
        {"feature_projection": {"regimes": ["quick"], "share": 0.9}},
        "studies.tiny.figures.feature_projection.share = 0.9: expected a value in (0, 0.5]",
    ),
    (["studies", "tiny", "figures"], {"decision_bound": {}}, "unknown key(s) ['decision_bound']"),
    (
        ["studies", "tiny", "compute_reference"],
        "adv",
        "studies.tiny.compute_reference = 'adv': expected one of the study's regimes",
    ),
    (
        ["studies", "tiny", "dynamic"],
        ["quick"],
        "studies.tiny.dynamic = 'quick': expected a regime of type acs",
    ),
    (
        ["selections", "mix"],
        {"score": "aign", "keep": "hybrid", "hard_share": 1.2},
        "selections.mix.hard_share = 1.2: expected a value in [0, 1]",
    ),
    (
        ["selections", "e3"],
        {"score": "aign", "keep": "low", "proxy": "cnn_e3"},
        "selections.e3.proxy = 'cnn_e3' is not defined",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD)
def test_bad_config_fails_before_any_job(tmp_path, path, value, message):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_root_is_named(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["datasets"]["digits"] = {"source": "mnist"}
    config["data_root"] = str(tmp_path / "no-such-root")
    result = snakemake(tmp_path, config=config)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "config error: datasets.digits: data root" in out and "no-such-root does not" in out
    assert "MNIST/raw/" in out
    assert not (tmp_path / "results").exists(), "stopped before any job"
    # A dry run plans anyway (presets on a machine without the data), with the same warning.
    plan = snakemake(tmp_path, "-n", config=config)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "warning: datasets.digits: data root" in plan.stdout + plan.stderr


FIGURES = {
    "datasets": {
        "digits": {"source": "digits"},
        "moons": {"source": "toy2d", "n_train": 200, "n_test": 100},
    },
    "models": {
        "mlp": {"arch": "mlp", "kwargs": {"hidden": [32]}},
        "mlp2": {"arch": "mlp", "kwargs": {"hidden": [16]}},
        "toy": {"arch": "mlp", "kwargs": {"hidden": [16]}},
    },
    "regimes": {
        "quick": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "quick_pgd": {"type": "pgd", "epochs": 2, "batch_size": 128, "lr": 0.05, "eps": 0.05,
                      "steps": 2, "step_size": 0.025},
        "acs_quick": {"type": "acs", "epochs": 2, "batch_size": 128, "lr": 0.05, "fraction": 0.3,
                      "freq": 1, "eps": 0.05, "steps": 2, "step_size": 0.025},
        "exploding": {"epochs": 2, "batch_size": 128, "lr": 1.0e12},
        "toyq": {"epochs": 5, "batch_size": 64, "lr": 0.1,
                 "augment": {"crop_padding": 0, "flip": False}},
    },
    "proxies": {
        "mlp": {"model": "mlp", "regime": "quick",
                "sparse_fgsm": {"eps": 0.03, "ks": [1, 4], "mode": "pixel"}},
        "mlp2": {"model": "mlp2", "regime": "quick"},
        "toy": {"model": "toy", "regime": "toyq"},
    },
    "scores": {"aign": {"method": "aign"}, "isef": {"method": "isef"}},
    "selections": {
        "random": {"keep": "random"},
        "easy": {"score": "aign", "keep": "low"},
        "mix": {"score": "aign", "keep": "hybrid", "hard_share": 0.5},
    },
    "attacks": {"pgd": {"type": "pgd", "eps": 0.05, "steps": 2, "step_size": 0.025}},
    "studies": {
        "figs": {
            "paper": "EasyCore",
            "dataset": "digits",
            "proxy": "mlp",
            "model": "mlp",
            "regime": "quick",
            "selections": ["random", "easy", "mix"],
            "scores": ["aign"],
            "fractions": [0.3],
            "dynamic": ["acs_quick"],
            "seeds": [0, 1],
            "attacks": ["pgd"],
            "mark_best": 2,
            "compare": [{"a": "easy", "b": "random", "claim": "Easy beats random."}],
            "figures": {
                "hardness": {},
                "proxy_agreement": {"proxies": ["mlp", "mlp2"], "fraction": 0.2},
                "feature_projection": {"regimes": ["quick", "quick_pgd"]},
                "easy_hard_accuracy": {"selections": ["easy", "random"], "attack": "pgd",
                                       "bins": 3},
                "top_vs_bottom": {"scores": ["aign"]},
                "sparse_fgsm_signal": {"eps": [0.2]},
            },
        },
        "compute": {
            "paper": "Selective AT",
            "dataset": "digits",
            "model": "mlp",
            "regimes": ["quick_pgd", "quick", "exploding"],
            "seeds": [0, 1],
            "attacks": ["pgd"],
            "compute_reference": "quick_pgd",
            "compare": [{"a": "quick", "b": "quick_pgd"}],
        },
        "toy": {
            "paper": "EasyCore",
            "dataset": "moons",
            "proxy": "toy",
            "model": "toy",
            "regime": "toyq",
            "selections": ["easy"],
            "fractions": [0.6],
            "seeds": [0, 1],
            "attacks": ["pgd"],
            "figures": {"decision_boundary": {"selection": "easy", "fraction": 0.6}},
        },
    },
}  # fmt: skip


@WORKFLOW_RUN
def test_every_table_and_figure_of_a_study_then_a_failed_run_renders_missing(tmp_path):
    """All report outputs on tiny studies; a diverged run fails, then renders as missing."""
    run = snakemake(tmp_path, "--keep-going", config=FIGURES)
    assert run.returncode != 0, "the exploding regime must fail"
    log = run.stdout + run.stderr
    assert "exploding" in log and "results/report/index.md" not in os.listdir(tmp_path)
    report_dir = tmp_path / "results/report"
    for study, stems in {
        "figs": [
            "tables/accuracy", "tables/comparisons", "tables/proxy_agreement",
            "tables/easy_hard_accuracy", "tables/sparse_fgsm_signal",
        ],
        "toy": ["tables/accuracy", "tables/comparisons"],
    }.items():  # fmt: skip
        for stem in stems:
            for suffix in (".csv", ".md", ".tex"):
                assert (report_dir / study / (stem + suffix)).stat().st_size > 0, stem + suffix
    figures = {
        "figs": [
            "accuracy_vs_fraction", "clean_vs_robust", "hardness_examples",
            "hardness_distribution", "proxy_agreement", "feature_projection",
            "easy_hard_accuracy", "top_vs_bottom", "sparse_fgsm_signal",
        ],
        "toy": ["accuracy_vs_fraction", "clean_vs_robust", "decision_boundary"],
    }  # fmt: skip
    for study, stems in figures.items():
        for stem in stems:
            assert (report_dir / study / f"figures/{stem}.png").read_bytes()[:4] == b"\x89PNG"
            assert (report_dir / study / f"figures/{stem}.pdf").read_bytes()[:4] == b"%PDF"
    # Rows and columns exactly as the study defines them.
    accuracy = pd.read_csv(report_dir / "figs/tables/accuracy.csv")
    assert list(zip(accuracy["selection"], accuracy["fraction"], strict=True)) == [
        ("random", 0.3), ("easy", 0.3), ("mix", 0.3), ("aign_top", 0.3), ("aign_bottom", 0.3),
        ("acs_quick", 0.3), ("full", 1.0),
    ]  # fmt: skip
    assert (accuracy["seeds"] == 2).all()
    agreement = pd.read_csv(report_dir / "figs/tables/proxy_agreement.csv")
    assert agreement[["a", "b", "seed"]].values.tolist() == [["mlp", "mlp2", 0], ["mlp", "mlp2", 1]]
    assert agreement["spearman"].between(-1, 1).all()
    bins = pd.read_csv(report_dir / "figs/tables/easy_hard_accuracy.csv")
    assert sorted(set(bins["bin"])) == [1, 2, 3] and set(bins["selection"]) == {"easy", "random"}
    boundary = json.loads((report_dir / "toy/figures/decision_boundary.json").read_text())
    assert list(boundary["arms"]) == ["all points", "easy"]
    assert all(len(v["turning"]) == 2 for v in boundary["arms"].values())
    projection = json.loads((report_dir / "figs/figures/feature_projection.json").read_text())
    assert list(projection["regimes"]) == ["quick", "quick_pgd"]
    coreset = json.loads((tmp_path / "results/coresets/digits/mix-f0.3-mlp-seed0.json").read_text())
    assert sum(coreset["hard_per_class"].values()) > 0

    # With report_missing the failed regime's cells render as missing, with a warning.
    partial = snakemake(tmp_path, "--config", "report_missing=True")
    assert partial.returncode == 0, partial.stderr[-3000:]
    compute = pd.read_csv(report_dir / "compute/tables/accuracy.csv")
    exploding = compute[compute["regime"] == "exploding"].iloc[0]
    assert exploding["seeds"] == 0 and exploding["missing"]
    assert "| exploding | full |" in (report_dir / "compute/tables/accuracy.md").read_text()
    assert "missing" in (report_dir / "compute/tables/accuracy.md").read_text()
    reduction = pd.read_csv(report_dir / "compute/tables/compute.csv")
    assert str(reduction["reduction (%)"].tolist()[0]) == "0"
    index = (report_dir / "index.md").read_text()
    assert "## Claims vs measured" in index and "### EasyCore" in index
    assert "some runs are missing or failed" in index
    for study, stems in figures.items():
        for stem in stems:
            assert f"{study}/figures/{stem}.png" in index, stem

    html = snakemake(tmp_path, "--config", "report_missing=True", "--report", "report.html")
    assert html.returncode == 0, html.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    assert "decision regions and boundary" in page, "figure captions are in the report"


PRESET_JOBS = {"cifar10": 5218, "cifar100": 5218, "mnist": 208, "imagenet": 91}


@pytest.mark.parametrize("preset", sorted(PRESET_JOBS))
def test_each_preset_dry_runs_without_its_data(tmp_path, preset):
    """The presets plan here (no data), with the job count the README states."""
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "presets" / f"{preset}.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(planned_jobs(result).values()) == PRESET_JOBS[preset]
    assert "warning: datasets." in result.stderr, "the missing data root is named"
    assert f"| `{preset}.yaml` |" in (REPO / "README.md").read_text()
    assert f"| {PRESET_JOBS[preset]:,} |" in (REPO / "README.md").read_text()
