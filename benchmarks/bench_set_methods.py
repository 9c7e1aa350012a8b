"""Time the greedy set methods (robustcore.scores.greedy) at CIFAR-10 size, per class and in total.

Run from the repository root (a few minutes to ~20 minutes on 2 CPU cores):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_set_methods.py [--imagenet]

Synthetic probe: N = 50,000 samples, d = 512 ReLU features, 10 classes of 5,000, a linear head
with logits = [h, 1] [W, b]^T. Every method runs per class (the default ``per_class=True``) on each
class's samples alone, timed with ``time.perf_counter`` while ``tracemalloc`` records the peak of
the memory it allocates (numpy buffers included; the probe itself is not counted).

Rows: the full order for every method; GradMatch with ``nnls=True`` (its default) is O(n^3) with a
large constant, so it is run with ``budget`` 0.1 (all classes) and 0.5 (``--slow-classes`` classes,
total extrapolated x classes / timed), and its full order is extrapolated from full runs on the
first 1,000 and 2,000 samples of one class (time ~ n^a, a fitted on the two points). ``--imagenet``
adds one ImageNet-shaped class (n = 1,281, d = 2,048, 1,000 classes in the head), total
extrapolated x 1,000 classes. Extrapolated cells are marked with ``~``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _import():
    try:
        from robustcore.probe import ProbeData
        from robustcore.scores import REGISTRY, ScoreInputs
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from robustcore.probe import ProbeData
        from robustcore.scores import REGISTRY, ScoreInputs
    return ProbeData, ScoreInputs, REGISTRY


ProbeData, ScoreInputs, REGISTRY = _import()


def synthetic(n: int, d: int, classes: int, head_classes: int | None = None, seed: int = 0):
    """A probe with class-shifted ReLU features and a head that gets most samples right."""
    rng = np.random.default_rng(seed)
    head_classes = head_classes or classes
    labels = np.arange(n, dtype=np.int64) % classes
    centers = rng.normal(size=(head_classes, d)).astype(np.float32)
    features = rng.normal(size=(n, d)).astype(np.float32)
    features += centers[labels]
    np.maximum(features, 0.0, out=features)
    weight = (centers / math.sqrt(d) + 0.05 * rng.normal(size=(head_classes, d))).astype(np.float32)
    bias = np.zeros(head_classes, dtype=np.float32)
    logits = (features @ weight.T + bias).astype(np.float32)
    index = np.arange(n, dtype=np.int64)
    return ProbeData(index, labels, features, logits, weight, bias)


def subset(probe, rows: np.ndarray):
    """The inputs of one class (rows) as their own ScoreInputs."""
    part = ProbeData(
        probe.index[rows],
        probe.labels[rows],
        probe.features[rows],
        probe.logits[rows],
        probe.last_weight,
        probe.last_bias,
    )
    return ScoreInputs(index=part.index, labels=part.labels, probe=part)


def measure(name: str, inputs, params: dict) -> tuple[float, float]:
    """Seconds and peak traced MiB of one run."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    REGISTRY[name](inputs, seed=0, **params)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def time_classes(probe, name: str, params: dict, classes: list[int]) -> tuple[list[float], float]:
    """Per-class seconds and the largest peak MiB over the timed classes."""
    seconds, peak = [], 0.0
    for c in classes:
        s, p = measure(name, subset(probe, np.flatnonzero(probe.labels == c)), params)
        seconds.append(s)
        peak = max(peak, p)
        print(f"  {name} {params} class {c}: {s:.2f} s, {p:.0f} MiB", file=sys.stderr, flush=True)
    return seconds, peak


def row(method: str, config: str, seconds: list[float], peak: float, n_classes: int, note=""):
    """A table row; the total is extrapolated (~) when fewer classes were timed."""
    mean = sum(seconds) / len(seconds)
    total = mean * n_classes
    approx = "~" if len(seconds) < n_classes else ""
    return (
        f"| {method} | {config} | {len(seconds)} | {mean:.2f} | {max(seconds):.2f} "
        f"| {approx}{total:.1f} | {peak:.0f} | {note} |"
    )


HEADER = (
    "| method | order | classes timed | s / class (mean) | s / class (max) | total s "
    "| peak MiB | note |\n|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--slow-classes", type=int, default=2, help="classes timed for slow rows")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of the methods")
    parser.add_argument("--imagenet", action="store_true", help="add the ImageNet-shaped class")
    args = parser.parse_args(argv)

    probe = synthetic(args.n, args.d, args.classes)
    all_classes = list(range(args.classes))
    some = all_classes[: args.slow_classes]
    names = args.methods or [
        "herding",
        "kcenter",
        "contextual_diversity",
        "facility_location",
        "graph_cut",
        "log_det",
        "craig",
        "glister",
        "gradmatch",
    ]
    lines = []
    for name in names:
        if name != "gradmatch":
            seconds, peak = time_classes(probe, name, {}, all_classes)
            lines.append(row(name, "full", seconds, peak, args.classes))
            continue
        seconds, peak = time_classes(probe, name, {"nnls": False}, all_classes)
        lines.append(row(name, "full, nnls=False", seconds, peak, args.classes))
        seconds, peak = time_classes(probe, name, {"budget": 0.1}, all_classes)
        lines.append(row(name, "first 10 %", seconds, peak, args.classes, "nnls=True"))
        seconds, peak = time_classes(probe, name, {"budget": 0.5}, some)
        lines.append(row(name, "first 50 %", seconds, peak, args.classes, "nnls=True"))
        rows = np.flatnonzero(probe.labels == 0)
        small = [measure(name, subset(probe, rows[:m]), {}) for m in (1000, 2000)]
        exponent = math.log(small[1][0] / small[0][0]) / math.log(2.0)
        per_class = small[1][0] * (len(rows) / 2000) ** exponent
        lines.append(
            f"| {name} | full | 0 | ~{per_class:.0f} | | ~{per_class * args.classes:.0f} | "
            f"| nnls=True; n_c = 1000: {small[0][0]:.1f} s, 2000: {small[1][0]:.1f} s, "
            f"time ~ n^{exponent:.1f} |"
        )
    print(f"\n### CIFAR-10 size: N = {args.n:,}, d = {args.d}, {args.classes} classes\n")
    print(HEADER)
    print("\n".join(lines))

    if args.imagenet:
        shaped = synthetic(1281, 2048, 1, head_classes=1000, seed=1)
        inputs = subset(shaped, np.arange(1281))
        lines = []
        for name in names:
            params = {"budget": 0.1} if name in ("glister", "gradmatch") else {}
            seconds, peak = measure(name, inputs, params)
            if params:
                lines.append(row(name, "first 10 %", [seconds], peak, 1000, "x1000 classes"))
            else:
                lines.append(row(name, "full", [seconds], peak, 1000, "x1000 classes"))
            print(
                f"  imagenet {name}: {seconds:.2f} s, {peak:.0f} MiB", file=sys.stderr, flush=True
            )
        print("\n### ImageNet shape, one class: n_c = 1,281, d = 2,048, 1,000 classes\n")
        print(HEADER)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
