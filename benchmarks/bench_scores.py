"""Cost of every scoring method on digits, as a multiple of one proxy training epoch.

Each method runs through the workflow's own CLI (`robustcore score`) in a fresh process, so its
wall time is what a job spends in the method and its peak memory is the job's peak RSS; the
baseline row is a process that only imports the same modules. Usage:

    python benchmarks/bench_scores.py [--epochs 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
MODEL = {"arch": "small_cnn", "kwargs": {"width": 16}}
TRAINING = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "augment": {"crop_padding": 1},
    "capture": "eval",
}
SPARSE = {"eps": 8 / 255, "ks": [1, 4, 16, 64], "mode": "pixel"}


def cli(*args: str) -> None:
    """Run `python -m robustcore ...`, failing loudly."""
    threads = [] if args[0] == "prepare" else ["--threads", "1"]
    command = [sys.executable, "-m", "robustcore", *args, *threads]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")


def epoch_seconds(data_dir: Path, repeats: int = 3) -> float:
    """Median wall time of one standard training epoch of the proxy (no capture pass)."""
    import torch

    from robustcore import data, models
    from robustcore.runtime import seed_everything
    from robustcore.train import fit

    torch.set_num_threads(1)
    train, _ = data.load(data_dir)
    spec = models.model_spec(MODEL["arch"], MODEL["kwargs"], data.load_meta(data_dir))
    times = []
    for seed in range(repeats + 1):
        model = models.build(spec)
        generator = seed_everything(seed)
        started = time.perf_counter()
        fit(model, data.Loader(train, 64), {**TRAINING, "epochs": 1}, generator=generator)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first run warms up


def baseline_rss_mib() -> float:
    """Peak RSS of a process that imports what a score job imports and does nothing."""
    code = (
        "import resource, robustcore.scores, robustcore.data, robustcore.models, torch;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    return float(result.stdout.strip())


def main() -> None:
    """Train a digits proxy, run every method, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from robustcore.scores import REGISTRY

    root = Path(args.out or tempfile.mkdtemp(prefix="bench_scores."))
    data_dir, proxy_dir, scores_dir = root / "data", root / "proxy", root / "scores"
    cli("prepare", "--params", json.dumps({"source": "digits"}), "--out", str(data_dir))
    training = {**TRAINING, "epochs": args.epochs}
    cli(
        "proxy",
        "--data",
        str(data_dir),
        "--model",
        json.dumps(MODEL),
        "--training",
        json.dumps(training),
        "--out",
        str(proxy_dir),
        "--device",
        "cpu",
    )
    cli(
        "sensitivity",
        "--proxy",
        str(proxy_dir),
        "--data",
        str(data_dir),
        "--params",
        json.dumps(SPARSE),
        "--out",
        str(proxy_dir / "sparse_fgsm.parquet"),
        "--device",
        "cpu",
    )
    sparse_seconds = json.loads((proxy_dir / "sparse_fgsm.json").read_text())["wall_seconds"]
    epoch = epoch_seconds(data_dir)
    base = baseline_rss_mib()
    print(
        f"digits: 1,347 training samples; one proxy epoch = {epoch:.3f} s (median of 3, 1 thread)"
    )
    print(
        f"Sparse-FGSM table (k = {SPARSE['ks']}): {sparse_seconds:.3f} s = "
        f"{sparse_seconds / epoch:.2f} epochs; baseline process RSS {base:.0f} MiB\n"
    )
    print(
        "| method | kind | needs | seconds | × epoch | incl. Sparse FGSM (× epoch) | "
        "job peak RSS (MiB) | method's own peak (MiB) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, method in sorted(REGISTRY.items()):
        out = scores_dir / f"{name}.parquet"
        cli(
            "score",
            "--proxy",
            str(proxy_dir),
            "--data",
            str(data_dir),
            "--params",
            json.dumps({"method": name}),
            "--out",
            str(out),
            "--device",
            "cpu",
        )
        info = json.loads(out.with_suffix(".json").read_text())
        seconds = info["wall_seconds"]
        with_sparse = (
            f"{(seconds + sparse_seconds) / epoch:.2f}" if "sensitivity" in method.needs else ""
        )
        print(
            f"| {name} | {method.kind} | {','.join(method.needs)} | {seconds:.3f} | "
            f"{seconds / epoch:.2f} | {with_sparse} | {info['peak_rss_mib']:.0f} | "
            f"{info['method_peak_rss_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
