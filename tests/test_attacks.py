"""PGD and evaluation: budgets kept, ε = 0 is clean, larger ε never helps, modes restored."""

from __future__ import annotations

import pytest
import torch

from robustcore import data
from robustcore.attacks import fgsm, pgd
from robustcore.evaluate import evaluate
from robustcore.io import InputError
from robustcore.runtime import device_generator


def _batch(test: data.Split, n: int = 128):
    x = torch.tensor(test.images[:n], dtype=torch.float32) / 255
    return x, torch.tensor(test.labels[:n])


def _pgd_spec(eps: float, steps: int = 10, **kw) -> dict:
    return {
        "type": "pgd",
        "norm": "linf",
        "eps": eps,
        "steps": steps,
        "step_size": eps / 4,
        "random_start": True,
        **kw,
    }


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_budget_and_box(trained_digits, norm):
    model, _, test = trained_digits
    x, y = _batch(test)
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        steps=5,
        step_size=eps / 3,
        norm=norm,
        generator=device_generator(0, x.device),
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).sum() > (model(x).argmax(1) != y).sum()


def test_pgd_restores_mode_and_leaves_no_weight_grads(trained_digits):
    model, _, test = trained_digits
    x, y = _batch(test, 16)
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        pgd(model, x, y, eps=0.1, steps=2, step_size=0.05)
        assert model.training
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_eps_zero_gives_clean_accuracy(trained_digits):
    model, _, test = trained_digits
    summary, frame = evaluate(model, data.Loader(test, 200), _pgd_spec(0.0, step_size=0.0))
    assert summary["robust_acc"] == summary["clean_acc"] > 0.8
    assert len(frame) == len(test) == summary["n"]
    assert list(frame["index"]) == list(range(len(test)))


def test_larger_eps_never_raises_robust_accuracy(trained_digits):
    model, _, test = trained_digits
    loader = data.Loader(test, 200)
    accs = [
        evaluate(model, loader, _pgd_spec(eps, steps=20))[0]["robust_acc"]
        for eps in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
    ]
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0] - 0.3, accs


def test_robust_at_most_clean_and_pgd_at_most_fgsm(trained_digits):
    model, _, test = trained_digits
    loader = data.Loader(test, 200)
    pgd_summary, frame = evaluate(model, loader, _pgd_spec(0.1, steps=20))
    fgsm_summary, _ = evaluate(model, loader, {"type": "fgsm", "eps": 0.1})
    assert pgd_summary["robust_acc"] <= pgd_summary["clean_acc"]
    assert not (frame["robust_correct"] & ~frame["clean_correct"]).any()
    assert pgd_summary["robust_acc"] <= fgsm_summary["robust_acc"]


def test_fgsm_is_one_signed_step(trained_digits):
    model, _, test = trained_digits
    x, y = _batch(test, 8)
    x = x.clamp(0.2, 0.8)  # keep away from the box so no coordinate is clipped
    x_adv = fgsm(model, x, y, eps=0.05)
    step = (x_adv - x).abs()
    at_eps = torch.isclose(step, torch.full_like(step, 0.05), atol=1e-6)
    assert (at_eps | (step == 0)).all(), "every coordinate moves by exactly ε or not at all"
    assert at_eps.float().mean() > 0.5


def test_bad_attack_settings_are_named(trained_digits):
    model, _, test = trained_digits
    x, y = _batch(test, 4)
    with pytest.raises(InputError, match="norm"):
        pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, norm="l3")
    with pytest.raises(InputError, match="attack type"):
        evaluate(model, data.Loader(test, 64), {"type": "cw"})
