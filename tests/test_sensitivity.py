"""Sparse FGSM, the sensitivity table, and the ISEF / FGSM-CS / PSS scores."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustcore.scores.sensitivity  # noqa: F401  (registers isef, fgsm_cs, pss)
from robustcore import data
from robustcore.cost import Cost
from robustcore.io import InputError
from robustcore.scores.base import REGISTRY, ScoreInputs
from robustcore.sensitivity import (
    SensitivityTable,
    flip_rates,
    read_sensitivity,
    sensitivity_blocks,
    sensitivity_table,
    sparse_fgsm,
    write_sensitivity,
)

C, H, W = 3, 5, 5
EPS = 0.05


def close(device: torch.device) -> float:
    """Absolute tolerance between batched and per-sample float32 results: fp32 rounding, which
    differs more between CUDA kernels of different batch sizes than on the CPU (no TF32)."""
    return 1e-6 if device.type == "cpu" else 1e-5


def tiny_cnn(device: torch.device | None = None) -> nn.Module:
    """A smooth (tanh) CNN with BatchNorm whose running stats differ from batch stats, built on
    the CPU (the same weights on every device) and moved to `device`."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * H * W, 3),
    )
    bn = model[1]
    bn.running_mean.copy_(torch.randn(4) * 0.5)
    bn.running_var.copy_(torch.rand(4) + 0.3)
    return model.to(device or "cpu")


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, mode: str):
    """One sample at a time, positions sorted by hand: the obviously-correct Sparse FGSM."""
    net = copy.deepcopy(model).eval()
    out = x.clone()
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xi), y[i : i + 1]), xi)
        g = g[0]
        if mode == "pixel":
            mags = g.abs().sum(0).flatten().tolist()
            chosen = sorted(range(len(mags)), key=lambda j: -mags[j])[:k]
            for j in chosen:
                r, c = divmod(j, W)
                for ch in range(C):
                    out[i, ch, r, c] = x[i, ch, r, c] + EPS * torch.sign(g[ch, r, c])
        else:
            mags = g.abs().flatten().tolist()
            chosen = sorted(range(len(mags)), key=lambda j: -mags[j])[:k]
            for j in chosen:
                ch, rest = divmod(j, H * W)
                r, c = divmod(rest, W)
                out[i, ch, r, c] = x[i, ch, r, c] + EPS * torch.sign(g[ch, r, c])
    return out.clamp(0, 1)


@pytest.fixture
def batch(device):
    """Inputs away from 0 and 1 so clipping does not interfere, on the test device."""
    gen = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(6, C, H, W, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return x.to(device), y.to(device)


@pytest.mark.parametrize(
    ("mode", "ks", "positions"),
    [("pixel", [1, 3, 10, 25, 40], H * W), ("element", [1, 5, 30, 75, 200], C * H * W)],
)
def test_sparse_fgsm_matches_per_sample_loop(batch, device, mode, ks, positions):
    x, y = batch
    model = tiny_cnn(device).train()  # attacked in eval mode, train mode restored
    adv = sparse_fgsm(model, x, y, eps=EPS, ks=ks, mode=mode)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert list(adv) == ks
    for k in ks:
        assert adv[k].device == x.device
        expected = reference(model, x, y, k, mode)
        torch.testing.assert_close(adv[k], expected, atol=close(device), rtol=0)
        diff = adv[k] - x
        changed = diff != 0
        assert torch.allclose(diff[changed].abs(), torch.tensor(EPS, device=device), atol=1e-6)
        if mode == "pixel":
            location = changed.any(1)
            assert torch.equal(changed.all(1), location)  # every channel at a chosen location
            assert location.flatten(1).sum(1).tolist() == [min(k, positions)] * len(x)
        else:
            assert changed.flatten(1).sum(1).tolist() == [min(k, positions)] * len(x)


def test_sparse_fgsm_clips_and_vector_modes_agree(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).to(device)
    x = torch.tensor([[0.0, 1.0, 0.01, 0.99, 0.5, 0.5]] * 3, device=device)
    y = torch.tensor([0, 1, 2], device=device)
    pixel = sparse_fgsm(model, x, y, eps=0.1, ks=[2, 6], mode="pixel")
    element = sparse_fgsm(model, x, y, eps=0.1, ks=[2, 6], mode="element")
    sign = torch.autograd.functional.jacobian(
        lambda v: F.cross_entropy(model(v), y, reduction="sum"), x
    ).sign()
    for k in (2, 6):
        assert torch.equal(pixel[k], element[k])
        assert pixel[k].min() >= 0 and pixel[k].max() <= 1
    torch.testing.assert_close(element[6], (x + 0.1 * sign).clamp(0, 1))


def make_split(n: int = 10) -> data.Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, C, H, W)).astype(np.uint8)
    return data.Split(labels=np.arange(n, dtype=np.int64) % 3, images=images)


def test_sensitivity_table_rows_and_clean_forward(device):
    split = make_split()
    model = tiny_cnn(device).train()
    ks = [16, 1, 4]  # any order in; levels come out ascending
    cost = Cost()
    loader = data.Loader(split, 4, device)
    table = sensitivity_table(model, loader, eps=EPS, ks=ks, mode="pixel", cost=cost)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert table.levels == [0, 1, 4, 16] and table.num_classes == 3 and len(table) == len(split)
    assert table.index.tolist() == list(range(len(split)))
    assert (table.labels == split.labels).all()
    assert table.probs.dtype == np.float32 and table.probs.shape == (len(split), 4, 3)
    np.testing.assert_allclose(table.probs.sum(axis=2), 1.0, atol=1e-5)
    assert (table.preds == table.probs.argmax(axis=2)).all()
    x = torch.from_numpy(split.images).to(device).float() / 255
    y = torch.from_numpy(split.labels).to(device)
    net = copy.deepcopy(model).eval()
    adv = sparse_fgsm(net, x, y, eps=EPS, ks=ks)
    with torch.no_grad():
        for level, k in enumerate(table.levels):
            forward = net(x if k == 0 else adv[k]).softmax(1).cpu().numpy()
            np.testing.assert_allclose(table.probs[:, level], forward, atol=close(device))
    # per sample: a different batching gives the same table
    again = sensitivity_table(model, data.Loader(split, 7, device), eps=EPS, ks=ks, mode="pixel")
    np.testing.assert_allclose(again.probs, table.probs, atol=close(device), rtol=0)
    assert (again.preds == table.preds).all()
    assert cost.forward == {"sensitivity_grad": 10, "sensitivity_forward": 30}
    assert cost.backward == {"sensitivity_grad": 10}


def test_rows_must_come_in_ascending_sample_order(tmp_path, device):
    loader = data.Loader(make_split(), 2, device, indices=np.array([0, 1, 5, 3, 4]))
    settings = {"eps": EPS, "ks": [1], "mode": "pixel"}
    with pytest.raises(InputError, match=r"ascending.*unsorted index 3 at row 3 after 5"):
        sensitivity_table(tiny_cnn(device), loader, **settings)
    path = tmp_path / "sparse_fgsm.parquet"
    blocks = sensitivity_blocks(tiny_cnn(device), loader, **settings)
    with pytest.raises(InputError, match=r"sparse_fgsm\.parquet.*unsorted index 3 at row 3"):
        write_sensitivity(path, blocks, ks=[1], row_group_bytes=1)  # a row group per block
    assert list(tmp_path.iterdir()) == []


def random_table(n: int, num_classes: int, ks: list[int], seed: int = 0) -> SensitivityTable:
    """Dirichlet probabilities (some exactly 0), predictions right about 60 % of the time."""
    rng = np.random.default_rng(seed)
    levels = 1 + len(ks)
    probs = rng.dirichlet(np.full(num_classes, 0.3), size=(n, levels)).astype(np.float32)
    probs[probs < 1e-3] = 0.0  # exercises 0·log 0 = 0
    labels = rng.integers(0, num_classes, n)
    right = rng.random((n, levels)) < 0.6
    preds = np.where(right, labels[:, None], rng.integers(0, num_classes, (n, levels)))
    index = np.sort(rng.choice(10 * n, size=n, replace=False))  # gaps in the sample indices
    return SensitivityTable(index=index, labels=labels, ks=ks, preds=preds, probs=probs)


def assert_same_table(got: SensitivityTable, want: SensitivityTable) -> None:
    """Equal per-sample arrays and, block by block, equal probabilities."""
    assert got.levels == want.levels and got.num_classes == want.num_classes
    for name in ("index", "labels", "preds"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    blocks = list(got.prob_blocks())
    assert [b.start for b, _ in blocks] == list(range(0, len(want), got.rows_per_block))
    assert all(p.dtype == np.float32 and len(p) <= got.rows_per_block for _, p in blocks)
    np.testing.assert_array_equal(np.concatenate([p for _, p in blocks]), want.probs)


def test_flip_rates_count_samples_whose_prediction_changes(tmp_path):
    preds = np.array([[2, 2, 1], [0, 1, 1], [1, 1, 1], [2, 0, 2]])
    probs = np.full((4, 3, 3), 1 / 3)
    table = SensitivityTable(
        index=np.arange(4), labels=[0] * 4, ks=[1, 4], preds=preds, probs=probs
    )
    # k = 1: samples 1 and 3 flip; k = 4: samples 0 and 1 (sample 3 is back to its clean class).
    assert flip_rates(table) == {1: 0.5, 4: 0.5}
    file_table = write_sensitivity(tmp_path / "t.parquet", table.blocks(), ks=[1, 4])
    assert flip_rates(file_table) == {1: 0.5, 4: 0.5}


def test_write_read_roundtrip_by_blocks(tmp_path, device):
    table = random_table(50, 10, [1, 4, 16, 64])
    path = tmp_path / "sparse_fgsm.parquet"
    written = write_sensitivity(path, table.blocks(), ks=table.ks, row_group_bytes=12 * 5 * 10 * 4)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.names == [
        "index", "label", "pred_k0", "pred_k1", "pred_k4", "pred_k16", "pred_k64",
        "probs_k0", "probs_k1", "probs_k4", "probs_k16", "probs_k64",
    ]  # fmt: skip
    assert pf.schema_arrow.field("probs_k4").type == pa.list_(pa.float32(), 10)
    assert pf.metadata.num_row_groups == 5  # 12 rows each (the table's blocks are bigger)
    assert written.path == path and written.probs is None
    assert_same_table(written, table)
    assert [f.name for f in tmp_path.iterdir()] == ["sparse_fgsm.parquet"]  # no temporary left
    for rows in (1, 7, 50, 1000):
        assert_same_table(read_sensitivity(path, block_rows=rows), table)
    # the job's path: the attack streamed to the file equals the table built in memory
    model, loader = tiny_cnn(device), data.Loader(make_split(), 3, device)
    settings = {"eps": EPS, "ks": [4, 1], "mode": "element"}
    in_memory = sensitivity_table(model, loader, **settings)
    streamed = write_sensitivity(path, sensitivity_blocks(model, loader, **settings), ks=[1, 4])
    assert_same_table(streamed, in_memory)


def test_an_interrupted_write_leaves_no_file(tmp_path):
    table = random_table(40, 10, [1, 4])
    path = tmp_path / "sparse_fgsm.parquet"

    def failing_blocks():
        for number, block in enumerate(
            SensitivityTable(**{**vars(table), "block_rows": 5}).blocks()
        ):
            if number == 4:  # two row groups are on disk by now
                raise RuntimeError("killed")
            yield block

    with pytest.raises(RuntimeError, match="killed"):
        write_sensitivity(path, failing_blocks(), ks=[1, 4], row_group_bytes=5 * 3 * 10 * 4)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no samples"):
        write_sensitivity(path, iter([]), ks=[1, 4])
    assert list(tmp_path.iterdir()) == []


def _rewrite(path: Path, edit) -> None:
    """Rewrite a parquet file through `edit(pyarrow.Table) -> pyarrow.Table`."""
    pq.write_table(edit(pq.read_table(path)), path)


def _shorter_lists(t: pa.Table) -> pa.Table:
    """probs_k4 with lists of 9 instead of 10."""
    values = t.column("probs_k4").combine_chunks().flatten().to_numpy().reshape(-1, 10)[:, :9]
    column = pa.FixedSizeListArray.from_arrays(values.ravel(), 9)
    return t.set_column(t.schema.get_field_index("probs_k4"), "probs_k4", column)


def _float64_lists(t: pa.Table) -> pa.Table:
    """probs_k1 as float64 lists."""
    column = t.column("probs_k1").cast(pa.list_(pa.float64(), 10))
    return t.set_column(t.schema.get_field_index("probs_k1"), "probs_k1", column)


def _index(values) -> callable:
    """Replace the index column."""
    return lambda t: t.set_column(0, "index", pa.array(values, pa.int64()))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop_columns(["label"]), "missing column 'label'"),
        (lambda t: t.drop_columns(["pred_k4"]), "missing column 'pred_k4'"),
        (lambda t: t.drop_columns(["probs_k1"]), "missing column 'probs_k1'"),
        (lambda t: t.drop_columns(["pred_k0", "probs_k0"]), "no clean level.*pred_k0, probs_k0"),
        (
            lambda t: t.drop_columns(["pred_k1", "probs_k1", "pred_k4", "probs_k4"]),
            "no attacked level k > 0",
        ),
        (_shorter_lists, "'probs_k4' has lists of length 9, expected 10"),
        (_float64_lists, "'probs_k1' must be a fixed-size list of float32"),
        (_index([0, 1, 2, 2, 4, 5]), "strictly ascending.*duplicate index 2 at row 3"),
        (_index([0, 1, 3, 2, 4, 5]), "strictly ascending.*unsorted index 2 at row 3 after 3"),
        (lambda t: t.set_column(2, "pred_k0", pa.array([0, 1, 2, 3, 10, 5])), r"\[0, 10\)"),
    ],
)
def test_read_errors_name_the_file_and_the_expectation(tmp_path, edit, message):
    path = tmp_path / "sparse_fgsm.parquet"
    write_sensitivity(path, random_table(6, 10, [1, 4]).blocks(), ks=[1, 4])
    read_sensitivity(path)  # the unedited file is fine
    _rewrite(path, edit)
    with pytest.raises(InputError, match=rf"sparse_fgsm\.parquet: .*{message}"):
        read_sensitivity(path)


def test_read_errors_for_a_missing_or_corrupt_file(tmp_path):
    path = tmp_path / "sparse_fgsm.parquet"
    with pytest.raises(InputError, match=r"sparse_fgsm\.parquet: file not found"):
        read_sensitivity(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"sparse_fgsm\.parquet: not a readable parquet file"):
        read_sensitivity(path)


# --------------------------------------------------------- the scores against the long-format code


def long_frame(table: SensitivityTable) -> pd.DataFrame:
    """The former layout: one row per sample and k, index, label, k, pred, p0..p{C-1}, any order."""
    n, levels = len(table), len(table.levels)
    columns = {
        "index": np.repeat(table.index, levels),
        "label": np.repeat(table.labels, levels),
        "k": np.tile(table.levels, n),
        "pred": table.preds.ravel(),
    }
    probs = table.probs.reshape(n * levels, table.num_classes)
    columns.update({f"p{c}": probs[:, c] for c in range(table.num_classes)})
    return pd.DataFrame(columns).sample(frac=1.0, random_state=0)


def long_format_scores(frame: pd.DataFrame, labels: np.ndarray) -> dict[str, dict]:
    """The former implementation, whole table at once: isef, fgsm_cs, pss with their components."""
    frame = frame.sort_values(["index", "k"], kind="stable")
    ks = np.unique(frame["k"].to_numpy())
    n, levels = frame["index"].nunique(), len(ks)
    columns = [c for c in frame.columns if c.startswith("p") and c[1:].isdigit()]
    probs = frame[columns].to_numpy(np.float64).reshape(n, levels, len(columns))
    preds = frame["pred"].to_numpy().reshape(n, levels)
    ks = ks[1:].astype(np.float64)

    def entropy10(p):
        return -(p * np.log10(np.where(p > 0, p, 1.0))).sum(axis=-1)

    def minmax(v):
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    wrong = preds != labels[:, None]
    first = wrong[:, 1:].argmax(axis=1)
    s_inv = np.where(wrong[:, 0], 1.0, np.where(wrong[:, 1:].any(axis=1), 1.0 / ks[first], 0.0))
    s_ent = entropy10(probs[:, 0])
    s_adv = (np.abs(probs[:, :1] - probs[:, 1:]).sum(axis=2) / ks).sum(axis=1)
    s_unc = entropy10(probs).max(axis=1)
    s_rob = (preds[:, 1:] != labels[:, None]).any(axis=1).astype(np.float64)
    pss = (np.linalg.norm(probs[:, 1:] - probs[:, :1], axis=2) / (np.log2(ks) + 1.0)).sum(axis=1)
    return {
        "isef": {
            "score": 0.5 * minmax(s_inv) + 0.5 * minmax(s_ent),
            "s_inv": s_inv,
            "s_ent": s_ent,
        },
        "fgsm_cs": {
            "score": 0.5 * s_adv + 0.3 * s_unc + 0.2 * s_rob,
            "s_adv": s_adv,
            "s_unc": s_unc,
            "s_rob": s_rob,
        },
        "pss": {"score": pss},
    }


def test_scores_match_the_long_format_formulas_for_any_block_size(tmp_path):
    table = random_table(200, 10, [1, 4, 16, 64])
    expected = long_format_scores(long_frame(table), table.labels)
    path = tmp_path / "sparse_fgsm.parquet"
    write_sensitivity(path, table.blocks(), ks=table.ks, row_group_bytes=30 * 5 * 10 * 4)
    tables = {
        "memory, one block": SensitivityTable(**{**vars(table), "block_rows": len(table)}),
        "memory, blocks of 7": SensitivityTable(**{**vars(table), "block_rows": 7}),
        "file, one block": read_sensitivity(path, block_rows=len(table)),
        "file, blocks of 7": read_sensitivity(path, block_rows=7),
        "file, default blocks": read_sensitivity(path),
    }
    results = {}
    for where, source in tables.items():
        inputs = ScoreInputs(index=table.index, labels=table.labels, sensitivity=source)
        for name, columns in expected.items():
            out = REGISTRY[name](inputs, seed=0)
            results[where, name] = out
            np.testing.assert_array_equal(out["index"], table.index)
            for column, values in columns.items():
                np.testing.assert_allclose(out[column], values, rtol=0, atol=1e-12, err_msg=where)
    for name in expected:  # the block size changes nothing, to the bit
        one = results["memory, one block", name]
        for where in tables:
            pd.testing.assert_frame_equal(results[where, name], one, check_exact=True)
    # the scores reach beyond one block: ISEF's min-max is over all samples, not per block
    assert results["file, blocks of 7", "isef"]["score"].agg(["min", "max"]).tolist() == [0, 1]


def test_scores_take_their_samples_from_a_larger_table():
    table = random_table(60, 10, [1, 4])
    keep = np.arange(0, 60, 3)
    subset = SensitivityTable(
        index=table.index[keep],
        labels=table.labels[keep],
        ks=table.ks,
        preds=table.preds[keep],
        probs=table.probs[keep],
    )
    inputs = ScoreInputs(index=subset.index, labels=subset.labels, sensitivity=table)
    alone = ScoreInputs(index=subset.index, labels=subset.labels, sensitivity=subset)
    for name in ("isef", "fgsm_cs", "pss"):
        pd.testing.assert_frame_equal(REGISTRY[name](inputs), REGISTRY[name](alone))


# ------------------------------------------------------------------------------ hand-made tables

# Five samples, all labelled 0, 3 classes, ks 1, 4, 16; rows: clean, k=1, k=4, k=16.
PROBS = {
    0: [[0.2, 0.7, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]],  # wrong clean
    1: [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]],  # first wrong at 4
    2: [[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]],  # never wrong
    3: [[1 / 3, 1 / 3, 1 / 3], [0.3, 0.4, 0.3], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3]],  # wrong at 1
    4: [[0.4, 0.5, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]],  # fixed by attack
}
KS = [1, 4, 16]


def stored(p: list[float]) -> np.ndarray:
    """Probabilities as the table stores them (float32), back in float64."""
    return np.asarray(p, dtype=np.float32).astype(np.float64)


def hand_table(probs: dict[int, list[list[float]]], ks: list[int]) -> SensitivityTable:
    index = np.array(sorted(probs))
    array = np.array([probs[i] for i in index], dtype=np.float32)
    preds = array.argmax(axis=2)  # uniform: the first class
    labels = np.zeros(len(index), np.int64)
    return SensitivityTable(index=index, labels=labels, ks=ks, preds=preds, probs=array)


def inputs_for(table: SensitivityTable) -> ScoreInputs:
    return ScoreInputs(index=table.index, labels=table.labels, sensitivity=table)


def run(name: str, table: SensitivityTable, **params) -> pd.DataFrame:
    return REGISTRY[name](inputs_for(table), seed=0, **params)


def h10(p: list[float]) -> float:
    return -sum(q * math.log10(q) for q in stored(p) if q > 0)


def test_isef_by_hand():
    out = run("isef", hand_table(PROBS, KS))
    np.testing.assert_allclose(out["s_inv"], [1.0, 0.25, 0.0, 1.0, 1.0])
    ent = np.array([h10(PROBS[i][0]) for i in range(5)])
    np.testing.assert_allclose(out["s_ent"], ent)
    assert out["s_ent"].idxmax() == 3 and math.isclose(out["s_ent"][3], math.log10(3), rel_tol=1e-6)
    ent_n = (ent - ent.min()) / (ent.max() - ent.min())
    inv_n = np.array([1.0, 0.25, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(out["score"], 0.5 * inv_n + 0.5 * ent_n)
    np.testing.assert_allclose(
        run("isef", hand_table(PROBS, KS), alpha=0.2)["score"], 0.2 * inv_n + 0.8 * ent_n
    )


def test_isef_uses_the_tables_ks_and_constant_columns_give_zero():
    # the table's own ks (2, 8): first wrong at the second level -> 1/8
    out = run("isef", hand_table({1: PROBS[1][:3], 2: PROBS[2][:3]}, [2, 8]))
    np.testing.assert_allclose(out["s_inv"], [1 / 8, 0.0])
    # nobody is ever misclassified: S_inv is constant 0, minmax gives 0, not NaN
    never = {i: [PROBS[2][0]] * 4 for i in range(3)}
    out = run("isef", hand_table(never, KS), alpha=1.0)
    assert (out["score"] == 0).all() and (out["s_inv"] == 0).all()


def test_fgsm_cs_by_hand():
    out = run("fgsm_cs", hand_table(PROBS, KS))
    for i, levels in PROBS.items():
        p0 = stored(levels[0])
        s_adv = sum(np.abs(p0 - stored(p)).sum() / k for k, p in zip(KS, levels[1:], strict=True))
        s_unc = max(h10(p) for p in levels)
        assert out["s_adv"][i] == pytest.approx(s_adv)
        assert out["s_unc"][i] == pytest.approx(s_unc)
        assert out["score"][i] == pytest.approx(0.5 * s_adv + 0.3 * s_unc + 0.2 * out["s_rob"][i])
    # Eq. 6 as written: 1 if some k's prediction is not the true label, whatever the clean one
    assert out["s_rob"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert out["s_unc"][3] == pytest.approx(math.log10(3))  # the uniform clean output
    custom = run("fgsm_cs", hand_table(PROBS, KS), weights=[0.0, 0.0, 1.0])
    assert custom["score"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_pss_by_hand():
    out = run("pss", hand_table(PROBS, KS))
    weight = {1: 1.0, 4: 1 / 3, 16: 1 / 5}  # 1 / (log2 k + 1)
    for i, levels in PROBS.items():
        p0 = stored(levels[0])
        expected = sum(
            weight[k] * np.linalg.norm(stored(p) - p0) for k, p in zip(KS, levels[1:], strict=True)
        )
        assert out["score"][i] == pytest.approx(expected)


def test_scores_reject_a_table_missing_a_sample_or_with_other_labels():
    table = hand_table(PROBS, KS)
    lacking = ScoreInputs(index=np.arange(6), labels=np.zeros(6, np.int64), sensitivity=table)
    relabelled = ScoreInputs(index=table.index, labels=np.ones(5, np.int64), sensitivity=table)
    for name in ("isef", "fgsm_cs", "pss"):
        with pytest.raises(InputError, match=r"sensitivity table: no row for 1 of the 6.*\[5\]"):
            REGISTRY[name](lacking)
        with pytest.raises(InputError, match="sensitivity table: labels disagree"):
            REGISTRY[name](relabelled)
        with pytest.raises(InputError, match="need the Sparse-FGSM table"):
            REGISTRY[name](ScoreInputs(index=table.index, labels=table.labels))


def test_boundary_sample_scores_highest_and_is_kept_by_the_natural_end(device):
    model = nn.Linear(3, 3, bias=False).to(device)
    with torch.no_grad():
        model.weight.copy_(10 * torch.eye(3))
    # row 0 sits on the boundary (equal logits); rows 1 and 2 are far inside their classes
    images = np.array([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1]], dtype=np.float32)
    split = data.Split(labels=np.array([0, 0, 1]), images=images)
    loader = data.Loader(split, 3, device)
    table = sensitivity_table(model, loader, eps=0.05, ks=[1, 2, 3], mode="pixel")
    inputs = ScoreInputs(index=np.arange(3), labels=split.labels, sensitivity=table)
    for name in ("isef", "fgsm_cs", "pss"):
        method = REGISTRY[name]
        out = method(inputs, seed=0)
        assert method.natural == "high"
        kept = out.sort_values("score", ascending=False)["index"].iloc[0]
        assert kept == 0 and out["score"][0] > out["score"][1:].max(), name


# ----------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"eps": -0.1}, "'eps'"),
        ({"ks": [0, 4]}, "'ks'"),
        ({"ks": [1.5]}, "'ks'"),
        ({"ks": []}, "'ks'"),
        ({"ks": [4, 4]}, "'ks'"),
        ({"mode": "pixels"}, r"'mode'.*'pixel', 'element'"),
    ],
)
def test_bad_attack_parameters(batch, device, params, key):
    x, y = batch
    settings = {"eps": EPS, "ks": [1, 4], "mode": "pixel", **params}
    with pytest.raises(InputError, match=key):
        sparse_fgsm(tiny_cnn(device), x, y, **settings)
    with pytest.raises(InputError, match=key):
        sensitivity_table(tiny_cnn(device), data.Loader(make_split(3), 4, device), **settings)


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("fgsm_cs", {"weights": [0.5, 0.3, 0.1]}, "'weights'"),
        ("fgsm_cs", {"weights": [0.5, 0.5]}, "'weights'"),
        ("fgsm_cs", {"weights": [1.2, -0.2, 0.0]}, "'weights'"),
        ("isef", {"alpha": 1.5}, "'alpha'"),
        ("isef", {"alpha": -0.1}, "'alpha'"),
        ("pss", {"alpha": 0.5}, "unknown parameter"),
    ],
)
def test_bad_score_parameters(name, params, key):
    with pytest.raises(InputError, match=key):
        run(name, hand_table(PROBS, KS), **params)
