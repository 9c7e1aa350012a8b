"""PGD and evaluation: budgets kept, ε = 0 is clean, larger ε never helps, modes restored."""

from __future__ import annotations

import pytest
import torch

from robustcore import data
from robustcore.attacks import autoattack, fgsm, random_noise
from robustcore.evaluate import evaluate
from robustcore.io import InputError
from robustcore.perturb import perturbation_size, pgd
from robustcore.runtime import device_generator


def _batch(test: data.Split, device: torch.device, n: int = 128):
    """The first n test images in [0, 1] and their labels, on the test device."""
    x = torch.tensor(test.images[:n], dtype=torch.float32, device=device) / 255
    return x, torch.tensor(test.labels[:n], device=device)


def _pgd_spec(eps: float, steps: int = 10, **kw) -> dict:
    return {
        "type": "pgd",
        "norm": "linf",
        "eps": eps,
        "steps": steps,
        "step_size": eps / 4,
        "random_start": True,
        "hygiene": False,  # the hygiene checks have their own tests (test_evaluate.py)
        **kw,
    }


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_budget_and_box(trained_digits, device, norm):
    model, _, test = trained_digits
    x, y = _batch(test, device)
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
    assert x_adv.device == x.device
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).sum() > (model(x).argmax(1) != y).sum()


def test_pgd_restores_mode_and_leaves_no_weight_grads(trained_digits, device):
    model, _, test = trained_digits
    x, y = _batch(test, device, 16)
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        pgd(model, x, y, eps=0.1, steps=2, step_size=0.05)
        assert model.training
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_eps_zero_gives_clean_accuracy(trained_digits, device):
    model, _, test = trained_digits
    loader = data.Loader(test, 200, device)
    summary, frame = evaluate(model, loader, _pgd_spec(0.0, step_size=0.0))
    assert summary["robust_acc"] == summary["clean_acc"] > 0.8
    assert summary["device"] == str(next(model.parameters()).device)
    assert len(frame) == len(test) == summary["n"]
    assert list(frame["index"]) == list(range(len(test)))


def test_larger_eps_never_raises_robust_accuracy(trained_digits, device):
    model, _, test = trained_digits
    loader = data.Loader(test, 200, device)
    accs = [
        evaluate(model, loader, _pgd_spec(eps, steps=20))[0]["robust_acc"]
        for eps in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
    ]
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0] - 0.3, accs


def test_robust_at_most_clean_and_pgd_at_most_fgsm(trained_digits, device):
    model, _, test = trained_digits
    loader = data.Loader(test, 200, device)
    pgd_summary, frame = evaluate(model, loader, _pgd_spec(0.1, steps=20))
    fgsm_summary, _ = evaluate(model, loader, {"type": "fgsm", "eps": 0.1, "hygiene": False})
    assert pgd_summary["robust_acc"] <= pgd_summary["clean_acc"]
    assert not (frame["robust_correct"] & ~frame["clean_correct"]).any()
    assert pgd_summary["robust_acc"] <= fgsm_summary["robust_acc"]


def test_fgsm_is_one_signed_step(trained_digits, device):
    model, _, test = trained_digits
    x, y = _batch(test, device, 8)
    x = x.clamp(0.2, 0.8)  # keep away from the box so no coordinate is clipped
    x_adv = fgsm(model, x, y, eps=0.05)
    assert x_adv.device == x.device
    step = (x_adv - x).abs()
    at_eps = torch.isclose(step, torch.full_like(step, 0.05), atol=1e-6)
    assert (at_eps | (step == 0)).all(), "every coordinate moves by exactly ε or not at all"
    assert at_eps.float().mean() > 0.5


def test_bad_attack_settings_are_named(trained_digits, device):
    model, _, test = trained_digits
    x, y = _batch(test, device, 4)
    with pytest.raises(InputError, match="norm"):
        pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, norm="l3")
    with pytest.raises(InputError, match="attack type"):
        evaluate(model, data.Loader(test, 64, device), {"type": "cw"})


def _predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_agrees_with_torchattacks(trained_digits, device, norm):
    """Independent PGD (torchattacks 3.5) from the clean point: same points, same predictions.

    torchattacks averages the loss over the batch where we sum it; that rescales every gradient
    by 1/n, which neither the sign step (ℓ∞) nor the normalized step (ℓ2) sees. What remains are
    float rounding differences (its projection is written differently), so the adversarial
    points agree to ~1e-3 and per-sample predictions agree on ≥ 99 % (measured: 100 %).
    """
    torchattacks = pytest.importorskip("torchattacks")
    model, _, test = trained_digits
    x, y = _batch(test, device, 256)
    eps = 0.1 if norm == "linf" else 1.0
    ours = pgd(model, x, y, eps=eps, steps=10, step_size=eps / 4, norm=norm, random_start=False)
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    theirs = cls(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
    ours_pred, theirs_pred = _predictions(model, ours), _predictions(model, theirs)
    assert (ours_pred == theirs_pred).float().mean() >= 0.99
    assert abs(int((ours_pred == y).sum()) - int((theirs_pred == y).sum())) <= 1
    close = perturbation_size(ours, theirs, "linf") < 1e-3
    assert close.float().mean() >= 0.99
    # not vacuous: the attack must do something
    assert (ours_pred == y).float().mean() < (_predictions(model, x) == y).float().mean() - 0.3


def test_restarts_only_ever_remove_robust_samples(trained_digits, device):
    model, _, test = trained_digits
    x, y = _batch(test, device, 256)

    def robust(restarts: int) -> torch.Tensor:
        x_adv = pgd(
            model,
            x,
            y,
            eps=0.1,
            steps=2,
            step_size=0.03,
            restarts=restarts,
            generator=device_generator(0, x.device),
        )
        assert perturbation_size(x_adv, x, "linf").max() <= 0.1 + 1e-6
        return _predictions(model, x_adv) == y

    once, thrice = robust(1), robust(3)
    # same seed, same first start: a sample robust under 3 restarts survived the first one
    assert not (thrice & ~once).any()
    assert thrice.sum() < once.sum() - 5, (int(once.sum()), int(thrice.sum()))
    with pytest.raises(InputError, match="restarts"):
        pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, restarts=0)


def test_random_noise_lies_on_the_sphere_and_is_weaker_than_pgd(trained_digits, device):
    model, _, test = trained_digits
    x, y = _batch(test, device, 256)
    inner = x.clamp(0.2, 0.8)  # away from the box: every coordinate moves by exactly ±ε
    generator = device_generator(0, x.device)
    noisy = random_noise(model, inner, y, eps=0.1, norm="linf", draws=5, generator=generator)
    assert noisy.device == x.device
    assert torch.allclose((noisy - inner).abs(), torch.full_like(x, 0.1), atol=1e-6)
    noisy = random_noise(model, inner, y, eps=0.3, norm="l2", draws=5, generator=generator)
    sizes = perturbation_size(noisy, inner, "l2")
    assert torch.allclose(sizes, torch.full((len(x),), 0.3, device=device))
    noise_acc = (_predictions(model, random_noise(model, x, y, eps=0.1)) == y).float().mean()
    strong = pgd(model, x, y, eps=0.1, steps=10, step_size=0.025, generator=generator)
    assert (_predictions(model, strong) == y).float().mean() < noise_acc - 0.3


def test_autoattack_keeps_budget_mode_rng_and_stdout(trained_digits, device, capsys):
    """pyautoattack reseeds the global RNG and logs a lot; none of it may leak out."""
    model, _, test = trained_digits
    x, y = _batch(test, device, 16)
    model[1][1].train()  # a mixed mode, to see every module's mode come back
    modes_seen: list[bool] = []
    hook = model[1][1].register_forward_pre_hook(lambda m, _: modes_seen.append(m.training))
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    log: list[dict] = []
    try:
        x_adv = autoattack(
            model, x, y, eps=0.1, version="custom", attacks=["apgd-ce"], seed=1, log=log
        )
        assert model[1][1].training and not model.training and not model[1][0].training
    finally:
        hook.remove()
        model.eval()
    assert len(modes_seen) > 100 and not any(modes_seen), "attacked in eval mode"
    assert torch.equal(torch.get_rng_state(), state)
    if cuda_state is not None:  # pyautoattack reseeds the CUDA generator too
        assert torch.equal(torch.cuda.get_rng_state(device), cuda_state)
    assert x_adv.device == x.device
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert perturbation_size(x_adv, x, "linf").max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_predictions(model, x_adv) != y).sum() > (_predictions(model, x) != y).sum()
    out, err = capsys.readouterr()
    assert out == ""
    assert "robust accuracy after APGD-CE" in err
    assert any("apgd-ce" in r["message"] for r in log)
    with pytest.raises(InputError, match="custom"):
        autoattack(model, x, y, eps=0.1, version="custom")
    with pytest.raises(InputError, match="version"):
        autoattack(model, x, y, eps=0.1, version="fast")
