"""Evaluation: AutoAttack through evaluate, n_points, the hygiene checks and their failures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import robustcore.evaluate as ev
from robustcore import cli, data, models
from robustcore.evaluate import evaluate
from robustcore.io import InputError
from robustcore.runtime import software_versions

PGD = {"type": "pgd", "norm": "linf", "eps": 0.1, "steps": 10, "step_size": 0.025}
AA_FAST = {"type": "autoattack", "eps": 0.1, "version": "custom", "attacks": ["apgd-ce"]}


class Quantized(nn.Module):
    """Rounds its input to 5 grey levels first: zero input gradient, a classic masked model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class Noisy(nn.Module):
    """Adds fresh Gaussian noise to every input: a randomized 'defense'."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.3 * torch.randn_like(x))


def _failed(summary: dict) -> set[str]:
    return {name for name, check in summary["hygiene"].items() if not check["passed"]}


def test_all_checks_pass_on_the_trained_model(trained_digits, device):
    model, _, test = trained_digits
    summary, frame = evaluate(model, data.Loader(test, 200, device), PGD)
    checks = summary["hygiene"]
    assert set(checks) == {
        "eps_zero_is_clean",
        "monotone_in_eps",
        "monotone_in_steps",
        "pgd_le_fgsm",
        "attack_beats_noise",
        "within_budget",
    }
    assert _failed(summary) == set() and summary["possible_gradient_masking"] is False
    assert all(isinstance(c["detail"], dict) and c["detail"] for c in checks.values())
    # the comparisons are real, not vacuous: the attack bites and the references differ
    detail = checks["pgd_le_fgsm"]["detail"]
    assert detail["robust_acc_pgd"] == summary["robust_acc"] < detail["robust_acc_fgsm"]
    assert checks["monotone_in_eps"]["detail"]["robust_acc_half_eps"] > summary["robust_acc"]
    cost = summary["cost"]["hygiene"]
    assert cost["n"] == len(frame) and cost["sample_forwards"] > 0
    assert cost["runs"] == ["eps=0", "eps/2", "2x steps", "fgsm", "noise"]
    json.dumps(summary)  # the CLI writes it as json


def test_hygiene_can_be_switched_off_and_limited(trained_digits, device):
    model, _, test = trained_digits
    loader = data.Loader(test, 64, device)
    off, frame = evaluate(model, loader, {**PGD, "hygiene": False, "n_points": 50})
    assert off["hygiene"] == {} and off["possible_gradient_masking"] is None
    assert off["n"] == len(frame) == 50 and off["cost"]["hygiene"]["sample_forwards"] == 0
    again, frame_again = evaluate(model, loader, {**PGD, "hygiene": False, "n_points": 50})
    assert frame.equals(frame_again) and again["robust_acc"] == off["robust_acc"]  # seeded
    few, frame = evaluate(model, loader, {**PGD, "hygiene_points": 70})
    assert len(frame) == few["n"] == len(test)
    assert few["cost"]["hygiene"]["n"] == 70
    assert few["hygiene"]["monotone_in_eps"]["detail"]["n"] == 70


def test_quantized_model_is_flagged(trained_digits, device):
    """Zero gradients: PGD only moves by its random start, and random corners beat it."""
    model, _, test = trained_digits
    summary, _ = evaluate(Quantized(model), data.Loader(test, 200, device), PGD)
    assert "attack_beats_noise" in _failed(summary)
    assert summary["possible_gradient_masking"] is True
    detail = summary["hygiene"]["attack_beats_noise"]["detail"]
    assert detail["robust_acc"] > detail["robust_acc_noise"] + detail["tolerance"]


def test_pgd_weaker_than_fgsm_is_flagged(trained_digits, device):
    """A mis-set PGD (step size far too small, no random start) loses to one FGSM step."""
    model, _, test = trained_digits
    weak = {**PGD, "steps": 2, "step_size": 0.002, "random_start": False}
    summary, _ = evaluate(model, data.Loader(test, 200, device), weak)
    assert {"pgd_le_fgsm", "attack_beats_noise"} <= _failed(summary)
    assert summary["possible_gradient_masking"] is True


def _rigged(real, fake_when):
    """craft replaced by one that returns a wrong point whenever fake_when(spec) holds."""

    def craft(model, x, y, spec, generator, **kw):
        wrong = fake_when(spec)
        if wrong is None:
            return real(model, x, y, spec, generator, **kw)
        return wrong(x)

    return craft


@pytest.mark.parametrize(
    ("check", "fake_when"),
    [
        # perturbs although ε = 0
        ("eps_zero_is_clean", lambda s: (lambda x: 1 - x) if s.get("eps") == 0 else None),
        # does nothing at the full budget (but works at ε/2)
        (
            "monotone_in_eps",
            lambda s: (lambda x: x) if s["type"] == "pgd" and s["eps"] == 0.1 else None,
        ),
        # more steps make it weaker
        ("monotone_in_steps", lambda s: (lambda x: x) if s.get("steps") == 20 else None),
        # leaves the ε-ball
        (
            "within_budget",
            lambda s: (
                (lambda x: (x + 0.3).clamp(0, 1))
                if s["type"] == "pgd" and s["eps"] == 0.1 and s["steps"] == 10
                else None
            ),
        ),
    ],
)
def test_each_check_catches_its_fault(trained_digits, device, monkeypatch, check, fake_when):
    model, _, test = trained_digits
    monkeypatch.setattr(ev, "craft", _rigged(ev.craft, fake_when))
    summary, _ = evaluate(model, data.Loader(test, 200, device), PGD)
    assert check in _failed(summary)
    assert summary["possible_gradient_masking"] is True


def test_a_misclassified_sample_is_never_robust(trained_digits, device, monkeypatch):
    """An 'attack' that replaces every input by a correctly classified image of its class."""
    model, _, test = trained_digits
    x = torch.tensor(test.images, dtype=torch.float32, device=device) / 255
    y = torch.tensor(test.labels, device=device)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    prototype = torch.stack([x[right & (y == c)][0] for c in range(10)])
    monkeypatch.setattr(ev, "craft", lambda model, x, y, spec, generator, **kw: prototype[y])
    summary, frame = evaluate(model, data.Loader(test, 200, device), {**PGD, "hygiene": False})
    assert (frame["adv_pred"] == frame["label"]).all() and not frame["clean_correct"].all()
    assert frame["robust_correct"].equals(frame["clean_correct"])
    assert summary["robust_acc"] == summary["clean_acc"] < 1


def test_autoattack_through_evaluate(trained_digits, device):
    model, _, test = trained_digits
    loader = data.Loader(test, 20, device)  # two batches and a cut: the first 32 points
    model[1][4].train()
    try:
        summary, frame = evaluate(model, loader, {**AA_FAST, "n_points": 32}, seed=3)
        assert model[1][4].training and not model[1][1].training
    finally:
        model.eval()
    assert summary["n"] == len(frame) == 32 and summary["n_test"] == len(test)
    assert list(frame["index"]) == list(range(32))
    assert summary["attack"]["seed"] == 3 and summary["attack"]["norm"] == "linf"
    pgd20 = summary["hygiene"]["autoattack_le_pgd"]["detail"]["robust_acc_pgd20"]
    tol = summary["hygiene"]["autoattack_le_pgd"]["detail"]["tolerance"]
    assert summary["robust_acc"] <= pgd20 + tol
    assert summary["robust_acc"] < summary["clean_acc"] - 0.3
    assert _failed(summary) == set() and summary["possible_gradient_masking"] is False
    report = summary["autoattack"]
    assert report["package"].startswith("pyautoattack") and report["attacks"] == ["apgd-ce"]
    assert report["robust_acc_after"]["apgd-ce"] == summary["robust_acc"]
    assert summary["max_perturbation"] <= 0.1 + 1e-6
    json.dumps(summary)


def test_autoattack_that_does_nothing_is_flagged(trained_digits, device, monkeypatch):
    model, _, test = trained_digits
    monkeypatch.setattr(ev, "autoattack", lambda model, x, y, **kw: x.clone())
    summary, _ = evaluate(model, data.Loader(test, 200, device), {"type": "autoattack", "eps": 0.1})
    assert summary["n"] == min(500, len(test))  # default n_points: 500
    assert _failed(summary) == {"autoattack_le_pgd"}
    assert summary["possible_gradient_masking"] is True


def test_randomized_model_is_flagged_by_autoattack_and_eps_zero(trained_digits, device):
    model, _, test = trained_digits
    torch.manual_seed(0)
    summary, _ = evaluate(Noisy(model), data.Loader(test, 64, device), {**AA_FAST, "n_points": 64})
    assert {"autoattack_self_checks", "eps_zero_is_clean"} <= _failed(summary)
    assert any("randomized" in w["message"] for w in summary["autoattack"]["warnings"])
    assert summary["possible_gradient_masking"] is True


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"type": "pgd", "eps": 0.1, "steps": 10}, "step_size"),
        ({"type": "fgsm"}, "eps"),
        ({"type": "pgd", "eps": -0.1, "steps": 1, "step_size": 0.1}, "eps"),
        ({**PGD, "restarts": 0}, "restarts"),
        ({**PGD, "norm": "l1"}, "norm"),
        ({**PGD, "n_points": 0}, "n_points"),
        ({**PGD, "hygiene": "yes"}, "hygiene"),
        ({**PGD, "random_start": "yes"}, "random_start"),
        ({"type": "autoattack", "eps": 0.1, "version": "custom"}, "attacks"),
        ({"type": "autoattack", "eps": 0.1, "attacks": ["square"]}, "custom"),
        ({"type": "autoattack", "eps": 0.1, "version": "fast"}, "version"),
        ({"type": "deepfool"}, "attack type"),
    ],
)
def test_bad_specs_are_named(trained_digits, device, spec, match):
    model, _, test = trained_digits
    with pytest.raises(InputError, match=match):
        evaluate(model, data.Loader(test, 64, device), spec)


def test_evaluation_json_records_the_software_versions(
    trained_digits, device, digits_dir, tmp_path
):
    model, spec, _ = trained_digits
    models.save(model, spec, tmp_path / "run")
    out = tmp_path / "fgsm.json"
    attack = json.dumps({"type": "fgsm", "eps": 0.05, "hygiene": False})
    argv = ["evaluate", "--model", str(tmp_path / "run"), "--data", digits_dir]
    argv += ["--device", str(device)]
    assert cli.main([*argv, "--attack", attack, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["device"] == str(next(model.parameters()).device)
    assert written["versions"] == software_versions()
    assert written["versions"]["torch"] == torch.__version__
    assert set(written["versions"]) == {"python", "torch", "cuda", "cudnn", "robustcore", "numpy"}
