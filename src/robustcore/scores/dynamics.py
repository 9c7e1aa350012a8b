"""Scores computed from the proxy's per-epoch training dynamics."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from robustcore.io import InputError, read_parquet

_EPOCH_FILE = re.compile(r"epoch(\d{3,})\.parquet$")
DYNAMICS_COLUMNS = ["index", "label", "loss", "correct", "margin", "input_grad_norm"]


def read_dynamics(dynamics_dir: str | os.PathLike) -> dict[int, pd.DataFrame]:
    """Read every dynamics/epochNNN.parquet of a proxy, keyed by epoch (1-based)."""
    dynamics_dir = Path(dynamics_dir)
    files = sorted(p for p in dynamics_dir.glob("epoch*.parquet") if _EPOCH_FILE.search(p.name))
    if not files:
        raise InputError(f"{dynamics_dir}: no epochNNN.parquet dynamics files")
    epochs = {
        int(_EPOCH_FILE.search(p.name).group(1)): read_parquet(p, DYNAMICS_COLUMNS) for p in files
    }
    expected = list(range(1, max(epochs) + 1))
    if sorted(epochs) != expected:
        raise InputError(f"{dynamics_dir}: epochs {sorted(epochs)} present, expected {expected}")
    return epochs


def aign(epochs: dict[int, pd.DataFrame], first: int = 1, last: int | None = None) -> pd.DataFrame:
    """Average input-gradient norm per sample over epochs first..last (1-based, inclusive)."""
    last = max(epochs) if last is None else last
    if not 1 <= first <= last <= max(epochs):
        raise InputError(
            f"aign window [{first}, {last}] outside the proxy's epochs 1..{max(epochs)}"
        )
    chosen = [epochs[e].set_index("index") for e in range(first, last + 1)]
    labels = chosen[0]["label"]
    for frame in chosen[1:]:
        if not frame.index.equals(chosen[0].index):
            raise InputError("dynamics files disagree on the sample indices")
    norms = pd.concat([f["input_grad_norm"] for f in chosen], axis=1)
    return pd.DataFrame(
        {
            "index": labels.index.to_numpy(),
            "label": labels.to_numpy(),
            "score": norms.mean(axis=1).to_numpy(),
            "n_epochs": len(chosen),
        }
    )
