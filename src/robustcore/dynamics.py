"""Proxy training that records each sample's loss, margin and input-gradient norm every epoch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.cost import Cost
from robustcore.data import Loader, Split
from robustcore.io import DivergedError, InputError, write_parquet
from robustcore.models import has_batch_coupling
from robustcore.persample import dynamics_rows, per_sample_stats, rows_to_numpy
from robustcore.probe import last_linear
from robustcore.train import fit

CAPTURES = ("eval", "train_step")


class HeadInputs:
    """Keeps the latest input of the model's classifier head (its penultimate features)."""

    def __init__(self, model: nn.Module):
        self.latest: torch.Tensor | None = None
        self._handle = last_linear(model).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        self.latest = inputs[0].detach()

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


def capture_epoch(model: nn.Module, loader: Loader, head: HeadInputs) -> pd.DataFrame:
    """An eval-mode pass over the (unaugmented) training set: one dynamics row per sample."""
    parts = []
    for index, x, y in loader.epoch(shuffle=False):
        stats = per_sample_stats(model, x, y)
        logits, losses, input_grad = stats["logits"], stats["losses"], stats["input_grad"]
        parts.append(dynamics_rows(index, logits, y, losses, input_grad, head.latest))
    return _frame(parts)


def _frame(parts: list[dict[str, torch.Tensor]]) -> pd.DataFrame:
    """Concatenate batch columns into a frame sorted by sample index."""
    frame = pd.DataFrame(rows_to_numpy(parts))
    return frame.sort_values("index", kind="stable").reset_index(drop=True)


def train_proxy(
    model: nn.Module,
    train: Split,
    spec: dict[str, Any],
    *,
    device: torch.device,
    generator: torch.Generator,
    out_dir: str | os.PathLike,
    image_size: int | None = None,
    test: Split | None = None,
    workers: int = 0,
) -> tuple[list[dict[str, float]], Cost]:
    """Train the proxy on all training samples, writing dynamics/epochNNN.parquet each epoch.

    With `test`, the same eval-mode pass over the test set (never trained on) is written as
    dynamics/test_epochNNN.parquet: the test samples' hardness, for per-hardness evaluation.
    """
    capture = spec.get("capture", "eval")
    if capture not in CAPTURES:
        raise InputError(f"proxy capture {capture!r} unknown; expected one of {list(CAPTURES)}")
    if capture == "train_step" and has_batch_coupling(model):
        raise InputError(
            "proxy capture 'train_step' needs a model without BatchNorm: in train mode BatchNorm "
            "mixes the samples of a batch, so input gradients from the training backward are not "
            "each sample's own. Use capture: eval (the default)."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fixed name: an interrupted proxy resumes from its checkpoint with the epochs written so far.
    staging = out_dir / ".dynamics.partial"
    staging.mkdir(exist_ok=True)

    def keep_epochs_up_to(done: int) -> None:
        for path in staging.glob("*epoch*.parquet"):
            if int(path.stem.rsplit("epoch", 1)[1]) > done:
                path.unlink()

    loader = Loader(train, spec["batch_size"], device, image_size=image_size, num_workers=workers)
    eval_batch = spec.get("eval_batch_size", 4 * spec["batch_size"])
    eval_loader = Loader(train, eval_batch, device, image_size=image_size, num_workers=workers)
    test_loader = (
        Loader(test, eval_batch, device, image_size=image_size, num_workers=workers)
        if test is not None
        else None
    )
    cost = Cost(device=str(device))
    batches: list[dict[str, np.ndarray]] = []

    def record_step(index, logits, y, losses, input_grad) -> None:
        batches.append(dynamics_rows(index, logits, y, losses, input_grad, head.latest))

    def after_epoch(epoch: int) -> dict[str, float]:
        if capture == "eval":
            frame = capture_epoch(model, eval_loader, head)
            cost.add("capture", len(frame))
        else:
            frame = _frame(batches)
            batches.clear()
        write_parquet(staging / f"epoch{epoch:03d}.parquet", frame)
        if test_loader is not None:
            test_frame = capture_epoch(model, test_loader, head)
            cost.add("capture_test", len(test_frame))
            write_parquet(staging / f"test_epoch{epoch:03d}.parquet", test_frame)
        return {"mean_input_grad_norm": float(frame["input_grad_norm"].mean())}

    head = HeadInputs(model)
    try:
        log, cost = fit(
            model,
            loader,
            spec,
            generator=generator,
            record_step=record_step if capture == "train_step" else None,
            after_epoch=after_epoch,
            cost=cost,
            desc="proxy",
            checkpoint_dir=out_dir / "checkpoint",
            on_resume=keep_epochs_up_to,
        )
    except DivergedError:
        # Resuming would diverge again: start the next attempt from scratch.
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
        raise
    finally:
        head.close()
    # Publish the epoch files only once the whole run succeeded.
    final = out_dir / "dynamics"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return log, cost
