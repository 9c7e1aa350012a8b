"""Shared fixtures: the test device, small synthetic datasets and a trained digits model.

Tests that run a model take the `device` fixture: the device named by ROBUSTCORE_TEST_DEVICE
(default cpu), so `ROBUSTCORE_TEST_DEVICE=cuda pytest` runs them on a GPU. They are marked
`device` (`pytest -m device` selects them). Tests marked `cpu_only` (Slurm, browser, workflow
runs) are skipped on any other device, with the reason they give.
"""

from __future__ import annotations

import os

import pytest
import torch

from robustcore import data, models
from robustcore.runtime import seed_everything
from robustcore.train import fit

TEST_DEVICE_VARIABLE = "ROBUSTCORE_TEST_DEVICE"


def _test_device() -> torch.device:
    """The device ROBUSTCORE_TEST_DEVICE names (default cpu), checked to exist."""
    name = os.environ.get(TEST_DEVICE_VARIABLE, "").strip() or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise pytest.UsageError(
            f"{TEST_DEVICE_VARIABLE}={name!r} is not a torch device; expected cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{TEST_DEVICE_VARIABLE}={name!r} but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{TEST_DEVICE_VARIABLE}={name!r}: expected cpu, cuda or cuda:N")
    return device


TEST_DEVICE = _test_device()
if TEST_DEVICE.type == "cuda":
    # Reference loops and batched code must agree to fp32 tolerance: no TF32 in the tests, and
    # deterministic kernels so that resumed runs can be compared bitwise (DESIGN.md).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers."""
    config.addinivalue_line("markers", f"device: runs a model on {TEST_DEVICE_VARIABLE}")
    config.addinivalue_line("markers", "cpu_only(reason): skipped on a test device other than cpu")


def pytest_report_header(config: pytest.Config) -> str:
    """Say which device the device tests run on."""
    return f"robustcore test device: {TEST_DEVICE} ({TEST_DEVICE_VARIABLE})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests using the device fixture; skip cpu_only tests on another device."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        cpu_only = item.get_closest_marker("cpu_only")
        if cpu_only is not None and TEST_DEVICE.type != "cpu":
            reason = cpu_only.args[0] if cpu_only.args else "applies on the CPU only"
            item.add_marker(pytest.mark.skip(reason=f"test device {TEST_DEVICE}: {reason}"))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the model-running tests use (ROBUSTCORE_TEST_DEVICE, default cpu)."""
    return TEST_DEVICE


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """The real digits dataset, prepared once per test session."""
    out = tmp_path_factory.mktemp("digits")
    data.prepare("digits", out)
    return str(out)


@pytest.fixture(scope="session")
def trained_digits(digits_dir, device):
    """A small CNN trained on digits for a few epochs, on the test device (attacks, evaluation)."""
    generator = seed_everything(0)
    train, test = data.load(digits_dir)
    spec = models.model_spec("small_cnn", {"width": 16}, data.load_meta(digits_dir))
    model = models.build(spec).to(device)
    training = {"epochs": 6, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    fit(model, data.Loader(train, 64, device), training, generator=generator)
    return model.eval(), spec, test


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")
