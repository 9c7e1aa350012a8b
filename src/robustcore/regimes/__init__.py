"""Training regimes as plug-ins: one module per regime, each registering its step in REGIMES.

- ``standard``: cross-entropy on the clean batch.
- ``pgd``: PGD adversarial training (Madry et al. 2018), cross-entropy on the attacked batch.
- ``trades``: TRADES (Zhang et al. 2019), CE(f(x), y) + β·KL(f(x) ‖ f(x')).
- ``fgsm_rs``: FGSM from a uniform random start (Wong et al. 2020, "Fast is better than free").
- ``selective``: selective adversarial training ("Scaling Adversarial Training via Data
  Selection"): PGD on a fraction ρ of each minibatch, chosen by logit margin, gradient matching
  or at random, with loss CE(adversarial subset) + λ·CE(clean batch).
- ``acs``: adversarial coreset selection (Dolatabadi et al.), a CRAIG/GradMatch coreset of
  minibatches re-selected every few epochs, trained with the ``pgd`` or ``trades`` step.

A regime is a step function ``step(model, x, y, ctx) -> StepResult`` registered with its own
parameters' defaults (``regimes.base.register_regime``), optionally with an epoch plan (ACS);
``robustcore.train.fit`` looks it up by the entry's ``type`` and never names one. Adding a regime
means adding a module here and importing it below.

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

from typing import Any

from robustcore.io import InputError
from robustcore.regimes import acs, fgsm_rs, pgd, selective, standard, trades
from robustcore.regimes.base import REGIMES, Regime, check_params

__all__ = ["REGIMES", "Regime", "check_params", "regime_of"]
# Each module registers its regime on import.
_REGISTERING = (standard, pgd, trades, fgsm_rs, selective, acs)


def regime_of(spec: dict[str, Any]) -> tuple[Regime, dict[str, Any]]:
    """The regime a training entry names, and the entry with the regime's defaults filled in."""
    name = spec.get("type", "standard")
    if name not in REGIMES:
        raise InputError(f"regime type {name!r} unknown; expected one of {sorted(REGIMES)}")
    regime = REGIMES[name]
    return regime, {**regime.defaults, **spec}
