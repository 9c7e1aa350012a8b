"""Sparse FGSM (one gradient, k largest positions perturbed) and the per-proxy sensitivity table.

The table (``proxy/.../sparse_fgsm.parquet``) is wide: one row per training sample, in strictly
ascending ``index``. Columns: ``index``, ``label`` (int64); per level k, the clean input k = 0
first, then each attacked k ascending, ``pred_k{k}`` (int64 argmax); then per level
``probs_k{k}``, a fixed-size list of C float32 softmax probabilities. It is written row group by
row group (at most ROW_GROUP_BYTES of probabilities each) and read back as a `SensitivityTable`:
index, labels and predictions in memory, probabilities by blocks of samples, so neither the job
nor the scores ISEF, FGSM-CS and PSS (``robustcore.scores.sensitivity``, which read only it)
hold N × (1 + K) × C at once (ImageNet: 1.28 M × 5 × 1000 float32 = 25.6 GB).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from robustcore.cost import Cost
from robustcore.data import Loader
from robustcore.distributed import World, batch_shard, gather_in_order, is_distributed
from robustcore.io import InputError, atomic_path
from robustcore.persample import per_sample_stats
from robustcore.runtime import eval_mode, frozen

MODES = ("pixel", "element")
# Float32 probabilities held at once: a block the scores read, a row group the job writes.
BLOCK_BYTES = 8 << 20
ROW_GROUP_BYTES = 32 << 20


def check_params(eps: float, ks: Sequence[int], mode: str) -> list[int]:
    """Validate eps ≥ 0, ks distinct positive integers, mode; return ks as a list of ints."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < 0:
        raise InputError(f"sparse FGSM parameter 'eps' must be a finite number ≥ 0, got {eps!r}")
    if isinstance(ks, np.ndarray):
        ks = ks.tolist()
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise InputError(
            "sparse FGSM parameter 'ks' must be a non-empty list of distinct positive integers, "
            f"got {ks!r}"
        )
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, Integral) or k < 1]
    if bad or len(set(ks)) != len(ks):
        raise InputError(
            "sparse FGSM parameter 'ks' must be a non-empty list of distinct positive integers, "
            f"got {list(ks)!r}"
        )
    if mode not in MODES:
        raise InputError(f"sparse FGSM parameter 'mode' must be one of {list(MODES)}, got {mode!r}")
    return [int(k) for k in ks]


def _position_scores(grad: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-sample ranking score of each position, shaped (B, positions)."""
    if mode == "element" or grad.dim() <= 2:
        return grad.abs().flatten(1)
    # Pixel mode: a position is a spatial location with all its channels. Rank by the sum of |g|
    # over channels (ℓ1), not the ℓ2 norm: the step moves every channel of a chosen location by
    # ε·sign(g_c), so to first order it raises the loss by ε·Σ_c |g_c|. Ranking by that sum picks
    # the k locations that raise the linearized loss most, the exact sparse analogue of FGSM.
    return grad.abs().sum(dim=1).flatten(1)


def _perturb(
    x: torch.Tensor, grad: torch.Tensor, *, eps: float, ks: list[int], mode: str
) -> dict[int, torch.Tensor]:
    """x + ε·sign(g) on each sample's k top-ranked positions, clipped to [0, 1], for every k."""
    scores = _position_scores(grad, mode)
    # One stable sort per batch serves every k; ties go to the lower position (deterministic).
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=x.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    if mode == "pixel" and x.dim() > 2:
        rank = rank.view(x.shape[0], 1, *x.shape[2:])  # broadcast over the channels
    else:
        rank = rank.view(x.shape)
    step = eps * grad.sign()  # a zero gradient gives no step, as in FGSM
    return {k: (x + step * (rank < k)).clamp(0.0, 1.0) for k in ks}


def _attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, ks: list[int], mode: str
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Clean logits and the sparse-FGSM inputs for every k, from one input gradient per sample."""
    stats = per_sample_stats(model, x, y)  # eval mode, parameter gradients off, mode restored
    with torch.no_grad():
        adv = _perturb(x.detach(), stats["input_grad"], eps=eps, ks=ks, mode=mode)
    return stats["logits"], adv


def sparse_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    ks: Sequence[int],
    mode: str = "pixel",
) -> dict[int, torch.Tensor]:
    """Sparse FGSM: for each k, perturb each sample's k largest-gradient positions by ε·sign(g)."""
    ks = check_params(eps, ks, mode)
    return _attack(model, x, y, eps=float(eps), ks=ks, mode=mode)[1]


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """float32 softmax probabilities as a NumPy array."""
    return logits.float().softmax(dim=1).cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the table: per-sample arrays in memory, probabilities by blocks of samples


@dataclass(frozen=True, eq=False)
class SensitivityBlock:
    """Consecutive samples of a sensitivity table; level 0 is the clean input."""

    index: np.ndarray  # int64 (b,)
    labels: np.ndarray  # int64 (b,)
    preds: np.ndarray  # int64 (b, 1+K)
    probs: np.ndarray  # float32 (b, 1+K, C)


def _rows_in(nbytes: int, levels: int, num_classes: int) -> int:
    """How many samples' float32 probabilities fit in `nbytes` (at least one)."""
    return max(1, nbytes // (levels * num_classes * 4))


@dataclass(frozen=True, eq=False)
class SensitivityTable:
    """Sparse-FGSM outputs: index, labels, ks, preds in memory; probabilities by blocks of samples.

    The probabilities live either in memory (`probs`, float32 (N, 1+K, C)) or in a file checked
    by `read_sensitivity` (`path`); exactly one of the two is set. Level j is k = (0, *ks)[j].
    """

    index: np.ndarray  # int64 (N,), strictly ascending
    labels: np.ndarray  # int64 (N,)
    ks: np.ndarray  # int64 (K,), the attacked k, ascending (the clean level 0 is not listed)
    preds: np.ndarray  # int64 (N, 1+K): the argmax at each level
    probs: np.ndarray | None = None  # float32 (N, 1+K, C), or None when `path` holds them
    path: Path | None = None  # the Parquet file holding probs_k{k}, or None
    num_classes: int = 0  # C; taken from `probs` when those are in memory
    block_rows: int = 0  # samples per probability block; 0: as many as fit in BLOCK_BYTES

    def __post_init__(self) -> None:
        """Coerce dtypes and check the shapes agree (a file's columns are checked by its reader)."""
        where = str(self.path) if self.path is not None else "sensitivity table"
        for name in ("index", "labels", "ks", "preds"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        if (self.probs is None) == (self.path is None):
            raise ValueError("SensitivityTable needs exactly one of probs (in memory) and path")
        if self.probs is not None:
            object.__setattr__(self, "probs", np.asarray(self.probs, dtype=np.float32))
            if self.probs.ndim == 3:
                object.__setattr__(self, "num_classes", int(self.probs.shape[2]))
        n, levels = len(self.index), 1 + len(self.ks)
        if self.index.ndim != 1 or self.labels.shape != (n,) or self.preds.shape != (n, levels):
            raise InputError(
                f"{where}: expected index (N,), labels (N,), preds (N, 1 + K) with K = "
                f"{len(self.ks)}; got {self.index.shape}, {self.labels.shape}, {self.preds.shape}"
            )
        if (
            self.ks.ndim != 1
            or len(self.ks) == 0
            or self.ks[0] < 1
            or (np.diff(self.ks) <= 0).any()
        ):
            raise InputError(f"{where}: ks must be ascending k ≥ 1, got {self.ks.tolist()}")
        if self.probs is not None and self.probs.shape != (n, levels, self.num_classes):
            raise InputError(f"{where}: expected probs (N, 1 + K, C), got {self.probs.shape}")
        if self.num_classes < 2:
            raise InputError(f"{where}: expected C ≥ 2 classes, got {self.num_classes}")
        if self.block_rows < 0:
            raise ValueError(f"block_rows must be ≥ 0 (0: by BLOCK_BYTES), got {self.block_rows}")
        _check_ascending(self.index, where)

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.index)

    @property
    def levels(self) -> list[int]:
        """The k of each level, clean (0) first."""
        return [0, *self.ks.tolist()]

    @property
    def rows_per_block(self) -> int:
        """Samples per probability block."""
        return self.block_rows or _rows_in(BLOCK_BYTES, len(self.levels), self.num_classes)

    def prob_blocks(
        self, levels: Sequence[int] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, float32 (b, L, C) probabilities) per block; L: the k in `levels` (default all)."""
        levels = self.levels if levels is None else [int(k) for k in levels]
        if unknown := sorted(set(levels) - set(self.levels)):
            raise ValueError(f"levels {unknown} are not in the table's {self.levels}")
        rows = self.rows_per_block
        if self.probs is None:
            yield from _file_prob_blocks(self.path, levels, self.num_classes, rows, len(self))
            return
        positions = [self.levels.index(k) for k in levels]
        every = positions == list(range(len(self.levels)))
        for start in range(0, len(self), rows):
            block = slice(start, min(start + rows, len(self)))
            yield block, self.probs[block] if every else self.probs[block][:, positions]

    def blocks(self) -> Iterator[SensitivityBlock]:
        """The table as consecutive blocks of samples (what `write_sensitivity` takes)."""
        for rows, probs in self.prob_blocks():
            yield SensitivityBlock(self.index[rows], self.labels[rows], self.preds[rows], probs)


def _check_ascending(index: np.ndarray, where: str, first_row: int = 0) -> None:
    """Sample indices must be strictly ascending: one row per sample, in index order."""
    step = np.diff(index)
    if (step <= 0).any():
        at = int(np.argmax(step <= 0)) + 1
        what = "duplicate" if step[at - 1] == 0 else "unsorted"
        raise InputError(
            f"{where}: sample index must be strictly ascending (one row per sample, in the "
            f"loader's order); {what} index {int(index[at])} at row {first_row + at} after "
            f"{int(index[at - 1])}"
        )


def _file_prob_blocks(
    path: Path, levels: list[int], num_classes: int, rows: int, n: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Read probs_k{k} a batch of at most `rows` samples at a time, never the whole file."""
    names = [f"probs_k{k}" for k in levels]
    start = 0
    # pre_buffer=False: the default reads every row group's chunks ahead, the whole file in memory
    file = pq.ParquetFile(path, pre_buffer=False)
    for batch in file.iter_batches(batch_size=rows, columns=names, use_threads=False):
        b = batch.num_rows
        block = np.empty((b, len(levels), num_classes), dtype=np.float32)
        for level, (name, column) in enumerate(zip(names, batch.columns, strict=True)):
            values = column.flatten()
            if column.null_count or values.null_count or len(values) != b * num_classes:
                raise InputError(f"{path}: column {name} has missing probabilities")
            block[:, level] = values.to_numpy().reshape(b, num_classes)
        yield slice(start, start + b), block
        start += b
    if start != n:
        raise InputError(f"{path}: expected {n} rows of probabilities, read {start}")


def sensitivity_blocks(
    model: nn.Module,
    loader: Loader,
    *,
    eps: float,
    ks: Sequence[int],
    mode: str,
    cost: Cost | None = None,
    world: World | None = None,
) -> Iterator[SensitivityBlock]:
    """Sparse FGSM batch by batch in the loader's order; levels 0 (clean), then ks ascending.

    With a `world` of W > 1 ranks (every rank calls this alike): rank r attacks the loader's
    whole batches r, r + W, ... (batch_shard) and the blocks reach rank 0 one at a time in the
    loader's order (gather_in_order); there the iterator yields every block, on the other ranks
    none, and every rank must exhaust it (that is when they send theirs).
    """
    ks = sorted(check_params(eps, ks, mode))  # checked now, not at the first batch
    own = loader
    if is_distributed(world):
        positions = batch_shard(len(loader), loader.batch_size, world)
        own = loader.subset(np.asarray(loader.indices, dtype=np.int64)[positions])

    def attack_batches() -> Iterator[SensitivityBlock]:
        """One block per batch of this rank."""
        for index, x, y in own.epoch(shuffle=False):
            clean_logits, adv = _attack(model, x, y, eps=float(eps), ks=ks, mode=mode)
            logits = [clean_logits]
            with eval_mode(model), frozen(model), torch.no_grad():
                logits += [model(adv[k]) for k in ks]
            if cost is not None:
                cost.add("sensitivity_grad", len(y))
                cost.add("sensitivity_forward", len(y) * len(ks), backward=False)
            yield SensitivityBlock(
                index=index.cpu().numpy().astype(np.int64),
                labels=y.cpu().numpy().astype(np.int64),
                preds=torch.stack([z.argmax(1) for z in logits], 1).cpu().numpy().astype(np.int64),
                probs=np.stack([_probabilities(z) for z in logits], axis=1),
            )

    return gather_in_order(attack_batches(), world)


def sensitivity_table(
    model: nn.Module,
    loader: Loader,
    *,
    eps: float,
    ks: Sequence[int],
    mode: str,
    cost: Cost | None = None,
) -> SensitivityTable:
    """The whole table in memory (in-process use and tests; jobs stream to `write_sensitivity`)."""
    parts = list(sensitivity_blocks(model, loader, eps=eps, ks=ks, mode=mode, cost=cost))
    return SensitivityTable(
        index=np.concatenate([p.index for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        ks=np.asarray(sorted(ks), dtype=np.int64),
        preds=np.concatenate([p.preds for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
    )


def flip_rates(table: SensitivityTable) -> dict[int, float]:
    """Per k > 0, the share of samples whose Sparse-FGSM prediction differs from the clean one."""
    flipped = table.preds[:, 1:] != table.preds[:, :1]
    return {int(k): float(rate) for k, rate in zip(table.ks, flipped.mean(axis=0), strict=True)}


# ------------------------------------------------------------------------------------------------
# the file


def _schema(levels: list[int], num_classes: int) -> pa.Schema:
    """index, label, pred_k{k} per level, probs_k{k} (C float32) per level."""
    fields = [pa.field("index", pa.int64()), pa.field("label", pa.int64())]
    fields += [pa.field(f"pred_k{k}", pa.int64()) for k in levels]
    probs = pa.list_(pa.float32(), num_classes)
    return pa.schema(fields + [pa.field(f"probs_k{k}", probs) for k in levels])


def _arrow_block(block: SensitivityBlock, schema: pa.Schema) -> pa.Table:
    """A block as an Arrow table in the file's schema."""
    levels, num_classes = block.probs.shape[1:]
    preds = np.asarray(block.preds, dtype=np.int64)
    columns = [np.asarray(block.index, dtype=np.int64), np.asarray(block.labels, dtype=np.int64)]
    columns += [preds[:, level] for level in range(levels)]
    columns += [
        pa.FixedSizeListArray.from_arrays(
            np.ascontiguousarray(block.probs[:, level]).ravel(), num_classes
        )
        for level in range(levels)
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _check_block(block: SensitivityBlock, levels: int, num_classes: int, where: str) -> None:
    """A block's arrays have the shapes of the table being written."""
    b = len(block.index)
    shapes = (block.labels.shape, block.preds.shape, block.probs.shape)
    if block.index.ndim != 1 or shapes != ((b,), (b, levels), (b, levels, num_classes)):
        raise InputError(
            f"{where}: a block must hold index (b,), labels (b,), preds (b, {levels}), probs "
            f"(b, {levels}, {num_classes}); got {block.index.shape} and {shapes}"
        )
    if block.probs.dtype != np.float32:
        raise InputError(f"{where}: probabilities must be float32, got {block.probs.dtype}")


def write_sensitivity(
    path: str | os.PathLike,
    blocks: Iterable[SensitivityBlock],
    *,
    ks: Sequence[int],
    row_group_bytes: int = ROW_GROUP_BYTES,
) -> SensitivityTable:
    """Write blocks (ascending index) row group by row group, atomically; return the file's table.

    Every row group but the last holds the samples whose probabilities fill `row_group_bytes`;
    nothing is left at `path` if the blocks raise or come in the wrong order.
    """
    levels = [0, *(int(k) for k in ks)]
    writer: pq.ParquetWriter | None = None
    pending: pa.Table | None = None  # rows not yet in a row group (less than one group's worth)
    written_rows = 0
    last_index = np.empty(0, dtype=np.int64)  # the previous block's last index, once there is one
    with atomic_path(path) as tmp:
        try:
            for block in blocks:
                if writer is None:
                    num_classes = block.probs.shape[-1]
                    schema = _schema(levels, num_classes)
                    group_rows = _rows_in(row_group_bytes, len(levels), num_classes)
                    writer = pq.ParquetWriter(
                        tmp, schema, use_dictionary=["label"], write_statistics=["index"]
                    )
                _check_block(block, len(levels), num_classes, str(path))
                if len(block.index) == 0:
                    continue
                first_row = written_rows - len(last_index)
                _check_ascending(np.r_[last_index, block.index], str(path), first_row)
                last_index = block.index[-1:]
                written_rows += len(block.index)
                part = _arrow_block(block, schema)
                pending = part if pending is None else pa.concat_tables([pending, part])
                full = len(pending) // group_rows * group_rows
                if full:
                    writer.write_table(pending.slice(0, full), row_group_size=group_rows)
                    pending = pending.slice(full)
            if written_rows == 0:
                raise InputError(f"{path}: no samples to write")
            if len(pending):
                writer.write_table(pending, row_group_size=group_rows)
        finally:
            if writer is not None:
                writer.close()
    return read_sensitivity(path)


def read_sensitivity(path: str | os.PathLike, *, block_rows: int = 0) -> SensitivityTable:
    """Open a sensitivity file: check its columns, read index, labels, preds; probs stay on disk."""
    path = Path(path)
    expected = "expected index, label, and pred_k{k}, probs_k{k} per level k (k = 0: clean)"
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    names = set(schema.names)
    for name in ("index", "label"):
        if name not in names:
            raise InputError(f"{path}: missing column {name!r}; {expected}")
    pred_levels = {int(m[1]) for c in names if (m := re.fullmatch(r"pred_k(\d+)", c))}
    prob_levels = {int(m[1]) for c in names if (m := re.fullmatch(r"probs_k(\d+)", c))}
    if 0 not in pred_levels | prob_levels:
        raise InputError(f"{path}: no clean level (columns pred_k0, probs_k0); {expected}")
    for k in sorted(pred_levels ^ prob_levels):
        name = f"pred_k{k}" if k in prob_levels else f"probs_k{k}"
        raise InputError(f"{path}: missing column {name!r}; {expected}")
    levels = sorted(pred_levels)
    if len(levels) < 2:
        raise InputError(f"{path}: no attacked level k > 0, only the clean one; {expected}")
    small = ["index", "label", *(f"pred_k{k}" for k in levels)]
    for name in small:
        if not pa.types.is_integer(schema.field(name).type):
            raise InputError(
                f"{path}: column {name!r} must hold integers, not {schema.field(name).type}"
            )
    num_classes = _list_length(path, schema, levels)
    try:
        columns = pq.read_table(path, columns=small)
    except Exception as err:
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    if any(columns.column(name).null_count for name in small):
        raise InputError(f"{path}: missing values in {small}")
    preds = np.stack([columns.column(f"pred_k{k}").to_numpy() for k in levels], axis=1)
    if ((preds < 0) | (preds >= num_classes)).any():
        raise InputError(f"{path}: predictions must be classes in [0, {num_classes})")
    return SensitivityTable(
        index=columns.column("index").to_numpy(),
        labels=columns.column("label").to_numpy(),
        ks=np.asarray(levels[1:], dtype=np.int64),
        preds=preds,
        path=path,
        num_classes=num_classes,
        block_rows=block_rows,
    )


def _list_length(path: Path, schema: pa.Schema, levels: list[int]) -> int:
    """C: every probs_k{k} must be a fixed-size list of C ≥ 2 float32 (C from probs_k0)."""
    lengths = {}
    for k in levels:
        kind = schema.field(f"probs_k{k}").type
        if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
            raise InputError(
                f"{path}: column 'probs_k{k}' must be a fixed-size list of float32, not {kind}"
            )
        lengths[k] = kind.list_size
    num_classes = lengths[0]
    if num_classes < 2:
        raise InputError(
            f"{path}: column 'probs_k0' must list C ≥ 2 probabilities, has {num_classes}"
        )
    for k, length in lengths.items():
        if length != num_classes:
            raise InputError(
                f"{path}: column 'probs_k{k}' has lists of length {length}, expected {num_classes} "
                "(the length of probs_k0)"
            )
    return num_classes
