"""Training loop and regimes: SGD with momentum, cosine schedule, on-device augmentation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustcore.data import Loader
from robustcore.io import DivergedError, InputError
from robustcore.runtime import show_progress

# Called after each step with (index, logits, labels, per-sample losses, per-sample input grads).
StepRecorder = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None
]


@dataclass
class Cost:
    """Work counted by the loop that does it: sample-passes per purpose, wall time, device."""

    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)
    samples_perturbed: int = 0
    attack_steps: int = 0
    wall_seconds: float = 0.0
    device: str = "cpu"

    def add(self, purpose: str, samples: int, backward: bool = True) -> None:
        """Count one forward (and backward) pass over `samples` samples for `purpose`."""
        self.forward[purpose] = self.forward.get(purpose, 0) + samples
        if backward:
            self.backward[purpose] = self.backward.get(purpose, 0) + samples

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary, with totals."""
        return {
            "forward_samples": dict(self.forward),
            "backward_samples": dict(self.backward),
            "forward_total": sum(self.forward.values()),
            "backward_total": sum(self.backward.values()),
            "samples_perturbed": self.samples_perturbed,
            "attack_steps": self.attack_steps,
            "wall_seconds": round(self.wall_seconds, 3),
            "device": self.device,
        }


@dataclass
class StepContext:
    """What a regime's step may use besides the model and the batch."""

    spec: dict[str, Any]  # the regime entry, the regime's defaults filled in
    epoch: int  # 1-based
    generator: torch.Generator  # CPU: data order, augmentation, subset choices
    device_generator: torch.Generator  # on the model's device: random starts
    cost: Cost  # count every forward/backward the step does
    sample_weight: torch.Tensor | None = None  # per-sample loss weights of the batch (ACS)


@dataclass
class StepResult:
    """A step's training loss and the clean view of the batch for the epoch log."""

    loss: torch.Tensor  # scalar; fit backpropagates it and steps the optimizer
    logits: torch.Tensor  # detached logits of the (clean) batch, for train accuracy
    losses: torch.Tensor  # detached per-sample training losses, for the logged mean


Step = Callable[[nn.Module, torch.Tensor, torch.Tensor, StepContext], StepResult]


# Called before each epoch; may return the loader for that epoch and per-sample weights (indexed
# by sample row), e.g. a coreset re-selected during training.
EpochPlan = Callable[[int], "tuple[Loader, torch.Tensor | None] | None"]
# Builds a regime's EpochPlan: (model, the loader of all training samples, spec, generator, cost).
PlanFactory = Callable[[nn.Module, Loader, dict[str, Any], torch.Generator, "Cost"], EpochPlan]


@dataclass(frozen=True)
class Regime:
    """A registered training regime: its step, its own parameters' defaults, an epoch plan."""

    name: str
    step: Step
    defaults: dict[str, Any]
    plan: PlanFactory | None = None


REGIMES: dict[str, Regime] = {}


def register_regime(
    name: str, *, plan: PlanFactory | None = None, **defaults: Any
) -> Callable[[Step], Step]:
    """Decorator adding a step function `f(model, x, y, ctx) -> StepResult` to REGIMES."""

    def decorate(step: Step) -> Step:
        REGIMES[name] = Regime(name, step, dict(defaults), plan)
        return step

    return decorate


def weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample losses, weighted when the regime trains on a weighted subset."""
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


@register_regime("standard")
def standard_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """Cross-entropy on the clean batch."""
    logits = model(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    ctx.cost.add("update", len(y))
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())


def regime_of(spec: dict[str, Any]) -> tuple[Regime, dict[str, Any]]:
    """The regime a training entry names, and the entry with the regime's defaults filled in."""
    # The adversarial regimes register themselves on import (they build on this module).
    import robustcore.acs  # noqa: F401
    import robustcore.regimes  # noqa: F401

    name = spec.get("type", "standard")
    if name not in REGIMES:
        raise InputError(f"regime type {name!r} unknown; expected one of {sorted(REGIMES)}")
    regime = REGIMES[name]
    return regime, {**regime.defaults, **spec}


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
) -> tuple[list[dict[str, float]], Cost]:
    """Train in place under the spec's regime; return per-epoch log rows and the counted cost."""
    regime, spec = regime_of(spec)
    if record_step is not None and regime.name != "standard":
        raise InputError("per-step input-gradient capture needs the standard regime")
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
    use_amp = bool(spec.get("amp", False)) and device.type == "cuda"
    if spec.get("channels_last", False) and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(total=epochs * len(loader), desc=desc, unit="sample", disable=not show_progress())
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        plan = before_epoch(epoch) if before_epoch is not None else None
        if plan is not None:
            loader, weights = plan
        for index, x, y in loader.epoch(shuffle=True, generator=generator):
            x = augment(
                x, augment_spec.get("crop_padding", 0), augment_spec.get("flip", False), generator
            )
            if record_step is not None:
                x.requires_grad_(True)
            ctx = StepContext(
                spec=spec,
                epoch=epoch,
                generator=generator,
                device_generator=device_generator,
                cost=cost,
                sample_weight=None if weights is None else weights[index.to(weights.device)],
            )
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                result = regime.step(model, x, y, ctx)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            if record_step is not None:
                # The mean loss scales each sample's input gradient by 1/B: undo it.
                record_step(index, result.logits.float(), y, result.losses, x.grad * len(y))
            loss_sum += result.losses.float().sum()
            correct_sum += (result.logits.argmax(1) == y).sum()
            seen += len(y)
            bar.update(len(y))
        scheduler.step()
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
            "seconds": time.perf_counter() - started,
        }
        if after_epoch is not None:
            row.update(after_epoch(epoch) or {})
        log.append(row)
        bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{row['train_acc']:.3f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cost.wall_seconds += time.perf_counter() - started
    model.eval()
    return log, cost
