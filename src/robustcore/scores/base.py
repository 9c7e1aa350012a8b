"""The contract every scoring method meets: what it reads, what it returns, which end it keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.data import Split
from robustcore.io import InputError
from robustcore.probe import ProbeData
from robustcore.sensitivity import SensitivityTable

# What a method may read; the workflow provides exactly what a method declares.
NEEDS = ("dynamics", "probe", "sensitivity", "model")


@dataclass
class ScoreInputs:
    """Everything a method may read about one proxy; fields a method did not declare are None."""

    index: np.ndarray  # int64 (N,): sample rows of train.npz, ascending
    labels: np.ndarray  # int64 (N,)
    dynamics: dict[int, pd.DataFrame] | None = None  # epoch (1-based) -> dynamics frame
    probe: ProbeData | None = None  # features, logits, last-layer weights of the final proxy
    sensitivity: SensitivityTable | None = None  # Sparse FGSM per sample; probs by blocks
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


# ------------------------------------------------------------------------------------------------
# helpers of the per-sample methods (pointwise, cal, deepfool)


def need(inputs: ScoreInputs, what: str, method: str) -> Any:
    """The declared input `what` of ScoreInputs, or a clear error if the workflow gave none."""
    value = getattr(inputs, what)
    if value is None:
        raise InputError(f"score method {method!r} needs {what!r} in its inputs, got None")
    return value


def checked_probe(inputs: ScoreInputs, method: str) -> ProbeData:
    """The probe, checked to hold exactly the samples of `inputs` in the same order."""
    probe = need(inputs, "probe", method)
    if not np.array_equal(probe.index, inputs.index):
        raise InputError(f"score method {method!r}: the probe's sample indices differ from inputs")
    if probe.logits.ndim != 2 or probe.logits.shape[0] != len(inputs.index):
        raise InputError(f"score method {method!r}: probe logits must be N×C, one row per sample")
    return probe


def int_param(method: str, key: str, value: Any, minimum: int) -> int:
    """An integer parameter ≥ minimum, or an InputError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"score method {method!r}: {key} must be an integer ≥ {minimum}, got {value!r}"
        )
    return int(value)


def blocks(n: int, size: int) -> Iterator[slice]:
    """Consecutive row slices of at most `size` rows covering 0..n."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
