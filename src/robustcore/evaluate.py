"""Clean and robust accuracy on the test set, with per-sample correctness and hygiene checks.

Attack specs (``config.yaml`` ``attacks:`` entries) name a ``type`` and its settings; every key
with its default is in `DEFAULTS` (per type; `REQUIRED` marks keys without a default) and
`COMMON_DEFAULTS` (every type). `resolve_attack` fills them in and checks them.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.attacks import AUTOATTACK_NORMS, autoattack, autoattack_suite, fgsm, random_noise
from robustcore.data import Loader
from robustcore.distributed import (
    World,
    all_gather_in_order,
    batch_shard,
    is_distributed,
    is_main,
    sum_over_ranks,
)
from robustcore.io import InputError
from robustcore.perturb import perturbation_size, pgd
from robustcore.runtime import device_generator, eval_mode

ATTACKS = ("none", "fgsm", "pgd", "autoattack")
REQUIRED = "required"  # placeholder of keys without a default (never a valid value)
# Per-type keys and defaults; REQUIRED marks keys a spec must give.
DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "fgsm": {"eps": REQUIRED},
    "pgd": {
        "eps": REQUIRED,
        "steps": REQUIRED,
        "step_size": REQUIRED,
        "norm": "linf",
        "random_start": True,
        "restarts": 1,
    },
    "autoattack": {
        "eps": REQUIRED,
        "norm": "linf",
        "version": "standard",
        "attacks": None,  # only for version "custom"
        "seed": None,  # None: evaluate()'s seed
        "n_points": 500,
    },
}
# Keys every type accepts.
COMMON_DEFAULTS: dict[str, Any] = {
    "n_points": None,  # evaluate the first n test points; None: all
    "hygiene": True,
    "hygiene_points": 1000,  # checks run on the first n evaluated points; None: all of them
    "hygiene_tol": 0.005,  # accuracy slack of the inequality checks (at least 1 sample)
    "noise_draws": 10,  # random-noise draws of the attack_beats_noise check
}
# The gradient attack AutoAttack's hygiene checks use as a reference: PGD-20, step 2.5·ε/20.
REFERENCE_PGD_STEPS = 20
BUDGET_SLACK = 1e-6  # float slack of the within_budget check, in pixel units


def _number(spec: dict[str, Any], key: str, integer: bool = False, optional: bool = False) -> None:
    """Check spec[key] is a number ≥ 0 (an integer ≥ 1 if `integer`; or None if `optional`)."""
    value = spec[key]
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if integer:
        ok = ok and float(value).is_integer() and value >= 1
    if not ok:
        what = "an integer ≥ 1" if integer else "a number ≥ 0"
        raise InputError(
            f"attack {key!r} must be {what}{' or null' if optional else ''}, got {value!r}"
        )


def resolve_attack(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every default filled in; InputError names a bad or missing key."""
    kind = spec.get("type")
    if kind not in ATTACKS:
        raise InputError(f"attack type {kind!r} unknown; expected one of {list(ATTACKS)}")
    settings = {**COMMON_DEFAULTS, **DEFAULTS[kind], **spec}
    missing = [k for k, v in settings.items() if isinstance(v, str) and v == REQUIRED]
    if missing:
        raise InputError(f"attack of type {kind!r} needs {missing}; got keys {sorted(spec)}")
    for key in ("eps", "step_size"):
        if key in settings:
            _number(settings, key)
    if kind == "pgd":
        _number(settings, "steps")
        if not float(settings["steps"]).is_integer():
            raise InputError(f"attack 'steps' must be an integer, got {settings['steps']!r}")
        _number(settings, "restarts", integer=True)
    for key in ("n_points", "hygiene_points"):
        _number(settings, key, integer=True, optional=True)
    _number(settings, "hygiene_tol")
    _number(settings, "noise_draws", integer=True)
    if "norm" in settings and settings["norm"] not in AUTOATTACK_NORMS:
        raise InputError(
            f"attack norm {settings['norm']!r} unknown; expected one of {list(AUTOATTACK_NORMS)}"
        )
    for key in ("hygiene", "random_start"):
        if key in settings and not isinstance(settings[key], bool):
            raise InputError(f"attack {key!r} must be true or false, got {settings[key]!r}")
    if kind == "autoattack":
        autoattack_suite(settings["version"], settings["attacks"])
        seed = settings["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"attack 'seed' must be an integer or null, got {seed!r}")
    return settings


def craft(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: dict[str, Any],
    generator: torch.Generator | None,
    *,
    seed: int = 0,
    log: list[dict[str, Any]] | None = None,
) -> torch.Tensor:
    """Adversarial inputs for one batch under a named attack spec (AutoAttack's log → `log`)."""
    settings = resolve_attack(spec)
    kind = settings["type"]
    if kind == "none":
        return x
    if kind == "fgsm":
        return fgsm(model, x, y, eps=settings["eps"])
    if kind == "pgd":
        return pgd(
            model,
            x,
            y,
            eps=settings["eps"],
            steps=int(settings["steps"]),
            step_size=settings["step_size"],
            norm=settings["norm"],
            random_start=settings["random_start"],
            restarts=int(settings["restarts"]),
            generator=generator,
        )
    return autoattack(
        model,
        x,
        y,
        eps=settings["eps"],
        norm=settings["norm"],
        version=settings["version"],
        attacks=settings["attacks"],
        seed=seed if settings["seed"] is None else int(settings["seed"]),
        log=log,
    )


@contextlib.contextmanager
def _count_forwards(model: nn.Module) -> Iterator[list[int]]:
    """Count the samples passed through the model's forward (counted, not estimated)."""
    count = [0]

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        """Add the batch size of this call."""
        if args and isinstance(args[0], torch.Tensor):
            count[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def _batches(loader: Loader, limit: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The loader's batches in order, cut after the first `limit` samples."""
    seen = 0
    for index, x, y in loader.epoch(shuffle=False):
        if seen >= limit:
            break
        keep = min(len(index), limit - seen)
        seen += keep
        yield index[:keep], x[:keep], y[:keep]


def batch_seed(seed: int, first: int) -> int:
    """The seed of one batch's random draws: a 62-bit hash of (seed, its first sample index)."""
    text = f"{int(seed)}:{int(first)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2


RUN_KEYS = ("index", "label", "clean_pred", "adv_pred", "size", "outside")


def _run(
    model: nn.Module,
    loader: Loader,
    limit: int,
    spec: dict[str, Any],
    seed: int,
    log: list[dict[str, Any]] | None = None,
    noise_draws: int | None = None,
    world: World | None = None,
) -> dict[str, np.ndarray]:
    """Clean and adversarial predictions of the first `limit` samples (noise_draws: noise).

    Each batch draws its random starts (and noise) from a device generator of its own, seeded
    by (seed, the batch's first sample index): the draws do not depend on which process attacks
    the batch. With W > 1 ranks, rank r attacks the loader's whole batches r, r + W, ... of the
    first `limit` samples (batch_shard), and every rank returns all of them in the loader's
    order (all_gather_in_order), as one process does; AutoAttack's records reach `log` in
    batch order.
    """
    device = next(model.parameters()).device
    norm = spec.get("norm", "linf")
    if is_distributed(world):
        positions = batch_shard(limit, loader.batch_size, world)
        own = loader.subset(np.asarray(loader.indices, dtype=np.int64)[positions])
        batches = own.epoch(shuffle=False)
    else:
        batches = _batches(loader, limit)
    parts: list[dict[str, Any]] = []
    with eval_mode(model):
        for index, x, y in batches:
            generator = device_generator(batch_seed(seed, int(index[0])), device)
            batch_log: list[dict[str, Any]] | None = None if log is None else []
            with torch.no_grad():
                clean_pred = model(x).argmax(1)
            if noise_draws is None:
                x_adv = craft(model, x, y, spec, generator, seed=seed, log=batch_log)
            else:
                x_adv = random_noise(
                    model, x, y, eps=spec["eps"], norm=norm, draws=noise_draws, generator=generator
                )
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(1)
                size = perturbation_size(x_adv, x, "linf" if spec["type"] == "fgsm" else norm)
                outside = ((x_adv < 0) | (x_adv > 1)).flatten(1).any(1)
            part: dict[str, Any] = {
                key: value.cpu().numpy().astype(np.int64)
                for key, value in (
                    ("index", index),
                    ("label", y),
                    ("clean_pred", clean_pred),
                    ("adv_pred", adv_pred),
                    ("outside", outside),
                )
            }
            part["size"] = size.cpu().numpy().astype(np.float64)
            part["log"] = batch_log
            parts.append(part)
    parts = all_gather_in_order(parts, world)
    if log is not None:
        for part in parts:
            log.extend(part["log"])
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in RUN_KEYS}


def _robust(run: dict[str, np.ndarray]) -> np.ndarray:
    """Robust = correct when clean and when attacked."""
    return (run["clean_pred"] == run["label"]) & (run["adv_pred"] == run["label"])


def evaluate(
    model: nn.Module,
    loader: Loader,
    spec: dict[str, Any],
    *,
    seed: int = 0,
    world: World | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Clean and adversarial correctness of the (first n_points) test samples; summary and frame.

    The summary has n (samples attacked), clean_acc, robust_acc, the resolved attack settings,
    seed, seconds, device, world_size, the costs (counted model forwards), and — unless the
    spec sets ``hygiene: false`` — the hygiene checks (see `hygiene`) and
    ``possible_gradient_masking``.

    With a `world` of W > 1 ranks (every rank calls this alike, `loader` the whole test split):
    each run (the evaluation and every hygiene run) is sharded by whole batches and gathered
    to every rank (see `_run`), so every rank computes the same frame, summary and checks as
    one process; counted forwards are summed over ranks, seconds are this rank's.
    """
    settings = resolve_attack(spec)
    if settings["type"] == "autoattack" and settings["seed"] is None:
        settings["seed"] = seed
    device = next(model.parameters()).device
    limit = len(loader) if settings["n_points"] is None else min(settings["n_points"], len(loader))
    log: list[dict[str, Any]] = []
    started = time.perf_counter()
    with _count_forwards(model) as forwards:
        run = _run(model, loader, limit, settings, seed, log, world=world)
    attack_forwards = sum_over_ranks(forwards[0], world)
    attack_seconds = time.perf_counter() - started
    frame = pd.DataFrame({k: run[k] for k in ("index", "label", "clean_pred", "adv_pred")})
    frame["clean_correct"] = frame["clean_pred"] == frame["label"]
    # A sample counts as robust only if it is also classified correctly when clean.
    frame["robust_correct"] = _robust(run)
    eps = float(settings.get("eps", 0.0))
    summary: dict[str, Any] = {
        "n": len(frame),
        "n_test": len(loader),
        "clean_acc": float(frame["clean_correct"].mean()) if len(frame) else float("nan"),
        "robust_acc": float(frame["robust_correct"].mean()) if len(frame) else float("nan"),
        "attack": settings,
        "seed": seed,
        "device": str(device),
        "world_size": 1 if world is None else world.world_size,
        "max_perturbation": float(run["size"].max()) if len(frame) else 0.0,
    }
    if settings["type"] == "autoattack":
        summary["autoattack"] = _autoattack_report(settings, log, frame)
    checks: dict[str, dict[str, Any]] = {}
    hygiene_cost: dict[str, Any] = {"n": 0, "runs": [], "seconds": 0.0, "sample_forwards": 0}
    if settings["hygiene"] and settings["type"] != "none" and len(frame):
        checks, hygiene_cost = hygiene(model, loader, settings, run, seed=seed, world=world)
        checks["within_budget"] = {
            "passed": bool(run["size"].max() <= eps + BUDGET_SLACK and not run["outside"].any()),
            "detail": {
                "max_perturbation": float(run["size"].max()),
                "eps": eps,
                "slack": BUDGET_SLACK,
                "outside_box": int(run["outside"].sum()),
            },
        }
        if settings["type"] == "autoattack":
            warnings = summary["autoattack"]["warnings"]
            checks["autoattack_self_checks"] = {
                "passed": not warnings,
                "detail": {"warnings": sum(w["count"] for w in warnings)},
            }
    summary["hygiene"] = checks
    summary["possible_gradient_masking"] = (
        any(not c["passed"] for c in checks.values()) if checks else None
    )
    failed = [name for name, check in checks.items() if not check["passed"]]
    if failed and is_main(world):
        print(
            f"hygiene: possible gradient masking or a broken evaluation; failed: {failed}",
            file=sys.stderr,
        )
    summary["cost"] = {
        "attack": {"seconds": round(attack_seconds, 3), "sample_forwards": attack_forwards},
        "hygiene": hygiene_cost,
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary, frame


_PERTURBED = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed$")


def _autoattack_report(
    settings: dict[str, Any], log: list[dict[str, Any]], frame: pd.DataFrame
) -> dict[str, Any]:
    """Which AutoAttack attack broke how many points, and pyautoattack's warnings (counted)."""
    import pyautoattack

    suite = list(autoattack_suite(settings["version"], settings["attacks"]))
    broken = dict.fromkeys(suite, 0)
    for record in log:
        match = _PERTURBED.match(record["message"])
        if match and match.group(1) in broken:
            broken[match.group(1)] += int(match.group(2))
    n = max(len(frame), 1)
    left = int(frame["clean_correct"].sum())
    after = {}
    for name in suite:
        left -= broken[name]
        after[name] = left / n
    warnings = Counter(r["message"] for r in log if r["level"] in ("WARNING", "ERROR"))
    return {
        "package": f"pyautoattack {pyautoattack.__version__}",
        "version": settings["version"],
        "norm": AUTOATTACK_NORMS[settings["norm"]],
        "attacks": suite,
        "broken_by": broken,
        "robust_acc_after": after,
        "warnings": [{"message": m, "count": c} for m, c in warnings.items()],
    }


def _reference(settings: dict[str, Any]) -> dict[str, Any]:
    """The gradient attack whose behaviour the checks test: the attack itself, or PGD-20."""
    if settings["type"] != "autoattack":
        return settings
    eps = settings["eps"]
    return resolve_attack(
        {
            "type": "pgd",
            "norm": settings["norm"],
            "eps": eps,
            "steps": REFERENCE_PGD_STEPS,
            "step_size": 2.5 * eps / REFERENCE_PGD_STEPS,
            "random_start": True,
        }
    )


def hygiene(
    model: nn.Module,
    loader: Loader,
    settings: dict[str, Any],
    run: dict[str, np.ndarray],
    *,
    seed: int = 0,
    world: World | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Sanity checks of a robust evaluation against gradient masking and evaluation bugs.

    They run on the first h = min(hygiene_points, n) evaluated points, in the same batches, with
    the same seed (so PGD variants share the evaluation's random starts). The gradient attack
    checked, A, is the evaluated attack (pgd, fgsm) or, for autoattack, a reference PGD-20
    (random start, step 2.5·ε/20, same norm). Each check is {"passed", "detail"}; the
    inequalities allow a slack tol = max(hygiene_tol, 1/h) in accuracy (default 0.5 %, at least
    one sample), because PGD returns its last iterate and random starts add noise:

    - eps_zero_is_clean: A at ε = 0 changes no prediction (exact; catches randomized models).
    - monotone_in_eps: acc(A at ε/2, step size halved) ≥ acc(A at ε) − tol.
    - monotone_in_steps (A = pgd): acc(A with 2× steps, same step size) ≤ acc(A) + tol.
    - pgd_le_fgsm (A = pgd, ℓ∞): acc(A) ≤ acc(FGSM at ε) + tol.
    - attack_beats_noise: acc(A) ≤ acc(random noise on the ε-sphere, `noise_draws` draws,
      robust only if it survives all) + tol; a gradient attack weaker than random noise means
      its gradients are useless (zero or shattered).
    - autoattack_le_pgd (autoattack): acc(AutoAttack) ≤ acc(PGD-20) + tol.
    (evaluate adds within_budget, and autoattack_self_checks = no warning from pyautoattack's
    own checks, e.g. "Square Attack has decreased the robust accuracy"; both cost nothing.)

    Cost, in model passes per checked point, with S steps and R restarts of A: ε = 0 — 2
    forwards (the attack short-circuits); ε/2 — ≤ R·S forward+backward; 2× steps — ≤ 2·R·S;
    FGSM — 1; noise — ≤ noise_draws forwards; plus one clean forward per run. For pgd that is
    about 3× the evaluation on h points; for autoattack the PGD-20 runs (≈ 80 forward+backward)
    are small next to AutoAttack. The counted cost is returned with the checks (forwards
    summed over the ranks of `world`, whose every rank runs the checks alike: see evaluate).
    """
    started = time.perf_counter()
    h = len(run["label"])
    if settings["hygiene_points"] is not None:
        h = min(h, int(settings["hygiene_points"]))
    tol = max(float(settings["hygiene_tol"]), 1.0 / h)
    clean_pred = run["clean_pred"][:h]
    clean_acc = float((clean_pred == run["label"][:h]).mean())
    ref = _reference(settings)
    runs: list[str] = []
    checks: dict[str, dict[str, Any]] = {}

    def acc_of(name: str, spec: dict[str, Any], noise: bool = False) -> tuple[float, np.ndarray]:
        """Robust accuracy of one extra run on the h points (and its adversarial predictions)."""
        runs.append(name)
        draws = settings["noise_draws"] if noise else None
        extra = _run(model, loader, h, spec, seed, noise_draws=draws, world=world)
        return float(_robust(extra).mean()), extra["adv_pred"]

    def inequality(name: str, low: float, high: float, labels: tuple[str, str]) -> None:
        """Record the check `low ≤ high + tol`."""
        checks[name] = {
            "passed": bool(low <= high + tol),
            "detail": {labels[0]: low, labels[1]: high, "tolerance": tol, "n": h},
        }

    with _count_forwards(model) as forwards:
        if ref is settings:
            ref_acc = float(_robust(run)[:h].mean())
        else:
            ref_acc, _ = acc_of("pgd-20", ref)
        zero = {**ref, "eps": 0.0, **({"step_size": 0.0} if "step_size" in ref else {})}
        zero_acc, zero_pred = acc_of("eps=0", zero)
        checks["eps_zero_is_clean"] = {
            "passed": bool((zero_pred == clean_pred).all() and zero_acc == clean_acc),
            "detail": {
                "clean_acc": clean_acc,
                "robust_acc_eps0": zero_acc,
                "changed_predictions": int((zero_pred != clean_pred).sum()),
                "n": h,
            },
        }
        half = {**ref, "eps": ref["eps"] / 2}
        if "step_size" in ref:
            half["step_size"] = ref["step_size"] / 2
        half_acc, _ = acc_of("eps/2", half)
        inequality("monotone_in_eps", ref_acc, half_acc, ("robust_acc_eps", "robust_acc_half_eps"))
        if ref["type"] == "pgd" and ref["steps"] >= 1:
            double_acc, _ = acc_of("2x steps", {**ref, "steps": 2 * int(ref["steps"])})
            inequality(
                "monotone_in_steps", double_acc, ref_acc, ("robust_acc_2x_steps", "robust_acc")
            )
        if ref["type"] == "pgd" and ref["norm"] == "linf":
            fgsm_acc, _ = acc_of("fgsm", resolve_attack({"type": "fgsm", "eps": ref["eps"]}))
            inequality("pgd_le_fgsm", ref_acc, fgsm_acc, ("robust_acc_pgd", "robust_acc_fgsm"))
        noise_acc, _ = acc_of("noise", {**ref}, noise=True)
        inequality("attack_beats_noise", ref_acc, noise_acc, ("robust_acc", "robust_acc_noise"))
        if settings["type"] == "autoattack":
            aa_acc = float(_robust(run)[:h].mean())
            inequality("autoattack_le_pgd", aa_acc, ref_acc, ("robust_acc_aa", "robust_acc_pgd20"))
    cost = {
        "n": h,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 3),
        "sample_forwards": sum_over_ranks(forwards[0], world),
    }
    return checks, cost
