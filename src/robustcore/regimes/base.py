"""What every training regime shares: the step's interface, the registry, parameter checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustcore.cost import Cost
from robustcore.data import Loader
from robustcore.io import InputError
from robustcore.perturb import NORMS

ATTACK_MODES = ("eval", "train")


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


# What an epoch plan returns for an epoch that trains nothing (ACS's reference schedule); the
# learning-rate schedule still advances.
IDLE_EPOCH = object()
# Called before each epoch; may return the loader for that epoch and per-sample weights (indexed
# by sample row), e.g. a coreset re-selected during training, or IDLE_EPOCH.
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
    # Checks of the regime's own keys beyond the shared ones in RULES: key -> (check, expected).
    rules: dict[str, tuple[Callable[[Any], bool], str]] = field(default_factory=dict)
    compilable: bool = False  # its step only calls the model: torch.compile may wrap it
    # Its loss is each sample's loss on the batch as given, so the training backward yields
    # every sample's own input gradient (what a proxy's train_step capture records).
    clean_input_grads: bool = False


REGIMES: dict[str, Regime] = {}


def register_regime(
    name: str,
    *,
    plan: PlanFactory | None = None,
    rules: dict[str, tuple[Callable[[Any], bool], str]] | None = None,
    compilable: bool = False,
    clean_input_grads: bool = False,
    **defaults: Any,
) -> Callable[[Step], Step]:
    """Decorator adding a step function `f(model, x, y, ctx) -> StepResult` to REGIMES."""

    def decorate(step: Step) -> Step:
        REGIMES[name] = Regime(
            name, step, dict(defaults), plan, dict(rules or {}), compilable, clean_input_grads
        )
        return step

    return decorate


def weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample losses, weighted when the regime trains on a weighted subset."""
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy in float32 (logits may be bfloat16 under autocast)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def count_attack(cost: Cost, samples: int, steps: int, purpose: str = "attack") -> None:
    """Count `steps` attack iterations (forward + input backward) over `samples` samples."""
    if steps > 0:
        cost.add(purpose, samples * steps)
        cost.attack_steps += steps
    cost.samples_perturbed += samples


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


# Checks of the regimes' shared keys: key -> (check, what is expected).
RULES: dict[str, tuple[Any, str]] = {
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
}


def check_params(name: str, spec: dict[str, Any]) -> None:
    """Raise InputError naming the first of regime `name`'s own keys with a bad value."""
    regime = REGIMES[name]
    for key in regime.defaults:
        rule, expected = regime.rules.get(key) or RULES[key]
        value = spec.get(key, regime.defaults[key])
        if not rule(value):
            raise InputError(f"regime {name!r}: {key} must be {expected}, got {value!r}")


def own_params(name: str, ctx: StepContext) -> dict[str, Any]:
    """The regime's own parameters from the step's spec, validated."""
    check_params(name, ctx.spec)
    return {key: ctx.spec.get(key, default) for key, default in REGIMES[name].defaults.items()}
