"""Scores computed from the proxy's per-epoch training dynamics."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcore.io import InputError, read_parquet
from robustcore.persample import DYNAMICS_COLUMNS
from robustcore.scores.base import ScoreInputs, frame, register

_EPOCH_FILE = re.compile(r"epoch(\d{3,})\.parquet$")


def checked_window(
    inputs: ScoreInputs, method: str, first_epoch: Any, last_epoch: Any
) -> list[int]:
    """A method's epoch window first_epoch..last_epoch; errors name the method and the keys."""
    epochs = inputs.dynamics
    if not epochs:
        raise InputError(f"score method {method!r} needs the proxy's dynamics, got none")
    for key, value in (("first_epoch", first_epoch), ("last_epoch", last_epoch)):
        if value is None and key == "last_epoch":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(
                f"score method {method!r}: {key} must be an integer ≥ 1, got {value!r}"
            )
    first, last = int(first_epoch), max(epochs) if last_epoch is None else int(last_epoch)
    if not first <= last <= max(epochs):
        raise InputError(
            f"score method {method!r}: first_epoch={first_epoch!r}, last_epoch={last_epoch!r}: "
            f"epoch window [{first}, {last}] outside the proxy's epochs 1..{max(epochs)}"
        )
    return list(range(first, last + 1))


def window_matrix(inputs: ScoreInputs, column: str, window: list[int]) -> np.ndarray:
    """A dynamics column as an N×E array (rows in `inputs.index` order, one column per epoch)."""
    columns = []
    for epoch in window:
        series = inputs.dynamics[epoch].set_index("index")[column]
        if not series.index.is_unique:
            raise InputError(f"dynamics epoch {epoch}: duplicate sample indices")
        missing = np.setdiff1d(inputs.index, series.index.to_numpy())
        if missing.size:
            raise InputError(
                f"dynamics epoch {epoch}: {missing.size} samples missing (e.g. index {missing[0]})"
            )
        columns.append(series.reindex(inputs.index).to_numpy())
    return np.stack(columns, axis=1)


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
    window = checked_window(inputs, "aign", first_epoch, last_epoch)
    norms = window_matrix(inputs, "input_grad_norm", window).astype(np.float64)
    return frame(inputs, norms.mean(axis=1), n_epochs=np.full(len(norms), len(window)))
