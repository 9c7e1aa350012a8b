"""Job count and a GPU-hour estimate of a configuration, from its dry run and FLOP counts.

    python benchmarks/preset_cost.py presets/cifar10.yaml [--tflops 100]

Every job the dry run plans is costed as (samples it processes) × (passes per sample) × (forward
FLOPs per sample of its model), divided by an assumed sustained throughput (default 25 TFLOP/s:
what a ResNet-18 CIFAR-10 epoch of about 7 s on an A100 in bf16 implies; small 32×32 images keep
a GPU far below its peak), plus a start-up allowance per GPU job (default 30 s: Python, CUDA
context, data to the device). Passes per sample: a backward
costs two forwards, so plain training is 3 per sample per epoch; each PGD step adds 3 (forward
and input backward); TRADES adds 1 more forward; selective AT perturbs a share ρ; ACS trains on
its fraction; the proxy adds its capture pass (3); an evaluation runs its attack on the test set
plus the hygiene re-runs (about 4× the attack); AutoAttack standard ≈ 8,000 forwards per point.
Data loading, start-up and idle time are not counted: read the result as a lower bound.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Forward GFLOPs per sample (2 × multiply-adds) at each arch's usual input size.
GFLOPS = {"resnet18": 1.11, "vgg16": 0.63, "resnet50": 8.2, "small_cnn": 0.004, "mlp": 0.001}
SIZES = {  # (train, test) samples per source
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "mnist": (60_000, 10_000),
    "imagefolder": (1_281_167, 50_000),
    "digits": (1_347, 450),
}


def planned_jobs(configfile: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run of `configfile` plans."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
         "--configfile", str(configfile), "--forceall"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    jobs = []
    for block in re.split(r"\n(?=\[.*\]\nrule |rule )", out):
        rule = re.search(r"^(?:\[.*\]\n)?rule (\w+):", block, re.M)
        if rule is None:
            continue
        found = re.search(r"wildcards: (.*)", block)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((rule.group(1), wildcards))
    return jobs


def attack_passes(attack: dict) -> float:
    """Forward-equivalents per test point of one evaluation, hygiene re-runs included."""
    if attack["type"] == "autoattack":
        return 8_000.0
    steps = attack.get("steps", 1) if attack["type"] == "pgd" else 1
    return 4 * (3 * steps + 1) * attack.get("restarts", 1)


def regime_passes(regime: dict) -> float:
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


def job_flops(config: dict, rule: str, wc: dict[str, str]) -> float:
    """Estimated FLOPs of one planned job."""
    dataset = config["datasets"].get(wc.get("dataset", ""), {})
    n_train, n_test = SIZES.get(dataset.get("source"), (dataset.get("n_train", 1200), 400))
    if rule == "train_proxy":
        proxy = config["proxies"][wc["proxy"]]
        regime = config["regimes"][proxy["regime"]]
        arch = config["models"][proxy["model"]]["arch"]
        epochs = proxy.get("epochs", regime["epochs"])
        return epochs * (n_train + n_test) * 6 * GFLOPS[arch] * 1e9
    if rule in ("score_samples", "sparse_fgsm"):
        proxy = config["proxies"][wc["proxy"]]
        arch = config["models"][proxy["model"]]["arch"]
        passes = (
            3 * len(proxy.get("sparse_fgsm", {}).get("ks", [1, 4, 16, 64]))
            if rule == "sparse_fgsm"
            else 3
        )
        return n_train * passes * GFLOPS[arch] * 1e9
    if rule == "train_model":
        regime = config["regimes"][wc["regime"]]
        match = re.search(r"-f([0-9]+(?:[.][0-9]+)?(?:e-?[0-9]+)?)", wc["coreset"])
        fraction = 1.0 if match is None else float(match.group(1))
        arch = config["models"][wc["model"]]["arch"]
        return regime["epochs"] * fraction * n_train * regime_passes(regime) * GFLOPS[arch] * 1e9
    if rule == "evaluate_model":
        attack = config["attacks"][wc["attack"]]
        points = min(attack.get("n_points") or n_test, n_test)
        arch = config["models"][wc["model"]]["arch"]
        return points * attack_passes(attack) * GFLOPS[arch] * 1e9
    return 0.0


def main() -> None:
    """Print jobs and estimated GPU-hours per rule and in total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configfile", type=Path)
    parser.add_argument("--tflops", type=float, default=25.0, help="sustained TFLOP/s per GPU")
    parser.add_argument("--startup", type=float, default=30.0, help="seconds per GPU job")
    args = parser.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    jobs, hours = defaultdict(int), defaultdict(float)
    for rule, wildcards in planned_jobs(args.configfile.resolve()):
        jobs[rule] += 1
        flops = job_flops(config, rule, wildcards)
        startup = args.startup if flops > 0 else 0.0
        hours[rule] += (flops / (args.tflops * 1e12) + startup) / 3600
    print(
        f"{args.configfile}: {sum(jobs.values())} jobs, ~{sum(hours.values()):,.1f} GPU-hours "
        f"at {args.tflops:g} TFLOP/s sustained and {args.startup:g} s start-up per GPU job"
    )
    for rule in sorted(jobs, key=lambda r: -hours[r]):
        print(f"  {rule:<24} {jobs[rule]:>6} jobs  {hours[rule]:>10,.2f} GPU-hours")


if __name__ == "__main__":
    main()
