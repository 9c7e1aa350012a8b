"""Device choice, seeding, model-mode handling and software versions shared by the stages."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from robustcore import __version__
from robustcore.io import InputError
from robustcore.precision import precision_of


def resolve_device(name: str = "auto") -> torch.device:
    """Map 'auto' to cuda, then mps, then cpu; check an explicit device exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'"
        )
    return device


def seed_everything(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (third-party code may use the global RNG)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def use_deterministic_kernels() -> None:
    """Deterministic GPU kernels from here on: same inputs and seed give bitwise the same run.

    cuBLAS needs its workspace setting before its first use in the process (a job's first
    matmul comes after this call); ops without a deterministic kernel warn instead of failing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator living on `device`, for random starts drawn where the tensors are."""
    return torch.Generator(device=device).manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: pinned and non-blocking on CUDA.

    A blocking host-to-device copy synchronises the stream, so the host would idle until all
    queued kernels finish; from pinned memory the copy is queued like a kernel instead.
    """
    if tensor.device == device or (device.type == "cpu" and tensor.device.type == "cpu"):
        return tensor
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)  # e.g. back to the host: the host must wait to read it
    return tensor.pin_memory().to(device, non_blocking=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode and restore each module's previous mode afterwards."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Switch off parameter gradients so a backward pass computes input gradients only."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def show_progress() -> bool:
    """Progress bars only when a human is watching a terminal."""
    return sys.stderr.isatty()


def device_info(device: torch.device, spec: dict | None = None) -> dict:
    """Where a run trained: device, its name and count, and the precision of its steps."""
    spec = spec or {}
    if device.type == "cuda":
        name, count = torch.cuda.get_device_name(device), torch.cuda.device_count()
    else:
        name, count = platform.processor() or platform.machine(), 1
    precision = precision_of(spec, device)
    return {
        "device": str(device),
        "device_name": name,
        "device_count": count,
        "precision": precision if precision == "fp32" else f"{precision} autocast",
        "channels_last": bool(spec.get("channels_last", False)),
        "threads": torch.get_num_threads(),
    }


def software_versions() -> dict[str, str | int | None]:
    """Python, torch (with the CUDA and cuDNN it reports), robustcore and NumPy versions."""
    try:
        # An int such as 90100, or None where torch was built without cuDNN (CPU builds).
        cudnn = torch.backends.cudnn.version()
    except RuntimeError:  # torch found a cuDNN it cannot use; the record must still be written
        cudnn = None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,  # None on CPU-only builds
        "cudnn": cudnn,
        "robustcore": __version__,
        "numpy": np.__version__,
    }
