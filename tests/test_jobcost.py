"""The cost model behind the workflow's resources: runtimes follow the counted work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from robustcore import jobcost

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar10() -> dict:
    """The CIFAR-10 preset with the schema's defaults filled in, as the workflow sees it."""
    config = yaml.safe_load((REPO / "presets" / "cifar10.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def _train(coreset: str, regime: str = "pgd") -> dict:
    return {"dataset": "cifar10", "model": "resnet18", "regime": regime, "coreset": coreset}


def test_training_flops_are_counted_passes_times_model_flops(cifar10):
    regime = cifar10["regimes"]["pgd"]
    expected = regime["epochs"] * 50_000 * 3 * (regime["steps"] + 1) * 1.11e9
    assert jobcost.job_flops(cifar10, "train_model", _train("full")) == pytest.approx(expected)
    small = jobcost.job_flops(cifar10, "train_model", _train("easy-f0.05-resnet18-seed0"))
    assert small == pytest.approx(0.05 * expected)


def test_time_limits_scale_with_work_attempt_and_throughput(cifar10):
    full = jobcost.runtime_minutes(cifar10, "train_model", _train("full"))
    small = jobcost.runtime_minutes(cifar10, "train_model", _train("random-f0.05-seed0"))
    assert small < full
    limits = cifar10["job_resources"]
    work = jobcost.job_flops(cifar10, "train_model", _train("full"))
    by_hand = limits["safety"] * (work / (limits["gpu_tflops"] * 1e12) / 60 + 2)
    assert full == pytest.approx(by_hand, abs=1)
    assert jobcost.runtime_minutes(cifar10, "train_model", _train("full"), attempt=2) == (
        pytest.approx(2 * by_hand, abs=1)
    )
    faster = {**cifar10, "job_resources": {**limits, "gpu_tflops": 4 * limits["gpu_tflops"]}}
    assert jobcost.runtime_minutes(faster, "train_model", _train("full")) < full / 2
    tiny = jobcost.runtime_minutes(cifar10, "train_model", _train("random-f0.01-seed0", "standard"))
    assert tiny == limits["min_minutes"]  # a short job still gets the floor
    capped = {**cifar10, "job_resources": {**limits, "max_minutes": 60}}
    assert jobcost.runtime_minutes(capped, "train_model", _train("full"), attempt=3) == 60


def test_autoattack_costs_more_than_pgd(cifar10):
    wildcards = {**_train("full"), "seed": "0"}
    aa = jobcost.runtime_minutes(cifar10, "evaluate_model", {**wildcards, "attack": "autoattack"})
    pgd = jobcost.runtime_minutes(cifar10, "evaluate_model", {**wildcards, "attack": "pgd20"})
    assert aa > pgd


def test_cpus_memory_and_gpus(cifar10):
    config = {**cifar10, "threads": 3, "workers": 5}
    assert jobcost.threads(config, "train_model") == 8  # torch threads + DataLoader workers
    assert jobcost.threads(config, "score_samples") == 3
    assert jobcost.uses_gpu(config, "evaluate_model") and not jobcost.uses_gpu(
        config, "report_study"
    )
    assert not jobcost.uses_gpu({**config, "device": "cpu"}, "train_model")
    arrays_mb = 60_000 * 3072 * 5 / 2**20
    base = cifar10["job_resources"]["mem_mb"]["train_model"]
    assert jobcost.mem_mb(cifar10, "train_model", _train("full")) == pytest.approx(
        base + arrays_mb, abs=1
    )


def test_proxy_job_memory_holds_its_probe():
    """The proxy job ends with the probe pass: N × (d + C) float32 (ImageNet: 15.6 GB)."""
    imagenet = yaml.safe_load((REPO / "presets" / "imagenet.yaml").read_text())
    validate(imagenet, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    wildcards = {"dataset": "imagenet", "proxy": "resnet50", "seed": "0"}
    probe_mb = 1_281_167 * (2048 + 1000) * 4 / 2**20
    base = imagenet["job_resources"]["mem_mb"]["train_proxy"]
    assert jobcost.mem_mb(imagenet, "train_proxy", wildcards) >= base + probe_mb
