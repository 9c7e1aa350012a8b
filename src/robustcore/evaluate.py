"""Clean and robust accuracy on the test set, with per-sample correctness."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.attacks import fgsm, pgd
from robustcore.data import Loader
from robustcore.io import InputError
from robustcore.runtime import device_generator, eval_mode

ATTACKS = ("pgd", "fgsm", "none")


def craft(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: dict[str, Any],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Adversarial inputs for one batch under a named attack spec."""
    kind = spec["type"]
    if kind == "none":
        return x
    if kind == "fgsm":
        return fgsm(model, x, y, eps=spec["eps"])
    if kind == "pgd":
        return pgd(
            model,
            x,
            y,
            eps=spec["eps"],
            steps=spec["steps"],
            step_size=spec["step_size"],
            norm=spec.get("norm", "linf"),
            random_start=spec.get("random_start", True),
            generator=generator,
        )
    raise InputError(f"attack type {kind!r} unknown; expected one of {list(ATTACKS)}")


def evaluate(
    model: nn.Module, loader: Loader, spec: dict[str, Any], *, seed: int = 0
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Clean and adversarial correctness of every test sample; summary and per-sample frame."""
    device = next(model.parameters()).device
    generator = device_generator(seed, device)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("index", "label", "clean_pred", "adv_pred")
    }
    started = time.perf_counter()
    with eval_mode(model):
        for index, x, y in loader.epoch(shuffle=False):
            with torch.no_grad():
                clean_pred = model(x).argmax(1)
            x_adv = craft(model, x, y, spec, generator)
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(1)
            for key, value in (
                ("index", index),
                ("label", y),
                ("clean_pred", clean_pred),
                ("adv_pred", adv_pred),
            ):
                parts[key].append(value.cpu().numpy().astype(np.int64))
    frame = pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})
    frame["clean_correct"] = frame["clean_pred"] == frame["label"]
    # A sample counts as robust only if it is also classified correctly when clean.
    frame["robust_correct"] = frame["clean_correct"] & (frame["adv_pred"] == frame["label"])
    summary = {
        "n": len(frame),
        "clean_acc": float(frame["clean_correct"].mean()),
        "robust_acc": float(frame["robust_correct"].mean()),
        "attack": dict(spec),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
    }
    return summary, frame
