"""FGSM with a random start (Wong et al. 2020, "Fast is better than free")."""

from __future__ import annotations

import torch
from torch import nn

from robustcore.regimes.base import (
    StepContext,
    StepResult,
    cross_entropy,
    own_params,
    register_regime,
    weighted_mean,
)
from robustcore.regimes.crafting import pgd_attack


@register_regime("fgsm_rs", eps=8 / 255, alpha=10 / 255, attack_mode="eval", compilable=True)
def fgsm_rs_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """FGSM with random start (Wong et al. 2020): CE on x + δ, one signed step from δ ~ U(−ε, ε).

    As fast_adversarial's train_fgsm.py: δ uniform in the ε-box, clipped so x + δ ∈ [0, 1];
    δ ← clip(δ + α·sign(∇δ CE), −ε, ε), clipped again to [0, 1]. α = 10/255 = 1.25·ε for
    ε = 8/255 (their CIFAR-10 setting; MNIST: ε = 0.3, α = 0.375). Their code crafts in train
    mode (``attack_mode="train"``). Logged logits and losses are the adversarial ones.
    """
    p = own_params("fgsm_rs", ctx)
    attack = {
        "eps": p["eps"],
        "steps": 1,
        "step_size": p["alpha"],
        "norm": "linf",
        "random_start": True,
        "attack_mode": p["attack_mode"],
    }
    x_adv = pgd_attack(model, x, y, ctx, attack)
    logits = model(x_adv)
    ctx.cost.add("update", len(y))
    losses = cross_entropy(logits, y)
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())
