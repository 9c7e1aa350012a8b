"""Training loop (regime `standard`): SGD with momentum, cosine schedule, on-device augmentation."""

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
from robustcore.io import DivergedError
from robustcore.runtime import show_progress

REGIMES = ("standard",)

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
    """SGD with momentum and weight decay, cosine-annealed per epoch (or constant)."""
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
    after_epoch: Callable[[int], dict[str, float] | None] | None = None,
    cost: Cost | None = None,
    desc: str = "train",
) -> tuple[list[dict[str, float]], Cost]:
    """Train in place with the standard regime; return per-epoch log rows and the counted cost."""
    epochs = spec["epochs"] if epochs is None else epochs
    device = next(model.parameters()).device
    cost = cost or Cost(device=str(device))
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
        for index, x, y in loader.epoch(shuffle=True, generator=generator):
            x = augment(
                x, augment_spec.get("crop_padding", 0), augment_spec.get("flip", False), generator
            )
            if record_step is not None:
                x.requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            cost.add("update", len(y))
            if record_step is not None:
                # The mean loss scales each sample's input gradient by 1/B: undo it.
                record_step(index, logits.detach().float(), y, losses.detach(), x.grad * len(y))
            loss_sum += losses.detach().sum()
            correct_sum += (logits.detach().argmax(1) == y).sum()
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
