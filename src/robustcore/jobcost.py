"""What a workflow job costs, from its config entries alone, and the cluster resources that follow.

One model serves the workflow's `resources:` (Slurm time limits and memory) and
`benchmarks/preset_cost.py` (a preset's GPU-hours). A job's work is (samples it processes) ×
(forward-equivalent passes per sample) × (forward FLOPs per sample of its model): a backward
costs two forwards, so plain training is 3 passes per sample and epoch; each PGD step adds 3
(forward and input backward); TRADES adds one more forward; selective AT attacks a share ρ; ACS
trains on its fraction; a proxy adds its capture pass over train and test (3); an evaluation runs
its attack on the test points plus the hygiene re-runs (about 4× the attack); AutoAttack standard
is about 8,000 forwards per point. Work over `gpu_tflops` (the sustained throughput of one GPU on
these models, a config setting) plus a start-up allowance is the estimate; the time limit is
`safety` × that, × the attempt number on retries, within [min_minutes, max_minutes].

Standard library only: the Snakemake process imports it without torch.
"""

from __future__ import annotations

import math
import re
from typing import Any

from robustcore.scale import Estimate, dataset_size, score_estimate, shape_of

# Forward GFLOPs per sample (2 × multiply-adds) at each arch's usual input size.
GFLOPS = {"resnet18": 1.11, "vgg16": 0.63, "resnet50": 8.2, "small_cnn": 0.004, "mlp": 0.001}
# The rules whose jobs run on a GPU (when the config's device is not cpu).
GPU_RULES = (
    "train_proxy", "score_samples", "sparse_fgsm", "train_model", "evaluate_model",
    "plot_feature_projection", "plot_sparse_fgsm_signal",
)  # fmt: skip
# The rules whose jobs read the data through DataLoader workers (they get CPUs for them).
WORKER_RULES = ("train_proxy", "train_model", "evaluate_model")
_FRACTION = re.compile(r"-f([0-9]+(?:[.][0-9]+)?(?:e-?[0-9]+)?)")


def attack_passes(attack: dict[str, Any]) -> float:
    """Forward-equivalents per test point of one evaluation, hygiene re-runs included."""
    if attack["type"] == "autoattack":
        return 8_000.0
    steps = attack.get("steps", 1) if attack["type"] == "pgd" else 1
    return 4 * (3 * steps + 1) * attack.get("restarts", 1)


def regime_passes(regime: dict[str, Any]) -> float:
    """Forward-equivalents per training sample and epoch."""
    kind, steps = regime.get("type", "standard"), regime.get("steps", 10)
    if kind == "pgd":
        return 3 * (steps + 1)
    if kind == "trades":
        return 3 * steps + 4
    if kind == "fgsm_rs":
        return 6
    if kind == "selective":
        return 3 + regime.get("rho", 0.25) * 3 * (steps + 1)
    if kind == "acs":
        return regime.get("fraction", 0.5) * 3 * (steps + 1)
    return 3


def coreset_fraction(coreset: str) -> float:
    """The share of the training set a coreset name keeps (1 for full)."""
    match = _FRACTION.search(coreset)
    return 1.0 if match is None else float(match.group(1))


def job_flops(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> float:
    """Estimated FLOPs of one job (0 for the rules that run no model)."""
    dataset = config["datasets"].get(wildcards.get("dataset", ""), {})
    n_train, n_test, _ = dataset_size(dataset)
    if rule == "train_proxy":
        proxy = config["proxies"][wildcards["proxy"]]
        regime = config["regimes"][proxy["regime"]]
        arch = config["models"][proxy["model"]]["arch"]
        epochs = proxy.get("epochs") or regime["epochs"]
        return epochs * (n_train + n_test) * 6 * GFLOPS[arch] * 1e9
    if rule in ("score_samples", "sparse_fgsm"):
        proxy = config["proxies"][wildcards["proxy"]]
        arch = config["models"][proxy["model"]]["arch"]
        sparse = proxy.get("sparse_fgsm") or {}
        passes = 3 * len(sparse.get("ks", [1, 4, 16, 64])) if rule == "sparse_fgsm" else 3
        return n_train * passes * GFLOPS[arch] * 1e9
    if rule == "train_model":
        regime = config["regimes"][wildcards["regime"]]
        fraction = coreset_fraction(wildcards["coreset"])
        arch = config["models"][wildcards["model"]]["arch"]
        return regime["epochs"] * fraction * n_train * regime_passes(regime) * GFLOPS[arch] * 1e9
    if rule == "plot_feature_projection":  # every listed regime's full-data model, every seed
        study = config["studies"][wildcards["study"]]
        n_train, n_test, _ = dataset_size(config["datasets"][study["dataset"]])
        arch = config["models"][study["model"]]["arch"]
        runs = len(study["figures"]["feature_projection"]["regimes"]) * len(study["seeds"])
        return runs * (n_train + n_test) * GFLOPS[arch] * 1e9
    if rule == "plot_sparse_fgsm_signal":  # one gradient and |ks| forwards per ε and seed
        study = config["studies"][wildcards["study"]]
        n_train, _, _ = dataset_size(config["datasets"][study["dataset"]])
        proxy = config["proxies"][study["proxy"]]
        arch = config["models"][proxy["model"]]["arch"]
        sparse = proxy["sparse_fgsm"]
        per_sample = 3 + len(sparse["ks"])
        runs = len(study["seeds"]) * (len(study["figures"]["sparse_fgsm_signal"]["eps"]) + 1)
        return runs * n_train * per_sample * GFLOPS[arch] * 1e9
    if rule == "evaluate_model":
        attack = config["attacks"][wildcards["attack"]]
        points = min(attack.get("n_points") or n_test, n_test)
        arch = config["models"][wildcards["model"]]["arch"]
        return points * attack_passes(attack) * GFLOPS[arch] * 1e9
    return 0.0


def uses_gpu(config: dict[str, Any], rule: str) -> bool:
    """Whether the rule's jobs ask for a GPU."""
    return rule in GPU_RULES and config["device"] != "cpu"


def threads(config: dict[str, Any], rule: str) -> int:
    """CPUs a job uses (and so asks for): its torch threads, plus DataLoader workers if it reads."""
    return int(config["threads"]) + (int(config["workers"]) if rule in WORKER_RULES else 0)


def runtime_minutes(
    config: dict[str, Any], rule: str, wildcards: dict[str, str], attempt: int = 1
) -> int:
    """The time limit of one job: safety × estimate, × attempt, within the configured bounds."""
    limits = config["job_resources"]
    minutes = job_flops(config, rule, wildcards) / (limits["gpu_tflops"] * 1e12) / 60
    if rule == "score_samples":  # the method's own CPU work (robustcore.scale)
        minutes += score_cost(config, wildcards).seconds / 60
    minutes = limits["safety"] * (minutes + limits["startup_minutes"]) * attempt
    return int(min(limits["max_minutes"], max(limits["min_minutes"], math.ceil(minutes))))


def mem_mb(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """Host memory of one job: the rule's base, its dataset's arrays (uint8 + float32), a proxy's
    probe; a score job's own estimate (robustcore.scale) when that is larger."""
    limits = config["job_resources"]
    base = int(limits["mem_mb"].get(rule, limits["mem_mb"]["default"]))
    name = wildcards.get("dataset") or config["studies"].get(wildcards.get("study"), {}).get(
        "dataset"
    )
    dataset = config["datasets"].get(name or "", {})
    if rule == "train_proxy":  # the probe pass ends the job with N × (d + C) float32
        shape = shape_of(config, wildcards["dataset"], wildcards["proxy"])
        base += math.ceil(shape.n * (shape.features + shape.classes) * 4 / 2**20)
    if dataset.get("source") == "imagefolder":  # decoded per batch by the workers
        return base + (2_000 * int(config["workers"]) if rule in WORKER_RULES else 0)
    n_train, n_test, values = dataset_size(dataset)
    arrays = base + math.ceil((n_train + n_test) * values * 5 / 2**20)
    if rule == "score_samples" and config["scores"][wildcards["method"]]["method"] != "deepfool":
        return max(arrays, math.ceil(score_cost(config, wildcards).mem_bytes / 2**20))
    return arrays


def score_cost(config: dict[str, Any], wildcards: dict[str, str]) -> Estimate:
    """The scale estimate of a score_samples job."""
    return score_estimate(config, wildcards["dataset"], wildcards["proxy"], wildcards["method"])
