"""Model registry: models take pixel-space input in [0, 1]; normalization is the first layer."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcore.io import InputError, atomic_path, read_json, write_json
from robustcore.runtime import software_versions


class Normalize(nn.Module):
    """Subtract mean and divide by std per channel (images) or per feature (vectors)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_shape: Sequence[int]):
        super().__init__()
        view = (1, -1, 1, 1) if len(in_shape) == 3 else (1, -1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(
    in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256)
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(in_shape).prod())
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _small_cnn(
    in_shape: Sequence[int], num_classes: int, width: int = 32, batch_norm: bool = True
) -> nn.Module:
    if len(in_shape) != 3:
        raise InputError(f"model small_cnn needs image input C×H×W, got shape {list(in_shape)}")

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        norm: list[nn.Module] = [nn.BatchNorm2d(c_out)] if batch_norm else []
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm), *norm, nn.ReLU(True)]

    return nn.Sequential(
        *block(in_shape[0], width),
        *block(width, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        *block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18_cifar(in_shape: Sequence[int], num_classes: int, width: int = 64) -> nn.Module:
    """ResNet-18 with the CIFAR stem: one 3×3 convolution, no max-pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(True),
    ]
    c_in = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_cifar(in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """VGG-16 with BatchNorm and a single linear classifier, as used on CIFAR."""
    layers: list[nn.Module] = []
    c_in = in_shape[0]
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(True)]
            c_in = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def _resnet50(in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ImageNet ResNet-50, randomly initialised (no weights are downloaded)."""
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "resnet18": _resnet18_cifar,
    "vgg16": _vgg16_cifar,
    "resnet50": _resnet50,
}


def build(spec: dict[str, Any]) -> nn.Module:
    """Build Normalize + network from a spec: arch, kwargs, in_shape, num_classes, mean, std."""
    arch = spec["arch"]
    if arch not in ARCHS:
        raise InputError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHS)}")
    in_shape = list(spec["in_shape"])
    try:
        net = ARCHS[arch](in_shape, int(spec["num_classes"]), **spec.get("kwargs", {}))
    except TypeError as err:
        raise InputError(f"model {arch!r}: bad options {spec.get('kwargs')} ({err})") from err
    return nn.Sequential(Normalize(spec["mean"], spec["std"], in_shape), net)


def model_spec(arch: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The model.json content for an arch on a dataset described by its meta.json."""
    return {
        "arch": arch,
        "kwargs": dict(kwargs),
        "in_shape": list(meta["shape"]),
        "num_classes": int(meta["num_classes"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
    }


def has_batch_coupling(model: nn.Module) -> bool:
    """True if a layer mixes samples of a batch in train mode (BatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def save(model: nn.Module, spec: dict[str, Any], out_dir: str | os.PathLike) -> None:
    """Write model.pt (plain state_dict) and model.json (spec and software versions) atomically."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Through a buffer: saved to a path, the zip archive is named after the (random) temporary
    # file, and equal weights would give different bytes.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(out_dir / "model.pt") as tmp:
        tmp.write_bytes(buffer.getvalue())
    # Versions go to model.json only: model.pt holds the weights alone, compared byte for byte.
    write_json(out_dir / "model.json", {**spec, "versions": software_versions()})


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model (its model.pt or its folder) in eval mode."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    spec = read_json(folder / "model.json")
    model = build(spec)
    weights = folder / "model.pt"
    if not weights.is_file():
        raise InputError(f"{weights}: file not found")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:
        raise InputError(
            f"{weights}: not a state_dict matching {folder / 'model.json'} ({err})"
        ) from err
    return model.to(device).eval()
