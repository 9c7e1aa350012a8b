"""Training loop: augmentation equals per-sample crops, runs reproduce, divergence stops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_split, meta_for

from robustcore import data, models
from robustcore.io import DivergedError
from robustcore.runtime import seed_everything
from robustcore.train import augment, fit

TRAINING = {
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "augment": {"crop_padding": 2, "flip": True},
}


def test_augment_matches_per_sample_crop_and_flip(device):
    x = torch.rand(32, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    out = augment(x.to(device), 2, True, torch.Generator().manual_seed(3))
    assert out.device == x.to(device).device  # crops and flips are done on the batch's device
    out = out.cpu()
    # Replay the same random draws (the CPU generator, on any device) and build each by hand.
    g = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 5, (2, 32), generator=g)
    flips = torch.rand(32, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(32):
        dy, dx = offsets[0, i].item(), offsets[1, i].item()
        expected = padded[i, :, dy : dy + 6, dx : dx + 5]
        if flips[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected)
    assert flips.any() and (~flips).any()


def test_augment_leaves_vectors_alone(device):
    x = torch.rand(8, 2, device=device)
    assert augment(x, 4, True, torch.Generator().manual_seed(0)) is x


def _train(seed: int, split, device: torch.device, training=TRAINING):
    generator = seed_everything(seed)
    spec = models.model_spec("small_cnn", {"width": 8}, meta_for(split, 3))
    model = models.build(spec).to(device)
    loader = data.Loader(split, training["batch_size"], device)
    log, cost = fit(model, loader, training, generator=generator)
    return model, log, cost


def test_training_is_bitwise_reproducible_and_seed_dependent(device):
    split = make_split(64)
    first, log_a, cost = _train(0, split, device)
    second, log_b, _ = _train(0, split, device)
    other, _, _ = _train(1, split, device)
    assert all(v.device.type == device.type for v in first.parameters())  # stayed there
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert [r["train_loss"] for r in log_a] == [r["train_loss"] for r in log_b]
    assert cost.forward["update"] == cost.backward["update"] == 2 * 64
    assert [r["epoch"] for r in log_a] == [1, 2]


def test_cosine_schedule_decays_to_zero(device):
    _, log, _ = _train(0, make_split(32), device, {**TRAINING, "epochs": 4})
    lrs = [r["lr"] for r in log]
    assert lrs[0] == pytest.approx(0.05) and all(b < a for a, b in zip(lrs, lrs[1:], strict=False))


def test_diverged_run_stops_with_a_message(device):
    with pytest.raises(DivergedError, match="diverged at epoch [12]: mean loss (nan|inf)"):
        _train(0, make_split(32), device, {**TRAINING, "lr": 1e12, "momentum": 0.0})


def test_input_gradient_capture_refuses_a_regime_that_trains_on_other_inputs(device):
    """Only a regime whose loss is the clean batch's yields each sample's own input gradient."""
    from robustcore.io import InputError

    split = make_split(16)
    spec = models.model_spec("mlp", {"hidden": [8]}, meta_for(split, 3))
    model = models.build(spec).to(device)
    spec = {**TRAINING, "type": "pgd", "eps": 0.1, "steps": 1, "step_size": 0.1}
    with pytest.raises(InputError, match="input-gradient capture .* not 'pgd'"):
        fit(model, data.Loader(split, 8, device), spec, generator=seed_everything(0),
            record_step=lambda *args: None)  # fmt: skip


def test_adam_is_selectable(device):
    training = {**TRAINING, "optimizer": "adam", "lr": 0.01}
    model, log, _ = _train(0, make_split(32), device, training)
    assert all(r["train_loss"] == r["train_loss"] for r in log)  # finite, not NaN


def test_regime_registry_matches_the_config_schema():
    """Every regime's own keys and defaults are the schema's, so config and code cannot drift."""
    from pathlib import Path

    import yaml

    from robustcore.regimes import REGIMES

    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )
    listed = schema["$defs"]["training"]["properties"]["type"]["enum"]
    assert set(listed) == set(REGIMES)
    for name, regime in REGIMES.items():
        properties = schema["$defs"]["regimes"].get(name, {}).get("properties", {})
        assert set(properties) == set(regime.defaults), name
        for key, value in regime.defaults.items():
            assert properties[key].get("default") == pytest.approx(value), (name, key)


def _precision_run(precision, split, device, arch="mlp", kwargs=None, record_grads=False, **extra):
    """One epoch of fit on `split` on `device` at a precision: (model, input-grad norms)."""
    seed_everything(0)
    spec = models.model_spec(arch, kwargs or {"hidden": [32]}, meta_for(split, 3))
    model = models.build(spec).to(device)
    spec = {"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
            "precision": precision, **extra}  # fmt: skip
    norms = {}

    def record(index, logits, y, losses, input_grad):
        for i, g in zip(index.tolist(), input_grad.flatten(1).norm(dim=1).tolist(), strict=True):
            norms[i] = g

    loader = data.Loader(split, 16, device)
    fit(model, loader, spec, generator=seed_everything(1),
        record_step=record if record_grads else None)  # fmt: skip
    return model, norms


def test_bf16_autocast_runs_and_changes_the_arithmetic(device):
    split = make_split(64)
    fp32, _ = _precision_run("fp32", split, device)
    bf16, _ = _precision_run("bf16", split, device)
    pairs = zip(fp32.state_dict().values(), bf16.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs), "autocast had no effect"
    for a, b in zip(fp32.state_dict().values(), bf16.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0.1, atol=0.05)


def test_fp16_with_a_scaler_records_unscaled_input_gradients(device):
    """train_step capture under fp16: the loss scaler's factor must not reach the dynamics."""
    from robustcore.persample import per_sample_stats

    split = make_split(48)
    model, norms = _precision_run("fp16", split, device, record_grads=True, lr=0.0)
    assert sorted(norms) == list(range(48))
    seed_everything(0)
    x = (torch.as_tensor(split.images, dtype=torch.float32) / 255).to(device)
    y = torch.as_tensor(split.labels).to(device)
    reference = per_sample_stats(model, x, y)["input_grad"]
    expected = reference.flatten(1).norm(dim=1).cpu()
    got = torch.tensor([norms[i] for i in range(48)])
    # fp16 arithmetic: a few per cent; a scaler left in would be off by 65,536.
    torch.testing.assert_close(got, expected, rtol=0.05, atol=1e-4)


def test_channels_last_gives_the_same_training(device):
    split = make_split(48)
    cnn = {"width": 8, "batch_norm": False}
    plain, _ = _precision_run("fp32", split, device, arch="small_cnn", kwargs=cnn)
    nhwc, _ = _precision_run(
        "fp32", split, device, arch="small_cnn", kwargs=cnn, channels_last=True
    )
    # The last convolution (16 input channels; with one, both layouts are the same strides).
    weights = [m.weight for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d)]
    plain_weights = [m.weight for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert weights[-1].is_contiguous(memory_format=torch.channels_last)  # really NHWC
    assert not plain_weights[-1].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.state_dict().values(), nhwc.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5)


def test_compiled_model_trains_like_the_eager_one(device):
    """compile: true goes through torch.compile (backend eager: the path, not a compiler)."""
    split = make_split(48)
    plain, _ = _precision_run("fp32", split, device)
    compiled, _ = _precision_run("fp32", split, device, compile=True, compile_backend="eager")
    for a, b in zip(plain.state_dict().values(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compile: true is supported for the regimes"):
        _precision_run("fp32", split, device, type="selective", compile=True)
    from robustcore.regimes import REGIMES
    from robustcore.train import compiled as compile_step_model

    pgd = REGIMES["pgd"]
    wrapped = compile_step_model(plain, {"compile": True, "compile_backend": "eager"}, pgd)
    assert wrapped is not plain and type(wrapped).__name__ == "OptimizedModule"
    assert compile_step_model(plain, {}, pgd) is plain
