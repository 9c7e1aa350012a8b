"""Step precision: fp32, or bf16/fp16 autocast, chosen by a regime entry and the device."""

from __future__ import annotations

from typing import Any

import torch

from robustcore.io import InputError

AUTOCAST: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def precision_of(spec: dict[str, Any], device: torch.device) -> str:
    """The step precision: `precision` if set, else bf16 for `amp: true` on CUDA, else fp32."""
    precision = spec.get("precision")
    if precision is None:
        return "bf16" if spec.get("amp", False) and device.type == "cuda" else "fp32"
    if precision not in AUTOCAST:
        raise InputError(f"precision {precision!r} unknown; expected one of {list(AUTOCAST)}")
    return precision
