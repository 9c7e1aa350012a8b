"""Time robustcore.select: building vs solving the ILP, against the greedy reference.

Prints a Markdown table (median of --repeat runs per row). Run from the repository root:

    PYTHONPATH=src .venv/bin/python benchmarks/bench_select.py [--repeat 3]

Rows: N in {1797, 10000, 50000} with 10 classes and N = 50000 with 100 classes, f in {0.1, 0.5},
keep="low", class-balanced (quotas only: the case where the ILP must equal the greedy answer);
then two rows with constraints that greedy cannot express (strata; unbalanced + min_per_class).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def _import_select():
    try:
        from robustcore import select
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from robustcore import select
    return select


def _case(n: int, n_classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # uneven classes: class sizes drawn from a Dirichlet, labels shuffled
    p = rng.dirichlet(np.full(n_classes, 5.0))
    labels = rng.choice(n_classes, size=n, p=p).astype(np.int64)
    index = rng.permutation(n).astype(np.int64)
    score = rng.gamma(2.0, size=n).round(2)  # rounded: many ties, as AIGN-like scores have
    return index, labels, score


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median reported)")
    args = parser.parse_args(argv)
    sel = _import_select()

    rows = []
    grid = [(1797, 10), (10_000, 10), (50_000, 10), (50_000, 100)]
    for n, k in grid:
        index, labels, score = _case(n, k)
        for f in (0.1, 0.5):
            builds, solves, totals, greedys, same = [], [], [], [], True
            for _ in range(args.repeat):
                t = time.perf_counter()
                kept, info = sel.select(index, labels, score, f, solver="ilp")
                totals.append(time.perf_counter() - t)
                builds.append(info["build_seconds"])
                solves.append(info["solve_seconds"])
                t = time.perf_counter()
                ref = sel.greedy_select(index, labels, score, f)
                greedys.append(time.perf_counter() - t)
                same &= bool(np.array_equal(kept, ref))
            rows.append(
                (
                    n,
                    k,
                    f,
                    "quotas",
                    info["size"],
                    builds,
                    solves,
                    totals,
                    greedys,
                    info["status"],
                    "yes" if same else "NO",
                )
            )

    n, k, f = 50_000, 10, 0.1
    index, labels, score = _case(n, k)
    total = int(np.floor(f * n + 0.5))
    hardest = score >= np.quantile(score, 0.9)
    extra = [
        (
            "strata 80/20",
            {"strata": [("easy", ~hardest, total - total // 5), ("hard", hardest, total // 5)]},
        ),
        ("min_per_class", {"balanced": False, "min_per_class": 400}),
    ]
    for name, kwargs in extra:
        builds, solves, totals = [], [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            kept, info = sel.select(index, labels, score, f, **kwargs)
            totals.append(time.perf_counter() - t)
            builds.append(info["build_seconds"])
            solves.append(info["solve_seconds"])
        rows.append(
            (n, k, f, name, info["size"], builds, solves, totals, None, info["status"], "n/a")
        )

    med = statistics.median
    print(f"select benchmark: keep='low', median of {args.repeat} run(s), seconds\n")
    print(
        "| N | classes | f | constraints | kept | build s | solve s | total s | greedy s "
        "| status | ILP = greedy |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    for n, k, f, name, size, b, s, tot, g, status, same in rows:
        greedy = f"{med(g):.3f}" if g is not None else "—"
        print(
            f"| {n:,} | {k} | {f} | {name} | {size:,} | {med(b):.3f} | {med(s):.3f} "
            f"| {med(tot):.3f} | {greedy} | {status} | {same} |"
        )


if __name__ == "__main__":
    main()
