"""What a workflow job costs, from its config entries alone, and the cluster resources that follow.

One model serves the workflow's `resources:` (Slurm time limits and memory) and
`benchmarks/preset_cost.py` (a preset's GPU-hours). A job's work is (samples it processes) ×
(forward-equivalent passes per sample) × (forward FLOPs per sample of its model): a backward
costs two forwards, so plain training is 3 passes per sample and epoch; each PGD step adds 3
(forward and input backward); TRADES adds one more forward; selective AT attacks a share ρ; ACS
trains on its fraction; a proxy adds its capture pass over train and test (3); an evaluation runs
its attack on the test points plus the hygiene re-runs (about 4× the attack); AutoAttack standard
is about 8,000 forwards per point. Work over the sustained throughput of one GPU on the job's model
(`arch_tflops[arch]` as measured by benchmarks/gpu_check.py, else the assumed `gpu_tflops`) plus
a start-up allowance is the estimate; the time limit is
`safety` × that, × the attempt number on retries, within [min_minutes, max_minutes]. The one-off
decode of an image folder (`prepare_shards`) runs no model: its estimate is its images over its
processes' decode rate plus the bytes it writes, and it asks for `decode.workers` CPUs.

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
# The one-off decode of an image folder into shards (CPU only): decode.workers processes, each
# decoding DECODE_RATE images/s (PIL JPEG decode + resize + crop of 400–500 px JPEGs:
# benchmarks/bench_input.py measured about 290 per CPU-second and 80–120 per core on a busy
# 2-core machine; the lower figure is taken), then writing the shards at DECODE_WRITE_MBPS in all
# (an assumption for a shared file system); each process holds about DECODE_WORKER_MB (its
# image buffers and the copy-on-write pages of its forked parent).
DECODE_RULES = ("prepare_shards",)
DECODE_WORKERS = 32
DECODE_RATE = 100.0
DECODE_WRITE_MBPS = 200.0
DECODE_WORKER_MB = 300
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


def job_arch(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> str | None:
    """The model arch a job runs (None for the rules that run no model)."""
    if rule in ("train_proxy", "score_samples", "sparse_fgsm"):
        return config["models"][config["proxies"][wildcards["proxy"]]["model"]]["arch"]
    if rule in ("train_model", "evaluate_model"):
        return config["models"][wildcards["model"]]["arch"]
    if rule == "plot_feature_projection":
        return config["models"][config["studies"][wildcards["study"]]["model"]]["arch"]
    if rule == "plot_sparse_fgsm_signal":
        proxy = config["proxies"][config["studies"][wildcards["study"]]["proxy"]]
        return config["models"][proxy["model"]]["arch"]
    return None


def tflops(config: dict[str, Any], arch: str | None) -> float:
    """Sustained TFLOP/s of one GPU on `arch`: its measured value if the config has one."""
    limits = config["job_resources"]
    return float(limits.get("arch_tflops", {}).get(arch, limits["gpu_tflops"]))


# The entry whose `gpus` sets a job's processes (torch.distributed ranks), per rule.
RANKED_RULES = {"train_model": "regimes", "train_proxy": "proxies", "evaluate_model": "attacks"}


def ranks(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """Processes of one job, one per GPU: the `gpus` of its regime, proxy or attack (default 1)."""
    section = RANKED_RULES.get(rule)
    if section is None:
        return 1
    key = {"regimes": "regime", "proxies": "proxy", "attacks": "attack"}[section]
    return int(config[section][wildcards[key]].get("gpus", 1))


def job_gpus(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """GPUs one job asks for: one per rank on a GPU device, none with device: cpu."""
    return ranks(config, rule, wildcards) if uses_gpu(config, rule) else 0


def job_nodes(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """Nodes one job spans: its ranks over job_resources.gpus_per_node."""
    return -(-ranks(config, rule, wildcards) // int(config["job_resources"]["gpus_per_node"]))


def job_seconds(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> float:
    """Estimated GPU seconds of one job's counted work, shared by its ranks.

    W ranks do the work at W × multi_gpu_efficiency the speed of one (gradient all-reduce,
    stragglers, the per-epoch gathers).
    """
    flops = job_flops(config, rule, wildcards)
    if not flops:
        return 0.0
    world = ranks(config, rule, wildcards)
    speedup = 1.0 if world == 1 else world * config["job_resources"]["multi_gpu_efficiency"]
    return flops / (tflops(config, job_arch(config, rule, wildcards)) * 1e12 * speedup)


# The input side GFLOPS is counted at; a dataset stored at another side scales it by (side/usual)².
USUAL_SIDE = {"resnet50": 224}


def side_scale(dataset: dict[str, Any], arch: str, test: bool = False) -> float:
    """FLOPs of `arch` on the dataset's images relative to GFLOPS[arch] (160 px ImageNet: 0.51)."""
    usual = USUAL_SIDE.get(arch)
    decode = dataset.get("decode") or {}
    side = decode.get("test_resolution" if test else "resolution") or decode.get("resolution")
    side = side or dataset.get("image_size")
    return 1.0 if usual is None or side is None else (float(side) / usual) ** 2


def job_flops(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> float:
    """Estimated FLOPs of one job (0 for the rules that run no model), at its images' size."""
    flops = _flops_at_usual_size(config, rule, wildcards)
    arch = job_arch(config, rule, wildcards) if flops else None
    if arch is None:
        return flops
    name = wildcards.get("dataset") or config["studies"].get(wildcards.get("study"), {}).get(
        "dataset", ""
    )
    dataset = config["datasets"].get(name, {})
    return flops * side_scale(dataset, arch, test=rule == "evaluate_model")


def _flops_at_usual_size(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> float:
    """job_flops with every model at its usual input size (GFLOPS)."""
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


def threads(config: dict[str, Any], rule: str, wildcards: dict[str, str] | None = None) -> int:
    """CPUs a job uses (and so asks for): its torch threads, plus DataLoader workers if it reads;
    a decode job (wildcards name its dataset) its decode.workers processes."""
    if rule in DECODE_RULES:
        return decode_workers(config, (wildcards or {})["dataset"])
    return int(config["threads"]) + (int(config["workers"]) if rule in WORKER_RULES else 0)


def decode_workers(config: dict[str, Any], dataset: str) -> int:
    """The processes of a dataset's one-off decode (decode.workers)."""
    return int(config["datasets"][dataset]["decode"].get("workers", DECODE_WORKERS))


def decode_seconds(config: dict[str, Any], dataset: str) -> float:
    """Estimated seconds of a dataset's one-off decode: the images over its processes' rate,
    plus writing the uint8 shards (train at resolution², test at test_resolution²)."""
    entry = config["datasets"][dataset]
    decode = entry["decode"]
    n_train, n_test, _ = dataset_size(entry)
    side, test_side = decode["resolution"], decode.get("test_resolution", decode["resolution"])
    written = 3 * (n_train * side**2 + n_test * test_side**2)
    workers = decode_workers(config, dataset)
    return (n_train + n_test) / (DECODE_RATE * workers) + written / (DECODE_WRITE_MBPS * 1e6)


def runtime_minutes(
    config: dict[str, Any], rule: str, wildcards: dict[str, str], attempt: int = 1
) -> int:
    """The time limit of one job: safety × estimate, × attempt, within the configured bounds."""
    limits = config["job_resources"]
    minutes = job_seconds(config, rule, wildcards) / 60
    if rule in DECODE_RULES:  # CPU work, no model
        minutes += decode_seconds(config, wildcards["dataset"]) / 60
    if rule == "score_samples":  # the method's own CPU work (robustcore.scale)
        minutes += score_cost(config, wildcards).seconds / 60
    minutes = limits["safety"] * (minutes + limits["startup_minutes"]) * attempt
    return int(min(limits["max_minutes"], max(limits["min_minutes"], math.ceil(minutes))))


def mem_mb(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """Host memory per node of one job (Slurm's --mem): each rank's, times the ranks per node."""
    world = ranks(config, rule, wildcards)
    per_node = min(world, int(config["job_resources"]["gpus_per_node"]))
    return per_node * _rank_mem_mb(config, rule, wildcards)


def _rank_mem_mb(config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> int:
    """Host memory of one process: the rule's base, its dataset's arrays (uint8 + float32), a
    proxy's probe; a score job's own estimate (robustcore.scale) when that is larger."""
    limits = config["job_resources"]
    base = int(limits["mem_mb"].get(rule, limits["mem_mb"]["default"]))
    name = wildcards.get("dataset") or config["studies"].get(wildcards.get("study"), {}).get(
        "dataset"
    )
    dataset = config["datasets"].get(name or "", {})
    if rule in DECODE_RULES:
        return base + DECODE_WORKER_MB * decode_workers(config, wildcards["dataset"])
    if rule == "train_proxy":  # the probe pass ends the job with N × (d + C) float32
        shape = shape_of(config, wildcards["dataset"], wildcards["proxy"])
        base += math.ceil(shape.n * (shape.features + shape.classes) * 4 / 2**20)
    if dataset.get("decode"):  # memory-mapped shards: page cache, plus the batches in flight
        return base + (500 * max(1, int(config["workers"])) if rule in WORKER_RULES else 0)
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
