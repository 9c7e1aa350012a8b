"""ACS: adversarial coreset selection, batch-wise, re-selected during training (regime ``acs``).

Dolatabadi, Erfani & Leckie, "ℓ∞-Robustness and Beyond: Unleashing Efficient Adversarial
Training" (ECCV 2022) / "Adversarial Coreset Selection for Efficient Robust Training" (IJCV 2023);
reference code github.com/hmdolatabadi/ACS (its ``*PB-Warm`` strategies: CRAIGPB-Warm,
GradMatchPB-Warm, i.e. batch-wise with warm start).

Algorithm, as implemented
-------------------------
1. **Warm start.** Epochs ``1..T_w`` train on all samples of the loader with the full adversarial
   objective (``adv_loss``), unweighted. ``T_w = warm_start_epochs``, or when that is None ACS's
   rule ``T_w = round(fraction * int(kappa * epochs))`` (README and training scripts of the
   reference code; ``kappa = 0.5`` is the README's example, its configs use 0.6).
2. **Selection** at epoch ``T_w + 1`` and every ``freq`` epochs after it (``T_w + 1 + j·freq``);
   between selections the same coreset and weights are kept (the plan returns None).
   a. *Candidates* are the minibatches of a fixed partition of the loader's samples: a seeded
      random permutation (drawn once from the run's generator) cut into consecutive blocks of
      the training batch size (the last block may be smaller). The reference code uses the
      unshuffled data order instead (its selection loader has ``shuffle=False``).
   b. *Adversarial examples* for every candidate sample with the current model in eval mode
      (input gradients only; BatchNorm uses running statistics; the mode is restored):
      ``adv_loss="pgd"``: PGD on the cross-entropy (``attacks.pgd``, random start);
      ``adv_loss="trades"``: TRADES' KL attack (``regimes.trades.trades_attack``, ℓ∞).
      Settings: ``eps``, ``norm`` and ``selection_steps`` / ``selection_step_size``, which
      default to the training attack's ``steps`` / ``step_size``: the reference code crafts
      the selection perturbations with the training attack's settings (``get_perturbations``
      reads ``train_args`` ε, α, iterations). ``selection_steps=1, selection_step_size=eps``
      gives an FGSM-cost selection.
   c. *Gradients.* One probe forward (eval mode, no grad) on the adversarial inputs (TRADES: on
      the clean and the adversarial inputs) captures the classifier head's input ``h`` and the
      logits ``z``. The per-sample last-layer gradient of the training loss is
      ``Σ_views ∂ℓ/∂z ⊗ [h, 1]`` (the layout of ``ProbeData.grad_embedding``), with ``∂ℓ/∂z``
      taken by autograd on the detached logits: PGD ``ℓ = CE(z', y)`` (so ``p' − y``); TRADES
      ``ℓ = CE(z, y) + β·KL(softmax z ‖ softmax z')`` through both views, as the TRADES loss
      and the reference's TRADES selection code. A candidate's gradient is the **mean** over its
      samples (the reference's ``PerBatch`` gradients are batch means).
   d. *Coreset.* CRAIG or GradMatch over the candidate gradients, via the registered methods of
      ``robustcore.scores`` (``REGISTRY["craig"]``/``["gradmatch"]`` with
      ``craig_weights``/``gradmatch_weights``) on a synthetic ProbeData whose "samples" are the
      candidates: one class, constant logits, features ``G_b / (√2 q)`` with ``q`` tiny, so its
      embeddings' inner products are ``<G_a, G_b> + 2q²`` (``2q² ≤ 2e-12`` × the mean squared
      norm: exact to rounding) and its distances exactly ``|G_a − G_b|``. Per-class selection is
      not meaningful for candidates that mix classes, so all candidates form one group (the
      reference's ``PerBatch`` does the same).
      ``craig``: greedy facility location on ``C − |G_a − G_b|`` (CRAIG's Euclidean distance;
      the reference, through CORDS, uses the squared distance), weight ``γ_b`` = the number of
      candidates whose nearest selected candidate is ``b``. The reference's CRAIG strategies
      use only the bias part of the head gradient (``linear_layer=False``); here both ``W`` and
      ``b`` as for GradMatch.
      ``gradmatch``: non-negative OMP matching ``Σ_b G_b`` (target "sum", the reference's
      ``PerBatch``), then the NNLS refit of the weights on the chosen set; ridge
      ``(lam + 1e-8) · mean_b |G_b|²`` (``lam`` is relative to the candidates' mean squared
      norm so that it does not drift with the gradients' scale; the reference uses ``lam = 0``;
      the 1e-8 floor keeps the NNLS system positive definite).
      Candidates are taken in greedy order until they cover at least ``m = round(fraction·N)``
      samples (``N`` = the loader's samples), so the coreset holds ``m ≤ |S| < m + B`` samples
      (``B`` = the batch size) made of whole candidate batches. Chosen batches whose weight is
      0 (GradMatch's NNLS zeros, which the ridge floor leaves at ~1e-8, so below 1e-6 of the
      largest weight; CRAIG duplicates) are dropped and the budget is refilled with
      seeded-random unchosen batches of weight 1, as the reference's OMP strategy does. If all
      candidate gradients are 0, the batches are seeded-random with weight 1.
   e. The plan returns a Loader over the chosen samples and a per-sample weight tensor (indexed
      by sample row; each sample carries its batch's weight), or no weights with
      ``weighted=False``.
3. **Training** on the coreset: the ``adv_loss`` regime's step (``REGIMES["pgd"]`` or
   ``REGIMES["trades"]`` of ``robustcore.regimes``) with its loss averaged by ``weighted_mean``.
   ``fit`` shuffles the coreset's samples across minibatches, so the weights act as the coreset
   theory intends. The reference trains each selected batch as one unshuffled minibatch, where
   the (uniform within a batch) weights cancel in the batch's normalised mean: its batch-wise
   training is effectively unweighted — ``weighted=False`` reproduces that.

Epoch plan, ``epoch_plan="reference"`` (default; ``scripts/robust_train_linf.py`` of the
reference, CRAIGPB-Warm / GradMatchPB-Warm: ``kappa_epochs = int(kappa * E)``, ``full_epochs =
round(kappa_epochs * fraction)``, full data ``if i < full_epochs``, coreset ``elif i >=
kappa_epochs``, selection ``if i % select_every == 0 and i >= kappa_epochs``, 0-based ``i``):
epochs ``1..T_w`` train on all samples; epochs ``T_w+1 .. K`` (``K = int(kappa·E)``) are idle —
no step, nothing counted, the learning-rate schedule still advances, as the reference's
per-epoch learning rate follows the absolute epoch; epochs ``K+1 .. E`` train on the coreset,
re-selected at the 1-based epochs ``e`` with ``(e − 1) % freq == 0``; coreset epochs before the
first selection train on a seeded uniform random subset of ``round(fraction·N)`` samples with
unit weights (the reference's ``start_idxs``). So a run of ``E`` epochs trains ``T_w`` full and
``E − K`` coreset epochs (E = 200, κ = 0.5, f = 0.1: 10 and 100). ``epoch_plan="compact"`` (this
project's earlier reading) has no idle epochs: the first selection is at ``T_w + 1`` and every
``freq`` epochs after it, and every epoch after the warm start trains on the coreset.
Not reproduced: the reference's selection attack runs with BatchNorm in train mode (PGD
objective); here eval mode.

Cost: every pass of the selection is counted under purpose ``"selection"``: per candidate batch
of ``n`` samples, ``steps·n`` forward+backward attack passes (``cost.attack_steps += steps`` per
batch, ``cost.samples_perturbed += n``, as ``robustcore.regimes`` counts), plus ``n`` probe
forwards (TRADES: ``n`` for the attack's KL target and ``2n`` probe forwards). Memory: the
candidate gradients are held as ``n_batches × C·(d + 1)`` float64 (CIFAR-10, ResNet-18, batch 128:
391 × 5130), and the candidates' pairwise matrix as ``n_batches²``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcore.cost import Cost
from robustcore.data import Loader
from robustcore.io import DivergedError, InputError
from robustcore.perturb import NORMS, pgd
from robustcore.probe import ProbeData, last_linear
from robustcore.regimes.base import (
    IDLE_EPOCH,
    REGIMES,
    Regime,
    StepContext,
    StepResult,
    count_attack,
    register_regime,
)
from robustcore.regimes.base import check_params as check_inner
from robustcore.regimes.pgd import pgd_step
from robustcore.regimes.trades import trades_attack, trades_step
from robustcore.runtime import eval_mode

METHODS = ("craig", "gradmatch")
# The regimes whose step trains the coreset, by adv_loss (importing them registers them).
INNER_STEPS = {"pgd": pgd_step, "trades": trades_step}
ADV_LOSSES = tuple(INNER_STEPS)
PURPOSE = "selection"
EPOCH_PLANS = ("reference", "compact")
_RIDGE_FLOOR = 1e-8  # relative ridge added to GradMatch's lam (positive-definite NNLS system)
_ZERO_WEIGHT = 1e-6  # weights below this share of the largest count as 0 (ridge rounding)
_PROBE_SCALE = 1e-6  # q / RMS gradient norm of the synthetic probe (offset 2q² is negligible)

# The regime's parameters and defaults (the config schema lists the same keys).
DEFAULTS: dict[str, Any] = {
    "fraction": 0.5,  # coreset share of the training samples (reference README example: 0.5)
    "method": "craig",  # "craig" or "gradmatch"
    "freq": 20,  # re-select every freq epochs (reference README: --freq 20)
    "epoch_plan": "reference",  # "reference": full, idle, coreset epochs as the reference code
    "warm_start_epochs": None,  # None: round(fraction * int(kappa * epochs)), the reference rule
    "kappa": 0.5,  # warm-start factor of that rule (reference README example: 0.5)
    "adv_loss": "pgd",  # training objective and selection loss: "pgd" or "trades"
    "eps": 8 / 255,  # attack radius (pixel units), training and selection
    "steps": 10,  # training attack iterations
    "step_size": 2 / 255,  # training attack step
    "norm": "linf",  # "linf" or "l2" (TRADES: linf only)
    "beta": 6.0,  # TRADES β (Zhang et al.'s CIFAR-10 setting); unused with adv_loss="pgd"
    "selection_steps": None,  # None: steps (the reference crafts with the training attack)
    "selection_step_size": None,  # None: step_size
    "lam": 0.0,  # GradMatch ridge, relative to the mean squared candidate gradient norm
    "weighted": True,  # train with the CRAIG/GradMatch weights (False: uniform)
    "random_start": True,  # passed to the inner pgd / trades step
    "attack_mode": "eval",  # BatchNorm mode while crafting, passed to the inner step
}


@dataclass(frozen=True)
class AcsParams:
    """The checked and resolved parameters of an ``acs`` regime entry."""

    fraction: float
    method: str
    freq: int
    epoch_plan: str
    warm_start_epochs: int
    kappa_epochs: int  # K = int(kappa · epochs): the coreset phase starts after it (reference)
    adv_loss: str
    eps: float
    norm: str
    beta: float
    selection_steps: int
    selection_step_size: float
    lam: float
    weighted: bool


def _bad(key: str, expected: str, value: Any) -> InputError:
    """The error for a bad value of one key."""
    return InputError(f"regime 'acs': {key} must be {expected}, got {value!r}")


def _real(key: str, value: Any, low: float, high: float = math.inf, open_low: bool = False):
    """A finite real in [low, high] (or (low, high]), else InputError naming the key."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    ok = ok and (float(value) > low if open_low else float(value) >= low) and float(value) <= high
    if not ok:
        lower = "(" if open_low else "["
        upper = "∞)" if high == math.inf else f"{high}]"
        raise _bad(key, f"a number in {lower}{low}, {upper}", value)
    return float(value)


def _integer(key: str, value: Any, low: int) -> int:
    """An integer ≥ low, else InputError naming the key."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
    if not ok:
        raise _bad(key, f"an integer ≥ {low}", value)
    return int(value)


def check_params(spec: dict[str, Any]) -> AcsParams:
    """Check an ``acs`` entry (defaults filled in) and resolve warm start and selection attack."""
    s = {**DEFAULTS, **spec}
    fraction = _real("fraction", s["fraction"], 0.0, 1.0, open_low=True)
    if s["method"] not in METHODS:
        raise _bad("method", f"one of {list(METHODS)}", s["method"])
    freq = _integer("freq", s["freq"], 1)
    if s["adv_loss"] not in ADV_LOSSES:
        raise _bad("adv_loss", f"one of {list(ADV_LOSSES)}", s["adv_loss"])
    eps = _real("eps", s["eps"], 0.0)
    steps = _integer("steps", s["steps"], 0)
    step_size = _real("step_size", s["step_size"], 0.0)
    if s["norm"] not in NORMS:
        raise _bad("norm", f"one of {list(NORMS)}", s["norm"])
    if s["adv_loss"] == "trades" and s["norm"] != "linf":
        raise _bad("norm", "'linf' with adv_loss 'trades' (TRADES' attack is ℓ∞)", s["norm"])
    beta = _real("beta", s["beta"], 0.0)
    kappa = _real("kappa", s["kappa"], 0.0, 1.0)
    if s["epoch_plan"] not in EPOCH_PLANS:
        raise _bad("epoch_plan", f"one of {list(EPOCH_PLANS)}", s["epoch_plan"])
    kappa_epochs = 0
    if s["epoch_plan"] == "reference" or s["warm_start_epochs"] is None:
        kappa_epochs = int(kappa * _integer("epochs", s.get("epochs"), 0))
    if s["warm_start_epochs"] is None:
        warm = round(fraction * kappa_epochs)  # Python's round, as the reference: round(2.5) = 2
    else:
        warm = _integer("warm_start_epochs", s["warm_start_epochs"], 0)
    sel_steps = steps
    if s["selection_steps"] is not None:
        sel_steps = _integer("selection_steps", s["selection_steps"], 0)
    sel_size = step_size
    if s["selection_step_size"] is not None:
        sel_size = _real("selection_step_size", s["selection_step_size"], 0.0)
    lam = _real("lam", s["lam"], 0.0)
    if not isinstance(s["weighted"], (bool, np.bool_)):
        raise _bad("weighted", "true or false", s["weighted"])
    return AcsParams(
        fraction=fraction,
        method=str(s["method"]),
        freq=freq,
        epoch_plan=str(s["epoch_plan"]),
        warm_start_epochs=int(warm),
        kappa_epochs=kappa_epochs,
        adv_loss=str(s["adv_loss"]),
        eps=eps,
        norm=str(s["norm"]),
        beta=beta,
        selection_steps=sel_steps,
        selection_step_size=sel_size,
        lam=lam,
        weighted=bool(s["weighted"]),
    )


def is_selection_epoch(epoch: int, warm_start_epochs: int, freq: int) -> bool:
    """Compact schedule: True at epoch T_w + 1 and every `freq` epochs after (1-based)."""
    after = epoch - warm_start_epochs - 1
    return after >= 0 and after % freq == 0


def epoch_kind(epoch: int, params: AcsParams) -> str:
    """What a 1-based epoch does: "full", "idle", "initial" (random subset), "select", "coreset"."""
    if epoch <= params.warm_start_epochs:
        return "full"
    if params.epoch_plan == "compact":
        selects = is_selection_epoch(epoch, params.warm_start_epochs, params.freq)
        return "select" if selects else "coreset"
    if epoch <= params.kappa_epochs:
        return "idle"
    if (epoch - 1) % params.freq == 0:
        return "select"
    first_coreset = max(params.kappa_epochs, params.warm_start_epochs) + 1
    return "initial" if epoch == first_coreset else "coreset"


# ------------------------------------------------------------------------------ gradients


def _head_view(
    model: nn.Module, head: nn.Linear, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the head's input for a batch: one eval-mode forward without gradients."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        with eval_mode(model), torch.no_grad():
            logits = model(x)
    finally:
        hook.remove()
    return logits.float(), captured[-1].flatten(1).float()


def batch_gradients(
    model: nn.Module,
    loader: Loader,
    params: AcsParams,
    cost: Cost,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean last-layer gradient of the adversarial loss per loader batch, and each batch's rows.

    Each batch of ``loader.epoch(shuffle=False)`` is one candidate; row b of the returned array
    (float64, length C·(d+1), layout of ``ProbeData.grad_embedding``) is its samples' mean.
    """
    head = last_linear(model)
    grads: list[np.ndarray] = []
    batches: list[np.ndarray] = []
    for index, x, y in loader.epoch(shuffle=False):
        n = len(y)
        if params.adv_loss == "pgd":
            x_adv = pgd(
                model,
                x,
                y,
                eps=params.eps,
                steps=params.selection_steps,
                step_size=params.selection_step_size,
                norm=params.norm,
                random_start=True,
                generator=generator,
            )
            count_attack(cost, n, params.selection_steps if params.eps > 0 else 0, PURPOSE)
            views = [_head_view(model, head, x_adv)]
            cost.add(PURPOSE, n, backward=False)
        else:
            x_adv = trades_attack(
                model,
                x,
                eps=params.eps,
                steps=params.selection_steps,
                step_size=params.selection_step_size,
                generator=generator,
            )
            cost.add(PURPOSE, n, backward=False)  # the attack's KL target p(x)
            count_attack(cost, n, params.selection_steps, PURPOSE)
            views = [_head_view(model, head, x), _head_view(model, head, x_adv)]
            cost.add(PURPOSE, 2 * n, backward=False)
        logits = [z.detach().cpu().double().requires_grad_(True) for z, _ in views]
        labels = y.cpu()
        with torch.enable_grad():
            if params.adv_loss == "pgd":
                loss = F.cross_entropy(logits[0], labels, reduction="sum")
            else:
                kl = F.kl_div(
                    F.log_softmax(logits[1], dim=1), F.softmax(logits[0], dim=1), reduction="sum"
                )
                loss = F.cross_entropy(logits[0], labels, reduction="sum") + params.beta * kl
            residuals = torch.autograd.grad(loss, logits)
        total = 0.0
        for residual, (_, h) in zip(residuals, views, strict=True):
            h = h.detach().cpu().double()
            augmented = torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], dim=1)
            total = total + residual.T @ augmented
        grads.append((total / n).reshape(-1).numpy())
        batches.append(index.numpy().astype(np.int64))
    return np.stack(grads), batches


# ------------------------------------------------------------------------------ selection


def _cover(order: np.ndarray, sizes: np.ndarray, target: int) -> np.ndarray:
    """The shortest prefix of `order` whose batch sizes sum to at least `target`."""
    if target <= 0 or len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(sizes[order])
    stop = int(np.searchsorted(cumulative, target)) + 1
    return np.asarray(order[:stop], dtype=np.int64)


def _batch_probe(grads: np.ndarray, mean_sq: float) -> ProbeData:
    """A one-class ProbeData whose gradient embeddings reproduce the candidates' gradients.

    Label 0 of two classes with logits (0, log(q / (1 − q))) gives the residual r = (−q, q) for
    every row, so with features G / (√2 q) the embeddings r ⊗ [h, 1] have inner products
    <G_a, G_b> + 2q² and distances |G_a − G_b|.
    """
    n, width = grads.shape
    q = min(0.25, _PROBE_SCALE * math.sqrt(mean_sq))
    logits = np.zeros((n, 2))
    logits[:, 1] = math.log(q / (1.0 - q))
    return ProbeData(
        index=np.arange(n, dtype=np.int64),
        labels=np.zeros(n, dtype=np.int64),
        features=grads / (math.sqrt(2.0) * q),
        logits=logits,
        last_weight=np.zeros((2, width)),
        last_bias=np.zeros(2),
    )


def select_batches(
    grads: np.ndarray,
    sizes: np.ndarray,
    target: int,
    method: str = "craig",
    lam: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate batches (pick order) covering ≥ target samples, and their positive weights."""
    grads = np.asarray(grads, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if grads.ndim != 2 or len(grads) != len(sizes) or len(sizes) == 0:
        raise ValueError(f"select_batches: grads {grads.shape} and sizes {sizes.shape} disagree")
    if not 0 < target <= int(sizes.sum()):
        raise ValueError(f"select_batches: target {target} outside (0, {int(sizes.sum())}]")
    if method not in METHODS:
        raise _bad("method", f"one of {list(METHODS)}", method)
    if not np.isfinite(grads).all():
        raise DivergedError("ACS selection: non-finite adversarial gradients (diverged model?)")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = len(grads)
    mean_sq = float(np.einsum("ij,ij->i", grads, grads).mean())
    if mean_sq == 0.0:  # nothing to match: any batches are as good
        chosen = _cover(rng.permutation(n), sizes, target)
        return chosen, np.ones(len(chosen))
    # Imported here: the score registry pulls in scipy, which every other training job would
    # pay for at start-up (about 0.4 s) without using it.
    from robustcore.scores.base import REGISTRY, ScoreInputs
    from robustcore.scores.craig import craig_weights
    from robustcore.scores.gradmatch import gradmatch_weights

    probe = _batch_probe(grads, mean_sq)
    inputs = ScoreInputs(index=probe.index, labels=probe.labels, probe=probe)
    budget = min(n, -(-target // int(sizes.max())) + 1) / n  # enough greedy steps to cover
    ridge = (lam + _RIDGE_FLOOR) * mean_sq
    extra = {} if method == "craig" else {"lam": ridge, "nnls": True, "target": "sum"}
    scores = REGISTRY[method](inputs, budget=budget, **extra)["score"].to_numpy()
    chosen = _cover(np.argsort(scores, kind="stable"), sizes, target)
    if method == "craig":
        weights = craig_weights(probe, chosen)
    else:
        weights = gradmatch_weights(probe, chosen, lam=ridge, nnls=True, target="sum")
    keep = weights > _ZERO_WEIGHT * weights.max(initial=0.0)  # NNLS zeros, up to the ridge
    chosen, weights = chosen[keep], weights[keep]
    missing = target - int(sizes[chosen].sum())
    if missing > 0:
        rest = np.setdiff1d(np.arange(n), chosen)
        extra = _cover(rest[rng.permutation(len(rest))], sizes, missing)
        chosen = np.concatenate([chosen, extra])
        weights = np.concatenate([weights, np.ones(len(extra))])
    return chosen, weights


# ------------------------------------------------------------------------------ plan and step


def _inner_regime(name: str) -> Regime:
    """The registered regime whose step trains the coreset (``pgd`` or ``trades``)."""
    if name not in INNER_STEPS:
        raise InputError(f"regime 'acs': adv_loss {name!r} needs the regime {name!r} registered")
    return REGIMES[name]


class AcsPlan:
    """ACS's epoch plan: all samples until the warm start ends, then a coreset every freq epochs.

    Built by ``fit`` as the regime's PlanFactory. After the first selection ``batches`` holds
    the candidate partition (sample rows per candidate); ``history`` gets one record per
    selection: epoch, chosen candidates (pick order), their weights, samples kept, wall seconds.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Loader,
        spec: dict[str, Any],
        generator: torch.Generator,
        cost: Cost,
    ) -> None:
        """Check the entry, fix the seed of the partition and of the selection attacks."""
        self.params = check_params(spec)
        inner = _inner_regime(self.params.adv_loss)
        check_inner(inner.name, spec)  # the keys only the inner step reads (random_start, ...)
        self.pool = np.asarray(loader.indices, dtype=np.int64)
        if len(self.pool) == 0:
            raise InputError("regime 'acs': the training loader has no samples")
        self.target = max(1, int(round(self.params.fraction * len(self.pool))))
        self.model, self.loader, self.cost = model, loader, cost
        self.seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.device = next(model.parameters()).device
        self.attack_generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.candidates: Loader | None = None
        self.batches: list[np.ndarray] = []
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the selection attacks' RNG, the partition, the history."""
        return {
            "attack_generator": self.attack_generator.get_state(),
            "partitioned": self.candidates is not None,
            "batches": [torch.from_numpy(np.asarray(b, dtype=np.int64)) for b in self.batches],
            "history": [
                {
                    "epoch": int(h["epoch"]),
                    "batches": torch.as_tensor(np.asarray(h["batches"])),
                    "weights": torch.as_tensor(np.asarray(h["weights"], dtype=np.float64)),
                    "samples": int(h["samples"]),
                    "seconds": float(h["seconds"]),
                }
                for h in self.history
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from state_dict() of an interrupted run."""
        self.attack_generator.set_state(state["attack_generator"])
        if state["partitioned"]:
            order = np.random.default_rng([self.seed, 0]).permutation(len(self.pool))
            self.candidates = _like(self.loader, self.pool[order])
        self.batches = [b.numpy() for b in state["batches"]]
        self.history = [
            {**h, "batches": h["batches"].numpy(), "weights": h["weights"].numpy()}
            for h in state["history"]
        ]

    def __call__(self, epoch: int) -> tuple[Loader, torch.Tensor | None] | object | None:
        """The coreset and weights at a selection epoch, IDLE_EPOCH, else None (keep the last)."""
        p = self.params
        kind = epoch_kind(epoch, p)
        if kind == "idle":
            return IDLE_EPOCH
        if kind == "initial":  # the reference's start_idxs: uniform, unit weights
            rows = np.random.default_rng([self.seed, 1]).choice(self.pool, self.target, False)
            return _like(self.loader, np.sort(rows)), None
        if kind != "select":
            return None
        started = time.perf_counter()
        if self.candidates is None:  # the fixed partition, in candidate order
            order = np.random.default_rng([self.seed, 0]).permutation(len(self.pool))
            self.candidates = _like(self.loader, self.pool[order])
        grads, self.batches = batch_gradients(
            self.model, self.candidates, p, self.cost, self.attack_generator
        )
        sizes = np.array([len(b) for b in self.batches], dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        chosen, weights = select_batches(grads, sizes, self.target, p.method, p.lam, rng)
        rows = np.concatenate([self.batches[b] for b in chosen])
        coreset = _like(self.loader, np.sort(rows))
        per_sample = None
        if p.weighted:
            per_sample = torch.zeros(len(self.loader.split), dtype=torch.float32)
            repeated = np.repeat(weights, sizes[chosen]).astype(np.float32)
            per_sample[torch.from_numpy(rows)] = torch.from_numpy(repeated)
            per_sample = per_sample.to(self.device)
        self.history.append(
            {
                "epoch": epoch,
                "batches": chosen,
                "weights": weights,
                "samples": len(rows),
                "seconds": time.perf_counter() - started,
            }
        )
        return coreset, per_sample


def _like(loader: Loader, indices: np.ndarray) -> Loader:
    """A loader over `indices` of the same split, batch size, device and image size."""
    return loader.subset(indices)


@register_regime("acs", plan=AcsPlan, **DEFAULTS)
def acs_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """ACS training step: the ``adv_loss`` regime's step on the batch, with the coreset weights."""
    return _inner_regime(ctx.spec.get("adv_loss", DEFAULTS["adv_loss"])).step(model, x, y, ctx)
