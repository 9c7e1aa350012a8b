"""Scores computed from the proxy's per-epoch training dynamics."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from robustcore.io import InputError, read_parquet
from robustcore.scores.base import ScoreInputs, frame, register

_EPOCH_FILE = re.compile(r"epoch(\d{3,})\.parquet$")
DYNAMICS_COLUMNS = [
    "index",
    "label",
    "loss",
    "correct",
    "margin",
    "input_grad_norm",
    "el2n",
    "grad_norm_last",
]


def epoch_window(epochs: dict[int, pd.DataFrame], first: int, last: int | None) -> list[int]:
    """Epochs first..last (1-based, inclusive; last None = the final epoch), checked."""
    last = max(epochs) if last is None else last
    if not 1 <= first <= last <= max(epochs):
        raise InputError(
            f"epoch window [{first}, {last}] outside the proxy's epochs 1..{max(epochs)}"
        )
    return list(range(first, last + 1))


def window_mean(epochs: dict[int, pd.DataFrame], column: str, window: list[int]) -> pd.Series:
    """Mean of a dynamics column per sample over the given epochs, indexed by sample."""
    chosen = [epochs[e].set_index("index")[column] for e in window]
    for series in chosen[1:]:
        if not series.index.equals(chosen[0].index):
            raise InputError("dynamics files disagree on the sample indices")
    return pd.concat(chosen, axis=1).mean(axis=1)


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


@register("aign", natural="low", needs=("dynamics",), first_epoch=1, last_epoch=None)
def aign(
    inputs: ScoreInputs, *, seed: int, first_epoch: int, last_epoch: int | None
) -> pd.DataFrame:
    """EasyCore: average input-gradient norm over proxy epochs first..last (keep the lowest)."""
    window = epoch_window(inputs.dynamics, first_epoch, last_epoch)
    mean = window_mean(inputs.dynamics, "input_grad_norm", window)
    return frame(
        inputs, mean.loc[inputs.index].to_numpy(), n_epochs=np.full(len(mean), len(window))
    )
