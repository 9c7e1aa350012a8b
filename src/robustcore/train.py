"""The training loop: a regime's step per minibatch, SGD or Adam, on-device augmentation."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustcore import checkpoint
from robustcore.cost import Cost
from robustcore.data import Loader
from robustcore.io import DivergedError, InputError
from robustcore.precision import AUTOCAST, precision_of
from robustcore.regimes import REGIMES, Regime, regime_of
from robustcore.regimes.base import IDLE_EPOCH, EpochPlan, StepContext
from robustcore.runtime import show_progress

# Called after each step with (index, logits, labels, per-sample losses, per-sample input grads).
StepRecorder = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None
]


def compiled(model: nn.Module, spec: dict[str, Any], regime: Regime) -> nn.Module:
    """`model`, or torch.compile(model) when the regime entry sets `compile: true`."""
    if not spec.get("compile", False):
        return model
    if not regime.compilable:
        compilable = [name for name, entry in REGIMES.items() if entry.compilable]
        raise InputError(
            f"compile: true is supported for the regimes {compilable}, not {regime.name!r}"
        )
    return torch.compile(model, backend=spec.get("compile_backend", "inductor"))


def augment(
    x: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of an image batch, all on its device."""
    if x.dim() != 4 or (crop_padding == 0 and not flip):
        return x
    batch, _, height, width = x.shape
    # Offsets come from the CPU generator so the run is reproducible on any device.
    if crop_padding > 0:
        pad = crop_padding
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator).to(x.device)
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)
        sample = torch.arange(batch, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


def make_optimizer(
    model: nn.Module, spec: dict[str, Any], epochs: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with momentum (or Adam) and weight decay, cosine-annealed per epoch (or constant)."""
    if spec.get("optimizer", "sgd") == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"]
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=spec["lr"],
            momentum=spec["momentum"],
            weight_decay=spec["weight_decay"],
            nesterov=spec.get("nesterov", False),
        )
    if spec.get("schedule", "cosine") == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def fit(
    model: nn.Module,
    loader: Loader,
    spec: dict[str, Any],
    *,
    generator: torch.Generator,
    epochs: int | None = None,
    record_step: StepRecorder | None = None,
    before_epoch: EpochPlan | None = None,
    after_epoch: Callable[[int], dict[str, float] | None] | None = None,
    cost: Cost | None = None,
    desc: str = "train",
    checkpoint_dir: str | os.PathLike | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, float]], Cost]:
    """Train in place under the spec's regime; return per-epoch log rows and the counted cost.

    With `checkpoint_dir`, the whole training state is saved after every epoch and a rerun
    resumes from the newest intact checkpoint, ending bitwise where an uninterrupted run ends
    (on CPU); SIGUSR1/SIGTERM stop the run after the current epoch with Preempted.
    `on_resume(e)` is told the epoch the run continues after (0: from scratch).
    """
    regime, spec = regime_of(spec)
    if record_step is not None and not regime.clean_input_grads:
        raise InputError(
            f"per-step input-gradient capture needs a regime whose loss is the clean batch's "
            f"(standard), not {regime.name!r}"
        )
    epochs = spec["epochs"] if epochs is None else epochs
    device = next(model.parameters()).device
    cost = cost or Cost(device=str(device))
    device_generator = torch.Generator(device=device).manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator))
    )
    weights: torch.Tensor | None = None
    if regime.plan is not None:
        if before_epoch is not None:
            raise InputError(f"regime {regime.name!r} plans its own epochs")
        before_epoch = regime.plan(model, loader, spec, generator, cost)
    optimizer, scheduler = make_optimizer(model, spec, epochs)
    augment_spec = spec.get("augment", {})
    autocast_dtype = AUTOCAST[precision_of(spec, device)]
    # fp16 needs loss scaling; bf16 has fp32's exponent range and does not.
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype is torch.float16 else None
    if spec.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    step_model = compiled(model, spec, regime)
    log: list[dict[str, float]] = []
    full_loader, start_epoch = loader, 1
    # What a checkpoint must have been written under to be resumed: settings, samples, shapes.
    fingerprint = checkpoint.fingerprint(
        spec,
        epochs,
        np.asarray(loader.indices),
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
    )
    resumed = checkpoint.load(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        device_generator.set_state(resumed["device_generator"])
        checkpoint.set_rng_state(resumed["rng"], device)
        log = list(resumed["log"])
        cost.restore(resumed["cost"])
        if before_epoch is not None and hasattr(before_epoch, "load_state_dict"):
            before_epoch.load_state_dict(resumed["plan"])
        if resumed["subset"] is not None:
            loader = full_loader.subset(resumed["subset"].numpy())
            weights = None if resumed["weights"] is None else resumed["weights"].to(device)
        if scaler is not None and resumed.get("scaler") is not None:
            scaler.load_state_dict(resumed["scaler"])
        start_epoch = int(resumed["epoch"]) + 1
    if on_resume is not None:
        on_resume(start_epoch - 1)
    started = time.perf_counter()
    bar = tqdm(
        total=(epochs - start_epoch + 1) * len(loader),
        desc=desc,
        unit="sample",
        disable=not show_progress(),
    )
    loop = _Loop(
        model, step_model, spec, regime, generator, device_generator, cost, optimizer,
        scheduler, augment_spec, autocast_dtype, scaler, record_step, before_epoch, after_epoch,
        log, started, bar,
    )  # fmt: skip
    stop = checkpoint.StopRequest() if checkpoint_dir is not None else contextlib.nullcontext()
    with stop:
        for epoch in range(start_epoch, epochs + 1):
            loader, weights = loop.epoch(epoch, loader, weights)
            if checkpoint_dir is not None:
                checkpoint.save(
                    checkpoint_dir,
                    {
                        "epoch": epoch,
                        "fingerprint": fingerprint,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                        "device_generator": device_generator.get_state(),
                        "rng": checkpoint.rng_state(device),
                        "log": log,
                        "cost": cost.state(time.perf_counter() - started),
                        "plan": (
                            before_epoch.state_dict()
                            if before_epoch is not None and hasattr(before_epoch, "state_dict")
                            else None
                        ),
                        "subset": (
                            None
                            if loader is full_loader
                            else torch.from_numpy(np.asarray(loader.indices, dtype=np.int64))
                        ),
                        "weights": None if weights is None else weights.detach().cpu(),
                        "scaler": None if scaler is None else scaler.state_dict(),
                    },
                )
                if stop.received is not None and epoch < epochs:
                    bar.close()
                    raise checkpoint.Preempted(
                        f"signal {stop.received} received: stopped after epoch {epoch} of "
                        f"{epochs}, saved in {checkpoint_dir}; rerun to resume"
                    )
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cost.wall_seconds += time.perf_counter() - started
    model.eval()
    return log, cost


@dataclass
class _Loop:
    """What one training epoch needs besides its loader and sample weights."""

    model: nn.Module
    step_model: nn.Module  # the model the regime's step calls (torch.compile'd when asked)
    spec: dict[str, Any]
    regime: Regime
    generator: torch.Generator
    device_generator: torch.Generator
    cost: Cost
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment_spec: dict[str, Any]
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    record_step: StepRecorder | None
    before_epoch: EpochPlan | None
    after_epoch: Callable[[int], dict[str, float] | None] | None
    log: list[dict[str, float]]
    started: float
    bar: Any

    def epoch(
        self, epoch: int, loader: Loader, weights: torch.Tensor | None
    ) -> tuple[Loader, torch.Tensor | None]:
        """Train one epoch, append its log row; return the (possibly re-planned) loader."""
        return _train_epoch(self, epoch, loader, weights)


def _train_epoch(
    run: _Loop, epoch: int, loader: Loader, weights: torch.Tensor | None
) -> tuple[Loader, torch.Tensor | None]:
    """One training epoch under `run` (see fit)."""
    model, optimizer, generator, cost = run.model, run.optimizer, run.generator, run.cost
    augment_spec, record_step, bar = run.augment_spec, run.record_step, run.bar
    device = next(model.parameters()).device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    plan = run.before_epoch(epoch) if run.before_epoch is not None else None
    if plan is IDLE_EPOCH:
        run.scheduler.step()
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float("nan"),  # idle: nothing trained
            "train_acc": float("nan"),
            "seconds": time.perf_counter() - run.started,
        }
        if run.after_epoch is not None:
            row.update(run.after_epoch(epoch) or {})
        run.log.append(row)
        return loader, weights
    if plan is not None:
        loader, weights = plan
    for index, x, y in loader.epoch(shuffle=True, generator=generator):
        x = augment(
            x, augment_spec.get("crop_padding", 0), augment_spec.get("flip", False), generator
        )
        if x.dim() == 4 and run.spec.get("channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        if record_step is not None:
            x.requires_grad_(True)
        ctx = StepContext(
            spec=run.spec,
            epoch=epoch,
            generator=generator,
            device_generator=run.device_generator,
            cost=cost,
            sample_weight=None if weights is None else weights[index.to(weights.device)],
        )
        model.train()
        dtype = run.autocast_dtype
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            result = run.regime.step(run.step_model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        # The mean loss scales each sample's input gradient by 1/B, a loss scaler by its scale.
        grad_scale = float(len(y))
        if run.scaler is not None:
            grad_scale /= float(run.scaler.get_scale())
            run.scaler.scale(result.loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
        else:
            result.loss.backward()
            optimizer.step()
        if record_step is not None:
            record_step(index, result.logits.float(), y, result.losses, x.grad.float() * grad_scale)
        loss_sum += result.losses.float().sum()
        correct_sum += (result.logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(len(y))
    run.scheduler.step()
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise DivergedError(
            f"training diverged at epoch {epoch}: mean loss {mean_loss} (lr {lr}); "
            "lower the learning rate or check the data"
        )
    row = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": mean_loss,
        "train_acc": float(correct_sum) / max(seen, 1),
        "seconds": time.perf_counter() - run.started,
    }
    if run.after_epoch is not None:
        row.update(run.after_epoch(epoch) or {})
    run.log.append(row)
    bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{row['train_acc']:.3f}")
    return loader, weights
