"""One shared probe pass over the training set: penultimate features, logits, last-layer weights."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robustcore.data import Loader
from robustcore.distributed import World, batch_shard, gather_in_order, is_distributed, is_main
from robustcore.io import InputError, read_npz, write_npz
from robustcore.runtime import eval_mode

PROBE_KEYS = ["index", "labels", "features", "logits", "last_weight", "last_bias"]


@dataclass(frozen=True)
class ProbeData:
    """The proxy's view of every training sample (rows sorted by sample index)."""

    index: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    features: np.ndarray  # float32 (N, d): the input of the last linear layer
    logits: np.ndarray  # float32 (N, C)
    last_weight: np.ndarray  # float32 (C, d)
    last_bias: np.ndarray  # float32 (C,)

    @property
    def probs(self) -> np.ndarray:
        """Softmax of all logits, float64 for stable downstream sums."""
        return self.probabilities()

    def probabilities(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Softmax of the logits of the given rows only (float64)."""
        logits = self.logits[rows].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def residual(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """p − onehot(y): the cross-entropy gradient with respect to the logits."""
        probs = self.probabilities(rows)
        labels = self.labels[rows]
        probs[np.arange(len(labels)), labels] -= 1.0
        return probs

    def grad_embedding(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Per-sample gradient of the CE loss with respect to (W, b) of the last layer, flattened.

        For logits = W h + b the gradient is (p − y) hᵀ for W and (p − y) for b, so the row is
        the outer product (p − y) ⊗ [h, 1], of length C·(d + 1).
        """
        residual = self.residual(rows)
        features = self.features[rows].astype(np.float64)
        augmented = np.concatenate([features, np.ones((len(features), 1))], axis=1)
        return (residual[:, :, None] * augmented[:, None, :]).reshape(len(features), -1)

    def grad_embedding_norm(self) -> np.ndarray:
        """‖grad_embedding‖₂ per sample without materialising it: ‖p − y‖·‖[h, 1]‖."""
        residual_norm = np.linalg.norm(self.residual(), axis=1)
        feature_norm = np.sqrt((self.features.astype(np.float64) ** 2).sum(axis=1) + 1.0)
        return residual_norm * feature_norm


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's final nn.Linear (the classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("the model has no nn.Linear classifier head to probe")
    return linears[-1]


def run_probe(model: nn.Module, loader: Loader, world: World | None = None) -> ProbeData | None:
    """Forward the (unaugmented) training set once in eval mode, recording the head's input.

    Each batch is written into arrays of the final size at its samples' sorted positions, so the
    job holds one copy of N × (d + C) floats (ImageNet: 15.6 GB), not the batches and their
    concatenation besides.

    With a `world` of W > 1 ranks (every rank calls this alike): rank r forwards the loader's
    whole batches r, r + W, ... (batch_shard), and rank 0 receives them one at a time in the
    loader's order (gather_in_order), fills its arrays and returns the probe, equal to the
    1-process one; the other ranks return None.
    """
    head = last_linear(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    index = np.sort(np.asarray(loader.indices, dtype=np.int64))
    own = loader
    if is_distributed(world):
        positions = batch_shard(len(loader), loader.batch_size, world)
        own = loader.subset(np.asarray(loader.indices, dtype=np.int64)[positions])

    def batches():
        """This rank's batches as host arrays: (index, features, logits, labels)."""
        for batch_index, x, y in own.epoch(shuffle=False):
            batch_logits = model(x).float().cpu().numpy()
            batch_features = captured.pop().flatten(1).float().cpu().numpy()
            yield batch_index.cpu().numpy(), batch_features, batch_logits, y.cpu().numpy()

    labels = np.empty(len(index), dtype=np.int64)
    features = logits = None
    try:
        with eval_mode(model), torch.no_grad():
            for batch_index, batch_features, batch_logits, batch_labels in gather_in_order(
                batches(), world
            ):
                if features is None:
                    features = np.empty((len(index), batch_features.shape[1]), np.float32)
                    logits = np.empty((len(index), batch_logits.shape[1]), np.float32)
                rows = np.searchsorted(index, batch_index)
                features[rows], logits[rows] = batch_features, batch_logits
                labels[rows] = batch_labels
    finally:
        hook.remove()
    if not is_main(world):
        return None
    if features is None:
        raise InputError("the probe's loader yielded no samples")
    return ProbeData(
        index=index,
        labels=labels,
        features=features,
        logits=logits,
        last_weight=head.weight.detach().float().cpu().numpy(),
        last_bias=(
            head.bias.detach().float().cpu().numpy()
            if head.bias is not None
            else np.zeros(head.out_features, np.float32)
        ),
    )


def save_probe(path: str | os.PathLike, probe: ProbeData) -> None:
    """Write a probe as .npz, atomically."""
    write_npz(path, **{key: getattr(probe, key) for key in PROBE_KEYS})


def load_probe(path: str | os.PathLike) -> ProbeData:
    """Read a probe .npz written by save_probe."""
    return ProbeData(**read_npz(path, PROBE_KEYS))
