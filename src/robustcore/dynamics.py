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
from robustcore.distributed import (
    World,
    batch_shard,
    broadcast_object,
    gather_in_order,
    is_distributed,
    is_main,
)
from robustcore.io import DivergedError, InputError, write_parquet
from robustcore.models import has_batch_coupling
from robustcore.persample import DYNAMICS_COLUMNS, dynamics_rows, per_sample_stats, rows_to_numpy
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
    return _frame(_capture_parts(model, loader, head))


def _capture_parts(model: nn.Module, loader: Loader, head: HeadInputs) -> list[dict]:
    """The eval-mode pass's batches of dynamics rows (on the device, not read back yet)."""
    parts = []
    for index, x, y in loader.epoch(shuffle=False):
        stats = per_sample_stats(model, x, y)
        logits, losses, input_grad = stats["logits"], stats["losses"], stats["input_grad"]
        parts.append(dynamics_rows(index, logits, y, losses, input_grad, head.latest))
    return parts


def _frame(parts: list[dict[str, torch.Tensor]]) -> pd.DataFrame:
    """Concatenate batch columns into a frame sorted by sample index."""
    frame = pd.DataFrame(rows_to_numpy(parts))
    return frame.sort_values("index", kind="stable").reset_index(drop=True)


def _gathered_frame(
    parts: list[dict[str, torch.Tensor]], world: World | None
) -> pd.DataFrame | None:
    """Every rank's rows as one frame sorted by sample index, on rank 0 (None on the others).

    Each rank reads its rows back once and sends them as one message; one process: `_frame`.
    """
    if not is_distributed(world):
        return _frame(parts)
    own = rows_to_numpy(parts) if parts else None  # a rank may hold no row (tiny splits)
    gathered = [p for p in gather_in_order([own], world) if p is not None]
    if not is_main(world):
        return None
    frame = pd.DataFrame({c: np.concatenate([p[c] for p in gathered]) for c in DYNAMICS_COLUMNS})
    return frame.sort_values("index", kind="stable").reset_index(drop=True)


def _own_loader(split: Split, batch_size: int, world: World | None, **options: Any) -> Loader:
    """An unshuffled loader over this rank's whole batches of `split` (one process: all of it)."""
    if not is_distributed(world):
        return Loader(split, batch_size, **options)
    rows = batch_shard(len(split), batch_size, world)
    return Loader(split, batch_size, indices=rows, **options)


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
    world: World | None = None,
) -> tuple[list[dict[str, float]], Cost]:
    """Train the proxy on all training samples, writing dynamics/epochNNN.parquet each epoch.

    With `test`, the same eval-mode pass over the test set (never trained on) is written as
    dynamics/test_epochNNN.parquet: the test samples' hardness, for per-hardness evaluation.

    With a `world` of W > 1 ranks (every rank calls this alike): fit trains on each rank's
    shard of every global batch; the eval capture runs each rank over its whole batches
    (batch_shard) of the training and the test split, the train_step capture keeps the rows of
    this rank's shard; at each epoch's end the rows are gathered to rank 0, which writes the
    epoch's files (the same tables as one process writes) and owns the staging folder. Every
    rank logs rank 0's mean_input_grad_norm. The returned cost is the sum over ranks.
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
    main = is_main(world)  # the rank that writes; the others only compute and send rows
    # A fixed name: an interrupted proxy resumes from its checkpoint with the epochs written so far.
    staging = out_dir / ".dynamics.partial"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging.mkdir(exist_ok=True)

    def keep_epochs_up_to(done: int) -> None:
        if not main:
            return
        for path in staging.glob("*epoch*.parquet"):
            if int(path.stem.rsplit("epoch", 1)[1]) > done:
                path.unlink()

    loader = Loader(train, spec["batch_size"], device, image_size=image_size, num_workers=workers)
    eval_batch = spec.get("eval_batch_size", 4 * spec["batch_size"])
    options = {"device": device, "image_size": image_size, "num_workers": workers}
    eval_loader = _own_loader(train, eval_batch, world, **options)
    test_loader = _own_loader(test, eval_batch, world, **options) if test is not None else None
    cost = Cost(device=str(device))
    batches: list[dict[str, np.ndarray]] = []

    def record_step(index, logits, y, losses, input_grad) -> None:
        batches.append(dynamics_rows(index, logits, y, losses, input_grad, head.latest))

    def after_epoch(epoch: int) -> dict[str, float]:
        if capture == "eval":
            parts = _capture_parts(model, eval_loader, head)
            cost.add("capture", len(eval_loader))  # this rank's rows; fit sums over ranks
        else:
            parts = list(batches)
            batches.clear()
        frame = _gathered_frame(parts, world)
        if main:
            write_parquet(staging / f"epoch{epoch:03d}.parquet", frame)
        if test_loader is not None:
            test_frame = _gathered_frame(_capture_parts(model, test_loader, head), world)
            cost.add("capture_test", len(test_loader))
            if main:
                write_parquet(staging / f"test_epoch{epoch:03d}.parquet", test_frame)
        mean = float(frame["input_grad_norm"].mean()) if main else None
        return {"mean_input_grad_norm": broadcast_object(mean, world)}  # rank 0's, on all

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
            world=world,
        )
    except DivergedError:
        # Resuming would diverge again: start the next attempt from scratch.
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
        raise
    finally:
        head.close()
    if main:  # publish the epoch files only once the whole run succeeded
        final = out_dir / "dynamics"
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    return log, cost
