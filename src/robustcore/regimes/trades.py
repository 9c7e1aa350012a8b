"""TRADES (Zhang et al. 2019): clean cross-entropy plus β times the KL to the attacked output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcore.regimes.base import (
    StepContext,
    StepResult,
    count_attack,
    cross_entropy,
    own_params,
    register_regime,
    weighted_mean,
)
from robustcore.regimes.crafting import crafting


def trades_attack(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None,
    attack_mode: str = "eval",
) -> torch.Tensor:
    """TRADES' inner maximisation of KL(p(x) ‖ p(x')), as in the reference trades.py.

    x' starts at x + 0.001·N(0, 1) (not clipped before the first step), then `steps` times:
    x' ← x' + step_size·sign(∇ KL_sum), projected to the ℓ∞ ball around x, clipped to [0, 1].
    The target p(x) is computed once (the reference recomputes the same value every step).
    """
    x = x.detach()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = x + 0.001 * noise
    with crafting(model, attack_mode) as net:
        with torch.no_grad():
            target = F.softmax(net(x).float(), dim=1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            log_q = F.log_softmax(net(x_adv).float(), dim=1)
            loss = F.kl_div(log_q, target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach() + step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach().clamp(0.0, 1.0)


@register_regime(
    "trades",
    beta=6.0,
    eps=8 / 255,
    steps=10,
    step_size=2 / 255,
    attack_mode="eval",
    compilable=True,
)
def trades_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x')).

    As yaodongyu/TRADES trades.py: x' from `trades_attack` (model in eval mode), then the model
    back in train mode for the loss forwards; the KL is summed over classes and divided by the
    batch's actual size (``batchmean``; an early version divided by the configured batch size),
    and its target softmax f(x) is not detached. The reference computes f(x) twice in train mode
    (for the CE and for the KL target) — the same values, so one forward serves both here;
    BatchNorm running statistics thus move twice per batch (x, then x') instead of three times.
    Reference settings: CIFAR-10 ε = 0.031, step 0.007, 10 steps, β = 6 (the paper's; the
    script's default is 1); MNIST ε = 0.3, step 0.01, 40 steps, β = 1. Logged logits are the
    clean ones and the per-sample losses are CEᵢ + β·KLᵢ (their mean is the loss).
    """
    p = own_params("trades", ctx)
    n = len(y)
    x_adv = trades_attack(
        model,
        x,
        eps=p["eps"],
        steps=int(p["steps"]),
        step_size=p["step_size"],
        generator=ctx.device_generator,
        attack_mode=p["attack_mode"],
    )
    ctx.cost.add("clean", n, backward=False)  # the KL target p(x) for the attack
    count_attack(ctx.cost, n, int(p["steps"]))
    logits = model(x)
    adv_logits = model(x_adv)
    ctx.cost.add("update", n)
    ctx.cost.add("update", n)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    kl = F.kl_div(log_q, F.softmax(logits.float(), dim=1), reduction="none").sum(1)
    losses = cross_entropy(logits, y) + p["beta"] * kl
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())
