"""Shared fixtures: small synthetic datasets and a trained digits model."""

from __future__ import annotations

import pytest
import torch

from robustcore import data, models
from robustcore.runtime import seed_everything
from robustcore.train import fit


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """The real digits dataset, prepared once per test session."""
    out = tmp_path_factory.mktemp("digits")
    data.prepare("digits", out)
    return str(out)


@pytest.fixture(scope="session")
def trained_digits(digits_dir):
    """A small CNN trained on digits for a few epochs (for attack and evaluation tests)."""
    generator = seed_everything(0)
    train, test = data.load(digits_dir)
    spec = models.model_spec("small_cnn", {"width": 16}, data.load_meta(digits_dir))
    model = models.build(spec)
    training = {"epochs": 6, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    fit(model, data.Loader(train, 64), training, generator=generator)
    return model.eval(), spec, test


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")
