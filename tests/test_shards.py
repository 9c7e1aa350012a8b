"""Image folders decoded once into memory-mapped shards, streamed by Loader, planned as a job."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as tf
import yaml
from PIL import Image
from snakemake.utils import validate
from test_workflow import snakemake

from robustcore import data, jobcost
from robustcore.io import InputError, sha256_file

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _tree(root: Path, n_train: int = 7, n_val: int = 3, seed: int = 0) -> None:
    """root/{train,val}/{cat,dog}/*: JPEGs (RGB and grey) and an RGBA PNG of varied sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        for cls in ("dog", "cat"):  # written out of order: the table sorts classes and files
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in reversed(range(count)):
                height, width = (int(v) for v in rng.integers(14, 48, 2))
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i % 3 == 1:
                    image.convert("L").save(folder / f"{i:02d}.jpg", quality=90)
                elif i % 3 == 2:
                    image.convert("RGBA").save(folder / f"{i:02d}.png")
                else:
                    image.save(folder / f"{i:02d}.JPEG", quality=90)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def _reference(path: str, size: int) -> np.ndarray:
    """The folder path's transform written out with torchvision: RGB, resize, centre crop."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb = tf.resize(rgb, size, interpolation=tf.InterpolationMode.BILINEAR)
    return tf.pil_to_tensor(tf.center_crop(rgb, [size, size])).numpy()


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> Path:
    """A tree prepared both ways: folder tables (size 12) and shards (train 12, test 10 px)."""
    base = tmp_path_factory.mktemp("shards")
    _tree(base / "tree")
    data.prepare("imagefolder", base / "folder", data_root=base / "tree", image_size=12)
    decode = {"resolution": 12, "test_resolution": 10, "shard_size": 4}
    data.prepare("imagefolder", base / "shards", data_root=base / "tree", decode=decode, workers=2)
    return base


def test_decode_has_the_folder_paths_pixels_and_rows(decoded: Path) -> None:
    """Exactly the folder path's uint8 pixels (same torchvision resize + crop), row for row."""
    folder_train, folder_test = data.load(decoded / "folder")
    train, test = data.load(decoded / "shards")
    for name, split, sheet, size in (
        ("train", train, folder_train, 12),
        ("test", test, folder_test, 10),
    ):
        # index order = the folder table: sorted classes, then sorted files
        table = pd.read_parquet(decoded / "shards" / name / "index.parquet")
        folder_table = pd.read_parquet(decoded / "folder" / f"{name}.parquet")
        pd.testing.assert_frame_equal(table, folder_table)
        assert np.array_equal(split.labels, sheet.labels)
        assert split.images.shape == (len(sheet), 3, size, size)
        pixels = np.asarray(split.images)
        for row, path in enumerate(sheet.paths):
            assert np.array_equal(pixels[row], _reference(path, size)), path
    names = [Path(p).relative_to(decoded / "tree" / "train").as_posix() for p in folder_train.paths]
    assert names[:3] == ["cat/00.JPEG", "cat/01.jpg", "cat/02.png"] and names[7] == "dog/00.JPEG"
    # the folder Loader at the same size serves the same bytes
    loader = data.Loader(folder_train, 5, image_size=12)
    served = torch.cat([x for _, x, _ in loader.host_batches()])
    assert torch.equal(served, torch.from_numpy(np.asarray(train.images)))


def test_shards_are_memory_mapped_and_meta_records_them(decoded: Path) -> None:
    out = decoded / "shards"
    meta = data.load_meta(out)
    assert meta["format"] == "shards" and meta["shape"] == [3, 12, 12]
    assert (meta["resolution"], meta["test_resolution"]) == (12, 10)
    assert (meta["n_train"], meta["n_test"], meta["num_classes"]) == (14, 6, 2)
    assert "image_size" not in meta  # each split is served at its own size
    train_entry = meta["splits"]["train"]
    assert [s["count"] for s in train_entry["shards"]] == [4, 4, 4, 2]
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "index.parquet",
        "labels.npy",
        *(f"shard-{k:05d}.npy" for k in range(4)),
    ]
    for shard in train_entry["shards"]:
        path = out / "train" / shard["file"]
        assert shard["sha256"] == sha256_file(path)
        mapped = np.load(path, mmap_mode="r")
        assert isinstance(mapped, np.memmap) and mapped.dtype == np.uint8
        assert mapped.shape == (shard["count"], 3, 12, 12)
    assert train_entry["labels"]["sha256"] == sha256_file(out / "train" / "labels.npy")
    assert len(meta["sha256"]["train"]) == 64 and meta["sha256"]["train"] != meta["sha256"]["test"]

    train, _ = data.load(out)
    images = train.images
    assert isinstance(images, data.ShardedImages) and len(images) == 14
    assert all(isinstance(m.base, np.memmap) for m in images._open())  # not read into memory
    whole = np.asarray(images)
    assert np.array_equal(images[5], whole[5]) and np.array_equal(images[-1], whole[13])
    assert np.array_equal(images[3:9:2], whole[3:9:2])
    rows = np.array([13, 0, 7, 7, 4])
    assert np.array_equal(images[rows], whole[rows])
    assert np.array_equal(images[whole[:, 0, 0, 0] > 100], whole[whole[:, 0, 0, 0] > 100])
    again = pickle.loads(pickle.dumps(images))
    assert again._maps is None and np.array_equal(np.asarray(again), whole)
    with pytest.raises(IndexError):
        images.take(np.array([14]))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_streams_the_same_batches_as_the_in_memory_split(
    decoded: Path, device: torch.device, workers: int
) -> None:
    """Shuffled or not, all rows or a subset: the same (index, x, y) and generator use."""
    train, _ = data.load(decoded / "shards")
    memory = data.Split(labels=train.labels, images=np.asarray(train.images))
    for indices in (None, np.array([13, 2, 5, 9, 0, 11, 7])):
        streamed = data.Loader(train, 3, device, indices=indices, num_workers=workers)
        held = data.Loader(memory, 3, device, indices=indices)
        assert not hasattr(streamed, "_x") and len(streamed) == len(held)
        for shuffle in (False, True):
            g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
            got = list(streamed.epoch(shuffle=shuffle, generator=g1))
            want = list(held.epoch(shuffle=shuffle, generator=g2))
            assert len(got) == len(want) == held.num_batches
            for (i1, x1, y1), (i2, x2, y2) in zip(got, want, strict=True):
                assert torch.equal(i1, i2) and i1.device.type == "cpu"
                assert x1.device == x2.device and x1.dtype == torch.float32
                assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert torch.equal(g1.get_state(), g2.get_state())
    # a consumer that stops early leaves no thread behind
    first = next(data.Loader(train, 2, device, num_workers=workers).epoch())
    assert first[1].shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="held on the device"):
        next(held.host_batches())


@pytest.mark.parametrize("kind", ["shards", "folder", "arrays"])
def test_a_ranks_shard_of_each_batch_is_its_rows_of_the_global_batch(
    decoded: Path, device: torch.device, kind: str
) -> None:
    """Loader.epoch(shard=(r, W)) yields rows r, r + W, ... of every global batch (none of a
    short last batch when it has fewer rows than W), for every kind of split."""
    train, _ = data.load(decoded / ("folder" if kind == "folder" else "shards"))
    if kind == "arrays":
        train = data.Split(labels=train.labels, images=np.asarray(train.images))
    loader = data.Loader(train, 5, device, image_size=12 if kind == "folder" else None)
    world = 3
    for shuffle in (False, True):
        whole = list(loader.epoch(shuffle=shuffle, generator=torch.Generator().manual_seed(3)))
        shards = [
            list(loader.epoch(shuffle, torch.Generator().manual_seed(3), shard=(rank, world)))
            for rank in range(world)
        ]
        assert len(whole) == 3 and whole[-1][0].numel() == 4  # 14 rows: 5, 5, 4
        for b, (index, x, y) in enumerate(whole):
            for rank in range(world):
                i_r, x_r, y_r = shards[rank][b]
                assert torch.equal(i_r, index[rank::world]) and torch.equal(y_r, y[rank::world])
                assert torch.equal(x_r, x[rank::world]) and x_r.device == x.device
    short = list(data.Loader(train, 5, device, indices=np.arange(6),
                             image_size=12 if kind == "folder" else None)
                 .epoch(shard=(2, 3)))  # fmt: skip
    assert [len(index) for index, _, _ in short] == [1, 0]  # batch 2 has one row: rank 0's
    assert short[1][1].shape[0] == 0 and short[1][1].dtype == torch.float32


def test_a_corrupt_image_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    _tree(tmp_path / "tree")
    good = tmp_path / "tree" / "train" / "dog" / "00.JPEG"
    broken = tmp_path / "tree" / "train" / "dog" / "03.JPEG"
    broken.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated JPEG
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        data.prepare("imagefolder", out, data_root=tmp_path / "tree",
                     decode={"resolution": 8, "shard_size": 2}, workers=2)  # fmt: skip
    assert str(broken) in str(info.value) and "not a readable image" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == []  # no meta.json, no split, no temporaries
    (tmp_path / "tree" / "val" / "cat" / "junk.jpg").write_bytes(b"not a jpeg at all")
    broken.write_bytes(good.read_bytes())
    with pytest.raises(InputError, match="junk.jpg"):
        data.prepare("imagefolder", out, data_root=tmp_path / "tree", decode={"resolution": 8})


_KILLED_CHILD = """
import sys, time
from robustcore import data
decode_image = data._decode_image
calls = []
def slow(path, size):
    calls.append(path)
    if len(calls) > 5:  # a few shards written, then hang until killed
        time.sleep(600)
    return decode_image(path, size)
data._decode_image = slow
data.prepare("imagefolder", sys.argv[1], data_root=sys.argv[2],
             decode={"resolution": 8, "shard_size": 2}, workers=1)
"""


def test_a_killed_decode_leaves_nothing_that_looks_finished(tmp_path: Path) -> None:
    _tree(tmp_path / "tree")
    out = tmp_path / "out"
    data.prepare("imagefolder", out, data_root=tmp_path / "tree", decode={"resolution": 8})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(out), str(tmp_path / "tree")], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".train.*.tmp/shard-00002.npy")):
            assert child.poll() is None and time.monotonic() < deadline, "child ended early"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = sorted(p.name for p in out.iterdir())
    assert "meta.json" not in left and "train" not in left and "test" not in left
    assert left and all(name.startswith(".") and name.endswith(".tmp") for name in left)
    with pytest.raises(InputError, match="meta.json: file not found"):
        data.load(out)
    data.prepare("imagefolder", out, data_root=tmp_path / "tree", decode={"resolution": 8})
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test", "train"]
    assert len(data.load(out)[0]) == 14


def test_bad_decode_settings_name_the_key(tmp_path: Path) -> None:
    _tree(tmp_path / "tree")
    cases = [
        ({"resolution": 0}, "decode.resolution = 0"),
        ({"resolution": 8, "size": 3}, "unknown key(s) ['size']"),
        ({"resolution": 8, "shard_size": -1}, "decode.shard_size = -1"),
        ({"test_resolution": 8}, "decode.resolution is required"),
        ({"resolution": 8.5}, "decode.resolution = 8.5"),
    ]
    for decode, message in cases:
        with pytest.raises(InputError) as info:
            data.prepare("imagefolder", tmp_path / "out", data_root=tmp_path / "tree",
                         decode=decode)  # fmt: skip
        assert message in str(info.value), (decode, str(info.value))
    with pytest.raises(InputError, match="'imagefolder' only"):
        data.prepare("digits", tmp_path / "out", decode={"resolution": 8})
    assert not (tmp_path / "out").exists()


def _imagenet(**decode) -> dict:
    """presets/imagenet.yaml, its decode entry updated (None: no decode key), schema-filled."""
    config = yaml.safe_load((REPO / "presets" / "imagenet.yaml").read_text())
    entry = config["datasets"]["imagenet"]
    if decode.pop("off", False):
        entry.pop("decode")
        entry["image_size"] = 224
    else:
        entry["decode"].update(decode)
    return config


def _filled(config: dict) -> dict:
    validate(config, SCHEMA)
    return config


def test_the_config_schema_names_a_bad_decode_key(tmp_path: Path) -> None:
    config = _imagenet(resolution=0, colour="rgb")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.imagenet.decode.resolution = 0: expected a value in [8, inf)" in output
    assert "datasets.imagenet.decode: unknown key(s) ['colour']" in output


def test_decoding_is_a_cluster_job_with_the_decode_workers_as_cpus(tmp_path: Path) -> None:
    """With decode: prepare_shards, not a localrule, threads = decode.workers, resources from
    jobcost; without: prepare_folder, a localrule (as prepare_data for arrays)."""
    snakefile = (REPO / "Snakefile").read_text()
    local = snakefile.split("localrules:")[1].split("\n\n")[0]
    assert {"prepare_data", "prepare_folder"} <= set(local.replace(",", " ").split())
    assert "prepare_shards" not in local

    config = _filled(_imagenet(workers=12))
    wildcards = {"dataset": "imagenet"}
    assert jobcost.threads(config, "prepare_shards", wildcards) == 12
    minutes = jobcost.runtime_minutes(config, "prepare_shards", wildcards)
    assert (
        jobcost.runtime_minutes(_filled(_imagenet(workers=48)), "prepare_shards", wildcards)
        < minutes
    )
    assert config["job_resources"]["min_minutes"] < minutes < 24 * 60
    mem = jobcost.mem_mb(config, "prepare_shards", wildcards)
    assert mem == config["job_resources"]["mem_mb"]["default"] + 12 * jobcost.DECODE_WORKER_MB

    (tmp_path / "decode.yaml").write_text(yaml.safe_dump(_imagenet(workers=12)))
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(_imagenet(off=True)))
    plan = snakemake(tmp_path, "-n", "--cores", "64", "--configfile", str(tmp_path / "decode.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    job = plan.stdout.split("rule prepare_shards:")[1].split("\n\n")[0]
    assert "threads: 12" in job and f"runtime={minutes}," in job and f"mem_mb={mem}," in job
    assert "output: results/data/imagenet/train, results/data/imagenet/test" in job
    assert "rule prepare_folder:" not in plan.stdout
    plan = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "folder.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "rule prepare_folder:" in plan.stdout and "rule prepare_shards:" not in plan.stdout
    assert "results/data/imagenet/train.parquet" in plan.stdout


def test_train_and_evaluate_on_shards_through_the_cli(tmp_path: Path) -> None:
    """`prepare --workers` decodes; train and evaluate stream the shards and give the same
    model as the same run over the folder path (same pixels, same order, same generator)."""
    _tree(tmp_path / "tree")
    run = [sys.executable, "-m", "robustcore"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    entry = {"source": "imagefolder", "decode": {"resolution": 12, "shard_size": 5}}
    prepared = subprocess.run(
        [*run, "prepare", "--params", json.dumps(entry), "--data-root", str(tmp_path / "tree"),
         "--workers", "2", "--out", str(tmp_path / "shards")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    data.prepare("imagefolder", tmp_path / "folder", data_root=tmp_path / "tree", image_size=12)
    pd.DataFrame({"index": range(14), "label": [0] * 14}).to_parquet(tmp_path / "all.parquet")
    regime = {"epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
              "augment": {"crop_padding": 2, "flip": True}}  # fmt: skip
    for name in ("shards", "folder"):
        out = tmp_path / f"run-{name}"
        trained = subprocess.run(
            [*run, "train", "--data", str(tmp_path / name), "--coreset",
             str(tmp_path / "all.parquet"), "--model",
             json.dumps({"arch": "small_cnn", "kwargs": {"width": 4}}), "--regime",
             json.dumps(regime), "--workers", "2", "--device", "cpu", "--out", str(out)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
    evaluated = subprocess.run(
        [*run, "evaluate", "--model", str(tmp_path / "run-shards"), "--data",
         str(tmp_path / "shards"), "--attack", '{"type": "fgsm", "eps": 0.03, "hygiene": false}',
         "--device", "cpu", "--out", str(tmp_path / "fgsm.json")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "fgsm.json").read_text())["n"] == 6
    shards = torch.load(tmp_path / "run-shards" / "model.pt", weights_only=True)
    folder = torch.load(tmp_path / "run-folder" / "model.pt", weights_only=True)
    assert shards.keys() == folder.keys()
    assert all(torch.equal(shards[k], folder[k]) for k in shards)
