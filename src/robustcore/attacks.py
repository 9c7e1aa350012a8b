"""Evaluation attacks besides PGD, in pixel space ([0, 1]); the model is attacked in eval mode.

`fgsm` is one PGD step from the clean point; `random_noise` is the random-search baseline the
hygiene checks compare gradient attacks against; `autoattack` runs the official AutoAttack
(Croce & Hein, 2020) from the `pyautoattack` package. PGD itself, which training uses too, is in
`robustcore.perturb`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from robustcore.io import InputError
from robustcore.perturb import check_norm, first_success, per_sample_norm, pgd
from robustcore.runtime import eval_mode, frozen

# Our norm names → AutoAttack's.
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}
AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "custom")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# What each AutoAttack version runs (pyautoattack 0.2.0, AutoAttack._set_version).
AUTOATTACK_SUITES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
_AUTOATTACK_LOGGER = "auto-attack"  # the logger pyautoattack writes to


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one ℓ∞ step of size ε from the clean point."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm="linf", random_start=False)


def random_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    draws: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random search on the ε-sphere: ℓ∞ random corners (±ε), ℓ2 random directions of length ε.

    Uses no gradient; each sample keeps its first misclassified draw (robust = survives all).
    """
    check_norm(norm)
    if eps < 0 or draws < 1:
        raise InputError(f"random noise needs eps ≥ 0 and draws ≥ 1, got {eps}, {draws}")
    x = x.detach()
    if eps == 0:
        return x.clone()

    def draw(xs: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        """One draw of noise on the sphere, clipped to the box."""
        if norm == "linf":
            noise = torch.randint(0, 2, xs.shape, generator=generator, device=xs.device)
            delta = (noise.to(xs.dtype) * 2 - 1) * eps
        else:
            delta = torch.randn(xs.shape, generator=generator, device=xs.device)
            delta = delta / per_sample_norm(delta).clamp_min(1e-12) * eps
        return (xs + delta).clamp(0, 1)

    return first_success(model, x, y, int(draws), draw)


class _Collect(logging.Handler):
    """Keep pyautoattack's log records and echo the informative ones to stderr (the job log)."""

    _ECHO = ("robust accuracy after", "initial accuracy")

    def __init__(self, sink: list[dict[str, Any]] | None) -> None:
        """Append records to `sink` (a list of {level, message}) when given."""
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        """Store the record; print warnings and per-attack accuracies to stderr."""
        message = record.getMessage()
        if self.sink is not None:
            self.sink.append({"level": record.levelname, "message": message})
        if record.levelno >= logging.WARNING:
            print(f"autoattack {record.levelname.lower()}: {message}", file=sys.stderr)
        elif message.startswith(self._ECHO):
            print(f"autoattack: {message}", file=sys.stderr)


@contextlib.contextmanager
def _autoattack_logging(sink: list[dict[str, Any]] | None) -> Iterator[None]:
    """Route pyautoattack's logger to `sink` and stderr (nothing to stdout), then restore it."""
    logger = logging.getLogger(_AUTOATTACK_LOGGER)
    saved = logger.level, logger.propagate
    handler = _Collect(sink)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _keep_global_state(device: torch.device) -> Iterator[None]:
    """Undo pyautoattack's side effects: it reseeds torch's global RNG and clears sys.settrace."""
    trace = sys.gettrace()
    # torch.manual_seed reseeds every CUDA device, so every device's state is kept.
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        sys.settrace(trace)


def autoattack_suite(version: str, attacks: list[str] | None = None) -> tuple[str, ...]:
    """The attacks an AutoAttack version runs; InputError for a bad version or attack list."""
    if version not in AUTOATTACK_VERSIONS:
        raise InputError(
            f"autoattack version {version!r} unknown; expected one of {list(AUTOATTACK_VERSIONS)}"
        )
    if version != "custom":
        if attacks is not None:
            raise InputError(
                f"autoattack attacks are only used with version 'custom', not {version!r}"
            )
        return AUTOATTACK_SUITES[version]
    if (
        not isinstance(attacks, (list, tuple))
        or not attacks
        or not set(attacks) <= set(AUTOATTACK_ATTACKS)
    ):
        raise InputError(
            "autoattack version 'custom' needs attacks: a non-empty list from "
            f"{list(AUTOATTACK_ATTACKS)}, got {attacks!r}"
        )
    return tuple(attacks)


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
    log: list[dict[str, Any]] | None = None,
) -> torch.Tensor:
    """The official AutoAttack (pyautoattack) on one batch; returns its adversarial points.

    Points it could not break come back unchanged. The model runs in eval mode with frozen
    parameters on its own device; pyautoattack's log records are appended to `log` (warnings
    and per-attack accuracies are also echoed to stderr), and the global RNG state is restored.
    """
    from pyautoattack import AutoAttack

    check_norm(norm)
    suite = autoattack_suite(version, attacks)
    if "square" in suite and x.dim() != 4:
        raise InputError(
            f"autoattack's square attack needs image batches N×C×H×W, got shape {list(x.shape)}; "
            "use version 'custom' without 'square' for vector data"
        )
    if eps < 0:
        raise InputError(f"attack eps must be ≥ 0, got {eps}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device  # AutoAttack runs where the model is
    x, y = x.detach().to(device), y.to(device)
    if eps == 0 or len(x) == 0:
        return x.clone()
    with (
        eval_mode(model),
        frozen(model),
        _autoattack_logging(log),
        _keep_global_state(device),
    ):
        adversary = AutoAttack(
            model,
            attacks=list(suite) if version == "custom" else None,
            device=device,
            eps=float(eps),
            norm=AUTOATTACK_NORMS[norm],
            seed=int(seed),
            version=version,
        )
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.detach()
