"""Adversarial training regimes, registered into robustcore.train.REGIMES.

- ``pgd``: PGD adversarial training (Madry et al. 2018), cross-entropy on the attacked batch.
- ``trades``: TRADES (Zhang et al. 2019), CE(f(x), y) + β·KL(f(x) ‖ f(x')).
- ``fgsm_rs``: FGSM from a uniform random start (Wong et al. 2020, "Fast is better than free").
- ``selective``: selective adversarial training ("Scaling Adversarial Training via Data
  Selection"): PGD on a fraction ρ of each minibatch, chosen by logit margin, gradient matching
  or at random, with loss CE(adversarial subset) + λ·CE(clean batch).

Conventions shared by all regimes:

- Attacks are crafted with ``attack_mode="eval"`` by default: BatchNorm uses its running
  statistics while crafting (the project's principle, and TRADES' reference code), the previous
  mode is restored, and only input gradients are taken (no weight ``.grad`` is left behind).
  ``attack_mode="train"`` crafts with BatchNorm in train mode (batch statistics), as Madry et
  al.'s TensorFlow code did (its attack ran the ``mode='train'`` graph); unlike that code, which
  also moved the BatchNorm moving averages at every attack step (``updates_collections=None``),
  the running statistics are left untouched while crafting here.
- BatchNorm running statistics move once per forward whose loss is backpropagated, as in the
  papers' code, except where a regime says otherwise (``selective`` moves them once per batch).
- Cost: every attack step over n samples is ``cost.add("attack", n)``; the forwards feeding the
  loss are ``"update"``; other forwards are ``"clean"`` (TRADES' KL target) or ``"select"``
  (gradient matching). ``cost.attack_steps`` counts attack iterations (per attacked batch) and
  ``cost.samples_perturbed`` the samples they perturbed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustcore.attacks import NORMS, pgd
from robustcore.dynamics import logit_margin
from robustcore.io import InputError
from robustcore.runtime import eval_mode, frozen
from robustcore.train import (
    REGIMES,
    Cost,
    StepContext,
    StepResult,
    register_regime,
    weighted_mean,
)

ATTACK_MODES = ("eval", "train")
CRITERIA = ("margin", "gradmatch", "random")
GRADMATCH_METHODS = ("auto", "ghost", "direct")
_BatchNorm = nn.modules.batchnorm._BatchNorm


# ----------------------------------------------------------------------------- parameters


def _number(low: float, high: float = math.inf, *, open_low: bool = False, integer: bool = False):
    """A check for a real (or integer) parameter in [low, high] (or (low, high])."""

    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if integer and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        return (value > low if open_low else value >= low) and value <= high

    return check


_RULES: dict[str, tuple[Any, str]] = {
    "eps": (_number(0), "a number ≥ 0"),
    "steps": (_number(0, integer=True), "an integer ≥ 0"),
    "step_size": (_number(0), "a number ≥ 0"),
    "alpha": (_number(0), "a number ≥ 0"),
    "beta": (_number(0), "a number ≥ 0"),
    "lam": (_number(0), "a number ≥ 0"),
    "rho": (_number(0, 1, open_low=True), "a number in (0, 1]"),
    "warmup_epochs": (_number(0, integer=True), "an integer ≥ 0"),
    "random_start": (lambda v: isinstance(v, bool), "true or false"),
    "norm": (lambda v: v in NORMS, f"one of {list(NORMS)}"),
    "attack_mode": (lambda v: v in ATTACK_MODES, f"one of {list(ATTACK_MODES)}"),
    "criterion": (lambda v: v in CRITERIA, f"one of {list(CRITERIA)}"),
}


def check_params(name: str, spec: dict[str, Any]) -> None:
    """Raise InputError naming the first of regime `name`'s own keys with a bad value."""
    for key in REGIMES[name].defaults:
        rule, expected = _RULES[key]
        value = spec.get(key, REGIMES[name].defaults[key])
        if not rule(value):
            raise InputError(f"regime {name!r}: {key} must be {expected}, got {value!r}")


def _params(name: str, ctx: StepContext) -> dict[str, Any]:
    """The regime's own parameters from the step's spec, validated."""
    check_params(name, ctx.spec)
    return {key: ctx.spec.get(key, default) for key, default in REGIMES[name].defaults.items()}


# ----------------------------------------------------------------------------- BatchNorm


def _running_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → tensor of every BatchNorm running statistic (mean, var, batch count)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                buffer = getattr(module, key)
                if buffer is not None:
                    out[f"{prefix}.{key}" if prefix else key] = buffer
    return out


class _RunningStatsKept(nn.Module):
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
        self.scratch = {k: v.clone() for k, v in _running_buffers(model).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output, running statistics untouched."""
        if not self.scratch:
            return self.inner(x)
        return functional_call(self.inner, self.scratch, (x,))


@contextlib.contextmanager
def _crafting(model: nn.Module, attack_mode: str) -> Iterator[nn.Module]:
    """The network an attack queries: eval mode (restored after), or train mode with batch stats."""
    with frozen(model):
        if attack_mode == "train":
            yield _RunningStatsKept(model)
        else:
            with eval_mode(model):
                yield model


# ----------------------------------------------------------------------------- attacks


def _count_attack(cost: Cost, samples: int, steps: int) -> None:
    """Count `steps` attack iterations (forward + input backward) over `samples` samples."""
    if steps > 0:
        cost.add("attack", samples * steps)
        cost.attack_steps += steps
    cost.samples_perturbed += samples


def _pgd_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, p: dict[str, Any]
) -> torch.Tensor:
    """PGD on (x, y) with the regime's eps/steps/step_size/norm/random_start, counted."""
    with _crafting(model, p["attack_mode"]) as net:
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
        _count_attack(ctx.cost, len(y), int(p["steps"]))
    return x_adv


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
    with _crafting(model, attack_mode) as net:
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


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy in float32 (logits may be bfloat16 under autocast)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


# ----------------------------------------------------------------------------- regimes


@register_regime(
    "pgd",
    eps=8 / 255,
    steps=10,
    step_size=2 / 255,
    norm="linf",
    random_start=True,
    attack_mode="eval",
)
def pgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """PGD adversarial training (Madry et al. 2018): weighted CE on the PGD-attacked batch.

    Reference settings: CIFAR-10 ε = 8/255, step 2/255, 10 steps, random start (MadryLab
    cifar10_challenge config.json; the paper's text says 7 steps); MNIST ε = 0.3, step 0.01,
    40 steps, random start (mnist_challenge). ``norm="l2"`` takes normalized-gradient steps and
    projects to the ℓ2 ball (set eps/step_size accordingly). Logged logits and losses are the
    adversarial ones (train accuracy is then robust train accuracy).
    """
    p = _params("pgd", ctx)
    x_adv = _pgd_attack(model, x, y, ctx, p)
    logits = model(x_adv)
    ctx.cost.add("update", len(y))
    losses = _ce(logits, y)
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())


@register_regime("trades", beta=6.0, eps=8 / 255, steps=10, step_size=2 / 255, attack_mode="eval")
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
    p = _params("trades", ctx)
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
    _count_attack(ctx.cost, n, int(p["steps"]))
    logits = model(x)
    adv_logits = model(x_adv)
    ctx.cost.add("update", n)
    ctx.cost.add("update", n)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    kl = F.kl_div(log_q, F.softmax(logits.float(), dim=1), reduction="none").sum(1)
    losses = _ce(logits, y) + p["beta"] * kl
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())


@register_regime("fgsm_rs", eps=8 / 255, alpha=10 / 255, attack_mode="eval")
def fgsm_rs_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """FGSM with random start (Wong et al. 2020): CE on x + δ, one signed step from δ ~ U(−ε, ε).

    As fast_adversarial's train_fgsm.py: δ uniform in the ε-box, clipped so x + δ ∈ [0, 1];
    δ ← clip(δ + α·sign(∇δ CE), −ε, ε), clipped again to [0, 1]. α = 10/255 = 1.25·ε for
    ε = 8/255 (their CIFAR-10 setting; MNIST: ε = 0.3, α = 0.375). Their code crafts in train
    mode (``attack_mode="train"``). Logged logits and losses are the adversarial ones.
    """
    p = _params("fgsm_rs", ctx)
    attack = {
        "eps": p["eps"],
        "steps": 1,
        "step_size": p["alpha"],
        "norm": "linf",
        "random_start": True,
        "attack_mode": p["attack_mode"],
    }
    x_adv = _pgd_attack(model, x, y, ctx, attack)
    logits = model(x_adv)
    ctx.cost.add("update", len(y))
    losses = _ce(logits, y)
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())


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
)
def selective_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """Selective adversarial training: CE(PGD on m = max(1, ⌊ρ·B + ½⌋) chosen samples) + λ·CE(x).

    One clean forward in train mode gives the λ·CE(clean batch) term and the logits the margin
    criterion reads; m samples are chosen (epochs 1..warmup_epochs: uniformly at random), PGD
    attacks them, and one train-mode forward of the subset gives the adversarial term. Both
    means are weighted by sample_weight. Criteria: ``margin`` samples without replacement with
    probability ∝ 1/(|margin| + 1e-6); ``gradmatch`` keeps the top-m by `gradmatch_similarity`;
    ``random`` is uniform. BatchNorm running statistics move once per batch, with the clean
    batch; the subset forward normalizes with its own batch statistics but leaves them alone.
    λ = 1 by default; the paper's public code used λ = 0.2. Logged logits are the clean ones;
    sample i's logged loss is λ·CEᵢ(x) + [i chosen]·(B/m)·CEᵢ(x'), so their mean is the loss.
    """
    p = _params("selective", ctx)
    n = len(y)
    m = max(1, math.floor(p["rho"] * n + 0.5))  # half up, like robustcore.select
    logits = model(x)
    ctx.cost.add("update", n)
    clean = _ce(logits, y)
    criterion = "random" if ctx.epoch <= p["warmup_epochs"] else p["criterion"]
    chosen = select_subset(model, x, y, logits.detach(), m, criterion, ctx)
    x_adv = _pgd_attack(model, x[chosen], y[chosen], ctx, p)
    adv_logits = _RunningStatsKept(model)(x_adv)
    ctx.cost.add("update", m)
    adv = _ce(adv_logits, y[chosen])
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
) -> torch.Tensor:
    """Indices (on x's device) of the m samples the criterion picks, drawn from ctx.generator."""
    n = len(y)
    if criterion == "random":
        chosen = torch.randperm(n, generator=ctx.generator)[:m]
    elif criterion == "margin":
        margin = logit_margin(logits.float(), y).abs().double().cpu()
        chosen = torch.multinomial(1.0 / (margin + 1e-6), m, generator=ctx.generator)
    elif criterion == "gradmatch":
        similarity = gradmatch_similarity(model, x, y)
        ctx.cost.add("select", n)
        chosen = similarity.topk(m).indices
    else:
        raise InputError(f"selective criterion {criterion!r} unknown; expected one of {CRITERIA}")
    return chosen.to(x.device)


# ----------------------------------------------------------------------------- gradient matching


def _own_trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The module's own (non-recursive) parameters that require gradients."""
    return [(k, v) for k, v in module.named_parameters(recurse=False) if v.requires_grad]


def _gradient_layers(model: nn.Module) -> list[nn.Module]:
    """Modules holding trainable parameters; InputError for a layer type without identities."""
    layers = []
    for name, module in model.named_modules():
        if not _own_trainable(module):
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros":
                raise InputError(
                    f"gradmatch: Conv2d {name!r} with groups={module.groups}, "
                    f"padding_mode={module.padding_mode!r} unsupported (needs 1, 'zeros')"
                )
            if isinstance(module.padding, str):
                raise InputError(f"gradmatch: Conv2d {name!r} with padding={module.padding!r}")
        elif isinstance(module, _BatchNorm):
            if module.running_mean is None:
                raise InputError(
                    f"gradmatch: BatchNorm {name!r} without running statistics "
                    "(track_running_stats=False) couples samples even in eval mode"
                )
        elif not isinstance(module, nn.Linear):
            raise InputError(
                f"gradmatch: layer type {type(module).__name__} ({name!r}) unsupported; "
                "per-sample gradient norms are implemented for Linear, Conv2d and BatchNorm"
            )
        layers.append(module)
    return layers


def _weight_terms(
    a: torch.Tensor, d: torch.Tensor, g: torch.Tensor, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖Wᵢ‖², ⟨Wᵢ, g⟩) per sample for Wᵢ = Σₜ dₜ aₜᵀ, a (B, T, Da), d (B, T, Dd), g (Dd, Da).

    "ghost": ‖Wᵢ‖² = Σₜₜ' (aₜ·aₜ')(dₜ·dₜ') and ⟨Wᵢ, g⟩ = Σₜ dₜ·(g aₜ), cost ∝ T²(Da + Dd) +
    T·Da·Dd, memory B·T²; "direct": this one layer's per-sample gradients Wᵢ, cost ∝ T·Da·Dd,
    memory B·Da·Dd; "auto" takes the cheaper. T = 1: ‖a‖²‖d‖². All exact.
    """
    _, t, da = a.shape
    dd = d.shape[2]
    if t > 1 and (method == "direct" or (method == "auto" and t * (da + dd) >= da * dd)):
        per_sample = torch.bmm(d.transpose(1, 2), a)
        return per_sample.square().sum((1, 2)), (per_sample * g).sum((1, 2))
    dot = (d * (a @ g.T)).sum((1, 2))
    if t == 1:
        return a.square().sum((1, 2)) * d.square().sum((1, 2)), dot
    gram = torch.bmm(a, a.transpose(1, 2)) * torch.bmm(d, d.transpose(1, 2))
    return gram.sum((1, 2)), dot


def _layer_terms(
    module: nn.Module,
    inputs: torch.Tensor,
    delta: torch.Tensor,
    grads: dict[str, torch.Tensor],
    method: str,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖gᵢ‖², ⟨gᵢ, G⟩) of one layer's parameters per sample, from its input, δ and BN stats."""
    n = len(inputs)
    sq = torch.zeros(n, dtype=torch.float32, device=inputs.device)
    dot = torch.zeros_like(sq)
    if isinstance(module, _BatchNorm):
        dims = [0, *range(2, inputs.dim())]
        shape = [1, -1] + [1] * (inputs.dim() - 2)
        mean, var = (t.view(shape) for t in stats)  # the batch's, held fixed
        normalized = (inputs - mean) / torch.sqrt(var + module.eps)
        reduce = dims[1:]
        per_sample = {
            "weight": (delta * normalized).sum(reduce) if reduce else delta * normalized,
            "bias": delta.sum(reduce) if reduce else delta,
        }
        for key, g in per_sample.items():
            if key in grads:
                sq += g.square().sum(1)
                dot += g @ grads[key]
        return sq, dot
    if isinstance(module, nn.Conv2d):
        a = F.unfold(
            inputs, module.kernel_size, module.dilation, module.padding, module.stride
        ).transpose(1, 2)
        d = delta.flatten(2).transpose(1, 2)
    else:  # Linear, on (B, D) or (B, ..., D)
        a = inputs.reshape(n, -1, inputs.shape[-1])
        d = delta.reshape(n, -1, delta.shape[-1])
    if "weight" in grads:
        weight_sq, weight_dot = _weight_terms(a, d, grads["weight"].reshape(d.shape[2], -1), method)
        sq += weight_sq
        dot += weight_dot
    if "bias" in grads:
        g_b = d.sum(1)
        sq += g_b.square().sum(1)
        dot += g_b @ grads["bias"]
    return sq, dot


def gradmatch_similarity(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "auto"
) -> torch.Tensor:
    """Cosine similarity of each sample's CE parameter gradient gᵢ to G = Σᵢ gᵢ, exactly.

    gᵢ is the gradient of sample i's own loss with BatchNorm's batch statistics held fixed: the
    network computes exactly the activations of the train-mode forward of this batch, but the
    statistics are constants, so gᵢ depends on the others only through them and Σᵢ gᵢ is the
    batch gradient without the terms through the statistics. (The fully coupled gradient has no
    per-sample norm short of B backward passes.) It runs as one forward in eval mode with each
    BatchNorm's running statistics swapped, in scratch copies, for the batch's mean and biased
    variance, plus one backward for G and every layer's output gradient δ; then per layer
    ⟨gᵢ, G⟩ = Σₜ δᵢₜᵀ G aᵢₜ and ‖gᵢ‖² from `_weight_terms` (BatchNorm: γ: Σ δ ⊙ x̂, β: Σ δ).
    No B × P per-sample gradient is formed. The model's mode, parameters and running statistics
    are left as they were. Supports Linear, Conv2d (groups 1, zero padding) and BatchNorm.
    """
    if method not in GRADMATCH_METHODS:
        raise InputError(
            f"gradmatch method {method!r} unknown; expected one of {GRADMATCH_METHODS}"
        )
    layers = _gradient_layers(model)
    scratch = {k: v.clone() for k, v in _running_buffers(model).items()}
    captured: dict[nn.Module, tuple[torch.Tensor, int, torch.Tensor]] = {}
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch_stats(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inputs = args[0].detach().float()
        dims = [0, *range(2, inputs.dim())]
        mean = inputs.mean(dims, keepdim=True)
        var = (inputs - mean).square().mean(dims)  # biased, as train mode; 10× torch.var on CPU
        stats[module] = (mean.flatten(), var)
        # Under functional_call these are the scratch copies, not the model's buffers.
        module.running_mean.copy_(stats[module][0])
        module.running_var.copy_(stats[module][1])

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor):
        if module in captured:
            raise InputError(f"gradmatch: layer {type(module).__name__} is called twice")
        inputs = args[0].detach()
        captured[module] = (inputs, inputs._version, out)
        return out.clone()  # an in-place op downstream (ReLU) must not overwrite `out`

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.running_mean is not None:
                handles.append(module.register_forward_pre_hook(batch_stats))
        handles += [layer.register_forward_hook(capture) for layer in layers]
        with (
            eval_mode(model),
            torch.enable_grad(),
            torch.autocast(x.device.type, enabled=False),
        ):
            logits = functional_call(model, scratch, (x.detach().float(),))
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            params = [dict(_own_trainable(layer)) for layer in layers]
            flat = [p for own in params for p in own.values()]
            outs = [captured[layer][2] for layer in layers]
            grads = torch.autograd.grad(losses.sum(), flat + outs)
            g_params, deltas = grads[: len(flat)], grads[len(flat) :]
            sq = torch.zeros(len(y), device=x.device)
            dot = torch.zeros_like(sq)
            position = 0
            for layer, own, delta in zip(layers, params, deltas, strict=True):
                inputs, version, _ = captured[layer]
                if inputs._version != version:
                    raise InputError(
                        f"gradmatch: the input of {type(layer).__name__} was modified in place"
                    )
                layer_grads = dict(zip(own, g_params[position : position + len(own)], strict=True))
                position += len(own)
                layer_sq, layer_dot = _layer_terms(
                    layer, inputs.float(), delta.float(), layer_grads, method, stats.get(layer)
                )
                sq += layer_sq
                dot += layer_dot
    finally:
        for handle in handles:
            handle.remove()
    g_norm = torch.sqrt(sum(g.float().square().sum() for g in g_params))
    return dot / (sq.clamp_min(0).sqrt() * g_norm).clamp_min(1e-12)
