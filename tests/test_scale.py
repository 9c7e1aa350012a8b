"""Full-size estimates of the score jobs; the guards refuse a blow-up before any job runs."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from test_workflow import snakemake

from robustcore import jobcost, models, scale
from robustcore.scores import REGISTRY, greedy

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def preset(name: str) -> dict:
    """A preset with the schema's defaults filled in, as the workflow sees it."""
    config = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    validate(config, SCHEMA)
    return config


@pytest.fixture(scope="module")
def cifar10() -> dict:
    return preset("cifar10")


def with_score(config: dict, entry: dict, keep: str = "top", fractions=(0.1, 0.5)) -> dict:
    """The config with one study selecting from a new score `probe` (schema defaults filled)."""
    config = copy.deepcopy(config)
    config["scores"]["probe"] = entry
    config["selections"]["probe_sel"] = {"score": "probe", "keep": keep}
    validate(config, SCHEMA)
    study = next(iter(config["studies"].values()))
    study["selections"] = ["probe_sel"]
    study["fractions"] = list(fractions)
    study["figures"] = {}
    config["studies"] = {"only": study}
    return config


def test_mirrored_constants_match_the_package():
    """scale is stdlib-only, so it mirrors a few package facts; they must stay equal."""
    assert scale.DENSE_LIMIT == greedy.DENSE_LIMIT
    assert set(scale.ORDER_METHODS) == {m.name for m in REGISTRY.values() if m.kind == "order"}
    for arch, width in scale.FEATURES.items():
        spec = {"arch": arch, "kwargs": {}, "in_shape": [3, 32, 32], "num_classes": 10,
                "mean": [0.5] * 3, "std": [0.5] * 3}  # fmt: skip
        if arch == "mlp":
            spec["in_shape"] = [64]
            spec["mean"], spec["std"] = [0.0] * 64, [1.0] * 64
        head = [m for m in models.build(spec).modules() if hasattr(m, "in_features")][-1]
        assert head.in_features == width, arch


def test_cholesky_factor_makes_log_det_over_all_samples_need_k_times_n_floats(cifar10):
    whole = with_score(cifar10, {"method": "log_det", "per_class": False})
    per_class = with_score(cifar10, {"method": "log_det"})
    est = scale.score_estimate(whole, "cifar10", "resnet18", "probe")
    assert est.mem_bytes >= 50_000**2 * 8  # the 50,000 x 50,000 float64 factor
    assert "50,000 x 50,000 float64 factor" in est.mem_detail
    small = scale.score_estimate(per_class, "cifar10", "resnet18", "probe")
    assert small.mem_bytes < est.mem_bytes / 10
    budget = with_score(cifar10, {"method": "log_det", "per_class": False, "budget": 0.5})
    half = scale.score_estimate(budget, "cifar10", "resnet18", "probe")
    factor = 50_000 * 50_000 * 8
    assert est.mem_bytes - half.mem_bytes == pytest.approx(factor / 2, rel=1e-6)
    assert half.seconds < est.seconds / 3  # k^2 n: a quarter of the factor updates


def test_estimates_grow_with_the_throughputs_they_assume(cifar10):
    config = with_score(cifar10, {"method": "glister"})
    slow = copy.deepcopy(config)
    slow["limits"]["cpu_gflops"] /= 4
    slow["limits"]["cpu_gbps"] /= 4
    fast_s = scale.score_estimate(config, "cifar10", "resnet18", "probe").seconds
    assert scale.score_estimate(slow, "cifar10", "resnet18", "probe").seconds > 3 * fast_s


def test_presets_pass_their_own_guards():
    for name in ("cifar10", "cifar100", "mnist", "imagenet"):
        config = preset(name)
        assert scale.order_misuse(config) == [], name
        for (dataset, proxy, score), _ in scale.score_jobs(config).items():
            est = scale.score_estimate(config, dataset, proxy, score)
            assert est.mem_bytes < 64e9 and est.seconds < 24 * 3600, (name, score, est)


def test_guard_names_method_estimate_and_fix_for_a_small_node(cifar10):
    config = with_score(cifar10, {"method": "log_det", "per_class": False})
    config["limits"]["mem_gb"] = 16
    (problem,) = scale.check(config)
    assert "scores.probe (method log_det)" in problem
    assert "GB" in problem and "limits.mem_gb = 16" in problem
    assert "per_class: true" in problem and "budget: 0.5" in problem
    config["limits"]["mem_gb"] = 64
    assert scale.check(config) == []  # 20 GB and a few hours fit the default node


def test_deepfool_with_every_imagenet_class_is_refused_but_the_default_fits():
    config = preset("imagenet")
    refused = with_score(config, {"method": "deepfool", "top_classes": None}, keep="low")
    (problem,) = scale.check(refused)
    assert "method deepfool" in problem and "limits.gpu_mem_gb = 80" in problem
    assert "256 x 1000 candidate-class input gradients" in problem
    assert "top_classes: 10" in problem
    default = with_score(config, {"method": "deepfool"}, keep="low")
    assert default["scores"]["probe"]["top_classes"] == 10  # the schema's default
    assert REGISTRY["deepfool"].defaults["top_classes"] == 10  # the same in the package
    assert scale.check(default) == []


def test_glister_full_order_on_imagenet_is_refused_for_time_and_a_budget_fixes_it():
    config = preset("imagenet")
    full = with_score(config, {"method": "glister"}, fractions=(0.1, 0.3))
    (problem,) = scale.check(full)
    assert "method glister" in problem and "limits.hours = 24" in problem
    assert "validation gradient" in problem and "budget: 0.3" in problem
    fixed = with_score(config, {"method": "glister", "budget": 0.3}, fractions=(0.1, 0.3))
    assert scale.check(fixed) == []


def test_fraction_beyond_a_budget_and_unbalanced_per_class_orders_are_refused(cifar10):
    over = with_score(cifar10, {"method": "kcenter", "budget": 0.2}, fractions=(0.1, 0.3))
    (problem,) = scale.order_misuse(over)
    assert "fraction(s) [0.3]" in problem and "budget: 0.3 or more" in problem
    enough = with_score(cifar10, {"method": "kcenter", "budget": 0.3}, fractions=(0.1, 0.3))
    assert scale.order_misuse(enough) == []
    tail = with_score(cifar10, {"method": "kcenter", "budget": 0.5}, keep="bottom")
    (problem,) = scale.order_misuse(tail)
    assert "one-shot ranking" in problem and "budget: null" in problem
    unbalanced = with_score(cifar10, {"method": "herding"})
    unbalanced["selections"]["probe_sel"]["balanced"] = False
    (problem,) = scale.order_misuse(unbalanced)
    assert "not comparable across classes" in problem
    unbalanced["scores"]["probe"]["per_class"] = False
    assert scale.order_misuse(unbalanced) == []


def test_score_job_resources_follow_the_estimate(cifar10):
    config = with_score(cifar10, {"method": "log_det", "per_class": False})
    wildcards = {"dataset": "cifar10", "proxy": "resnet18", "seed": "0", "method": "probe"}
    est = scale.score_estimate(config, "cifar10", "resnet18", "probe")
    assert jobcost.mem_mb(config, "score_samples", wildcards) >= est.mem_bytes / 2**20
    per_class = with_score(cifar10, {"method": "log_det"})
    assert jobcost.runtime_minutes(config, "score_samples", wildcards) > 10 * (
        jobcost.runtime_minutes(per_class, "score_samples", wildcards)
    )


def dry_run(tmp_path: Path, preset_name: str, override: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` on a preset with an override config file."""
    extra = tmp_path / "override.yaml"
    extra.write_text(yaml.safe_dump(override))
    preset_file = str(REPO / "presets" / f"{preset_name}.yaml")
    return snakemake(tmp_path, "-n", "--quiet", "--configfile", preset_file, str(extra))


def test_dry_run_refuses_deepfool_over_every_imagenet_class(tmp_path):
    override = {
        "scores": {"deepfool": {"method": "deepfool", "top_classes": None}},
        "selections": {"deepfool": {"score": "deepfool", "keep": "low"}},
        "studies": {"easycore": {"selections": ["random", "easy", "hard", "deepfool"]}},
    }
    result = dry_run(tmp_path, "imagenet", override)
    output = result.stdout + result.stderr  # Snakemake prints a config error on stdout
    assert result.returncode != 0
    assert "scores.deepfool (method deepfool)" in output
    assert "top_classes: 10" in output and "308 GB" in output
    assert "Job stats" not in output  # refused before any job was planned


def test_dry_run_refuses_log_det_over_all_cifar10_samples_on_a_small_node(tmp_path):
    override = {"scores": {"log_det": {"method": "log_det", "per_class": False}},
                "limits": {"mem_gb": 16}}  # fmt: skip
    result = dry_run(tmp_path, "cifar10", override)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "scores.log_det (method log_det) on datasets.cifar10" in output
    assert "50,000 x 50,000 float64 factor" in output and "per_class: true" in output


def test_gradmatch_over_all_cifar10_samples_is_refused_for_its_nnls_systems(cifar10):
    config = with_score(cifar10, {"method": "gradmatch", "per_class": False})
    (problem,) = scale.check(config)
    assert "method gradmatch" in problem and "limits.mem_gb = 64" in problem
    assert "50,000 x 50,000 NNLS systems" in problem  # 4 k^2 float64 = 80 GB
    assert "per_class: true" in problem and "budget: 0.5" in problem
    fixed = with_score(cifar10, {"method": "gradmatch", "per_class": False, "budget": 0.5})
    assert scale.check(fixed) == []


def test_only_fixes_that_fit_are_suggested_and_none_is_said_so():
    config = preset("imagenet")
    half = with_score(config, {"method": "glister"}, fractions=(0.1, 0.5))
    (problem,) = scale.check(half)  # 77 h; a budget of 0.5 still needs about 39 h
    assert "no setting of this method fits these limits (tried budget: 0.5" in problem
    bottom = with_score(preset("cifar10"), {"method": "gradmatch", "per_class": False}, "bottom")
    (problem,) = scale.check(bottom)  # the bottom end reads the whole order: no budget
    assert problem.endswith("set per_class: true")
