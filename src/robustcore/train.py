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
from robustcore.distributed import (
    World,
    all_gather_objects,
    all_reduce_cost,
    all_reduce_gradients,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_state,
    is_distributed,
    is_main,
    state_digest,
)
from robustcore.io import DivergedError, InputError
from robustcore.precision import AUTOCAST, precision_of
from robustcore.regimes import REGIMES, Regime, regime_of
from robustcore.regimes.base import IDLE_EPOCH, EpochPlan, StepContext
from robustcore.runtime import show_progress, to_device, use_deterministic_kernels

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
    offsets, mask = _augment_draws(len(x), crop_padding, flip, generator)
    return _crop_flip(x, crop_padding, offsets, mask)


def augment_shard(
    x: torch.Tensor,
    total: int,
    crop_padding: int,
    flip: bool,
    generator: torch.Generator,
    world: World,
) -> torch.Tensor:
    """`augment` of this rank's rows of a global batch of `total`: the global batch's draws.

    The offsets and flips are drawn for all `total` rows, as in a single-process run, and this
    rank's (rank::world_size) are applied: every sample gets its single-process crop and flip,
    and the generator advances identically on every rank.
    """
    if x.dim() != 4 or (crop_padding == 0 and not flip):
        return x
    offsets, mask = _augment_draws(total, crop_padding, flip, generator)
    rows = slice(world.rank, None, world.world_size)
    offsets = None if offsets is None else offsets[:, rows]
    return _crop_flip(x, crop_padding, offsets, None if mask is None else mask[rows])


def _augment_draws(
    batch: int, crop_padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The CPU draws of `augment` for `batch` rows: crop offsets (2 × batch), flip mask."""
    offsets = None
    if crop_padding > 0:
        offsets = torch.randint(0, 2 * crop_padding + 1, (2, batch), generator=generator)
    mask = torch.rand(batch, generator=generator) < 0.5 if flip else None
    return offsets, mask


def _crop_flip(
    x: torch.Tensor, pad: int, offsets: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """Apply drawn crop offsets and flips to an image batch on its device."""
    batch, _, height, width = x.shape
    # Offsets come from the CPU generator so the run is reproducible on any device; they reach
    # the device without a synchronisation (to_device).
    if offsets is not None:
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = to_device(offsets, x.device)
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)
        sample = torch.arange(batch, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    if mask is not None:
        mask = to_device(mask, x.device)
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
    world: World | None = None,
) -> tuple[list[dict[str, float]], Cost]:
    """Train in place under the spec's regime; return per-epoch log rows and the counted cost.

    With `checkpoint_dir`, the whole training state is saved after every epoch and a rerun
    resumes from the newest intact checkpoint, ending bitwise where an uninterrupted run ends
    (on CPU; on CUDA with `deterministic: true`, see DESIGN.md); SIGUSR1/SIGTERM stop the run
    after the current epoch with Preempted.
    `on_resume(e)` is told the epoch the run continues after (0: from scratch).

    With a `world` of W > 1 ranks (robustcore.distributed; every rank calls fit alike, the model
    on world.device): the config's batch_size is the global batch. Every rank draws the same
    data order and augmentation from its identical CPU generator, takes its rows rank::W of each
    global batch (shard_batch; crops and flips are the global batch's draws, so each sample's
    equal the 1-process run's), runs the regime's step on them, and the gradients are the
    shard-size-weighted sum over ranks (all_reduce_gradients: the global batch's mean-loss
    gradient), so a run ends where the 1-process run does up to float summation order. The log
    rows are the global sums; the returned Cost is the sum over ranks (cost.world_size = W).
    Random starts come from a device generator seeded per rank: they differ from 1 process.
    Only rank 0 writes checkpoints (all ranks read one on resume, the same W); a signal on any
    rank stops all after the same epoch. BatchNorm becomes SyncBatchNorm on CUDA; on other
    devices (gloo) each rank normalises with its shard's statistics, which differs from the
    1-process run. Regimes that plan epochs or choose samples within a batch (not compilable:
    acs, selective) raise InputError.
    """
    regime, spec = regime_of(spec)
    if spec.get("deterministic", False):
        use_deterministic_kernels()
    if record_step is not None and not regime.clean_input_grads:
        raise InputError(
            f"per-step input-gradient capture needs a regime whose loss is the clean batch's "
            f"(standard), not {regime.name!r}"
        )
    distributed = is_distributed(world)
    epochs = spec["epochs"] if epochs is None else epochs
    device = next(model.parameters()).device
    if distributed:
        _check_shardable(regime, before_epoch, model, loader, world)
    cost = cost or Cost(device=str(device))
    since = cost.state() if distributed else None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=device).manual_seed(
        seed + (world.rank if distributed else 0)  # random starts: each rank its own stream
    )
    if distributed and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: the batch's statistics
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
        {**spec, "world_size": world.world_size} if distributed else spec,
        epochs,
        np.asarray(loader.indices),
        # The device type too: generator states of one device do not fit another's.
        {"device": device.type, **{k: tuple(v.shape) for k, v in model.state_dict().items()}},
    )
    resumed = checkpoint.load(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        own = resumed["ranks"][world.rank] if distributed else resumed  # this rank's streams
        device_generator.set_state(own["device_generator"])
        checkpoint.set_rng_state(own["rng"], device)
        log = list(resumed["log"])
        cost.restore(own["cost"])
        if before_epoch is not None and hasattr(before_epoch, "load_state_dict"):
            before_epoch.load_state_dict(resumed["plan"])
        if resumed["subset"] is not None:
            loader = full_loader.subset(resumed["subset"].numpy())
            weights = None if resumed["weights"] is None else resumed["weights"].to(device)
        if scaler is not None and resumed.get("scaler") is not None:
            scaler.load_state_dict(resumed["scaler"])
        start_epoch = int(resumed["epoch"]) + 1
    # Every rank starts from rank 0's weights (after every rank has read the checkpoint).
    broadcast_state(model, world)
    if on_resume is not None:
        on_resume(start_epoch - 1)
    started = time.perf_counter()
    bar = tqdm(
        total=(epochs - start_epoch + 1) * len(loader),
        desc=desc,
        unit="sample",
        disable=not show_progress() or not is_main(world),
    )
    loop = _Loop(
        model, step_model, spec, regime, generator, device_generator, cost, optimizer,
        scheduler, augment_spec, autocast_dtype, scaler, record_step, before_epoch, after_epoch,
        log, started, bar, world,
    )  # fmt: skip
    stop = checkpoint.StopRequest() if checkpoint_dir is not None else contextlib.nullcontext()
    with stop:
        for epoch in range(start_epoch, epochs + 1):
            loader, weights = loop.epoch(epoch, loader, weights)
            received = getattr(stop, "received", None)
            if distributed:  # the same decision on every rank: stop if any rank was signalled
                received = _epoch_consensus(world, generator, received, device, regime, epoch)
            if checkpoint_dir is not None:
                state = {
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
                }
                if distributed:  # what differs between ranks: random streams, own counts
                    own = {k: state[k] for k in ("device_generator", "rng", "cost")}
                    state["ranks"] = all_gather_objects(own, world)
                if is_main(world):
                    checkpoint.save(checkpoint_dir, state)
                barrier(world)  # saved before any rank exits or goes on
                if received is not None and epoch < epochs:
                    bar.close()
                    raise checkpoint.Preempted(
                        f"signal {received} received: stopped after epoch {epoch} of "
                        f"{epochs}, saved in {checkpoint_dir}; rerun to resume"
                    )
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cost.wall_seconds += time.perf_counter() - started
    if distributed:
        all_reduce_cost(cost, world, since)  # the sum over ranks, on every rank
    model.eval()
    return log, cost


def _check_shardable(
    regime: Regime,
    before_epoch: EpochPlan | None,
    model: nn.Module,
    loader: Loader,
    world: World,
) -> None:
    """InputError unless a run on W > 1 ranks can reproduce the 1-process run (see fit)."""
    size, device = world.world_size, next(model.parameters()).device
    if regime.plan is not None or before_epoch is not None:
        raise InputError(
            f"regime {regime.name!r}: epoch plans are not supported with world_size > 1 yet "
            f"(world_size {size})"
        )
    if not regime.compilable:
        raise InputError(
            f"regime {regime.name!r} is not supported with world_size > 1 yet (world_size "
            f"{size}): its step chooses samples within the batch, which a rank's shard of the "
            "batch does not reproduce"
        )
    if device != world.device:
        raise InputError(f"the model is on {device}, this rank's device is {world.device}")
    batch, last = loader.batch_size, len(loader) % loader.batch_size
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if device.type == "cuda" and batch_norm and (batch < size or 0 < last < size):
        # A rank without rows skips the step, but SyncBatchNorm needs every rank's forward.
        raise InputError(
            f"batch_size {batch} over {len(loader)} samples leaves a rank without rows in a "
            f"batch ({size} ranks, SyncBatchNorm); choose batch_size so that every batch, the "
            f"last included, has at least {size} samples"
        )


def _epoch_consensus(
    world: World,
    generator: torch.Generator,
    received: int | None,
    device: torch.device,
    regime: Regime,
    epoch: int,
) -> int | None:
    """At an epoch's end: the signal any rank received (or None); all generators must agree."""
    digest = state_digest(generator.get_state())
    flags = torch.tensor([digest, -digest, received or 0], dtype=torch.int64, device=device)
    high, negated_low, signum = all_reduce_max(flags, world).tolist()
    if high != -negated_low:
        raise RuntimeError(
            f"regime {regime.name!r}: the ranks' CPU generators diverged in epoch {epoch} "
            "(a step drew from it by shard size); not supported with world_size > 1"
        )
    return signum or None


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
    world: World | None = None  # several ranks: each trains on its shard of every batch

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
    world = run.world
    distributed = is_distributed(world)
    # Under W ranks the loader reads only this rank's rows of each global batch (shard_batch's
    # rows: rank, rank + W, ...); the batch sizes below are the global ones.
    shard = (world.rank, world.world_size) if distributed else None
    size, n = loader.batch_size, len(loader)
    totals = [min(size, n - start) for start in range(0, n, size)]
    for total, (index, x, y) in zip(
        totals, loader.epoch(shuffle=True, generator=generator, shard=shard), strict=True
    ):
        crop, flip = augment_spec.get("crop_padding", 0), augment_spec.get("flip", False)
        if distributed:
            x = augment_shard(x, total, crop, flip, generator, world)
        else:
            x = augment(x, crop, flip, generator)
        if x.dim() == 4 and run.spec.get("channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        if record_step is not None:
            x.requires_grad_(True)
        result = None
        if len(y) > 0:  # empty only on a rank without rows in a short last batch
            ctx = StepContext(
                spec=run.spec,
                epoch=epoch,
                generator=generator,
                device_generator=run.device_generator,
                cost=cost,
                sample_weight=(
                    None if weights is None else weights[to_device(index, weights.device)]
                ),
            )
            model.train()
            dtype = run.autocast_dtype
            autocast = torch.autocast(
                device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
            )
            with autocast:
                result = run.regime.step(run.step_model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        # Several ranks: the global batch's mean-loss gradient, each rank weighted by its share.
        share = len(y) / total
        if run.scaler is not None:
            # The scale as it was for this backward (update() may change it); reading it waits
            # for the device, so only a capture that needs it does.
            scale = run.scaler.get_scale() if record_step is not None else 1.0
            if result is not None:
                run.scaler.scale(result.loss).backward()
            all_reduce_gradients(model, world, share)
            run.scaler.step(optimizer)  # reads whether gradients overflowed: one sync (fp16)
            run.scaler.update()
        else:
            scale = 1.0
            if result is not None:
                result.loss.backward()
            all_reduce_gradients(model, world, share)
            optimizer.step()
        if result is not None:
            if record_step is not None:
                # The mean loss scales each sample's input gradient by 1/B (B: this rank's
                # rows), a loss scaler by its scale.
                input_grad = x.grad.float() * (len(y) / scale)
                record_step(index, result.logits.float(), y, result.losses, input_grad)
            loss_sum += result.losses.float().sum()
            correct_sum += (result.logits.argmax(1) == y).sum()
            seen += len(y)
        bar.update(total)
    run.scheduler.step()
    # One read of the device per epoch for the log (not one per step).
    totals = torch.stack([loss_sum.double(), correct_sum.double()])
    if distributed:  # every rank logs the global batch's row
        counted = torch.tensor([float(seen)], dtype=torch.float64, device=device)
        totals = all_reduce_sum(torch.cat([totals, counted]), world)
    loss_total, correct_total, *counted_total = totals.tolist()
    if distributed:
        seen = int(counted_total[0])
    mean_loss = loss_total / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise DivergedError(
            f"training diverged at epoch {epoch}: mean loss {mean_loss} (lr {lr}); "
            "lower the learning rate or check the data"
        )
    row = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": mean_loss,
        "train_acc": correct_total / max(seen, 1),
        "seconds": time.perf_counter() - run.started,
    }
    if run.after_epoch is not None:
        row.update(run.after_epoch(epoch) or {})
    run.log.append(row)
    bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{row['train_acc']:.3f}")
    return loader, weights
