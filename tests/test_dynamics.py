"""Per-sample dynamics: every input-gradient norm must be the sample's own (both capture modes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import make_split, meta_for

from robustcore import models
from robustcore.dynamics import train_proxy
from robustcore.io import InputError
from robustcore.persample import logit_margin, per_sample_stats
from robustcore.probe import last_linear
from robustcore.runtime import seed_everything
from robustcore.scores import REGISTRY, ScoreInputs, read_dynamics


def single_sample_reference(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray):
    """Loop over samples one at a time in eval mode: the definition of a per-sample quantity."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for image, label in zip(images, labels, strict=True):
        x = (torch.tensor(image[None], dtype=torch.float32) / 255).to(device)
        x.requires_grad_(True)
        y = torch.tensor([label], device=device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        head = last_linear(model)
        grad, grad_w, grad_b = torch.autograd.grad(loss, [x, head.weight, head.bias])
        others = logits[0].clone()
        others[label] = float("-inf")
        rows.append(
            {
                "loss": loss.item(),
                "correct": bool(logits.argmax(1).item() == label),
                "margin": (logits[0, label] - others.max()).item(),
                "input_grad_norm": grad.norm().item(),
                "el2n": (logits.softmax(1)[0] - F.one_hot(y, logits.shape[1])[0]).norm().item(),
                "grad_norm_last": torch.cat([grad_w.flatten(), grad_b]).norm().item(),
            }
        )
    return pd.DataFrame(rows)


def _tolerance(device: torch.device) -> float:
    """atol of batched results against the single-sample loop (CUDA sums in another order)."""
    return 1e-6 if device.type == "cpu" else 1e-5


def _training(**overrides) -> dict:
    spec = {"epochs": 2, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    return {**spec, **overrides}


def test_margin_sign_and_value(device):
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]], device=device)
    margin = logit_margin(logits, torch.tensor([0, 2], device=device))
    assert torch.allclose(margin.cpu(), torch.tensor([1.0, -2.0]))


def test_eval_capture_matches_single_sample_loop_with_batchnorm(device):
    """BatchNorm model: the eval-mode batch pass equals a loop over single samples."""
    seed_everything(0)
    split = make_split(40)
    model = models.build(
        models.model_spec("small_cnn", {"width": 8, "batch_norm": True}, meta_for(split, 3))
    ).to(device)
    # Non-trivial running statistics first.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = (torch.tensor(split.images, dtype=torch.float32) / 255).to(device)
    y = torch.tensor(split.labels).to(device)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.train()
    stats = per_sample_stats(model, x, y)
    assert model.training, "the previous mode must be restored"
    assert all(p.requires_grad for p in model.parameters())
    opt.zero_grad(set_to_none=True)
    stats_again = per_sample_stats(model, x, y)
    assert all(p.grad is None for p in model.parameters()), "no weight gradients computed"
    reference = single_sample_reference(model, split.images, split.labels)
    norms = stats["input_grad"].flatten(1).norm(dim=1).cpu().numpy()
    atol = 1e-7 if device.type == "cpu" else 1e-6
    np.testing.assert_allclose(norms, reference["input_grad_norm"], rtol=1e-4, atol=atol)
    losses = stats["losses"].cpu().numpy()
    np.testing.assert_allclose(losses, reference["loss"], rtol=1e-4, atol=_tolerance(device))
    assert torch.equal(stats["input_grad"], stats_again["input_grad"])

    # The trap the eval pass avoids: in train mode BatchNorm couples the batch, so the gradient
    # of the summed loss is no longer each sample's own.
    model.train()
    x_train = x.clone().requires_grad_(True)
    (coupled,) = torch.autograd.grad(F.cross_entropy(model(x_train), y, reduction="sum"), x_train)
    coupled_norms = coupled.flatten(1).norm(dim=1).cpu().numpy()
    assert not np.allclose(coupled_norms, reference["input_grad_norm"], rtol=1e-2)


@pytest.mark.parametrize("capture", ["eval", "train_step"])
def test_proxy_dynamics_are_per_sample(tmp_path, capture, device):
    """Every row of a dynamics file equals the single-sample loop at the weights it was taken at."""
    seed_everything(0)
    split = make_split(44)  # 44 = 5 full batches of 8 + a partial one
    spec = models.model_spec("small_cnn", {"width": 8, "batch_norm": False}, meta_for(split, 3))
    model = models.build(spec).to(device)
    # train_step rows are taken during the epoch; lr = 0 keeps the weights those rows saw.
    training = _training(capture=capture, lr=0.05 if capture == "eval" else 0.0)
    generator = seed_everything(1)
    log, cost = train_proxy(
        model, split, training, device=device, generator=generator, out_dir=tmp_path
    )
    assert cost.device == str(device)
    epochs = read_dynamics(tmp_path / "dynamics")
    assert sorted(epochs) == [1, 2]
    last = epochs[2]
    assert list(last["index"]) == list(range(44)), "one row per training sample, sorted by index"
    assert (last["label"].to_numpy() == split.labels).all()
    reference = single_sample_reference(model, split.images, split.labels)
    for column in ("loss", "margin", "input_grad_norm", "el2n", "grad_norm_last"):
        np.testing.assert_allclose(
            last[column], reference[column], rtol=1e-4, atol=_tolerance(device), err_msg=column
        )
    assert (last["correct"].to_numpy() == reference["correct"].to_numpy()).all()
    assert cost.forward["update"] == 2 * 44
    if capture == "eval":
        assert cost.forward["capture"] == 2 * 44
    else:
        assert "capture" not in cost.forward, "train_step capture costs no extra pass"
    assert not list(tmp_path.glob(".dynamics.*")), "no staging folder left behind"


def test_test_samples_are_tracked_per_epoch_and_per_sample(tmp_path, device):
    """With a test split, each epoch also writes the test samples' rows (never trained on)."""
    from robustcore.report.jobs import test_hardness

    seed_everything(0)
    split, test = make_split(40), make_split(21, seed=9)
    spec = models.model_spec("small_cnn", {"width": 8}, meta_for(split, 3))
    model = models.build(spec).to(device)
    log, cost = train_proxy(
        model,
        split,
        _training(capture="eval", lr=0.05),
        device=device,
        generator=seed_everything(1),
        out_dir=tmp_path,
        test=test,
    )
    files = sorted((tmp_path / "dynamics").glob("test_epoch*.parquet"))
    assert [f.name for f in files] == ["test_epoch001.parquet", "test_epoch002.parquet"]
    assert sorted(read_dynamics(tmp_path / "dynamics")) == [1, 2], "train epochs unaffected"
    last = pd.read_parquet(files[-1])
    reference = single_sample_reference(model, test.images, test.labels)
    np.testing.assert_allclose(
        last["input_grad_norm"], reference["input_grad_norm"], rtol=1e-4, atol=_tolerance(device)
    )
    # The capture pass takes input gradients: one forward and one backward per test sample.
    assert cost.forward["capture_test"] == cost.backward["capture_test"] == 2 * 21
    first = pd.read_parquet(files[0])["input_grad_norm"].to_numpy()
    window_mean = test_hardness([str(tmp_path / "dynamics")], (1, None))
    np.testing.assert_allclose(window_mean, (first + last["input_grad_norm"].to_numpy()) / 2)
    np.testing.assert_allclose(test_hardness([str(tmp_path / "dynamics")], (2, 2)),
                               last["input_grad_norm"])  # fmt: skip


def test_train_step_capture_refused_for_batchnorm(tmp_path, device):
    split = make_split(16)
    model = models.build(
        models.model_spec("small_cnn", {"width": 8, "batch_norm": True}, meta_for(split, 3))
    ).to(device)
    with pytest.raises(InputError, match="BatchNorm"):
        train_proxy(
            model,
            split,
            _training(capture="train_step"),
            device=device,
            generator=seed_everything(0),
            out_dir=tmp_path,
        )
    assert not (tmp_path / "dynamics").exists()


def test_aign_is_mean_over_window():
    frames = {
        e: pd.DataFrame(
            {
                "index": [1, 0],
                "label": [0, 1],
                "loss": 0.0,
                "correct": True,
                "margin": 0.0,
                "input_grad_norm": [float(e), 10.0 * e],
            }
        )
        for e in (1, 2, 3)
    }
    inputs = ScoreInputs(index=np.array([0, 1]), labels=np.array([1, 0]), dynamics=frames)
    full = REGISTRY["aign"](inputs).set_index("index")
    assert full.loc[1, "score"] == pytest.approx(2.0)
    assert full.loc[0, "score"] == pytest.approx(20.0)
    assert full.loc[0, "label"] == 1
    window = REGISTRY["aign"](inputs, first_epoch=2, last_epoch=3).set_index("index")
    assert window.loc[1, "score"] == pytest.approx(2.5)
    assert window.loc[1, "n_epochs"] == 2
    with pytest.raises(InputError, match="window"):
        REGISTRY["aign"](inputs, first_epoch=2, last_epoch=5)
    with pytest.raises(InputError, match="unknown parameter"):
        REGISTRY["aign"](inputs, window=3)
