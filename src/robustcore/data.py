"""Datasets: prepare them into the on-disk contract (train/test arrays + meta), load, and batch.

On disk (``results/data/{dataset}/``): ``train.npz`` / ``test.npz`` hold ``images`` (uint8
N×C×H×W, or float32 N×D for vector data) and ``labels`` (int64); a sample's ``index`` is its row
in ``train.npz``. Folder datasets (ImageNet-style trees) get ``train.parquet`` / ``test.parquet``
index tables (``index, path, label``) instead of arrays. A folder dataset prepared with
``decode`` is decoded once into shards instead: ``train/`` and ``test/`` each hold
``shard-00000.npy``, ... (uint8 S×3×R×R, ``shard_size`` images each, the last one shorter),
``labels.npy`` (int64) and ``index.parquet`` (the folder table: row i is the image at ``path``);
``load`` memory-maps the shards (`ShardedImages`) and `Loader` streams batches from them.
``meta.json`` names the source, classes, shape, per-channel mean/std of the train images in [0, 1]
units, sizes, the sha256 of the written files and the parameters used. ``meta.json`` is written
last, so its presence marks a finished dataset.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
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
# decode: {resolution, test_resolution, shard_size, workers} (see _decode_settings).
DECODE_KEYS: tuple[str, ...] = ("resolution", "test_resolution", "shard_size", "workers")
DEFAULT_SHARD_SIZE = 2048
SHARD_NAME = "shard-{:05d}.npy"
_META_KEYS = ("source", "classes", "num_classes", "shape", "mean", "std", "n_train", "n_test")
_TABLE_COLUMNS = ["index", "path", "label"]


class ShardedImages:
    """uint8 N×C×H×W images kept in memory-mapped ``.npy`` shards; rows are read on demand.

    Shard k holds rows ``k·shard_size .. (k+1)·shard_size - 1`` (the last shard may be shorter).
    Indexing with an int, a slice or an integer array returns an in-memory ``np.ndarray`` copy
    (`take` gathers into a given buffer); ``np.asarray`` reads every row, which suits small data
    only. Pickling keeps the paths and reopens the memory maps on first use.
    """

    def __init__(self, paths: Sequence[str | Path], counts: Sequence[int], shape: Sequence[int]):
        """Open the shards (memory maps) and check each one's shape and dtype."""
        if not paths or len(paths) != len(counts):
            raise ValueError(f"ShardedImages: {len(paths)} paths but {len(counts)} counts")
        counts = [int(c) for c in counts]
        if any(c != counts[0] for c in counts[:-1]) or counts[-1] > counts[0] or min(counts) < 1:
            raise ValueError(f"ShardedImages: shards must hold equal counts but the last: {counts}")
        self.paths = tuple(str(p) for p in paths)
        self.counts = tuple(counts)
        self.shard_size = counts[0]
        self.row_shape = tuple(int(s) for s in shape)
        self._maps: list[np.ndarray] | None = None
        self._open()

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W)."""
        return (len(self), *self.row_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of all rows."""
        return len(self) * int(np.prod(self.row_shape))

    def __len__(self) -> int:
        """Number of rows (images)."""
        return int(sum(self.counts))

    def __repr__(self) -> str:
        """Shape and shard layout."""
        return (
            f"ShardedImages(shape={self.shape}, shards={len(self.paths)}, "
            f"shard_size={self.shard_size}, first={self.paths[0]!r})"
        )

    def _open(self) -> list[np.ndarray]:
        """The shards as read-only memory maps (opened once, checked against the layout)."""
        if self._maps is None:
            _allow_open_files(len(self.paths))
            maps = []
            for path, count in zip(self.paths, self.counts, strict=True):
                try:
                    shard = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as err:
                    raise InputError(f"{path}: not a readable .npy shard ({err})") from err
                expected = (count, *self.row_shape)
                if shard.dtype != np.uint8 or shard.shape != expected:
                    raise InputError(
                        f"{path}: expected uint8 {expected}, got {shard.dtype} {shard.shape}"
                    )
                maps.append(shard.view(np.ndarray))  # plain views: cheaper row access
            self._maps = maps
        return self._maps

    def __getstate__(self) -> dict:
        """Pickle the layout, not the memory maps."""
        return {**self.__dict__, "_maps": None}

    def __setstate__(self, state: dict) -> None:
        """Restore the layout; the maps reopen on first use."""
        self.__dict__.update(state)

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `rows` (any order) as a len(rows)×C×H×W array, written into `out` if given.

        The rows are read in ascending index order (shard by shard, forward through each file),
        then land at their batch positions.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"ShardedImages: rows must lie in [0, {n}), got {rows.min()}..")
        rows = np.where(rows < 0, rows + n, rows)
        if out is None:
            out = np.empty((len(rows), *self.row_shape), dtype=np.uint8)
        elif out.shape != (len(rows), *self.row_shape) or out.dtype != np.uint8:
            raise ValueError(f"take: out must be uint8 {(len(rows), *self.row_shape)}")
        maps = self._open()
        order = np.argsort(rows, kind="stable")
        shard, local = np.divmod(rows[order], self.shard_size)
        for position, k, row in zip(order.tolist(), shard.tolist(), local.tolist(), strict=True):
            out[position] = maps[k][row]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """An int gives one C×H×W row; a slice or an integer/boolean array gives rows (copies)."""
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([int(key)]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            key = np.flatnonzero(key)
        if key.ndim != 1 or (key.size and not np.issubdtype(key.dtype, np.integer)):
            raise IndexError("ShardedImages: index rows with an int, a slice or a 1-D int array")
        return self.take(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row in one in-memory array (np.asarray; reads the whole split)."""
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype, copy=False)


def _allow_open_files(count: int) -> None:
    """Each memory map keeps a file descriptor: raise the soft limit to fit `count` more."""
    try:
        import resource
    except ImportError:  # not POSIX: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 256  # the rest of the process (libraries, sockets, the other split)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise InputError(
            f"{count} shards need {need} open files but this process may open {hard} "
            "(ulimit -Hn): prepare the dataset again with a larger decode.shard_size"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@dataclass(frozen=True)
class Split:
    """One split: int64 labels and uint8 N×C×H×W / float32 N×D images, or image paths.

    `images` is an in-memory array, a `ShardedImages` (memory-mapped shards), or None for a
    folder split (then `paths` lists the image files).
    """

    labels: np.ndarray
    images: np.ndarray | ShardedImages | None
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
    decode: dict[str, Any] | None = None,
    workers: int | None = None,
) -> dict:
    """Write out_dir/{train,test}.npz (folders: .parquet tables) and meta.json; return meta.

    An image folder with `decode` ({resolution, test_resolution, shard_size, workers}) is
    decoded once into out_dir/{train,test}/ shards instead, by `workers` processes (default:
    decode's own `workers`, else 1); `image_size` then plays no part.
    """
    if source not in SOURCES:
        raise InputError(f"unknown dataset source {source!r}; expected one of {list(SOURCES)}")
    if decode is not None and source != "imagefolder":
        raise InputError(f"decode: applies to source 'imagefolder' only, not {source!r}")
    settings = _decode_settings(decode) if decode is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A re-prepare that dies half way must not leave an old meta.json vouching for new files.
    (out / "meta.json").unlink(missing_ok=True)

    if source == "imagefolder":
        root = _existing_root(data_root, source)
        if settings is not None:
            count = settings["workers"] if workers is None else int(workers)
            if count < 1:
                raise InputError(f"workers must be a positive integer, got {workers}")
            return _prepare_shards(out, root, settings, count)
        if int(image_size) < 1:
            raise InputError(f"image_size must be a positive integer, got {image_size}")
        return _prepare_folder(out, root, int(image_size))

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


def _folder_tables(root: Path) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Classes and the (index, path, label) tables of root/{train,val}/<class>/* (sorted)."""
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
    return classes, tables


def _prepare_folder(out: Path, root: Path, image_size: int) -> dict:
    """Index an ImageNet-style tree root/{train,val}/<class>/* into parquet tables + meta."""
    classes, tables = _folder_tables(root)
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


def _decode_settings(decode: Any) -> dict[str, int]:
    """Check a `decode` entry (naming the bad key) and fill its defaults."""
    if not isinstance(decode, dict):
        raise InputError(f"decode: expected a mapping such as {{resolution: 160}}, got {decode!r}")
    unknown = sorted(set(decode) - set(DECODE_KEYS))
    if unknown:
        raise InputError(f"decode: unknown key(s) {unknown}; allowed keys: {sorted(DECODE_KEYS)}")
    if "resolution" not in decode:
        raise InputError("decode.resolution is required (the train images' side in pixels)")
    settings = {
        "resolution": decode["resolution"],
        "test_resolution": decode.get("test_resolution", decode["resolution"]),
        "shard_size": decode.get("shard_size", DEFAULT_SHARD_SIZE),
        "workers": decode.get("workers", 1),
    }
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"decode.{key} = {value!r}: expected a positive integer")
    return {key: int(value) for key, value in settings.items()}


def _decode_image(path: str, size: int) -> np.ndarray:
    """One image as uint8 3×size×size: RGB, shorter side resized to `size`, centre crop.

    torchvision's resize (bilinear, antialiased, on the PIL image) and centre crop; the folder
    Loader and the one-off decode both call this, so their pixels are the same.
    """
    import torchvision.transforms.functional as tf
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except Exception as err:  # OSError, UnidentifiedImageError, SyntaxError (broken PNG), ...
        raise InputError(f"{path}: not a readable image ({err})") from err
    rgb = tf.resize(rgb, size, interpolation=tf.InterpolationMode.BILINEAR)
    rgb = tf.center_crop(rgb, [size, size])
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_shard(paths: Sequence[str], size: int, target: str) -> tuple[int, str]:
    """Decode `paths` into the .npy file `target` (uint8 len×3×size×size); its count and sha256."""
    images = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size)
    )
    for row, path in enumerate(paths):
        images[row] = _decode_image(path, size)
    images.flush()
    del images
    return len(paths), sha256_file(target)


def _run_tasks(tasks: list[tuple], workers: int) -> list[tuple[int, str]]:
    """_decode_shard over `tasks`, in `workers` processes (in this one for 1); results in order."""
    if workers <= 1 or len(tasks) <= 1:
        return [_decode_shard(*task) for task in tasks]
    # fork: the workers start at once, with the decoder's imports done here (spawn would
    # import torch and torchvision again in each worker).
    import PIL.Image  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:
        futures = [pool.submit(_decode_shard, *task) for task in tasks]
        return [future.result() for future in futures]
    finally:  # on the first failure: drop the queued shards, wait only for the running ones
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_shards(out: Path, root: Path, settings: dict[str, int], workers: int) -> dict:
    """Decode an image tree once into out/{train,test}/ shards + labels + index tables + meta."""
    classes, tables = _folder_tables(root)
    sizes = {"train": settings["resolution"], "test": settings["test_resolution"]}
    shard_size = settings["shard_size"]
    # The previous output is no longer vouched for (meta.json is gone); a killed run's
    # temporary folders are hidden (.train.*.tmp) and removed here.
    for name in sizes:
        shutil.rmtree(out / name, ignore_errors=True)
        for stale in out.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    scratch = {
        name: Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out)) for name in sizes
    }
    try:
        tasks, owner = [], []
        for name, size in sizes.items():
            paths = tables[name]["path"].tolist()
            for k, start in enumerate(range(0, len(paths), shard_size)):
                target = scratch[name] / SHARD_NAME.format(k)
                tasks.append((paths[start : start + shard_size], size, str(target)))
                owner.append(name)
        results = _run_tasks(tasks, workers)
        splits: dict[str, dict[str, Any]] = {}
        for name, size in sizes.items():
            labels = tables[name]["label"].to_numpy(dtype=np.int64)
            np.save(scratch[name] / "labels.npy", labels, allow_pickle=False)
            write_parquet(scratch[name] / "index.parquet", tables[name])
            shards = [
                {"file": Path(task[2]).name, "count": count, "sha256": digest}
                for task, (count, digest), split in zip(tasks, results, owner, strict=True)
                if split == name
            ]
            splits[name] = {
                "shape": [3, size, size],
                "count": len(labels),
                "shard_size": shard_size,
                "shards": shards,
                "labels": {
                    "file": "labels.npy",
                    "sha256": sha256_file(scratch[name] / "labels.npy"),
                },
                "index": {
                    "file": "index.parquet",
                    "sha256": sha256_file(scratch[name] / "index.parquet"),
                },
            }
        for name in sizes:
            os.chmod(scratch[name], 0o777 & ~_umask())
            os.replace(scratch[name], out / name)
    finally:
        for folder in scratch.values():
            shutil.rmtree(folder, ignore_errors=True)
    meta = {
        "source": "imagefolder",
        "format": "shards",
        "classes": classes,
        "num_classes": len(classes),
        "shape": [3, sizes["train"], sizes["train"]],
        "resolution": sizes["train"],
        "test_resolution": sizes["test"],
        "decode": {
            **{k: settings[k] for k in ("resolution", "test_resolution", "shard_size")},
            "transform": "RGB; shorter side resized to the resolution (bilinear, antialiased, "
            "torchvision on PIL); centre crop resolution × resolution",
        },
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "stats": "ImageNet's standard per-channel values (not computed from this data)",
        "n_train": splits["train"]["count"],
        "n_test": splits["test"]["count"],
        "splits": splits,
        "sha256": {name: _split_digest(entry) for name, entry in splits.items()},
        "data_root": str(root),
    }
    write_json(out / "meta.json", meta)
    return meta


def _split_digest(entry: dict[str, Any]) -> str:
    """One sha256 over a shard split: of its files' digests in order (shards, labels, index)."""
    digests = [s["sha256"] for s in entry["shards"]] + [
        entry["labels"]["sha256"],
        entry["index"]["sha256"],
    ]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _umask() -> int:
    """The process umask (mkdtemp makes owner-only folders; the renamed one gets the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    if meta.get("format") == "shards":
        return _load_shards(root, "train", meta), _load_shards(root, "test", meta)
    return _load_arrays(root / "train.npz", meta), _load_arrays(root / "test.npz", meta)


def _load_shards(root: Path, name: str, meta: dict) -> Split:
    """One decoded split: labels in memory, images memory-mapped from its shards."""
    folder = root / name
    entry = (meta.get("splits") or {}).get(name)
    if not isinstance(entry, dict) or not entry.get("shards"):
        raise InputError(f"{root / 'meta.json'}: format 'shards' but no splits.{name}.shards")
    path = folder / entry["labels"]["file"]
    if not path.is_file():
        raise InputError(f"{path}: file not found (prepare the dataset again)")
    labels = np.load(path, allow_pickle=False)
    if labels.ndim != 1 or labels.dtype != np.int64 or len(labels) != entry["count"]:
        raise InputError(
            f"{path}: labels must be int64 ({entry['count']},), got {labels.dtype} {labels.shape}"
        )
    shards = [folder / shard["file"] for shard in entry["shards"]]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise InputError(f"{folder}: {len(missing)} shard(s) missing, e.g. {missing[0]}")
    images = ShardedImages(shards, [s["count"] for s in entry["shards"]], entry["shape"])
    if len(images) != len(labels):
        raise InputError(f"{folder}: {len(images)} images but {len(labels)} labels")
    _check_labels(path, labels, meta)
    return Split(labels=labels, images=images)


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
        pixels = _decode_image(self.paths[i], self.image_size)
        return i, torch.from_numpy(np.ascontiguousarray(pixels)), int(self.labels[i])


class Loader:
    """Batches of (index LongTensor, x float32 in [0,1] on device, y LongTensor on device).

    Array splits live on `device` (uint8 stays uint8 there; each batch is converted to float).
    Decoded (sharded, memory-mapped) splits are streamed: each batch's rows are gathered from the
    memory maps in index order by `num_workers` background threads (at least one), into pinned
    memory on CUDA, copied with non_blocking=True and converted to float on the device; the
    batches equal those of the same split held in memory. Folder splits are decoded from disk
    through a torch DataLoader with `num_workers` processes.
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
        """Select `indices` (default all rows) and, for in-memory arrays, move them to `device`."""
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
        self._stream = isinstance(split.images, ShardedImages)
        if self._folder:
            self.image_size = int(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
            return
        images = split.images
        if image_size is not None and images.ndim != 4:
            raise ValueError("image_size applies to image data only, not vector data")
        self.image_size = image_size
        if self._stream:  # read batch by batch; nothing is held on the device
            return
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
        self,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield one pass; with shuffle, the order is torch.randperm(n, generator) on the CPU.

        With `shard` = (rank, world_size), each batch is that rank's rows rank::world_size of the
        global batch the unsharded pass yields (possibly none, in a short last batch): a rank
        reads only its own rows, and the ranks' batches together are the global ones.
        """
        n = len(self)
        perm = torch.randperm(n, generator=generator) if shuffle else None
        if self._folder or self._stream:
            batches = self._folder_batches if self._folder else self._shard_batches
            for index, x, y in batches(perm, shard):
                x = x.to(self.device, non_blocking=True)
                yield index, self._to_float(x), y.to(self.device, non_blocking=True)
            return
        perm_dev = perm.to(self.device) if perm is not None else None
        rank, world = shard or (0, 1)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if perm is None and world == 1:
                # copies, not views: a caller editing a batch in place must not edit the store
                index, x = self._index[start:stop].clone(), self._x[start:stop]
                y = self._y[start:stop].clone()
            elif perm is None:
                rows = slice(start + rank, stop, world)
                index, x, y = self._index[rows].clone(), self._x[rows], self._y[rows].clone()
            else:
                rows = perm_dev[start:stop][rank::world]
                host_rows = perm[start:stop][rank::world]
                index, x, y = self._index[host_rows], self._x[rows], self._y[rows]
            yield index, self._to_float(x), y

    def host_batches(
        self, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """What `epoch` copies to the device, as it leaves the input pipeline: (index, uint8 x,
        y) on the CPU (x pinned when the device is CUDA), same order and generator use as
        `epoch`. For streamed data only (folders, shards); in-memory arrays are on the device."""
        if not (self._folder or self._stream):
            raise ValueError("host_batches: the split is held on the device; use epoch()")
        perm = torch.randperm(len(self), generator=generator) if shuffle else None
        yield from (self._folder_batches(perm) if self._folder else self._shard_batches(perm))

    def _batch_rows(self, perm: Tensor | None, shard: tuple[int, int] | None) -> list[np.ndarray]:
        """The split rows of each batch of the epoch (a rank's share of each with `shard`)."""
        order = self._order(perm)
        rank, world = shard or (0, 1)
        return [
            order[start : start + self.batch_size][rank::world]
            for start in range(0, len(order), self.batch_size)
        ]

    def _empty_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """A batch of no rows (a rank's share of a short last batch)."""
        shape = (0, 3, self.image_size, self.image_size) if self._folder else (
            0, *self.split.images.row_shape
        )  # fmt: skip
        empty = torch.empty(0, dtype=torch.int64)
        return empty, torch.empty(shape, dtype=torch.uint8), empty.clone()

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

    def _order(self, perm: Tensor | None) -> np.ndarray:
        """The epoch's rows of the split, in batch order."""
        return self.indices if perm is None else self.indices[perm.numpy()]

    def _folder_batches(
        self, perm: Tensor | None, shard: tuple[int, int] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Decode a folder split in the given order through a DataLoader (CPU uint8 batches)."""
        dataset = _FolderImages(self.split.paths, self.split.labels, self.image_size)
        batches = self._batch_rows(perm, shard)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[rows.tolist() for rows in batches if len(rows)],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        decoded = iter(loader)
        for rows in batches:
            if not len(rows):
                yield self._empty_batch()
                continue
            index, x, y = next(decoded)
            yield index.to(torch.int64), x, y

    def _shard_batches(
        self, perm: Tensor | None, shard: tuple[int, int] | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Gather a sharded split's batches in background threads, a few batches ahead."""
        batches = iter(self._batch_rows(perm, shard))
        threads = max(1, self.num_workers)
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shards") as pool:
            try:
                for rows in batches:  # keep 2 batches per thread in flight
                    pending.append(pool.submit(self._gather, rows))
                    if len(pending) >= 2 * threads:
                        break
                while pending:
                    batch = pending.popleft().result()
                    rows = next(batches, None)
                    if rows is not None:
                        pending.append(pool.submit(self._gather, rows))
                    yield batch
            finally:  # also when the consumer stops early: drop what was not started
                for future in pending:
                    future.cancel()

    def _gather(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """One batch's rows from the memory maps, into pinned memory when feeding a GPU."""
        if not len(rows):
            return self._empty_batch()
        images = self.split.images
        pin = self.device.type == "cuda"
        x = torch.empty((len(rows), *images.row_shape), dtype=torch.uint8, pin_memory=pin)
        images.take(rows, out=x.numpy())
        y = torch.from_numpy(self.split.labels[rows])
        return torch.from_numpy(rows.copy()), x, y.pin_memory() if pin else y
