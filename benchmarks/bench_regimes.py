"""Per-epoch cost of each training regime on digits, relative to standard and to full PGD-AT.

Prints a Markdown table: wall seconds per epoch (median over epochs and repeats), the ratio to
standard training and to PGD-AT, and the work counted by `Cost` per epoch (attack sample-steps,
attack iterations, samples perturbed, all forward and backward sample-passes). Run from the
repository root:

    PYTHONPATH=src .venv/bin/python benchmarks/bench_regimes.py [--epochs 3] [--repeat 1]

Model: small_cnn width 16 (models.model_spec("small_cnn", {"width": 16}, meta); --width); ε = 8/255,
10 steps of 2/255 for every attacking regime; selective at ρ = 0.25 with warm-up 0, so its
criterion runs in every epoch timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def _import():
    try:
        import robustcore.regimes  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from robustcore import data, models
    from robustcore.runtime import resolve_device, seed_everything
    from robustcore.train import fit

    return data, models, resolve_device, seed_everything, fit


REGIMES = [
    ("standard", {"type": "standard"}),
    ("pgd", {"type": "pgd"}),
    ("trades", {"type": "trades"}),
    ("fgsm_rs", {"type": "fgsm_rs"}),
    ("selective margin", {"type": "selective", "criterion": "margin"}),
    ("selective gradmatch", {"type": "selective", "criterion": "gradmatch"}),
    ("selective random", {"type": "selective", "criterion": "random"}),
]


def main(argv: list[str] | None = None) -> None:
    """Train each regime for a few epochs and print the per-epoch cost table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (first is timed too)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per regime")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    data, models, resolve_device, seed_everything, fit = _import()
    device = resolve_device(args.device)

    folder = tempfile.mkdtemp(prefix="bench_regimes_")
    data.prepare("digits", folder)
    train, _ = data.load(folder)
    spec = models.model_spec("small_cnn", {"width": args.width}, data.load_meta(folder))
    training = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "eps": 8 / 255,
        "steps": 10,
        "step_size": 2 / 255,
        "rho": 0.25,
        "warmup_epochs": 0,
    }
    rows = []
    for name, params in REGIMES:
        seconds, counted = [], None
        for repeat in range(args.repeat):
            generator = seed_everything(repeat, threads=args.threads)
            model = models.build(spec).to(device)
            loader = data.Loader(train, args.batch_size, device=device)
            log, cost = fit(model, loader, {**training, **params}, generator=generator)
            # fit's "seconds" is cumulative and taken after the epoch's loss is read (a sync)
            marks = [0.0] + [row["seconds"] for row in log]
            seconds += [b - a for a, b in zip(marks, marks[1:], strict=False)]
            counted = cost.as_dict()
        rows.append((name, statistics.median(seconds), counted))

    epochs = args.epochs
    base = rows[0][1]
    full_pgd = next(r for r in rows if r[0] == "pgd")
    pgd_passes = (full_pgd[2]["forward_total"] + full_pgd[2]["backward_total"]) / epochs
    print(
        f"regimes on digits ({len(train)} train samples), small_cnn width {args.width}, batch "
        f"{args.batch_size}, {device}, ε = 8/255, 10 steps, ρ = 0.25; median s/epoch over "
        f"{epochs} epoch(s) × {args.repeat} run(s); counts per epoch\n"
    )
    print(
        "| regime | s/epoch | × standard | × PGD time | attack sample-steps | attack iters "
        "| perturbed | forward passes | backward passes | × PGD passes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, sec, c in rows:
        fwd, bwd = c["forward_total"] / epochs, c["backward_total"] / epochs
        attack = c["forward_samples"].get("attack", 0) / epochs
        print(
            f"| {name} | {sec:.3f} | {sec / base:.2f} | {sec / full_pgd[1]:.2f} "
            f"| {attack:,.0f} | {c['attack_steps'] / epochs:,.0f} "
            f"| {c['samples_perturbed'] / epochs:,.0f} | {fwd:,.0f} | {bwd:,.0f} "
            f"| {(fwd + bwd) / pgd_passes:.2f} |"
        )


if __name__ == "__main__":
    main()
