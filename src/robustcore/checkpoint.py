"""Per-epoch training checkpoints: atomic, self-verifying, two generations, resumable anywhere.

A checkpoint file is one line holding the SHA-256 of the payload, then the payload: a
``torch.save`` of plain containers and tensors (loaded with ``weights_only=True``). Every epoch
the last good file becomes ``prev.pt`` and the new one ``last.pt``; a file whose digest does not
match (truncated, corrupted) is skipped with a message, falling back to the previous generation
or to a fresh start.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcore.io import PREEMPTED_EXIT, Preempted, atomic_path

FORMAT = "robustcore-checkpoint-1"
__all__ = ["PREEMPTED_EXIT", "Preempted", "StopRequest", "clear", "fingerprint", "load", "save"]


def _encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _decode(path: Path) -> dict[str, Any]:
    """The state in `path`; ValueError naming what is wrong if it is not intact."""
    data = path.read_bytes()
    digest, newline, payload = data.partition(b"\n")
    if not newline or len(digest) != 64:
        raise ValueError("no checksum line (truncated or not a checkpoint)")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch (truncated or corrupted)")
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    return state


def save(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write last.pt atomically, keeping the previous one as prev.pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoded = _encode(state)
    last = folder / "last.pt"
    if last.exists():
        os.replace(last, folder / "prev.pt")
    with atomic_path(last) as tmp:
        tmp.write_bytes(encoded)


def fingerprint(spec: dict[str, Any], epochs: int, indices: Any, shapes: dict) -> str:
    """A digest of what a run trains under: its settings, epochs, samples and parameter shapes."""
    digest = hashlib.sha256()
    digest.update(json.dumps([spec, epochs, shapes], sort_keys=True, default=str).encode())
    digest.update(memoryview(np.ascontiguousarray(indices, dtype=np.int64)).cast("B"))
    return digest.hexdigest()


def load(folder: str | os.PathLike, expected: str | None = None) -> dict[str, Any] | None:
    """The newest intact checkpoint in `folder` written under `expected`, or None (reported)."""
    folder = Path(folder)
    for name in ("last.pt", "prev.pt"):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = _decode(path)
        except Exception as err:  # any unreadable file is skipped, never trusted
            print(f"checkpoint {path}: {err}; trying an older one", file=sys.stderr)
            continue
        if expected is not None and state.get("fingerprint") != expected:
            # E.g. the regime was edited after an interrupted run: its state is not this run's.
            print(
                f"checkpoint {path}: written under other settings or samples; not resumed",
                file=sys.stderr,
            )
            continue
        print(f"resuming from {path} (epoch {state['epoch']})", file=sys.stderr)
        return state
    if any((folder / name).exists() for name in ("last.pt", "prev.pt")):
        print(f"checkpoint {folder}: no intact checkpoint; starting from scratch", file=sys.stderr)
    return None


def clear(folder: str | os.PathLike) -> None:
    """Remove a finished run's checkpoints."""
    folder = Path(folder)
    for name in ("last.pt", "prev.pt"):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class StopRequest:
    """Remembers SIGUSR1/SIGTERM (Slurm's warning before the time limit, or preemption)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG states a step may draw from (CPU, and CUDA when used)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what rng_state saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
