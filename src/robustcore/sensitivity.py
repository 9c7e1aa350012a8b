"""Sparse FGSM (one gradient, k largest positions perturbed) and the per-proxy sensitivity table.

The table (``proxy/.../sparse_fgsm.parquet``) has one row per training sample and k, k = 0 being
the clean input: ``index, label, k, pred, p0..p{C-1}`` (float32 softmax probabilities), sorted by
(index, k). The scores ISEF, FGSM-CS and PSS (``robustcore.scores.sensitivity``) read only it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.cost import Cost
from robustcore.data import Loader
from robustcore.io import InputError, read_parquet, write_parquet
from robustcore.persample import per_sample_stats
from robustcore.runtime import eval_mode, frozen

MODES = ("pixel", "element")
KEY_COLUMNS = ["index", "label", "k", "pred"]


def check_params(eps: float, ks: Sequence[int], mode: str) -> list[int]:
    """Validate eps ≥ 0, ks distinct positive integers, mode; return ks as a list of ints."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < 0:
        raise InputError(f"sparse FGSM parameter 'eps' must be a finite number ≥ 0, got {eps!r}")
    if isinstance(ks, np.ndarray):
        ks = ks.tolist()
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise InputError(
            "sparse FGSM parameter 'ks' must be a non-empty list of distinct positive integers, "
            f"got {ks!r}"
        )
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, Integral) or k < 1]
    if bad or len(set(ks)) != len(ks):
        raise InputError(
            "sparse FGSM parameter 'ks' must be a non-empty list of distinct positive integers, "
            f"got {list(ks)!r}"
        )
    if mode not in MODES:
        raise InputError(f"sparse FGSM parameter 'mode' must be one of {list(MODES)}, got {mode!r}")
    return [int(k) for k in ks]


def _position_scores(grad: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-sample ranking score of each position, shaped (B, positions)."""
    if mode == "element" or grad.dim() <= 2:
        return grad.abs().flatten(1)
    # Pixel mode: a position is a spatial location with all its channels. Rank by the sum of |g|
    # over channels (ℓ1), not the ℓ2 norm: the step moves every channel of a chosen location by
    # ε·sign(g_c), so to first order it raises the loss by ε·Σ_c |g_c|. Ranking by that sum picks
    # the k locations that raise the linearized loss most, the exact sparse analogue of FGSM.
    return grad.abs().sum(dim=1).flatten(1)


def _perturb(
    x: torch.Tensor, grad: torch.Tensor, *, eps: float, ks: list[int], mode: str
) -> dict[int, torch.Tensor]:
    """x + ε·sign(g) on each sample's k top-ranked positions, clipped to [0, 1], for every k."""
    scores = _position_scores(grad, mode)
    # One stable sort per batch serves every k; ties go to the lower position (deterministic).
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=x.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    if mode == "pixel" and x.dim() > 2:
        rank = rank.view(x.shape[0], 1, *x.shape[2:])  # broadcast over the channels
    else:
        rank = rank.view(x.shape)
    step = eps * grad.sign()  # a zero gradient gives no step, as in FGSM
    return {k: (x + step * (rank < k)).clamp(0.0, 1.0) for k in ks}


def _attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, ks: list[int], mode: str
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Clean logits and the sparse-FGSM inputs for every k, from one input gradient per sample."""
    stats = per_sample_stats(model, x, y)  # eval mode, parameter gradients off, mode restored
    with torch.no_grad():
        adv = _perturb(x.detach(), stats["input_grad"], eps=eps, ks=ks, mode=mode)
    return stats["logits"], adv


def sparse_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    ks: Sequence[int],
    mode: str = "pixel",
) -> dict[int, torch.Tensor]:
    """Sparse FGSM: for each k, perturb each sample's k largest-gradient positions by ε·sign(g)."""
    ks = check_params(eps, ks, mode)
    return _attack(model, x, y, eps=float(eps), ks=ks, mode=mode)[1]


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """float32 softmax probabilities as a NumPy array."""
    return logits.float().softmax(dim=1).cpu().numpy().astype(np.float32)


def sensitivity_table(
    model: nn.Module,
    loader: Loader,
    *,
    eps: float,
    ks: Sequence[int],
    mode: str,
    cost: Cost | None = None,
) -> pd.DataFrame:
    """Per training sample and k (0 = clean, then each k): index, label, k, pred, p0..p{C-1}."""
    ks = check_params(eps, ks, mode)
    levels = [0, *ks]
    parts: list[dict[str, np.ndarray]] = []
    for index, x, y in loader.epoch(shuffle=False):
        clean_logits, adv = _attack(model, x, y, eps=float(eps), ks=ks, mode=mode)
        logits = {0: clean_logits}
        with eval_mode(model), frozen(model), torch.no_grad():
            for k in ks:
                logits[k] = model(adv[k])
        if cost is not None:
            cost.add("sensitivity_grad", len(y))
            cost.add("sensitivity_forward", len(y) * len(ks), backward=False)
        n = len(y)
        parts.append(
            {
                "index": np.tile(index.cpu().numpy().astype(np.int64), len(levels)),
                "label": np.tile(y.cpu().numpy().astype(np.int64), len(levels)),
                "k": np.repeat(np.asarray(levels, dtype=np.int64), n),
                "pred": np.concatenate(
                    [logits[k].argmax(1).cpu().numpy().astype(np.int64) for k in levels]
                ),
                "probs": np.concatenate([_probabilities(logits[k]) for k in levels]),
            }
        )
    probs = np.concatenate([p.pop("probs") for p in parts])
    columns = {c: np.concatenate([p[c] for p in parts]) for c in KEY_COLUMNS}
    columns.update({f"p{c}": probs[:, c] for c in range(probs.shape[1])})
    table = pd.DataFrame(columns)  # built at once: no per-column inserts for 1000 classes
    return table.sort_values(["index", "k"], kind="stable").reset_index(drop=True)


def flip_rates(frame: pd.DataFrame) -> dict[int, float]:
    """Per k > 0, the share of samples whose Sparse-FGSM prediction differs from the clean one."""
    preds = frame.pivot(index="index", columns="k", values="pred")
    clean = preds[0].to_numpy()
    return {int(k): float((preds[k].to_numpy() != clean).mean()) for k in preds.columns if k != 0}


def prob_columns(frame: pd.DataFrame) -> list[str]:
    """The probability columns p0, p1, ... in class order (consecutive from p0)."""
    columns = []
    while f"p{len(columns)}" in frame.columns:
        columns.append(f"p{len(columns)}")
    return columns


def write_sensitivity(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a sensitivity table as parquet, atomically."""
    write_parquet(path, frame)


def read_sensitivity(path: str | os.PathLike) -> pd.DataFrame:
    """Read a sensitivity table, checking its columns and that every sample has k = 0."""
    frame = read_parquet(path, KEY_COLUMNS)
    if len(prob_columns(frame)) < 2:
        raise InputError(
            f"{path}: expected probability columns p0, p1, ..., p{{C-1}} (C ≥ 2), "
            f"found columns {list(frame.columns)}"
        )
    clean = frame.loc[frame["k"] == 0, "index"]
    if not clean.is_unique or set(clean) != set(frame["index"]):
        raise InputError(f"{path}: every sample needs exactly one clean (k = 0) row")
    return frame
