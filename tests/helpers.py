"""Small synthetic data shared by the tests."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from robustcore import data
from robustcore.io import write_parquet


def make_split(n: int = 48, shape: tuple[int, ...] = (1, 8, 8), classes: int = 3, seed: int = 0):
    """Random uint8 images whose class shifts the mean brightness, so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    images = rng.integers(0, 120, size=(n, *shape)) + (labels * 60).reshape(-1, *[1] * len(shape))
    return data.Split(labels=labels, images=images.clip(0, 255).astype(np.uint8))


def meta_for(split: data.Split, classes: int) -> dict:
    """A meta.json-like dict for a synthetic split."""
    return {
        "shape": list(split.images.shape[1:]),
        "num_classes": classes,
        "mean": [0.5],
        "std": [0.25],
    }


def prepared_digits(root, coreset: str, n: int):
    """Digits prepared by the CLI in root/digits; root/<coreset>.parquet: its first n rows."""
    subprocess.run(
        [sys.executable, "-m", "robustcore", "prepare", "--params", '{"source": "digits"}',
         "--out", str(root / "digits")],
        check=True, capture_output=True,
    )  # fmt: skip
    frame = pd.DataFrame({"index": np.arange(n), "label": np.zeros(n)})
    write_parquet(root / f"{coreset}.parquet", frame)
    return root
