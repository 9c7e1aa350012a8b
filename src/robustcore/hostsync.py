"""Counting the points where the host waits for the device: CUDA's sync debug mode, or on a CPU
the host reads that would wait on a GPU.

On CUDA the count is what `torch.cuda.set_sync_debug_mode("warn")` reports: every stream or
device synchronisation torch performs (a `.item()`, `float(t)`, `.cpu()`, a blocking copy in
either direction, a data-dependent shape such as `nonzero` or a boolean mask). On a CPU nothing
waits, so the same code is reviewed instead: a TorchFunctionMode records each call that would
synchronise if the run's tensors lived on a GPU. Tensors that live on the host on any device are
not counted when read: the draws of a CPU generator, what `.cpu()`/`.numpy()` returned, and what
is computed from such tensors only (the mode tags them). A blocking `.to(device)` counts as a
copy that would wait; `runtime.to_device` (pinned, non-blocking) does not. On the CPU the count
is a review aid (an upper bound where host-born tensors escape the tagging), not a measurement.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

PACKAGE = str(Path(__file__).resolve().parent)

# Calls that read a device value on the host (or need a data-dependent size) and so wait for it.
_READS = {
    Tensor.item: "item",
    Tensor.__bool__: "bool",
    Tensor.__float__: "float",
    Tensor.__int__: "int",
    Tensor.__index__: "index",
    Tensor.tolist: "tolist",
    Tensor.numpy: "numpy",
    Tensor.cpu: "cpu",
    Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.masked_select: "masked_select",
    torch.unique: "unique",
    Tensor.unique: "unique",
}


@dataclass
class SyncCount:
    """Synchronisations seen, in all and per call site (file:line in the package, or outside)."""

    total: int = 0
    sites: Counter = field(default_factory=Counter)

    def add(self, site: str) -> None:
        """Count one synchronisation at `site`."""
        self.total += 1
        self.sites[site] += 1


def _package_site(frame) -> str:
    """file:line of the innermost frame inside robustcore (else the innermost frame at all)."""
    first = None
    while frame is not None:
        where = frame.f_code.co_filename
        if first is None:
            first = f"{Path(where).name}:{frame.f_lineno}"
        if where.startswith(PACKAGE) and not where.endswith("hostsync.py"):
            return f"{Path(where).relative_to(PACKAGE)}:{frame.f_lineno}"
        frame = frame.f_back
    return first or "?"


def _is_bool_index(index: object) -> bool:
    """Whether an indexing key holds a boolean mask (its size depends on the values)."""
    keys = index if isinstance(index, tuple) else (index,)
    return any(isinstance(k, Tensor) and k.dtype == torch.bool for k in keys)


def _blocking_copy_to_device(args: tuple, kwargs: dict) -> bool:
    """Whether a Tensor.to call copies to an explicit non-CPU-host target without non_blocking."""
    if kwargs.get("non_blocking", False) or (len(args) > 2 and args[2] is True):
        return False
    targets = [kwargs.get("device"), *args[1:2]]
    return any(isinstance(t, (torch.device, str)) for t in targets if t is not None)


_HOST = "_robustcore_host"  # attribute tagging a tensor that lives on the host on any device


def _tensors(tree: object) -> list[Tensor]:
    """The tensors among a call's arguments or results (one level of nesting)."""
    items = tree if isinstance(tree, (list, tuple)) else (tree,)
    out = []
    for item in items:
        if isinstance(item, Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(t for t in item if isinstance(t, Tensor))
    return out


def _host_born(func, args: tuple, kwargs: dict) -> bool:
    """Whether a call's results live on the host whatever the run's device."""
    if func in (Tensor.cpu, Tensor.numpy, Tensor.pin_memory):
        return True
    generator = kwargs.get("generator")
    if isinstance(generator, torch.Generator) and generator.device.type == "cpu":
        return "device" not in kwargs
    inputs = _tensors(args) + _tensors(list(kwargs.values()))
    return bool(inputs) and all(getattr(t, _HOST, False) for t in inputs)


class _HostReads(TorchFunctionMode):
    """Records the calls that synchronise on a GPU (see the module docstring)."""

    def __init__(self, count: SyncCount) -> None:
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        host_input = bool(args) and getattr(args[0], _HOST, False)
        kind = None if host_input else _READS.get(func)
        if kind is None and func in (Tensor.__getitem__, Tensor.__setitem__) and not host_input:
            kind = "bool_mask" if len(args) > 1 and _is_bool_index(args[1]) else None
        if kind is None and func is Tensor.to and _blocking_copy_to_device(args, kwargs):
            kind = "blocking_copy"
        if kind is not None:
            self.count.add(f"{_package_site(sys._getframe(1))} ({kind})")
        result = func(*args, **kwargs)
        if func is not Tensor.to and _host_born(func, args, kwargs):
            for tensor in _tensors(result):
                setattr(tensor, _HOST, True)
        return result


@contextlib.contextmanager
def counting_syncs(device: torch.device) -> Iterator[SyncCount]:
    """Count host-device synchronisations inside the block (CUDA: measured; else: reviewed)."""
    count = SyncCount()
    if device.type != "cuda":
        with _HostReads(count):
            yield count
        return
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()

    def note(message, category, filename, lineno, file=None, line=None) -> None:
        # Called while the synchronising op runs: the stack names the package line behind it.
        if "synchroniz" in str(message):
            count.add(_package_site(sys._getframe(1)))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode(previous)


@dataclass
class StepSyncs:
    """Synchronisations of a loop: per step (the slope over two lengths) and per run (the rest)."""

    per_step: float
    per_run: float
    sites: dict[str, float]  # per-step count of each site (those that grow with the steps)


def syncs_per_step(
    prepare: Callable[[int], Callable[[], None]], device: torch.device, steps: int = 4
) -> StepSyncs:
    """Count the loop `prepare(n)` returns (n steps; set-up not counted) for n = steps and
    2·steps, and split the counts into per step (the slope) and per run (the rest)."""
    counts = []
    for n in (steps, 2 * steps):
        loop = prepare(n)
        with counting_syncs(device) as count:
            loop()
        counts.append(count)
    short, long = counts
    sites = {
        site: (long.sites[site] - short.sites.get(site, 0)) / steps
        for site in long.sites
        if long.sites[site] > short.sites.get(site, 0)
    }
    per_step = (long.total - short.total) / steps
    return StepSyncs(per_step, short.total - per_step * steps, sites)
