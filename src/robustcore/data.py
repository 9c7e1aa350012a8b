"""Datasets: prepare them into the on-disk contract (train/test arrays + meta), load, and batch.

On disk (``results/data/{dataset}/``): ``train.npz`` / ``test.npz`` hold ``images`` (uint8
N×C×H×W, or float32 N×D for vector data) and ``labels`` (int64); a sample's ``index`` is its row
in ``train.npz``. Folder datasets (ImageNet-style trees) get ``train.parquet`` / ``test.parquet``
index tables (``index, path, label``) instead of arrays. ``meta.json`` names the source, classes,
shape, per-channel mean/std of the train images in [0, 1] units, sizes, the sha256 of the written
files and the parameters used. ``meta.json`` is written last, so its presence marks a finished
dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from robustcore.io import (
    InputError,
    read_json,
    read_npz,
    read_parquet,
    sha256_file,
    write_json,
    write_npz,
    write_parquet,
)

SOURCES: tuple[str, ...] = ("digits", "toy2d", "mnist", "cifar10", "cifar100", "imagefolder")

# torchvision-backed sources: (dataset class name, what must be under data_root).
_TORCHVISION: dict[str, tuple[str, str]] = {
    "mnist": (
        "MNIST",
        "MNIST/raw/train-images-idx3-ubyte, MNIST/raw/train-labels-idx1-ubyte, "
        "MNIST/raw/t10k-images-idx3-ubyte, MNIST/raw/t10k-labels-idx1-ubyte "
        "(the uncompressed idx files)",
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta: the extracted "
        "'python version' archive cifar-10-python.tar.gz, files unmodified since torchvision "
        "checks their md5)",
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python/ (train, test, meta: the extracted 'python version' archive "
        "cifar-100-python.tar.gz, files unmodified since torchvision checks their md5)",
    ),
}

# Folder datasets are not scanned for statistics; these are ImageNet's standard per-channel values.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
DEFAULT_IMAGE_SIZE = 224
_META_KEYS = ("source", "classes", "num_classes", "shape", "mean", "std", "n_train", "n_test")
_TABLE_COLUMNS = ["index", "path", "label"]


@dataclass(frozen=True)
class Split:
    """One split: int64 labels and uint8 N×C×H×W / float32 N×D images, or image paths."""

    labels: np.ndarray
    images: np.ndarray | None
    paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check that images/paths have one row per label."""
        n = len(self.labels)
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"Split: {len(self.images)} images but {n} labels")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"Split: {len(self.paths)} paths but {n} labels")
        if self.images is None and self.paths is None:
            raise ValueError("Split: needs images or paths")

    def __len__(self) -> int:
        """Number of samples."""
        return int(len(self.labels))


# --------------------------------------------------------------------------------------- prepare


def prepare(
    source: str,
    out_dir: str | Path,
    *,
    data_root: str | Path = "data",
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.25,
    n_train: int = 1200,
    n_test: int = 400,
    noise: float = 0.2,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict:
    """Write out_dir/{train,test}.npz (folders: .parquet tables) and meta.json; return meta."""
    if source not in SOURCES:
        raise InputError(f"unknown dataset source {source!r}; expected one of {list(SOURCES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A re-prepare that dies half way must not leave an old meta.json vouching for new files.
    (out / "meta.json").unlink(missing_ok=True)

    if source == "imagefolder":
        if int(image_size) < 1:
            raise InputError(f"image_size must be a positive integer, got {image_size}")
        return _prepare_folder(out, _existing_root(data_root, source), int(image_size))

    params: dict[str, Any]
    if source == "digits":
        if not 0.0 < float(test_fraction) < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        train, test, classes = _digits(int(seed), float(test_fraction))
        params = {"seed": int(seed), "test_fraction": float(test_fraction), "split": "stratified"}
    elif source == "toy2d":
        if int(n_train) < 2 or int(n_test) < 2:
            raise InputError(f"toy2d needs n_train >= 2 and n_test >= 2, got {n_train}, {n_test}")
        if float(noise) < 0:
            raise InputError(f"noise must be >= 0, got {noise}")
        train, test, classes = _toy2d(int(seed), int(n_train), int(n_test), float(noise))
        params = {"seed": int(seed), "noise": float(noise), "generator": "make_moons"}
    else:
        root = _existing_root(data_root, source)
        train, test, classes = _torchvision(source, root, bool(download))
        params = {"data_root": str(root), "split": "official"}

    write_npz(out / "train.npz", images=train.images, labels=train.labels)
    write_npz(out / "test.npz", images=test.images, labels=test.labels)
    mean, std = _stats(train.images)
    meta = {
        "source": source,
        "format": "array",
        "classes": [str(c) for c in classes],
        "num_classes": len(classes),
        "shape": [int(s) for s in train.images.shape[1:]],
        "mean": mean,
        "std": std,
        "stats": "per channel (vector data: per feature) over the train images, in [0, 1] units",
        "n_train": len(train),
        "n_test": len(test),
        "sha256": {"train": sha256_file(out / "train.npz"), "test": sha256_file(out / "test.npz")},
        **params,
    }
    write_json(out / "meta.json", meta)
    return meta


def _existing_root(data_root: str | Path, source: str) -> Path:
    """Return data_root as an absolute path, or raise InputError if it is not a directory."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise InputError(
            f"dataset {source!r}: data_root {root} does not exist or is not a directory; "
            "create it (and put the data there, or set download: true where there is internet)"
        )
    return root


def _digits(seed: int, test_fraction: float) -> tuple[Split, Split, list[str]]:
    """scikit-learn's bundled 8×8 digits as uint8 0..255, stratified seeded split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # values 0..16 -> 0..255; np.rint rounds half to even like Python's round
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    rows = np.arange(len(labels))
    train_rows, test_rows = train_test_split(
        rows, test_size=test_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    classes = [str(c) for c in range(10)]
    return (
        Split(labels=labels[train_rows], images=np.ascontiguousarray(images[train_rows])),
        Split(labels=labels[test_rows], images=np.ascontiguousarray(images[test_rows])),
        classes,
    )


def _toy2d(seed: int, n_train: int, n_test: int, noise: float) -> tuple[Split, Split, list[str]]:
    """Two interleaving moons; train and test from independent streams derived from `seed`."""
    from sklearn.datasets import make_moons

    train_seed, test_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2)
    )
    x_train, y_train = make_moons(n_samples=n_train, noise=noise, random_state=train_seed)
    x_test, y_test = make_moons(n_samples=n_test, noise=noise, random_state=test_seed)
    lo, hi = x_train.min(axis=0), x_train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    x_train = ((x_train - lo) / span).astype(np.float32)
    x_test = np.clip((x_test - lo) / span, 0.0, 1.0).astype(np.float32)
    return (
        Split(labels=y_train.astype(np.int64), images=x_train),
        Split(labels=y_test.astype(np.int64), images=x_test),
        ["0", "1"],
    )


def _torchvision(source: str, root: Path, download: bool) -> tuple[Split, Split, list[str]]:
    """Read MNIST / CIFAR-10 / CIFAR-100 through torchvision's dataset classes."""
    import torchvision.datasets as tvd

    cls_name, expected = _TORCHVISION[source]
    cls = getattr(tvd, cls_name)
    splits = []
    classes: list[str] = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except Exception as err:  # RuntimeError (missing/md5), URLError/OSError (no network), ...
            how = (
                "download: true was set but the download failed (no internet on this machine?); "
                if download
                else ""
            )
            raise InputError(
                f"dataset {source!r} ({cls_name}) not found or unreadable under data_root {root}: "
                f"{how}expected {root}/{expected}. To get it, set download: true on a machine with "
                f"internet access (or copy those files there). "
                f"[torchvision said: {type(err).__name__}: {err}]"
            ) from err
        data = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
        if data.ndim == 3:  # MNIST: N×H×W
            images = data[:, None, :, :]
        else:  # CIFAR: N×H×W×C -> N×C×H×W
            images = data.transpose(0, 3, 1, 2)
        labels = np.asarray(ds.targets, dtype=np.int64)
        splits.append(Split(labels=labels, images=np.ascontiguousarray(images, dtype=np.uint8)))
        classes = [str(c) for c in ds.classes]
    return splits[0], splits[1], classes


def _stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (population) in [0, 1] units; per feature for vector data."""
    if images.dtype == np.uint8:
        values = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for c in range(images.shape[1]):
            # exact: a histogram of the channel's byte values, then moments from the counts
            counts = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
            n = counts.sum()
            mean = float((counts * values).sum() / n)
            var = float((counts * (values - mean) ** 2).sum() / n)
            means.append(mean)
            stds.append(float(np.sqrt(var)))
        return means, stds
    x = images.astype(np.float64)
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()


def _prepare_folder(out: Path, root: Path, image_size: int) -> dict:
    """Index an ImageNet-style tree root/{train,val}/<class>/* into parquet tables + meta."""
    train_dir, val_dir = root / "train", root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise InputError(
                f"dataset 'imagefolder': {folder} is missing; expected {root}/train/<class>/* and "
                f"{root}/val/<class>/* (one sub-folder per class, same classes in both)"
            )
    classes = _class_dirs(train_dir)
    if not classes:
        raise InputError(f"dataset 'imagefolder': {train_dir} has no class sub-folders")
    val_classes = _class_dirs(val_dir)
    if val_classes != classes:
        missing = sorted(set(classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(classes))
        raise InputError(
            f"dataset 'imagefolder': {val_dir} must have the same class folders as {train_dir}; "
            f"missing {missing}, unexpected {extra}"
        )
    tables = {}
    for name, folder in (("train", train_dir), ("test", val_dir)):
        paths, labels = [], []
        for label, cls in enumerate(classes):
            files = sorted(
                p
                for p in (folder / cls).iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if name == "train" and not files:
                raise InputError(
                    f"dataset 'imagefolder': {folder / cls} has no images "
                    f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += [str(p.resolve()) for p in files]
            labels += [label] * len(files)
        if not paths:
            raise InputError(f"dataset 'imagefolder': no images under {folder}")
        tables[name] = pd.DataFrame(
            {
                "index": np.arange(len(paths), dtype=np.int64),
                "path": paths,
                "label": np.asarray(labels, dtype=np.int64),
            }
        )
    write_parquet(out / "train.parquet", tables["train"])
    write_parquet(out / "test.parquet", tables["test"])
    meta = {
        "source": "imagefolder",
        "format": "folder",
        "classes": classes,
        "num_classes": len(classes),
        "shape": [3, image_size, image_size],
        "image_size": image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "stats": "ImageNet's standard per-channel values (not computed from this data)",
        "n_train": len(tables["train"]),
        "n_test": len(tables["test"]),
        "sha256": {
            "train": sha256_file(out / "train.parquet"),
            "test": sha256_file(out / "test.parquet"),
        },
        "data_root": str(root),
    }
    write_json(out / "meta.json", meta)
    return meta


def _class_dirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------ load


def load_meta(dataset_dir: str | Path) -> dict:
    """Read dataset_dir/meta.json, checking it has the required keys."""
    path = Path(dataset_dir) / "meta.json"
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise InputError(f"{path}: missing keys {missing}; expected at least {list(_META_KEYS)}")
    return meta


def load(dataset_dir: str | Path) -> tuple[Split, Split]:
    """Return the (train, test) splits of a prepared dataset."""
    root = Path(dataset_dir)
    meta = load_meta(root)
    if meta.get("format") == "folder":
        return _load_table(root / "train.parquet", meta), _load_table(root / "test.parquet", meta)
    return _load_arrays(root / "train.npz", meta), _load_arrays(root / "test.npz", meta)


def _load_arrays(path: Path, meta: dict) -> Split:
    """Read and check one array split."""
    arrays = read_npz(path, ["images", "labels"])
    images, labels = arrays["images"], arrays["labels"]
    if labels.ndim != 1 or labels.dtype != np.int64:
        raise InputError(f"{path}: labels must be int64 (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise InputError(f"{path}: {len(images)} images but {len(labels)} labels")
    ok = (images.dtype == np.uint8 and images.ndim == 4) or (
        images.dtype == np.float32 and images.ndim == 2
    )
    if not ok:
        raise InputError(
            f"{path}: images must be uint8 N×C×H×W or float32 N×D, "
            f"got {images.dtype} {images.shape}"
        )
    if list(images.shape[1:]) != list(meta["shape"]):
        raise InputError(f"{path}: images shape {images.shape[1:]} != meta shape {meta['shape']}")
    _check_labels(path, labels, meta)
    return Split(labels=labels, images=images)


def _load_table(path: Path, meta: dict) -> Split:
    """Read and check one folder-dataset index table."""
    table = read_parquet(path, _TABLE_COLUMNS)
    index = table["index"].to_numpy()
    if not np.array_equal(index, np.arange(len(table))):
        raise InputError(f"{path}: column 'index' must be 0..N-1 in order")
    labels = table["label"].to_numpy().astype(np.int64)
    _check_labels(path, labels, meta)
    return Split(labels=labels, images=None, paths=tuple(str(p) for p in table["path"]))


def _check_labels(path: Path, labels: np.ndarray, meta: dict) -> None:
    """Labels must lie in [0, num_classes)."""
    k = int(meta["num_classes"])
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise InputError(f"{path}: labels outside [0, {k}) (num_classes from meta.json)")


# ---------------------------------------------------------------------------------------- Loader


class _FolderImages(torch.utils.data.Dataset):
    """Folder split rows → (index, uint8 3×S×S tensor, label): resize shorter side, center crop."""

    def __init__(self, paths: tuple[str, ...], labels: np.ndarray, image_size: int) -> None:
        """Keep the paths, labels and target size."""
        self.paths = paths
        self.labels = labels
        self.image_size = image_size

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor, int]:
        """Open, convert to RGB, resize and crop image `i`."""
        import torchvision.transforms.functional as tf
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"{path}: not a readable image ({err})") from err
        rgb = tf.resize(rgb, self.image_size, interpolation=tf.InterpolationMode.BILINEAR)
        rgb = tf.center_crop(rgb, [self.image_size, self.image_size])
        return i, tf.pil_to_tensor(rgb), int(self.labels[i])


class Loader:
    """Batches of (index LongTensor, x float32 in [0,1] on device, y LongTensor on device).

    Array splits live on `device` (uint8 stays uint8 there; each batch is converted to float).
    Folder splits are streamed from disk through a torch DataLoader with `num_workers`.
    `index` is the sample's row in the split file (``indices[perm]``), on the CPU.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device | str = "cpu",
        indices: np.ndarray | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
    ) -> None:
        """Select `indices` (default all rows) and, for arrays, move them to `device` once."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.num_workers = int(num_workers)
        n = len(split)
        if indices is None:
            idx = np.arange(n, dtype=np.int64)
        else:
            idx = np.asarray(indices)
            if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
                raise ValueError(
                    f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}"
                )
            idx = idx.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
        self.indices = idx
        self._index = torch.from_numpy(idx.copy())
        self._folder = split.images is None
        if self._folder:
            self.image_size = int(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
            return
        images = split.images
        if image_size is not None and images.ndim != 4:
            raise ValueError("image_size applies to image data only, not vector data")
        self.image_size = image_size
        subset = images if indices is None else images[idx]
        if not subset.flags.writeable:
            subset = subset.copy()
        self._x = torch.from_numpy(np.ascontiguousarray(subset)).to(self.device)
        self._y = torch.from_numpy(split.labels[idx]).to(self.device)

    def __len__(self) -> int:
        """Number of samples (not batches)."""
        return int(len(self.indices))

    def subset(self, indices: np.ndarray) -> Loader:
        """A loader over `indices` (rows of the split) with this one's batch size and device."""
        return Loader(
            self.split,
            self.batch_size,
            self.device,
            indices=indices,
            num_workers=self.num_workers,
            image_size=self.image_size,
        )

    @property
    def num_batches(self) -> int:
        """Number of batches per epoch (the last one may be partial)."""
        return -(-len(self) // self.batch_size)

    def epoch(
        self, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield one pass; with shuffle, the order is torch.randperm(n, generator) on the CPU."""
        n = len(self)
        perm = torch.randperm(n, generator=generator) if shuffle else None
        if self._folder:
            yield from self._folder_epoch(perm)
            return
        perm_dev = perm.to(self.device) if perm is not None else None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if perm is None:
                # copies, not views: a caller editing a batch in place must not edit the store
                index, x = self._index[start:stop].clone(), self._x[start:stop]
                y = self._y[start:stop].clone()
            else:
                rows = perm_dev[start:stop]
                index, x, y = self._index[perm[start:stop]], self._x[rows], self._y[rows]
            yield index, self._to_float(x), y

    def _to_float(self, x: Tensor) -> Tensor:
        """uint8 → float32 in [0, 1] (resized if image_size asks); float data as is."""
        if x.dtype != torch.uint8:
            return x.clone()
        out = x.to(torch.float32) / 255.0
        size = self.image_size
        if size is not None and tuple(out.shape[-2:]) != (size, size):
            out = torch.nn.functional.interpolate(
                out, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return out

    def _folder_epoch(self, perm: Tensor | None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Stream a folder split in the given order through a DataLoader."""
        order = self.indices if perm is None else self.indices[perm.numpy()]
        dataset = _FolderImages(self.split.paths, self.split.labels, self.image_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for index, x, y in loader:
            x = x.to(self.device, non_blocking=True).to(torch.float32) / 255.0
            yield index.to(torch.int64), x, y.to(self.device, non_blocking=True)
