"""Peak memory and wall time of the Sparse-FGSM table: the wide blockwise file against the long one.

No model: random softmax outputs (5 levels, k ∈ {0, 1, 4, 16, 64}) are generated a loader batch
(256 samples) at a time. Every step runs in a fresh process and reports its own wall time and
peak RSS (``resource.getrusage``'s ru_maxrss); the baseline row is a process that only imports
the modules. Steps, new format: ``write`` streams the batches through `write_sensitivity`;
``isef``, ``fgsm_cs``, ``pss`` each open the file with `read_sensitivity` and score from it.
Old format (the former code, copied here): ``write`` builds the whole long frame (one row per
sample and k, p0..p{C-1} columns) then writes it; each score reads the whole frame. Usage:

    python benchmarks/bench_sensitivity_table.py [--new 50000x10,...] [--old 50000x10,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
KS = [1, 4, 16, 64]
LEVELS = [0, *KS]
BATCH = 256
SCORES = ("isef", "fgsm_cs", "pss")


def random_batches(n: int, num_classes: int) -> Iterator[tuple[np.ndarray, ...]]:
    """(index, labels, preds (b, 5), float32 probs (b, 5, C)) per batch, in index order."""
    for start in range(0, n, BATCH):
        rng = np.random.default_rng(start)
        b = min(BATCH, n - start)
        probs = rng.random((b, len(LEVELS), num_classes), dtype=np.float32)
        probs /= probs.sum(axis=2, keepdims=True)
        index = np.arange(start, start + b, dtype=np.int64)
        yield index, rng.integers(0, num_classes, b), probs.argmax(axis=2), probs


def new_write(path: Path, n: int, num_classes: int) -> None:
    """Stream the batches to the wide file."""
    from robustcore.sensitivity import SensitivityBlock, write_sensitivity

    blocks = (SensitivityBlock(*batch) for batch in random_batches(n, num_classes))
    write_sensitivity(path, blocks, ks=KS)


def new_score(path: Path, method: str) -> np.ndarray:
    """One score from the wide file, probabilities by blocks."""
    from robustcore.scores import REGISTRY, ScoreInputs
    from robustcore.sensitivity import read_sensitivity

    table = read_sensitivity(path)
    inputs = ScoreInputs(index=table.index, labels=table.labels, sensitivity=table)
    return REGISTRY[method](inputs, seed=0)["score"].to_numpy()


def old_write(path: Path, n: int, num_classes: int) -> None:
    """The former sensitivity_table + write_sensitivity: the whole long frame, then the file."""
    import pandas as pd

    from robustcore.io import write_parquet

    parts = []
    for index, labels, preds, probs in random_batches(n, num_classes):
        b = len(index)
        parts.append(
            {
                "index": np.tile(index, len(LEVELS)),
                "label": np.tile(labels, len(LEVELS)),
                "k": np.repeat(np.asarray(LEVELS, dtype=np.int64), b),
                "pred": np.concatenate([preds[:, level] for level in range(len(LEVELS))]),
                "probs": np.concatenate([probs[:, level] for level in range(len(LEVELS))]),
            }
        )
    probs = np.concatenate([p.pop("probs") for p in parts])
    columns = {c: np.concatenate([p[c] for p in parts]) for c in ("index", "label", "k", "pred")}
    columns.update({f"p{c}": probs[:, c] for c in range(probs.shape[1])})
    table = pd.DataFrame(columns)
    table = table.sort_values(["index", "k"], kind="stable").reset_index(drop=True)
    write_parquet(path, table)


def old_score(path: Path, method: str) -> np.ndarray:
    """The former read_sensitivity, sensitivity_arrays and formulas: the whole table at once."""
    import pandas as pd

    from robustcore.scores.sensitivity import entropy10, minmax

    table = pd.read_parquet(path)
    columns = [c for c in table.columns if c.startswith("p") and c[1:].isdigit()]
    clean = table.loc[table["k"] == 0, "index"]
    assert clean.is_unique and set(clean) == set(table["index"])
    index = np.sort(clean.to_numpy())
    table = table[table["index"].isin(index)].sort_values(["index", "k"], kind="stable")
    ks = np.unique(table["k"].to_numpy())
    n, levels = len(index), len(ks)
    labels = table["label"].to_numpy().reshape(n, levels)[:, 0]
    probs = table[columns].to_numpy(np.float64).reshape(n, levels, len(columns))
    preds = table["pred"].to_numpy().reshape(n, levels)
    ks = ks[1:].astype(np.float64)
    if method == "isef":
        wrong = preds != labels[:, None]
        first = wrong[:, 1:].argmax(axis=1)
        s_inv = np.where(wrong[:, 0], 1.0, np.where(wrong[:, 1:].any(axis=1), 1 / ks[first], 0.0))
        return 0.5 * minmax(s_inv) + 0.5 * minmax(entropy10(probs[:, 0]))
    elif method == "fgsm_cs":
        s_adv = (np.abs(probs[:, :1] - probs[:, 1:]).sum(axis=2) / ks).sum(axis=1)
        s_rob = (preds[:, 1:] != labels[:, None]).any(axis=1)
        return 0.5 * s_adv + 0.3 * entropy10(probs).max(axis=1) + 0.2 * s_rob
    shift = np.linalg.norm(probs[:, 1:] - probs[:, :1], axis=2)
    return (shift / (np.log2(ks) + 1.0)).sum(axis=1)


def worker(fmt: str, step: str, n: int, num_classes: int, path: Path) -> None:
    """Run one step in this (fresh) process and print its wall seconds and peak RSS as JSON."""
    import robustcore.scores  # noqa: F401  (the imports every step pays, outside the timing)
    import robustcore.sensitivity  # noqa: F401

    started = time.perf_counter()
    if step == "baseline":
        pass
    elif step == "write":
        (new_write if fmt == "new" else old_write)(path, n, num_classes)
    else:
        (new_score if fmt == "new" else old_score)(path, step)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def measure(fmt: str, step: str, n: int, num_classes: int, path: Path) -> dict[str, float]:
    """One step in a fresh process."""
    command = [sys.executable, __file__, "--worker", fmt, step, str(n), str(num_classes), str(path)]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sizes(text: str) -> list[tuple[int, int]]:
    """'50000x10,128000x1000' -> [(50000, 10), (128000, 1000)]."""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def main() -> None:
    """Measure every step at every size and print one markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", default="50000x10,50000x100,25600x1000,51200x1000,128000x1000")
    parser.add_argument("--old", default="50000x10,50000x100,25600x1000,51200x1000")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fmt, step, n, num_classes, path = args.worker
        worker(fmt, step, int(n), int(num_classes), Path(path))
        return
    base = measure("new", "baseline", 0, 0, Path("unused"))
    print(f"baseline (imports only): peak RSS {base['peak_mib']:.0f} MiB; levels {LEVELS}\n")
    print("| N | C | table (float32) | format | step | wall s | peak RSS MiB | file MiB |")
    print("|---:|---:|---:|---|---|---:|---:|---:|")
    runs = [(n, c, "old") for n, c in sizes(args.old)] + [(n, c, "new") for n, c in sizes(args.new)]
    for n, num_classes, fmt in sorted(runs):
        with tempfile.TemporaryDirectory(prefix="bench_sensitivity.") as folder:
            path = Path(folder) / "sparse_fgsm.parquet"
            gib = n * len(LEVELS) * num_classes * 4 / 2**30
            for step in ("write", *SCORES):
                result = measure(fmt, step, n, num_classes, path)
                print(
                    f"| {n:,} | {num_classes:,} | {gib:.2f} GiB | {fmt} | {step} | "
                    f"{result['seconds']:.1f} | {result['peak_mib']:,.0f} | "
                    f"{path.stat().st_size / 2**20:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
