"""Model registry: every arch builds, normalization comes first, save/load round-trips."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch

import robustcore
from robustcore import models
from robustcore.io import InputError

CASES = [
    ("mlp", {"hidden": [16]}, [2], 2),
    ("small_cnn", {"width": 8}, [1, 8, 8], 10),
    ("resnet18", {"width": 8}, [3, 32, 32], 10),
    ("vgg16", {}, [3, 32, 32], 100),
    ("resnet50", {}, [3, 64, 64], 1000),
]


def _spec(arch, kwargs, shape, classes):
    channels = shape[0] if len(shape) == 3 else shape[0]
    meta = {
        "shape": shape,
        "num_classes": classes,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
    }
    return models.model_spec(arch, kwargs, meta)


@pytest.mark.parametrize(("arch", "kwargs", "shape", "classes"), CASES)
def test_every_arch_builds_and_normalizes_first(arch, kwargs, shape, classes, device):
    model = models.build(_spec(arch, kwargs, shape, classes)).to(device).eval()
    assert isinstance(model[0], models.Normalize)
    x = torch.rand(2, *shape, device=device)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, classes) and out.device == x.device
        assert torch.isfinite(out).all()
        # The first layer maps [0, 1] input to (x - mean) / std.
        torch.testing.assert_close(model[0](x).cpu(), ((x - 0.5) / 0.25).cpu())


def test_cifar_resnet18_has_small_stem():
    net = models.build(_spec("resnet18", {}, [3, 32, 32], 10))[1]
    assert net[0].kernel_size == (3, 3) and net[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())


def test_save_load_round_trip(tmp_path, device):
    spec = _spec("small_cnn", {"width": 8}, [1, 8, 8], 10)
    model = models.build(spec).to(device)
    with torch.no_grad():
        model[1][1].running_mean.add_(0.3)  # a buffer must travel too
    models.save(model, spec, tmp_path)
    # model.pt holds CPU tensors: a model trained on a GPU loads on a machine without one.
    saved = torch.load(tmp_path / "model.pt", map_location=None, weights_only=True)
    assert {v.device.type for v in saved.values()} == {"cpu"}
    loaded = models.load(tmp_path / "model.pt", device)
    assert not loaded.training
    assert {p.device.type for p in loaded.state_dict().values()} == {device.type}
    x = torch.rand(4, 1, 8, 8, device=device)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).cpu(), loaded(x).cpu())
    on_cpu = models.load(tmp_path)  # the default: the CPU
    assert on_cpu.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(on_cpu.state_dict()[key], value.cpu()), key


def test_load_rejects_corrupt_or_mismatched_files(tmp_path):
    spec = _spec("small_cnn", {"width": 8}, [1, 8, 8], 10)
    models.save(models.build(spec), spec, tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="model.pt"):
        models.load(tmp_path)
    models.save(models.build(_spec("mlp", {}, [1, 8, 8], 10)), spec, tmp_path)
    with pytest.raises(InputError, match="model.pt"):
        models.load(tmp_path)


def test_unknown_arch_and_options_are_named():
    with pytest.raises(InputError, match="unknown model arch 'resnet9'"):
        models.build({**_spec("mlp", {}, [2], 2), "arch": "resnet9"})
    with pytest.raises(InputError, match="bad options"):
        models.build(_spec("mlp", {"depth": 3}, [2], 2))


def test_batch_coupling_detection():
    assert models.has_batch_coupling(models.build(_spec("resnet18", {"width": 4}, [3, 32, 32], 10)))
    assert not models.has_batch_coupling(models.build(_spec("mlp", {}, [2], 2)))
    assert not models.has_batch_coupling(
        models.build(_spec("small_cnn", {"batch_norm": False}, [1, 8, 8], 10))
    )


def test_equal_weights_save_to_equal_bytes(tmp_path, device):
    """model.pt is byte-reproducible (a cluster run can be compared with a local one by bytes)."""
    spec = {"arch": "mlp", "kwargs": {"hidden": [4]}, "in_shape": [4], "num_classes": 2,
            "mean": [0.0], "std": [1.0]}  # fmt: skip
    torch.manual_seed(0)
    model = models.build(spec)
    models.save(model, spec, tmp_path / "cpu")
    model.to(device)
    models.save(model, spec, tmp_path / "a")
    models.save(model, spec, tmp_path / "b")
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
    # The same weights saved from the test device and from the CPU: the same bytes.
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "cpu/model.pt").read_bytes()


def test_model_json_records_the_software_versions(tmp_path):
    spec = _spec("mlp", {}, [4], 2)
    models.save(models.build(spec), spec, tmp_path)
    written = json.loads((tmp_path / "model.json").read_text())
    assert {k: v for k, v in written.items() if k != "versions"} == spec
    versions = written["versions"]
    assert set(versions) == {"python", "torch", "cuda", "cudnn", "robustcore", "numpy"}
    assert versions["torch"] == torch.__version__ and versions["cuda"] == torch.version.cuda
    assert versions["cudnn"] == torch.backends.cudnn.version()  # None on CPU-only builds
    assert versions["python"] == platform.python_version()
    assert versions["robustcore"] == robustcore.__version__ and versions["numpy"] == np.__version__
    assert not models.load(tmp_path).training, "a model.json with versions still loads"
