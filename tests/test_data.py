"""Tests for robustcore.data: prepare (all sources, offline), load, Loader."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from robustcore import data
from robustcore.io import InputError, read_npz, sha256_file, write_json, write_npz

# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared digits dataset shared by the read-only tests."""
    out = tmp_path_factory.mktemp("digits")
    data.prepare("digits", out)
    return out


def _no_temp_files(folder: Path) -> bool:
    """True if no atomic-write temporaries were left behind."""
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# -------------------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_values(digits_dir: Path) -> None:
    """1347/450 uint8 1×8×8 images in 0..255, int64 labels, stratified, sorted source rows."""
    from sklearn.datasets import load_digits

    train, test = data.load(digits_dir)
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.shape == (1347, 1, 8, 8) and test.images.shape == (450, 1, 8, 8)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.images.min() == 0 and train.images.max() == 255
    assert train.paths is None
    # stratified: each class's test share is within 1 sample of test_fraction × its count
    all_labels = np.concatenate([train.labels, test.labels])
    for c in range(10):
        n_c = int((all_labels == c).sum())
        assert abs(int((test.labels == c).sum()) - 0.25 * n_c) <= 1
    # the pixels are sklearn's digits scaled by 255/16 (train ∪ test covers every source row once)
    source = load_digits()
    expected = np.rint(source.images * 255 / 16).astype(np.uint8)[:, None]
    both = np.concatenate([train.images, test.images])
    order = np.lexsort(both.reshape(len(both), -1).T[::-1])
    order_src = np.lexsort(expected.reshape(len(expected), -1).T[::-1])
    np.testing.assert_array_equal(both[order], expected[order_src])
    assert np.isin(np.unique(train.images), np.rint(np.arange(17) * 255 / 16)).all()
    assert _no_temp_files(digits_dir)


def test_digits_meta_matches_arrays(digits_dir: Path) -> None:
    """meta.json's mean/std/shape/sizes/sha256 agree with the written arrays."""
    meta = data.load_meta(digits_dir)
    train, _ = data.load(digits_dir)
    x = train.images.astype(np.float64) / 255
    assert meta["source"] == "digits" and meta["num_classes"] == 10
    assert meta["classes"] == [str(c) for c in range(10)]
    assert meta["shape"] == [1, 8, 8]
    assert (meta["n_train"], meta["n_test"]) == (1347, 450)
    np.testing.assert_allclose(meta["mean"], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(meta["std"], x.std(axis=(0, 2, 3)), rtol=1e-12)
    assert meta["sha256"]["train"] == sha256_file(digits_dir / "train.npz")
    assert meta["sha256"]["test"] == sha256_file(digits_dir / "test.npz")
    assert meta["seed"] == 0 and meta["test_fraction"] == 0.25


def test_digits_deterministic_and_seeded(tmp_path: Path, digits_dir: Path) -> None:
    """Same args → byte-identical files; another seed → another split."""
    again = data.prepare("digits", tmp_path / "a")
    assert again["sha256"] == data.load_meta(digits_dir)["sha256"]
    other = data.prepare("digits", tmp_path / "b", seed=1)
    assert other["sha256"]["train"] != again["sha256"]["train"]
    assert other["n_train"] == 1347
    half = data.prepare("digits", tmp_path / "c", test_fraction=0.5)
    assert half["n_test"] in (898, 899)


# --------------------------------------------------------------------------------------- toy2d


def test_toy2d(tmp_path: Path) -> None:
    """1200/400 balanced float32 points in [0,1]; seed determines the bytes."""
    meta = data.prepare("toy2d", tmp_path / "a", seed=3)
    train, test = data.load(tmp_path / "a")
    assert train.images.shape == (1200, 2) and test.images.shape == (400, 2)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [600, 600]
    assert np.bincount(test.labels).tolist() == [200, 200]
    for x in (train.images, test.images):
        assert x.min() >= 0.0 and x.max() <= 1.0
    # min-max scaled by the train bounds: the train set touches both ends on every feature
    np.testing.assert_array_equal(train.images.min(axis=0), [0, 0])
    np.testing.assert_array_equal(train.images.max(axis=0), [1, 1])
    assert not np.array_equal(train.images[:400], test.images)  # independent test stream
    assert meta["shape"] == [2] and meta["num_classes"] == 2
    np.testing.assert_allclose(meta["mean"], train.images.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(meta["std"], train.images.astype(np.float64).std(0), rtol=1e-12)
    same = data.prepare("toy2d", tmp_path / "b", seed=3)
    assert same["sha256"] == meta["sha256"]
    other = data.prepare("toy2d", tmp_path / "c", seed=4)
    assert other["sha256"]["train"] != meta["sha256"]["train"]
    assert not np.array_equal(data.load(tmp_path / "c")[0].images, train.images)


def test_toy2d_test_set_uses_train_bounds(tmp_path: Path) -> None:
    """Without noise both sets lie on the same two curves, so after a shared (train-bound)
    scaling every test point sits on the train points; scaling test by its own bounds would not."""
    data.prepare("toy2d", tmp_path, n_train=2000, n_test=5, noise=0.0)
    train, test = data.load(tmp_path)
    distance = np.linalg.norm(test.images[:, None, :] - train.images[None, :, :], axis=-1)
    assert distance.min(axis=1).max() < 0.01


def test_bad_arguments(tmp_path: Path) -> None:
    """Unknown sources and out-of-range parameters are InputErrors naming the problem."""
    with pytest.raises(InputError, match="unknown dataset source 'svhn'"):
        data.prepare("svhn", tmp_path)
    with pytest.raises(InputError, match="test_fraction"):
        data.prepare("digits", tmp_path, test_fraction=1.5)
    with pytest.raises(InputError, match="noise"):
        data.prepare("toy2d", tmp_path, noise=-1)


# --------------------------------------------------------------------- torchvision, offline


def _pattern(n: int, h: int, w: int, c: int, offset: int) -> np.ndarray:
    """A known uint8 N×H×W×C pattern where every coordinate matters."""
    nn, hh, ww, cc = np.meshgrid(
        np.arange(n), np.arange(h), np.arange(w), np.arange(c), indexing="ij"
    )
    return ((offset + nn * 37 + hh * 3 + ww * 5 + cc * 101) % 256).astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write an uncompressed big-endian idx file (MNIST's raw format)."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_root(root: Path) -> dict[str, np.ndarray]:
    """Write MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte with 20 + 10 images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train_x": _pattern(20, 28, 28, 1, 0)[..., 0],
        "train_y": (np.arange(20) * 7 % 10).astype(np.uint8),
        "test_x": _pattern(10, 28, 28, 1, 50)[..., 0],
        "test_y": (np.arange(10) * 3 % 10).astype(np.uint8),
    }
    _write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"], 2051)
    _write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"], 2049)
    _write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"], 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"], 2049)
    return arrays


def test_mnist_from_raw_idx_files(tmp_path: Path) -> None:
    """Tiny MNIST idx files go through torchvision.datasets.MNIST and round-trip exactly."""
    arrays = _mnist_root(tmp_path / "root")
    meta = data.prepare("mnist", tmp_path / "out", data_root=tmp_path / "root")
    train, test = data.load(tmp_path / "out")
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(test.images[:, 0], arrays["test_x"])
    np.testing.assert_array_equal(train.labels, arrays["train_y"])
    np.testing.assert_array_equal(test.labels, arrays["test_y"])
    assert train.images[4, 0, 2, 9] == (4 * 37 + 2 * 3 + 9 * 5) % 256
    assert meta["num_classes"] == 10 and meta["shape"] == [1, 28, 28]
    assert meta["data_root"] == str((tmp_path / "root").resolve())
    np.testing.assert_allclose(meta["mean"], [train.images.mean() / 255], rtol=1e-12)


def _pickle(path: Path, obj: dict) -> None:
    """Pickle `obj` to `path`."""
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _chw_rows(hwc: np.ndarray) -> np.ndarray:
    """N×H×W×C → CIFAR's N×3072 rows (all red, then green, then blue; each row-major)."""
    return hwc.transpose(0, 3, 1, 2).reshape(len(hwc), -1)


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's CIFAR md5 checks pass for our tiny fake files.

    torchvision verifies every CIFAR file against the md5 of the official release, both in
    `_check_integrity` (the batches) and directly in `_load_meta` (batches.meta / meta), through
    the module-level `check_integrity`. Fake files can never match, so only in tests we replace
    that function with an existence check; production code keeps the full md5 verification.
    """
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_from_python_batches(tmp_path: Path, skip_cifar_md5: None) -> None:
    """Tiny CIFAR-10 pickles go through torchvision.datasets.CIFAR10; HWC→CHW is exact."""
    folder = tmp_path / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_hwc = _pattern(10, 32, 32, 3, 0)
    train_y = [(3 * i + 1) % 10 for i in range(10)]
    # torchvision unpickles with encoding="latin1" and indexes entry["data"], entry["labels"]:
    # the real files are Python 2 pickles whose str keys load as str, so the keys here are str.
    for b in range(5):
        rows = slice(2 * b, 2 * b + 2)
        _pickle(
            folder / f"data_batch_{b + 1}",
            {"data": _chw_rows(train_hwc[rows]), "labels": train_y[rows]},
        )
    test_hwc = _pattern(4, 32, 32, 3, 77)
    _pickle(folder / "test_batch", {"data": _chw_rows(test_hwc), "labels": [9, 0, 5, 2]})
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names})

    meta = data.prepare("cifar10", tmp_path / "out", data_root=tmp_path / "root")
    train, test = data.load(tmp_path / "out")
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.images.flags.c_contiguous
    np.testing.assert_array_equal(train.images, train_hwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(test.images, test_hwc.transpose(0, 3, 1, 2))
    # one specific pixel: image 7, blue channel, row 5, column 11
    assert train.images[7, 2, 5, 11] == (7 * 37 + 5 * 3 + 11 * 5 + 2 * 101) % 256
    assert train.labels.tolist() == train_y and test.labels.tolist() == [9, 0, 5, 2]
    assert meta["classes"] == names and meta["shape"] == [3, 32, 32]
    x = train.images.astype(np.float64) / 255
    np.testing.assert_allclose(meta["mean"], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(meta["std"], x.std(axis=(0, 2, 3)), rtol=1e-12)


def test_cifar100_fine_labels(tmp_path: Path, skip_cifar_md5: None) -> None:
    """Tiny CIFAR-100 pickles: fine labels and fine_label_names are used."""
    folder = tmp_path / "root" / "cifar-100-python"
    folder.mkdir(parents=True)
    train_hwc, test_hwc = _pattern(6, 32, 32, 3, 11), _pattern(3, 32, 32, 3, 200)
    fine_train, fine_test = [99, 0, 42, 7, 63, 42], [5, 98, 1]
    _pickle(
        folder / "train",
        {"data": _chw_rows(train_hwc), "fine_labels": fine_train, "coarse_labels": [1] * 6},
    )
    _pickle(
        folder / "test",
        {"data": _chw_rows(test_hwc), "fine_labels": fine_test, "coarse_labels": [2] * 3},
    )
    names = [f"class{i:02d}" for i in range(100)]
    _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})

    meta = data.prepare("cifar100", tmp_path / "out", data_root=tmp_path / "root")
    train, test = data.load(tmp_path / "out")
    assert train.labels.tolist() == fine_train and test.labels.tolist() == fine_test
    assert meta["num_classes"] == 100 and meta["classes"][42] == "class42"
    np.testing.assert_array_equal(train.images, train_hwc.transpose(0, 3, 1, 2))
    assert test.images[2, 1, 31, 0] == (200 + 2 * 37 + 31 * 3 + 101) % 256


def test_missing_torchvision_data_offline(tmp_path: Path) -> None:
    """No files, no download → InputError naming the dataset, the root and the files."""
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(InputError) as info:
        data.prepare("mnist", tmp_path / "out", data_root=root, download=False)
    message = str(info.value)
    assert "mnist" in message and str(root.resolve()) in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message and "download: true" in message
    assert not (tmp_path / "out" / "meta.json").exists()

    with pytest.raises(InputError, match="cifar-10-batches-py") as info:
        data.prepare("cifar10", tmp_path / "out", data_root=root)
    assert "cifar10" in str(info.value) and "batches.meta" in str(info.value)

    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist") as info:
        data.prepare("cifar100", tmp_path / "out", data_root=missing)
    assert str(missing.resolve()) in str(info.value)


def test_failed_download_is_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=True without network (simulated, nothing is fetched) → InputError saying so."""
    import torchvision.datasets as tvd

    def offline(self: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(InputError, match="download failed") as info:
        data.prepare("mnist", tmp_path / "out", data_root=tmp_path, download=True)
    assert "no network" in str(info.value)


# --------------------------------------------------------------------------------- imagefolder

_COLOURS = {  # (class, split, name): (size, mode, colour)
    ("cat", "train", "a.png"): ((40, 30), "RGB", (10, 20, 30)),
    ("cat", "train", "b.png"): ((20, 50), "L", 200),
    ("cat", "train", "c.PNG"): ((33, 33), "RGBA", (0, 255, 128, 255)),
    ("dog", "train", "a.png"): ((64, 16), "RGB", (255, 0, 0)),
    ("dog", "train", "b.png"): ((17, 23), "RGB", (1, 2, 3)),
    ("dog", "train", "c.png"): ((50, 50), "RGB", (90, 180, 45)),
    ("cat", "val", "v.png"): ((30, 40), "RGB", (5, 6, 7)),
    ("dog", "val", "v.png"): ((25, 25), "RGB", (70, 80, 90)),
}


def _image_tree(root: Path) -> None:
    """Write root/{train,val}/{cat,dog}/*.png: solid colours, different sizes and modes."""
    for (cls, split, name), (size, mode, colour) in _COLOURS.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, colour).save(folder / name)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def _rgb(colour: int | tuple[int, ...]) -> list[int]:
    """The RGB value a solid colour converts to."""
    return [colour] * 3 if isinstance(colour, int) else list(colour[:3])


def test_imagefolder_tables_and_streaming(tmp_path: Path, device: torch.device) -> None:
    """Index tables list the images; Loader streams resized, cropped RGB batches in [0,1]."""
    root = tmp_path / "tree"
    _image_tree(root)
    meta = data.prepare("imagefolder", tmp_path / "out", data_root=root, image_size=16)
    assert meta["format"] == "folder" and meta["classes"] == ["cat", "dog"]
    assert (meta["n_train"], meta["n_test"], meta["image_size"]) == (6, 2, 16)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["sha256"]["train"] == sha256_file(tmp_path / "out" / "train.parquet")
    assert not (tmp_path / "out" / "train.npz").exists()

    train, test = data.load(tmp_path / "out")
    assert train.images is None and len(train) == 6 and len(test) == 2
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in train.paths)
    assert [Path(p).name for p in train.paths] == ["a.png", "b.png", "c.PNG"] + [
        "a.png",
        "b.png",
        "c.png",
    ]

    loader = data.Loader(train, batch_size=4, device=device, image_size=16)
    assert len(loader) == 6
    batches = list(loader.epoch(shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(x.device.type == y.device.type == device.type for _, x, y in batches)
    assert all(i.device.type == "cpu" for i, _, _ in batches)  # sample rows stay on the host
    batches = [(i, x.cpu(), y.cpu()) for i, x, y in batches]
    assert [tuple(x.shape) for _, x, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    index = torch.cat([i for i, _, _ in batches])
    assert sorted(index.tolist()) == list(range(6))
    assert index.tolist() == torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()
    for i, x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == train.labels[i.numpy()].tolist()
        for row, sample in enumerate(i.tolist()):
            path = Path(train.paths[sample])
            key = (path.parent.name, "train", path.name)
            expected = torch.tensor(_rgb(_COLOURS[key][2]), dtype=torch.float32) / 255
            assert torch.allclose(x[row], expected[:, None, None].expand(3, 16, 16), atol=1e-6)

    # a subset, through worker processes, equals the in-process stream
    subset = np.array([5, 1, 3])
    fast = list(data.Loader(train, 2, device, indices=subset, image_size=16).epoch())
    workers = data.Loader(train, 2, device, indices=subset, num_workers=2, image_size=16)
    assert torch.cat([i for i, _, _ in fast]).tolist() == [5, 1, 3]
    for (i1, x1, y1), (i2, x2, y2) in zip(fast, workers.epoch(), strict=True):
        assert torch.equal(i1, i2) and torch.equal(x1.cpu(), x2.cpu())
        assert torch.equal(y1.cpu(), y2.cpu())


def test_imagefolder_crop_keeps_centre(tmp_path: Path, device: torch.device) -> None:
    """Shorter side → image_size, then a centre crop: the wide image's outer thirds are cut."""
    root = tmp_path / "tree"
    img = np.zeros((16, 48, 3), dtype=np.uint8)  # H=16, W=48: red | green | blue thirds
    img[:, :16, 0], img[:, 16:32, 1], img[:, 32:, 2] = 255, 255, 255
    for split in ("train", "val"):
        (root / split / "only").mkdir(parents=True)
        Image.fromarray(img).save(root / split / "only" / "x.png")
    data.prepare("imagefolder", tmp_path / "out", data_root=root, image_size=8)
    train, _ = data.load(tmp_path / "out")
    ((_, x, _),) = list(data.Loader(train, 1, device, image_size=8).epoch())
    assert x.device.type == device.type
    x = x.cpu()
    assert x.shape == (1, 3, 8, 8)  # 16×48 → 8×24 → centre 8×8 = the green third
    inner = x[0, :, :, 2:6]  # away from the blurred borders
    assert torch.allclose(inner[1], torch.ones_like(inner[1]), atol=0.02)
    assert inner[0].max() < 0.02 and inner[2].max() < 0.02


def test_imagefolder_class_mismatch(tmp_path: Path) -> None:
    """val must have train's classes; the error names the val folder and the difference."""
    root = tmp_path / "tree"
    _image_tree(root)
    (root / "val" / "dog" / "v.png").rename(root / "val" / "cat" / "w.png")
    (root / "val" / "dog").rmdir()
    (root / "val" / "bird").mkdir()
    with pytest.raises(InputError) as info:
        data.prepare("imagefolder", tmp_path / "out", data_root=root)
    message = str(info.value)
    assert str(root / "val") in message and "'dog'" in message and "'bird'" in message
    with pytest.raises(InputError, match="missing"):
        data.prepare("imagefolder", tmp_path / "out", data_root=tmp_path)


# -------------------------------------------------------------------------------------- Loader


def test_loader_covers_each_index_once(digits_dir: Path, device: torch.device) -> None:
    """Each sample once per epoch, partial last batch kept, x = images/255, labels match."""
    train, _ = data.load(digits_dir)
    loader = data.Loader(train, batch_size=100, device=device)
    assert len(loader) == 1347 and loader.num_batches == 14
    for shuffle in (False, True):
        batches = list(loader.epoch(shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
        assert [len(i) for i, _, _ in batches] == [100] * 13 + [47]
        index = torch.cat([i for i, _, _ in batches])
        assert index.dtype == torch.int64
        assert sorted(index.tolist()) == list(range(1347))
        assert (index.tolist() == list(range(1347))) == (not shuffle)
        x = torch.cat([b[1] for b in batches])
        y = torch.cat([b[2] for b in batches])
        assert x.device.type == y.device.type == device.type
        x, y = x.cpu(), y.cpu()
        assert x.dtype == torch.float32 and x.shape == (1347, 1, 8, 8)
        expected = torch.from_numpy(train.images[index.numpy()]).to(torch.float32) / 255
        assert torch.equal(x, expected)
        assert torch.equal(y, torch.from_numpy(train.labels[index.numpy()]))


def test_loader_shuffle_is_seeded(digits_dir: Path, device: torch.device) -> None:
    """Same generator seed → same order (it is torch.randperm's on the CPU, on any device)."""
    train, _ = data.load(digits_dir)
    loader = data.Loader(train, batch_size=64, device=device)

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([i for i, _, _ in loader.epoch(shuffle=True, generator=g)]).tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(7) == torch.randperm(1347, generator=torch.Generator().manual_seed(7)).tolist()
    g = torch.Generator().manual_seed(7)
    first = [i for i, _, _ in loader.epoch(shuffle=True, generator=g)]
    second = [i for i, _, _ in loader.epoch(shuffle=True, generator=g)]
    assert torch.cat(first).tolist() != torch.cat(second).tolist()  # the stream advances


def test_loader_indices_subset(digits_dir: Path, device: torch.device) -> None:
    """Only the given rows are served; index reports their rows in train.npz."""
    train, _ = data.load(digits_dir)
    subset = np.array([1000, 3, 77, 3, 1346, 500, 12], dtype=np.int64)
    loader = data.Loader(train, batch_size=3, device=device, indices=subset)
    assert len(loader) == 7
    batches = [(i, x.cpu(), y.cpu()) for i, x, y in loader.epoch()]
    index = torch.cat([i for i, _, _ in batches])
    assert index.tolist() == subset.tolist()
    assert torch.equal(
        torch.cat([y for _, _, y in batches]), torch.from_numpy(train.labels[subset])
    )
    x = torch.cat([x for _, x, _ in batches])
    assert torch.equal(x, torch.from_numpy(train.images[subset]).float() / 255)

    g = torch.Generator().manual_seed(0)
    shuffled = torch.cat([i for i, _, _ in loader.epoch(shuffle=True, generator=g)])
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert shuffled.tolist() == subset[perm.numpy()].tolist()
    with pytest.raises(ValueError, match="indices"):
        data.Loader(train, 4, indices=np.array([0, 1347]))


def test_loader_vector_data_and_resize(
    tmp_path: Path, digits_dir: Path, device: torch.device
) -> None:
    """float32 vector data is served as is; image_size resizes uint8 images on the device."""
    data.prepare("toy2d", tmp_path / "toy", n_train=50, n_test=10)
    train, _ = data.load(tmp_path / "toy")
    index, x, y = next(data.Loader(train, batch_size=64, device=device).epoch())
    x, y = x.cpu(), y.cpu()
    assert x.shape == (50, 2) and torch.equal(x, torch.from_numpy(train.images))
    assert torch.equal(index, torch.arange(50)) and torch.equal(y, torch.from_numpy(train.labels))

    digits, _ = data.load(digits_dir)
    _, x, _ = next(data.Loader(digits, batch_size=5, device=device, image_size=16).epoch())
    assert x.device.type == device.type
    x = x.cpu()
    assert x.shape == (5, 1, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(
        x.mean(dim=(2, 3)),
        torch.from_numpy(digits.images[:5]).float().mean(dim=(2, 3)) / 255,
        atol=0.02,
    )


# ----------------------------------------------------------------------------- corrupt files


def test_load_reports_bad_files(tmp_path: Path, digits_dir: Path) -> None:
    """Truncated npz, missing meta, mismatched lengths → InputError naming the file."""
    out = tmp_path / "d"
    out.mkdir()
    for name in ("train.npz", "test.npz", "meta.json"):
        (out / name).write_bytes((digits_dir / name).read_bytes())
    blob = (out / "train.npz").read_bytes()
    (out / "train.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="train.npz"):
        data.load(out)

    arrays = read_npz(digits_dir / "train.npz", ["images", "labels"])
    write_npz(out / "train.npz", images=arrays["images"][:5], labels=arrays["labels"][:4])
    with pytest.raises(InputError, match=r"train.npz: 5 images but 4 labels"):
        data.load(out)

    write_json(out / "meta.json", {"source": "digits"})
    with pytest.raises(InputError, match="meta.json: missing keys"):
        data.load(out)
    (out / "meta.json").unlink()
    with pytest.raises(InputError, match="meta.json"):
        data.load(out)


def test_loader_on_the_device_matches_cpu(digits_dir: Path, device: torch.device) -> None:
    """On the device the data stays uint8 there and batches equal the CPU ones bitwise."""
    train, _ = data.load(digits_dir)
    subset = np.arange(0, 1347, 3)
    cpu = data.Loader(train, 50, indices=subset)
    on_device = data.Loader(train, 50, device=device, indices=subset)
    assert on_device._x.device.type == device.type and on_device._x.dtype == torch.uint8
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    batches = zip(cpu.epoch(True, g1), on_device.epoch(True, g2), strict=True)
    for (i1, x1, y1), (i2, x2, y2) in batches:
        assert x2.device.type == device.type and y2.device.type == device.type
        assert torch.equal(i1, i2) and torch.equal(x1, x2.cpu()) and torch.equal(y1, y2.cpu())


def test_batches_do_not_alias_the_store(tmp_path: Path, device: torch.device) -> None:
    """Editing a yielded batch in place (as attacks do) leaves the next epoch unchanged."""
    data.prepare("toy2d", tmp_path, n_train=20, n_test=4)
    train, _ = data.load(tmp_path)
    images = train.images.copy()  # on the CPU the store may share memory with the split
    loader = data.Loader(train, batch_size=8, device=device)
    for index, x, y in loader.epoch():
        index.zero_(), x.add_(5.0), y.fill_(7)
    again = list(loader.epoch())
    assert torch.equal(torch.cat([x for _, x, _ in again]).cpu(), torch.from_numpy(images))
    np.testing.assert_array_equal(train.images, images)
    assert torch.cat([i for i, _, _ in again]).tolist() == list(range(20))
    labels = torch.cat([y for _, _, y in again]).cpu()
    assert torch.equal(labels, torch.from_numpy(train.labels))


def test_train_and_evaluate_stream_image_folders_with_workers(
    tmp_path: Path, device: torch.device
) -> None:
    """`--workers` reaches the DataLoader of folder data; the result does not depend on it."""
    import json
    import subprocess
    import sys

    import pandas as pd

    _image_tree(tmp_path / "tree")
    data.prepare("imagefolder", tmp_path / "data", data_root=tmp_path / "tree", image_size=16)
    pd.DataFrame({"index": range(6), "label": [0] * 6}).to_parquet(tmp_path / "all.parquet")
    regime = {"epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    if device.type == "cuda":  # bitwise-equal runs on a GPU need deterministic kernels
        regime["deterministic"] = True
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train = subprocess.run(
            [sys.executable, "-m", "robustcore", "train", "--data", str(tmp_path / "data"),
             "--coreset", str(tmp_path / "all.parquet"), "--model",
             json.dumps({"arch": "small_cnn", "kwargs": {"width": 4}}), "--regime",
             json.dumps(regime), "--workers", str(workers), "--device", str(device),
             "--out", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr
        evaluate = subprocess.run(
            [sys.executable, "-m", "robustcore", "evaluate", "--model", str(out), "--data",
             str(tmp_path / "data"), "--attack", '{"type": "fgsm", "eps": 0.03, "hygiene": false}',
             "--workers", str(workers), "--device", str(device),
             "--out", str(out / "fgsm.json")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert evaluate.returncode == 0, evaluate.stderr
    assert (tmp_path / "w0/model.pt").read_bytes() == (tmp_path / "w2/model.pt").read_bytes()
    assert pd.read_parquet(tmp_path / "w0/fgsm.parquet").equals(
        pd.read_parquet(tmp_path / "w2/fgsm.parquet")
    )
