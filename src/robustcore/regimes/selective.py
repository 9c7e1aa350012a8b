"""Selective adversarial training: PGD on a share ρ of each minibatch, chosen by a criterion.

"Scaling Adversarial Training via Data Selection": the chosen samples' adversarial loss plus
λ times the clean batch's loss; the subset is chosen by logit margin, gradient matching or at
random (always at random during the warm-up epochs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustcore.io import InputError
from robustcore.persample import logit_margin
from robustcore.regimes.base import (
    StepContext,
    StepResult,
    cross_entropy,
    own_params,
    register_regime,
    weighted_mean,
)
from robustcore.regimes.crafting import RunningStatsKept, pgd_attack
from robustcore.regimes.grad_similarity import gradmatch_similarity
from robustcore.runtime import to_device

CRITERIA = ("margin", "gradmatch", "random")
SAMPLINGS = ("multinomial", "topk")


@register_regime(
    "selective",
    rho=0.25,
    criterion="margin",
    warmup_epochs=2,
    lam=1.0,
    eps=8 / 255,
    steps=10,
    step_size=2 / 255,
    norm="linf",
    random_start=True,
    attack_mode="eval",
    gradmatch_sampling="multinomial",
    gradmatch_threshold=0.0,
    rules={
        "criterion": (lambda v: v in CRITERIA, f"one of {list(CRITERIA)}"),
        "gradmatch_sampling": (lambda v: v in SAMPLINGS, f"one of {list(SAMPLINGS)}"),
        "gradmatch_threshold": (
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and -1 <= v < 1,
            "a number in [-1, 1)",
        ),
    },
)
def selective_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """Selective adversarial training: CE(PGD on m = max(1, ⌊ρ·B + ½⌋) chosen samples) + λ·CE(x).

    One clean forward in train mode gives the λ·CE(clean batch) term and the logits the margin
    criterion reads; m samples are chosen (epochs 1..warmup_epochs: uniformly at random), PGD
    attacks them, and one train-mode forward of the subset gives the adversarial term. Both
    means are weighted by sample_weight. Criteria: ``margin`` samples without replacement with
    probability ∝ 1/(|margin| + 1e-6); ``gradmatch`` samples without replacement with
    probability ∝ max(cos − τ, 0) of each sample's gradient to the batch gradient
    (`gradmatch_similarity`; τ = ``gradmatch_threshold``), the paper's §3.2 pipeline (cosine
    similarity, thresholding to weights, normalisation, multinomial draw; uniform if no weight
    is positive), or keeps the top-m by cosine with ``gradmatch_sampling="topk"``;
    ``random`` is uniform. BatchNorm running statistics move once per batch, with the clean
    batch; the subset forward normalizes with its own batch statistics but leaves them alone.
    λ = 1 by default; the paper's public code used λ = 0.2. Logged logits are the clean ones;
    sample i's logged loss is λ·CEᵢ(x) + [i chosen]·(B/m)·CEᵢ(x'), so their mean is the loss.
    """
    p = own_params("selective", ctx)
    n = len(y)
    m = max(1, math.floor(p["rho"] * n + 0.5))  # half up, like robustcore.select
    logits = model(x)
    ctx.cost.add("update", n)
    clean = cross_entropy(logits, y)
    criterion = "random" if ctx.epoch <= p["warmup_epochs"] else p["criterion"]
    chosen = select_subset(model, x, y, logits.detach(), m, criterion, ctx, p)
    x_adv = pgd_attack(model, x[chosen], y[chosen], ctx, p)
    adv_logits = RunningStatsKept(model)(x_adv)
    ctx.cost.add("update", m)
    adv = cross_entropy(adv_logits, y[chosen])
    weight = ctx.sample_weight
    loss = weighted_mean(adv, None if weight is None else weight[chosen])
    loss = loss + p["lam"] * weighted_mean(clean, weight)
    shares = p["lam"] * clean.detach()
    shares = shares.index_add(0, chosen, adv.detach() * (n / m))
    return StepResult(loss, logits.detach(), shares)


def select_subset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    m: int,
    criterion: str,
    ctx: StepContext,
    params: dict | None = None,
) -> torch.Tensor:
    """Indices (on x's device) of the m samples the criterion picks, drawn from ctx.generator.

    The draw is on the CPU (reproducible on any device): margin and gradmatch read their
    criterion from the device once (the one synchronisation of the step); the chosen rows go
    back without one.
    """
    n = len(y)
    if criterion == "random":
        chosen = torch.randperm(n, generator=ctx.generator)[:m]
    elif criterion == "margin":
        margin = logit_margin(logits.float(), y).abs().double().cpu()
        chosen = torch.multinomial(1.0 / (margin + 1e-6), m, generator=ctx.generator)
    elif criterion == "gradmatch":
        similarity = gradmatch_similarity(model, x, y)
        ctx.cost.add("select", n)
        params = params or {}
        chosen = gradmatch_choice(
            similarity,
            m,
            ctx.generator,
            sampling=params.get("gradmatch_sampling", "multinomial"),
            threshold=params.get("gradmatch_threshold", 0.0),
        )
    else:
        raise InputError(f"selective criterion {criterion!r} unknown; expected one of {CRITERIA}")
    return to_device(chosen, x.device)


def gradmatch_choice(
    similarity: torch.Tensor,
    m: int,
    generator: torch.Generator,
    *,
    sampling: str = "multinomial",
    threshold: float = 0.0,
) -> torch.Tensor:
    """m sample positions from gradient/batch-gradient cosines: a weighted draw, or the top m.

    The draw's positions are on the CPU (drawn there from `generator`); the top m stay on the
    similarity's device.
    """
    if sampling == "topk":
        return similarity.topk(m).indices
    weights = (similarity.double().cpu() - threshold).clamp_min(0.0)
    if int((weights > 0).sum()) < m:  # too few positive weights to draw m: pad uniformly
        weights = weights + (weights.sum() + 1.0) * 1e-9
    return torch.multinomial(weights / weights.sum(), m, generator=generator)
