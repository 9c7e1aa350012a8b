"""The contract every scoring method meets: what it reads, what it returns, which end it keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.data import Split
from robustcore.io import InputError
from robustcore.probe import ProbeData

# What a method may read; the workflow provides exactly what a method declares.
NEEDS = ("dynamics", "probe", "sensitivity", "model")


@dataclass
class ScoreInputs:
    """Everything a method may read about one proxy; fields a method did not declare are None."""

    index: np.ndarray  # int64 (N,): sample rows of train.npz, ascending
    labels: np.ndarray  # int64 (N,)
    dynamics: dict[int, pd.DataFrame] | None = None  # epoch (1-based) -> dynamics frame
    probe: ProbeData | None = None  # features, logits, last-layer weights of the final proxy
    sensitivity: pd.DataFrame | None = None  # Sparse-FGSM outputs per sample and k
    model: nn.Module | None = None  # the final proxy, eval mode, on `device`
    train: Split | None = None  # the training split (with `model`)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


ScoreFunction = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class Method:
    """A registered scoring method."""

    name: str
    func: ScoreFunction
    natural: str  # "low" or "high": the end of the ranking the method's paper keeps
    needs: tuple[str, ...]
    kind: str  # "score": a per-sample value; "order": a greedy set's pick order (0 = first)
    defaults: dict[str, Any]
    summary: str

    def __call__(self, inputs: ScoreInputs, *, seed: int = 0, **params: Any) -> pd.DataFrame:
        """Run the method with defaults filled in; check unknown params and the output frame."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise InputError(
                f"score method {self.name!r}: unknown parameter(s) {unknown}; "
                f"allowed: {sorted(self.defaults)}"
            )
        frame = self.func(inputs, seed=seed, **{**self.defaults, **params})
        return check_frame(self.name, frame, inputs)


REGISTRY: dict[str, Method] = {}


def register(
    name: str, *, natural: str, needs: tuple[str, ...], kind: str = "score", **defaults: Any
) -> Callable[[ScoreFunction], ScoreFunction]:
    """Decorator adding a scoring function `f(inputs, *, seed, **params) -> frame` to REGISTRY."""
    if natural not in ("low", "high") or kind not in ("score", "order"):
        raise ValueError(f"method {name}: natural must be low/high and kind score/order")
    if unknown := set(needs) - set(NEEDS):
        raise ValueError(f"method {name}: unknown needs {sorted(unknown)}")

    def decorate(func: ScoreFunction) -> ScoreFunction:
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else name
        REGISTRY[name] = Method(name, func, natural, tuple(needs), kind, dict(defaults), summary)
        return func

    return decorate


def check_frame(name: str, frame: pd.DataFrame, inputs: ScoreInputs) -> pd.DataFrame:
    """A method's output: index, label, score (+ components), one row per sample, index order."""
    missing = [c for c in ("index", "label", "score") if c not in frame.columns]
    if missing:
        raise RuntimeError(f"score method {name!r} returned no {missing} column(s)")
    frame = frame.sort_values("index", kind="stable").reset_index(drop=True)
    if not np.array_equal(frame["index"].to_numpy(), inputs.index):
        raise RuntimeError(f"score method {name!r} must return exactly one row per sample")
    if frame["score"].isna().any():
        raise RuntimeError(f"score method {name!r} returned NaN scores")
    return frame


def frame(inputs: ScoreInputs, score: np.ndarray, **components: np.ndarray) -> pd.DataFrame:
    """Build a method's output frame in sample order."""
    return pd.DataFrame(
        {"index": inputs.index, "label": inputs.labels, "score": score, **components}
    )


def per_class_rows(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Row positions of each class, for methods that work per class."""
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
