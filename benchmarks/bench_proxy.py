"""Proxy-training throughput and the cost of recording per-sample dynamics.

For digits (1,347 × 1×8×8, small_cnn) and a synthetic CIFAR-shaped set (N × 3×32×32, ResNet-18 at
width 16 on CPU, 64 on a GPU) it times, per epoch: plain training, training + the eval-pass
capture (`capture: eval`, BatchNorm models) and training + train-step capture (`capture:
train_step`, the same net without BatchNorm), and prints samples/s and each capture's overhead
relative to plain training (goals: eval pass ≤ 0.8× of a training epoch, train step ≤ 5 %);
then the time of `snakemake -n` on presets/cifar10.yaml's whole DAG (goal < 10 s).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_proxy.py [--epochs 3] [--cifar-n 2048]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from robustcore import data, models  # noqa: E402
from robustcore.dynamics import train_proxy  # noqa: E402
from robustcore.runtime import resolve_device, seed_everything  # noqa: E402
from robustcore.train import fit  # noqa: E402


def _datasets(cifar_n: int) -> dict[str, tuple[data.Split, dict]]:
    """digits as the workflow prepares it, and random CIFAR-shaped images."""
    with tempfile.TemporaryDirectory() as folder:
        data.prepare("digits", Path(folder) / "digits")
        digits, _ = data.load(Path(folder) / "digits")
        digits_meta = data.load_meta(Path(folder) / "digits")
    rng = np.random.default_rng(0)
    cifar = data.Split(
        labels=rng.integers(0, 10, cifar_n).astype(np.int64),
        images=rng.integers(0, 256, (cifar_n, 3, 32, 32)).astype(np.uint8),
    )
    cifar_meta = {"shape": [3, 32, 32], "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3}
    return {"digits": (digits, digits_meta), "cifar-shaped": (cifar, cifar_meta)}


SPEC = {"batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def seconds_per_epoch(split, meta, arch, kwargs, capture, epochs, device) -> float:
    """Wall seconds per epoch of plain training (capture None) or of a proxy with that capture."""
    seed_everything(0)
    model = models.build(models.model_spec(arch, kwargs, meta)).to(device)
    spec = {**SPEC, "epochs": epochs}
    started = time.perf_counter()
    if capture is None:
        loader = data.Loader(split, SPEC["batch_size"], device)
        fit(model, loader, spec, generator=seed_everything(1))
    else:
        with tempfile.TemporaryDirectory() as out:
            train_proxy(model, split, {**spec, "capture": capture}, device=device,
                        generator=seed_everything(1), out_dir=out)  # fmt: skip
    return (time.perf_counter() - started) / epochs


def main() -> None:
    """Print the throughput table and the dry-run time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cifar-n", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    archs = {
        "digits": ("small_cnn", {"width": 16}),
        "cifar-shaped": ("resnet18", {"width": 64 if device.type == "cuda" else 16}),
    }
    print(f"device {device}, {torch.get_num_threads()} CPU threads, {args.epochs} epochs each\n")
    print("| data | net | mode | s/epoch | samples/s | overhead |")
    print("|---|---|---|---:|---:|---|")
    for name, (split, meta) in _datasets(args.cifar_n).items():
        arch, kwargs = archs[name]
        # train_step capture refuses BatchNorm: it is timed on the same net without BatchNorm.
        no_bn = ("small_cnn", {"width": 16 if name == "digits" else 32, "batch_norm": False})
        rows = {
            "plain": (arch, kwargs, None),
            "eval capture": (arch, kwargs, "eval"),
            "plain (no BN)": (*no_bn, None),
            "train_step capture (no BN)": (*no_bn, "train_step"),
        }
        # One untimed epoch first: the first forward pays torch's lazy start-up.
        seconds_per_epoch(split, meta, arch, kwargs, None, 1, device)
        seconds = {
            mode: seconds_per_epoch(split, meta, a, k, capture, args.epochs, device)
            for mode, (a, k, capture) in rows.items()
        }
        for mode, (a, k, _) in rows.items():
            base = seconds["plain (no BN)" if "no BN" in mode else "plain"]
            over = "—" if mode.startswith("plain") else f"{seconds[mode] / base - 1:+.1%}"
            net = f"{a} {k}"
            rate = len(split) / seconds[mode]
            print(f"| {name} | {net} | {mode} | {seconds[mode]:.3f} | {rate:,.0f} | {over} |")
    for preset in ("cifar10",):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            result = subprocess.run(
                [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
                 "--configfile", str(REPO / "presets" / f"{preset}.yaml")],
                cwd=folder, capture_output=True, text=True,
            )  # fmt: skip
        jobs = [line for line in result.stdout.splitlines() if line.startswith("total")]
        count = jobs[0].split()[-1] if jobs else "?"
        elapsed = time.perf_counter() - started
        print(f"\nsnakemake -n --configfile presets/{preset}.yaml: {elapsed:.1f} s ({count} jobs)")


if __name__ == "__main__":
    main()
