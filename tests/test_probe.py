"""The probe pass: features are the head input, the gradient embedding the head gradient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from helpers import make_split, meta_for

from robustcore import data, models
from robustcore.probe import last_linear, load_probe, run_probe, save_probe


def _model_and_split(device: torch.device):
    torch.manual_seed(0)
    split = make_split(30)
    spec = models.model_spec("small_cnn", {"width": 8}, meta_for(split, 3))
    return models.build(spec).to(device).eval(), split


def test_probe_matches_single_sample_head_gradients(tmp_path, device):
    model, split = _model_and_split(device)
    model.train()
    probe = run_probe(model, data.Loader(split, 7, device))
    assert model.training, "mode restored"
    assert list(probe.index) == list(range(30)) and (probe.labels == split.labels).all()
    head = last_linear(model)
    model.eval()
    # A loop over single samples; CUDA kernels may sum in another order than the batch's.
    logit_atol, grad_atol = (0.0, 1e-7) if device.type == "cpu" else (1e-5, 1e-6)
    for row in (0, 13, 29):
        x = (torch.tensor(split.images[row : row + 1], dtype=torch.float32) / 255).to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, torch.tensor([split.labels[row]], device=device))
        grad_w, grad_b = torch.autograd.grad(loss, [head.weight, head.bias])
        expected = torch.cat([grad_w, grad_b[:, None]], dim=1).flatten().cpu().numpy()
        np.testing.assert_allclose(
            probe.logits[row], logits[0].detach().cpu().numpy(), rtol=1e-5, atol=logit_atol
        )
        np.testing.assert_allclose(
            probe.grad_embedding([row])[0], expected, rtol=1e-4, atol=grad_atol
        )
        np.testing.assert_allclose(
            probe.grad_embedding_norm()[row], np.linalg.norm(expected), rtol=1e-4
        )
    np.testing.assert_allclose(probe.probs.sum(1), 1.0)
    save_probe(tmp_path / "probe.npz", probe)
    again = load_probe(tmp_path / "probe.npz")
    assert np.array_equal(again.features, probe.features)
    assert np.array_equal(again.last_weight, head.weight.detach().cpu().numpy())


def test_probe_of_an_unsorted_subset_puts_each_sample_in_its_sorted_row(device):
    model, split = _model_and_split(device)
    subset = np.array([17, 3, 29, 8, 0, 22, 11])
    probe = run_probe(model, data.Loader(split, 3, device, indices=subset))
    assert list(probe.index) == sorted(subset.tolist())
    assert list(probe.labels) == list(split.labels[np.sort(subset)])
    x = (torch.tensor(split.images[np.sort(subset)], dtype=torch.float32) / 255).to(device)
    atol = 1e-6 if device.type == "cpu" else 1e-5
    with torch.no_grad():
        np.testing.assert_allclose(probe.logits, model(x).cpu().numpy(), rtol=1e-5, atol=atol)
    expected = probe.features @ probe.last_weight.T + probe.last_bias
    np.testing.assert_allclose(probe.logits, expected, rtol=1e-4, atol=1e-5)
