"""Sparse FGSM, the sensitivity table, and the ISEF / FGSM-CS / PSS scores."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
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
    flip_rates,
    read_sensitivity,
    sensitivity_table,
    sparse_fgsm,
    write_sensitivity,
)

C, H, W = 3, 5, 5
EPS = 0.05


def tiny_cnn() -> nn.Module:
    """A smooth (tanh) CNN with BatchNorm whose running stats differ from batch stats."""
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
    return model


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
def batch():
    """Inputs away from 0 and 1 so clipping does not interfere."""
    gen = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(6, C, H, W, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, y


@pytest.mark.parametrize(
    ("mode", "ks", "positions"),
    [("pixel", [1, 3, 10, 25, 40], H * W), ("element", [1, 5, 30, 75, 200], C * H * W)],
)
def test_sparse_fgsm_matches_per_sample_loop(batch, mode, ks, positions):
    x, y = batch
    model = tiny_cnn().train()  # attacked in eval mode, train mode restored
    adv = sparse_fgsm(model, x, y, eps=EPS, ks=ks, mode=mode)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert list(adv) == ks
    for k in ks:
        torch.testing.assert_close(adv[k], reference(model, x, y, k, mode), atol=1e-6, rtol=0)
        diff = adv[k] - x
        changed = diff != 0
        assert torch.allclose(diff[changed].abs(), torch.tensor(EPS), atol=1e-6)
        if mode == "pixel":
            location = changed.any(1)
            assert torch.equal(changed.all(1), location)  # every channel at a chosen location
            assert location.flatten(1).sum(1).tolist() == [min(k, positions)] * len(x)
        else:
            assert changed.flatten(1).sum(1).tolist() == [min(k, positions)] * len(x)


def test_sparse_fgsm_clips_and_vector_modes_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x = torch.tensor([[0.0, 1.0, 0.01, 0.99, 0.5, 0.5]] * 3)
    y = torch.tensor([0, 1, 2])
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


def test_sensitivity_table_rows_and_clean_forward():
    split = make_split()
    model = tiny_cnn().train()
    ks = [1, 4, 16]
    cost = Cost()
    table = sensitivity_table(model, data.Loader(split, 4), eps=EPS, ks=ks, mode="pixel", cost=cost)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert list(table.columns) == ["index", "label", "k", "pred", "p0", "p1", "p2"]
    assert len(table) == len(split) * 4
    expected = [(i, k) for i in range(len(split)) for k in (0, *ks)]
    assert list(zip(table["index"], table["k"], strict=True)) == expected
    assert (table["label"].to_numpy() == np.repeat(split.labels, 4)).all()
    probs = table[["p0", "p1", "p2"]]
    assert (probs.dtypes == np.float32).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (table["pred"].to_numpy() == probs.to_numpy().argmax(1)).all()
    x = torch.from_numpy(split.images).float() / 255
    y = torch.from_numpy(split.labels)
    net = copy.deepcopy(model).eval()
    adv = sparse_fgsm(net, x, y, eps=EPS, ks=ks)
    with torch.no_grad():
        for k in (0, *ks):
            forward = net(x if k == 0 else adv[k]).softmax(1).numpy()
            np.testing.assert_allclose(probs[table["k"] == k], forward, atol=1e-6)
    # per sample: a different batching gives the same table
    again = sensitivity_table(model, data.Loader(split, 7), eps=EPS, ks=ks, mode="pixel")
    pd.testing.assert_frame_equal(table, again, atol=1e-6, rtol=0)
    assert cost.forward == {"sensitivity_grad": 10, "sensitivity_forward": 30}
    assert cost.backward == {"sensitivity_grad": 10}


def test_flip_rates_count_samples_whose_prediction_changes():
    frame = pd.DataFrame(
        {
            "index": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],
            "k": [0, 1, 4] * 4,
            "pred": [2, 2, 1, 0, 1, 1, 1, 1, 1, 2, 0, 2],
        }
    ).sample(frac=1, random_state=0)  # row order must not matter
    # k = 1: samples 1 and 3 flip; k = 4: samples 0 and 1 (sample 3 is back to its clean class).
    assert flip_rates(frame) == {1: 0.5, 4: 0.5}
    assert flip_rates(frame[frame["index"] != 1]) == {1: 1 / 3, 4: 1 / 3}


def test_write_read_roundtrip_and_checks(tmp_path):
    table = sensitivity_table(
        tiny_cnn(), data.Loader(make_split(3), 8), eps=EPS, ks=[1], mode="pixel"
    )
    path = tmp_path / "sparse_fgsm.parquet"
    write_sensitivity(path, table)
    pd.testing.assert_frame_equal(read_sensitivity(path), table)
    write_sensitivity(path, table.drop(columns=["pred"]))
    with pytest.raises(InputError, match=r"sparse_fgsm\.parquet.*pred"):
        read_sensitivity(path)
    write_sensitivity(path, table[table["k"] != 0])
    with pytest.raises(InputError, match=r"sparse_fgsm\.parquet.*k = 0"):
        read_sensitivity(path)


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


def hand_table(probs: dict[int, list[list[float]]], ks: list[int]) -> pd.DataFrame:
    rows = []
    for index, levels in probs.items():
        for k, p in zip([0, *ks], levels, strict=True):
            pred = 0 if p[0] == max(p) else int(np.argmax(p))  # uniform: the first class
            rows.append({"index": index, "label": 0, "k": k, "pred": pred, "p0": p[0]})
            rows[-1].update({"p1": p[1], "p2": p[2]})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # any row order


def inputs_for(table: pd.DataFrame) -> ScoreInputs:
    index = np.sort(table["index"].unique()).astype(np.int64)
    return ScoreInputs(index=index, labels=np.zeros(len(index), np.int64), sensitivity=table)


def run(name: str, table: pd.DataFrame, **params) -> pd.DataFrame:
    return REGISTRY[name](inputs_for(table), seed=0, **params)


def h10(p: list[float]) -> float:
    return -sum(q * math.log10(q) for q in p if q > 0)


def test_isef_by_hand():
    out = run("isef", hand_table(PROBS, KS))
    np.testing.assert_allclose(out["s_inv"], [1.0, 0.25, 0.0, 1.0, 1.0])
    ent = np.array([h10(PROBS[i][0]) for i in range(5)])
    np.testing.assert_allclose(out["s_ent"], ent)
    assert out["s_ent"].idxmax() == 3 and math.isclose(out["s_ent"][3], math.log10(3))
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
        p0 = np.array(levels[0])
        s_adv = sum(np.abs(p0 - np.array(p)).sum() / k for k, p in zip(KS, levels[1:], strict=True))
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
        p0 = np.array(levels[0])
        expected = sum(
            weight[k] * np.linalg.norm(np.array(p) - p0)
            for k, p in zip(KS, levels[1:], strict=True)
        )
        assert out["score"][i] == pytest.approx(expected)


def test_scores_reject_a_table_missing_a_row():
    table = hand_table(PROBS, KS)
    table = table[~((table["index"] == 2) & (table["k"] == 4))]
    for name in ("isef", "fgsm_cs", "pss"):
        with pytest.raises(InputError, match="sensitivity table"):
            run(name, table)


def test_boundary_sample_scores_highest_and_is_kept_by_the_natural_end():
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(10 * torch.eye(3))
    # row 0 sits on the boundary (equal logits); rows 1 and 2 are far inside their classes
    images = np.array([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1]], dtype=np.float32)
    split = data.Split(labels=np.array([0, 0, 1]), images=images)
    table = sensitivity_table(model, data.Loader(split, 3), eps=0.05, ks=[1, 2, 3], mode="pixel")
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
def test_bad_attack_parameters(batch, params, key):
    x, y = batch
    settings = {"eps": EPS, "ks": [1, 4], "mode": "pixel", **params}
    with pytest.raises(InputError, match=key):
        sparse_fgsm(tiny_cnn(), x, y, **settings)
    with pytest.raises(InputError, match=key):
        sensitivity_table(tiny_cnn(), data.Loader(make_split(3), 4), **settings)


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
