"""The device check (benchmarks/gpu_check.py), host-sync counting and the measured-throughput
calibration of the cost model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import make_split, meta_for
from snakemake.utils import validate

from robustcore import data, jobcost, models
from robustcore.hostsync import counting_syncs, syncs_per_step
from robustcore.runtime import to_device
from robustcore.train import fit

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
    "augment": {"crop_padding": 2, "flip": True}, "eps": 8 / 255, "steps": 2,
    "step_size": 2 / 255,
}  # fmt: skip
# At most one synchronisation per step outside the selection of selective AT (issue 19's target);
# the selective criteria read their criterion once, fp16's scaler reads its overflow flag once.
PER_STEP = {
    "standard": ({"type": "standard"}, 0),
    "pgd": ({"type": "pgd"}, 0),
    "trades": ({"type": "trades"}, 0),
    "fgsm_rs": ({"type": "fgsm_rs"}, 0),
    "selective margin": ({"type": "selective", "criterion": "margin", "warmup_epochs": 0}, 1),
    "selective gradmatch": ({"type": "selective", "criterion": "gradmatch"}, 1),
    "selective random": ({"type": "selective", "criterion": "random", "warmup_epochs": 0}, 0),
    "standard bf16": ({"type": "standard", "precision": "bf16"}, 0),
    "standard fp16": ({"type": "standard", "precision": "fp16"}, 1),
}


def _fit_steps(spec: dict, device: torch.device):
    def prepare(steps: int):
        torch.manual_seed(0)
        spec_of_model = models.model_spec("small_cnn", {"width": 4}, meta_for(make_split(8), 3))
        model = models.build(spec_of_model).to(device)
        loader = data.Loader(make_split(8 * steps, shape=(1, 8, 8)), 8, device)
        generator = torch.Generator().manual_seed(0)
        return lambda: fit(model, loader, spec, generator=generator)

    return prepare


@pytest.mark.parametrize("name", list(PER_STEP))
def test_training_steps_synchronise_at_most_as_the_target_says(name, device):
    extra, allowed = PER_STEP[name]
    spec = {**BASE, **extra}
    if extra["type"] == "fgsm_rs":
        spec = {k: v for k, v in spec.items() if k not in ("steps", "step_size")}
    if extra.get("criterion") == "gradmatch":
        spec["warmup_epochs"] = 0
    counted = syncs_per_step(_fit_steps(spec, device), device, steps=2)
    assert counted.per_step <= allowed, counted.sites
    # The per-epoch reads (the log's loss and accuracy, the shuffled order) are few and fixed.
    assert counted.per_run <= 6, counted


def test_the_counter_sees_per_step_reads_and_copies_but_not_host_draws(device):
    """A loop that reads a device value and copies a host tensor per step counts both, per step;
    a CPU generator's draws read on the host and `to_device` copies do not count."""
    weights = torch.ones(4, device=device)
    generator = torch.Generator().manual_seed(0)

    def loop(steps: int) -> None:
        for _ in range(steps):
            total = (weights * 2).sum()
            float(total)  # a host read of a device value: waits on a GPU
            torch.arange(4).to(device)  # a blocking host-to-device copy
            draw = torch.rand(4, generator=generator)  # lives on the host on any device
            if float(draw.sum()) > 10:  # a host read of a host tensor: no wait
                raise AssertionError
            to_device(torch.arange(4), device)  # pinned, non-blocking: no wait

    counted = syncs_per_step(lambda n: lambda: loop(n), device, steps=3)
    assert counted.per_step == 2, counted.sites
    with counting_syncs(device) as count:
        loop(1)
    kinds = sorted(site.rsplit("(", 1)[-1] for site in count.sites) if device.type == "cpu" else []
    if device.type == "cpu":
        assert kinds == ["blocking_copy)", "float)"]


def test_to_device_gives_the_same_values(device):
    host = torch.arange(10, dtype=torch.int64)
    moved = to_device(host, device)
    assert moved.device.type == device.type and torch.equal(moved.cpu(), host)


@pytest.fixture(scope="module")
def cifar10() -> dict:
    config = yaml.safe_load((REPO / "presets/cifar10.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    return config


def test_measured_arch_tflops_set_that_arch_time_limits_only(cifar10):
    train = {"dataset": "cifar10", "model": "resnet18", "regime": "pgd", "coreset": "full"}
    limits = cifar10["job_resources"]
    assert limits["arch_tflops"] == {}  # the schema's default: nothing measured
    assumed = jobcost.job_seconds(cifar10, "train_model", train)
    measured = {**cifar10, "job_resources": {**limits, "arch_tflops": {"resnet18": 100.0}}}
    assert jobcost.job_seconds(measured, "train_model", train) == pytest.approx(
        assumed * limits["gpu_tflops"] / 100.0
    )
    other = {**cifar10, "job_resources": {**limits, "arch_tflops": {"resnet50": 100.0}}}
    assert jobcost.job_seconds(other, "train_model", train) == pytest.approx(assumed)
    assert jobcost.runtime_minutes(measured, "train_model", train) < jobcost.runtime_minutes(
        cifar10, "train_model", train
    )


@pytest.mark.cpu_only("the tiny device check is the CPU's version of the GPU run")
def test_tiny_device_check_runs_every_path_and_prints_the_calibration(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--tiny", "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == []
    paths = {(r["stage"], r["variant"]) for r in report["code_paths"]}
    stages = {stage for stage, _ in paths}
    assert stages == {"proxy", "sensitivity", "score", "coreset", "train", "evaluate"}
    assert {v for s, v in paths if s == "score"} >= {"deepfool", "cal", "grand", "craig"}
    trained = {v for s, v in paths if s == "train"}
    assert trained >= {
        "standard fp16 (scaler)", "pgd compile", "selective gradmatch", "acs gradmatch trades",
        "resnet50 64px one step (preset precision)",
    }  # fmt: skip
    speed = report["throughput"]
    assert {r["arch"] for r in speed} == {"resnet18", "resnet50"}
    assert all(r["ok"] and r["samples_per_s"] > 0 for r in speed)
    standard = [r for r in speed if r["regime"] == "standard"]
    assert all(np.isfinite(r["ratio_to_minimal_loop"]) for r in standard)
    assert report["host_syncs"]["pgd"]["per_step"] == 0
    assert set(report["arch_tflops"]) == {"resnet18", "resnet50"}
    assert f"wrote {out}" in result.stdout
    assert "arch_tflops: {resnet18: " in result.stdout
    for row in speed:  # each regime's samples/s is printed
        assert f"{row['samples_per_s']:>9.1f} samples/s" in result.stdout
