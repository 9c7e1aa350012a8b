"""Every score method and coreset selection at CIFAR-10, CIFAR-100 and ImageNet size, on this CPU.

Run from the repository root (about 15 minutes on 2 cores):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py [--quick] [--only cifar10 ...]

Synthetic data of the real shapes (bench_set_methods.synthetic: class-shifted ReLU features and a
linear head): CIFAR-10 (N = 50,000, d = 512, 10 classes), CIFAR-100 (100 classes) and ImageNet
(N = 1,281,167, d = 2,048, 1,000 classes; features and logits, not images). Each score method runs
in its default form and, for the methods that have one, with ``per_class: false``; the time is
``time.perf_counter`` and the memory the peak ``tracemalloc`` records (numpy buffers included)
on top of the probe, to which the probe's own float32 arrays are added.

What runs at full size and what is extrapolated: a per-class method is timed on one class at the
dataset's class size (the classes are alike), × classes. A run whose estimate exceeds the time a
measurement may take (``--budget`` s) is timed at three sizes m/4, m/2 and m instead (m the
largest the model says fits the budget), with the time and memory exponents fitted on the two
largest (``time ~ n^a``), and extrapolated to the full size; those cells carry ``~`` and the
exponents. Constant terms make small runs understate the exponents, and the machine's other load
makes them noisy, so every row also shows the estimate of ``robustcore.scale`` (the model behind
the workflow's guards, at the config's default throughputs). Groups larger than the dense limit
compute their pairwise rows on demand at full size, so the small runs are forced into that mode.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_set_methods import REGISTRY, ScoreInputs, subset, synthetic  # noqa: E402

from robustcore import scale  # noqa: E402
from robustcore.persample import DYNAMICS_COLUMNS  # noqa: E402
from robustcore.scores import greedy  # noqa: E402
from robustcore.select import select  # noqa: E402

LIMITS = {"mem_gb": 64, "hours": 24, "gpu_mem_gb": 80, "cpu_gflops": 50, "cpu_gbps": 20}
# name: (N, classes, features, largest class, proxy epochs, values per image)
SHAPES = {
    "cifar10": (50_000, 10, 512, 5_000, 200, 3 * 32 * 32),
    "cifar100": (50_000, 100, 512, 500, 200, 3 * 32 * 32),
    "imagenet": (1_281_167, 1_000, 2_048, 1_300, 16, 3 * 224 * 224),
}
PROBE_METHODS = ("least_confidence", "entropy", "margin")
DYNAMICS_METHODS = ("aign", "forgetting", "el2n", "grand")
PRESET_FRACTIONS = {
    "cifar10": [0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9],
    "cifar100": [0.1, 0.2, 0.3, 0.4, 0.5],
    "imagenet": [0.1, 0.3, 0.5],
}


def model_estimate(shape: str, method: str, params: dict, group: int | None = None):
    """robustcore.scale's estimate on a dataset shape at the default limits (group: class size)."""
    n, classes, features, largest, epochs, values = SHAPES[shape]
    dims = scale.Shape(n, classes, features, values, group or largest)
    return scale.estimate({"method": method, **params}, dims, LIMITS, epochs=epochs, levels=5)


def traced(func) -> tuple[float, float]:
    """Seconds and peak traced bytes of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, float(peak)


def run_group(method: str, params: dict, probe, rows: np.ndarray, on_demand: bool):
    """Time one method on the samples `rows` (one group), pairwise rows on demand if asked."""
    inputs = subset(probe, rows)
    saved = greedy.DENSE_LIMIT
    greedy.DENSE_LIMIT = 0 if on_demand else saved
    try:
        return traced(lambda: REGISTRY[method](inputs, seed=0, **params))
    finally:
        greedy.DENSE_LIMIT = saved


def group_probe(shape: str, n: int, per_class: bool, seed: int = 0):
    """A synthetic probe of n samples of one class (per_class) or of every class."""
    _, classes, features, _, _, _ = SHAPES[shape]
    if per_class:
        return synthetic(n, features, 1, head_classes=classes, seed=seed)
    return synthetic(n, features, classes, seed=seed)


def group_seconds(shape: str, method: str, params: dict, size: int, grouped: bool) -> float:
    """The model's seconds for one group of `size` samples."""
    classes = SHAPES[shape][1]
    if grouped:
        return model_estimate(shape, method, params, group=size).seconds / classes
    dims = scale.Shape(size, classes, SHAPES[shape][2], SHAPES[shape][5], size)
    return scale.estimate({"method": method, **params}, dims, LIMITS, epochs=1, levels=5).seconds


def measure_set(shape: str, method: str, per_class: bool, budget_s: float) -> dict:
    """One greedy (or CAL) row: full-size group if quick enough, else two sizes, extrapolated."""
    n_total, classes, features, largest, _, _ = SHAPES[shape]
    params = {} if per_class else {"per_class": False}
    grouped = per_class or method == "craig"
    n_full = largest if grouped else n_total
    groups = classes if grouped else 1
    on_demand = n_full > scale.DENSE_LIMIT
    estimate = model_estimate(shape, method, params)
    per_group_estimate = estimate.seconds / groups
    row = {"shape": shape, "method": method, "form": "per class" if per_class else "all samples"}
    if method == "craig" and not per_class:
        row["form"] += " (block-diagonal: per class)"
    if per_group_estimate <= budget_s:
        probe = group_probe(shape, n_full, grouped)
        seconds, peak = run_group(method, params, probe, np.arange(n_full), on_demand)
        row.update(seconds=seconds * groups, peak=peak, exponent=None, timed=f"n = {n_full:,}")
    else:
        # Halve until the model says the largest run (m) fits the budget; time m/4, m/2, m and
        # fit the exponents on the two largest (closest to the full size's regime).
        m = n_full // 2
        while m > 400 and group_seconds(shape, method, params, m, grouped) > budget_s:
            m //= 2
        sizes = (m // 4, m // 2, m)
        points = []
        for size in sizes:
            probe = group_probe(shape, size, grouped, seed=size)
            points.append(run_group(method, params, probe, np.arange(size), on_demand))
        scale_ratio = math.log(sizes[2] / sizes[1])
        t_exp = math.log(points[2][0] / points[1][0]) / scale_ratio
        m_exp = math.log(max(points[2][1], 1.0) / max(points[1][1], 1.0)) / scale_ratio
        ratio = n_full / m
        row.update(
            seconds=points[2][0] * ratio**t_exp * groups,
            peak=points[2][1] * ratio**m_exp,
            exponent=(t_exp, m_exp),
            timed=", ".join(f"{n:,}: {p[0]:.2f} s" for n, p in zip(sizes, points, strict=True)),
        )
    row["peak"] += n_total * (features + classes) * 4  # the probe's float32 arrays
    row["model_s"], row["model_bytes"] = estimate.seconds, estimate.mem_bytes - scale.BASE_BYTES
    return row


def measure_pointwise(shape: str, method: str, max_n: int) -> dict:
    """A per-sample score at full size, or at two sizes and extrapolated (linear in N)."""
    n_total, classes, features, _, epochs, _ = SHAPES[shape]
    sizes = [n_total] if n_total <= max_n else [max_n // 2, max_n]
    points = []
    for size in sizes:
        if method in DYNAMICS_METHODS:
            inputs = synthetic_dynamics(size, classes, epochs)
        else:
            probe = synthetic(size, 64, classes)  # the width does not enter these scores
            inputs = ScoreInputs(index=probe.index, labels=probe.labels, probe=probe)
        points.append(traced(lambda inputs=inputs: REGISTRY[method](inputs, seed=0)))
    row = {"shape": shape, "method": method, "form": "per sample"}
    if len(points) == 1:
        row.update(seconds=points[0][0], peak=points[0][1], exponent=None, timed="full")
    else:
        t_exp = math.log(points[1][0] / points[0][0]) / math.log(2.0)
        m_exp = math.log(points[1][1] / points[0][1]) / math.log(2.0)
        ratio = n_total / sizes[1]
        row.update(
            seconds=points[1][0] * ratio**t_exp,
            peak=points[1][1] * ratio**m_exp,
            exponent=(t_exp, m_exp),
            timed=f"N = {sizes[0]:,}: {points[0][0]:.2f} s, {sizes[1]:,}: {points[1][0]:.2f} s",
        )
    if method in DYNAMICS_METHODS:  # the epoch tables are inputs, held while scoring
        row["peak"] += n_total * epochs * len(DYNAMICS_COLUMNS) * 8
    else:
        row["peak"] += n_total * classes * 4
    estimate = model_estimate(shape, method, {})
    row["model_s"], row["model_bytes"] = estimate.seconds, estimate.mem_bytes - scale.BASE_BYTES
    return row


def synthetic_dynamics(n: int, classes: int, epochs: int) -> ScoreInputs:
    """Per-epoch dynamics tables of n samples (random values of the right types)."""
    rng = np.random.default_rng(0)
    index = np.arange(n, dtype=np.int64)
    labels = index % classes
    tables = {}
    for epoch in range(1, epochs + 1):
        columns = {"index": index, "label": labels}
        for name in DYNAMICS_COLUMNS[2:]:
            if name == "correct":
                columns[name] = rng.random(n) < 0.8
            else:
                columns[name] = rng.random(n).astype(np.float32)
        tables[epoch] = pd.DataFrame(columns)
    return ScoreInputs(index=index, labels=labels, dynamics=tables)


def measure_selection(shape: str, solver: str | None) -> list[dict]:
    """select() at each preset fraction, class-balanced, keeping the lowest scores."""
    n_total, classes, _, _, _, _ = SHAPES[shape]
    rng = np.random.default_rng(0)
    index = np.arange(n_total, dtype=np.int64)
    labels = index % classes
    score = rng.random(n_total)
    kwargs = {"solver": solver} if solver else {}
    rows = []
    for fraction in PRESET_FRACTIONS[shape]:
        seconds, peak = traced(lambda f=fraction: select(index, labels, score, f, **kwargs))
        rows.append(
            {"shape": shape, "fraction": fraction, "solver": solver or "default",
             "seconds": seconds, "peak": peak}
        )  # fmt: skip
    return rows


def fits(row: dict) -> str:
    """Whether a job of this peak memory and time fits a 64 GB node and a 24 h limit."""
    memory = row["peak"] + scale.BASE_BYTES <= LIMITS["mem_gb"] * 1e9
    hours = row["seconds"] <= LIMITS["hours"] * 3600
    return {(True, True): "yes", (False, True): "no: memory", (True, False): "no: time"}.get(
        (memory, hours), "no: both"
    )


def human_time(seconds: float) -> str:
    """Seconds as s, min or h."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def table(rows: list[dict]) -> str:
    """The score rows as a markdown table."""
    lines = [
        "| dataset | method | form | time | peak memory | fits 64 GB / 24 h | model: time, memory "
        "| timed at | exponent (time, memory) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        approx = "~" if row["exponent"] else ""
        exponent = "" if row["exponent"] is None else "{:.2f}, {:.2f}".format(*row["exponent"])
        lines.append(
            f"| {row['shape']} | {row['method']} | {row['form']} | {approx}"
            f"{human_time(row['seconds'])} | {approx}{row['peak'] / 1e9:.3g} GB | {fits(row)} "
            f"| {human_time(row['model_s'])}, {row['model_bytes'] / 1e9:.3g} GB | {row['timed']} "
            f"| {exponent} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--budget", type=float, default=15.0, help="seconds one timing may take")
    parser.add_argument("--quick", action="store_true", help="1 s timings, no ILP")
    args = parser.parse_args(argv)
    budget = 1.0 if args.quick else args.budget
    set_methods = [*scale.ORDER_METHODS, "cal"]
    methods = args.methods or [*PROBE_METHODS, *DYNAMICS_METHODS, *set_methods]
    rows = []
    for shape in args.only:
        for method in methods:
            if method in set_methods:
                forms = (True, False)
                for per_class in forms:
                    rows.append(measure_set(shape, method, per_class, budget))
                    print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            else:
                rows.append(measure_pointwise(shape, method, 200_000 if not args.quick else 20_000))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print("\n## Score methods (this machine; ~ = extrapolated)\n")
    print(table(rows))

    print("\n## DeepFool (a GPU job): candidate-class input gradients of one 256-image batch\n")
    print("| dataset | top_classes | memory (model) |\n|---|---|---|")
    for shape in args.only:
        for top in (10, None):
            est = model_estimate(shape, "deepfool", {"top_classes": top, "batch_size": 256})
            label = "null (every class)" if top is None else top
            print(f"| {shape} | {label} | {(est.mem_bytes - scale.BASE_BYTES) / 1e9:.3g} GB |")

    print("\n## Coreset selection at each preset fraction (class-balanced, keep low)\n")
    print("| dataset | solver | fractions | time per selection (max) | peak memory |")
    print("|---|---|---|---|---|")
    has_solver = "solver" in inspect.signature(select).parameters
    for shape in args.only:
        solvers = [None] + (
            ["ilp"] if has_solver and not args.quick and shape != "imagenet" else []
        )
        for solver in solvers:
            sel = measure_selection(shape, solver)
            print(
                f"| {shape} | {sel[0]['solver']} | {len(sel)} | "
                f"{max(r['seconds'] for r in sel):.2f} s | "
                f"{max(r['peak'] for r in sel) / 1e9:.3g} GB |"
            )


if __name__ == "__main__":
    main()
