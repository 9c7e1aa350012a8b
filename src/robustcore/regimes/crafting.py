"""How the adversarial regimes query the model while crafting: BatchNorm mode and statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from robustcore.perturb import pgd
from robustcore.regimes.base import StepContext, count_attack
from robustcore.runtime import eval_mode, frozen

BatchNorm = nn.modules.batchnorm._BatchNorm


def running_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → tensor of every BatchNorm running statistic (mean, var, batch count)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, BatchNorm) and module.track_running_stats:
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                buffer = getattr(module, key)
                if buffer is not None:
                    out[f"{prefix}.{key}" if prefix else key] = buffer
    return out


class RunningStatsKept(nn.Module):
    """The model called in its current mode, with BatchNorm running statistics left untouched.

    In train mode BatchNorm normalizes with batch statistics and would move its running
    averages; here those updates land in scratch copies that are thrown away. The wrapped model
    is not a registered child, so ``eval()`` on this view (as ``attacks.pgd`` does) leaves the
    model's own mode alone.
    """

    def __init__(self, model: nn.Module) -> None:
        """Wrap `model` and copy its running statistics into scratch buffers."""
        super().__init__()
        object.__setattr__(self, "inner", model)
        self.scratch = {k: v.clone() for k, v in running_buffers(model).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output, running statistics untouched."""
        if not self.scratch:
            return self.inner(x)
        return functional_call(self.inner, self.scratch, (x,))


@contextlib.contextmanager
def crafting(model: nn.Module, attack_mode: str) -> Iterator[nn.Module]:
    """The network an attack queries: eval mode (restored after), or train mode with batch stats."""
    with frozen(model):
        if attack_mode == "train":
            yield RunningStatsKept(model)
        else:
            with eval_mode(model):
                yield model


def pgd_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, p: dict[str, Any]
) -> torch.Tensor:
    """PGD on (x, y) with the regime's eps/steps/step_size/norm/random_start, counted."""
    with crafting(model, p["attack_mode"]) as net:
        x_adv = pgd(
            net,
            x,
            y,
            eps=p["eps"],
            steps=int(p["steps"]),
            step_size=p["step_size"],
            norm=p["norm"],
            random_start=p["random_start"],
            generator=ctx.device_generator,
        )
    if p["eps"] > 0:
        count_attack(ctx.cost, len(y), int(p["steps"]))
    return x_adv
