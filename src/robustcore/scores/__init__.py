"""Per-sample scores computed from a proxy; each method declares which end its paper keeps.

Methods register themselves in `REGISTRY` (see `base.register`); importing this package loads
every method module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# Importing a method module registers its methods; this import order is the order of REGISTRY
# (and of every listing built from it), so it is kept by hand.
# isort: off
from robustcore.scores import dynamics, pointwise, cal, deepfool, sensitivity  # noqa: F401
from robustcore.scores import herding, kcenter, contextual_diversity, craig  # noqa: F401
from robustcore.scores import gradmatch, glister, facility_location, graph_cut  # noqa: F401
from robustcore.scores import log_det  # noqa: F401

# isort: on
from robustcore.scores.base import REGISTRY, Method, ScoreInputs, register
from robustcore.scores.dynamics import aign, read_dynamics

METHODS = REGISTRY
NATURAL_ORDER = {name: method.natural for name, method in REGISTRY.items()}

__all__ = [
    "METHODS",
    "NATURAL_ORDER",
    "REGISTRY",
    "Method",
    "ScoreInputs",
    "aign",
    "read_dynamics",
    "register",
]


def load_inputs(
    method: Method,
    proxy_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    device: torch.device,
    rows: np.ndarray | None = None,
) -> ScoreInputs:
    """Read what `method` declares it needs from a proxy folder (and the dataset for `model`).

    `rows` (ascending sample rows; default all) restricts the inputs to those samples: one
    rank's shard, for a method that needs only the model and scores each sample on its own.
    """
    from robustcore import data, models
    from robustcore.io import read_npz
    from robustcore.probe import load_probe

    proxy_dir = Path(proxy_dir)
    labels = read_npz(Path(data_dir) / "train.npz", ["labels"])["labels"]
    index = np.arange(len(labels), dtype=np.int64)
    if rows is not None:
        if method.needs != ("model",):
            raise ValueError(f"score method {method.name!r} reads {method.needs}: not by rows")
        index = np.asarray(rows, dtype=np.int64)
        labels = labels[index]
    inputs = ScoreInputs(index=index, labels=labels, device=device)
    if "dynamics" in method.needs:
        inputs.dynamics = read_dynamics(proxy_dir / "dynamics")
    if "probe" in method.needs:
        inputs.probe = load_probe(proxy_dir / "probe.npz")
    if "sensitivity" in method.needs:
        from robustcore.sensitivity import read_sensitivity

        inputs.sensitivity = read_sensitivity(proxy_dir / "sparse_fgsm.parquet")
    if "model" in method.needs:
        inputs.model = models.load(proxy_dir, device)
        inputs.train, _ = data.load(data_dir)
    return inputs
