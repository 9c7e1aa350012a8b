"""Input pipeline: images/s per CPU core of the image-folder path and of the decoded-shards path.

Writes a synthetic JPEG folder at ImageNet-like sizes (smooth random content with some texture,
400–500 × 300–500 px, quality 90) into a temporary directory, then in one run measures:

(a) the folder path: `Loader` over the index tables, `--workers` DataLoader processes decoding,
    resizing and cropping every image of every epoch (PIL, as the jobs do without `decode`);
(b) the array path: `prepare` with `decode` (the one-off decode, timed and reported on its own),
    then `Loader` streaming uint8 batches from the memory-mapped shards (one gather thread).

Both deliver the same uint8 batches at `--resolution` (the test asserts it; here the first batch
is compared). Rates are of `Loader.host_batches`, the CPU side of feeding a GPU (the float
conversion and augmentation run on the GPU). Per core = images/s ÷ the cores the path uses (its
workers or gather threads); the measured CPU-seconds (this process and its children) are given
too. The shards are read from the page cache (they were just written): a node whose page cache
cannot hold a split reads them from disk instead, bounded by its random-read bandwidth
(uint8 3×160² = 77 KB per image).

From these and a GPU's need (the cost model: samples/s = tflops·1e12 / (passes · GFLOPs·1e9),
GFLOPs of ResNet-50 from robustcore.jobcost, passes of the standard, pgd and trades regimes of
presets/imagenet.yaml, tflops its job_resources' gpu_tflops or measured arch_tflops.resnet50),
it prints how many cores each path needs to keep one GPU fed, at the cost model's 224 px and at
the decoded 160 px (FLOPs ∝ pixels). A JSON of all numbers is written
beside this file (its path is printed).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_input.py [--images 400] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from robustcore import data, jobcost  # noqa: E402

REGIMES = ("standard", "pgd", "trades")
COST_MODEL_SIDE = 224  # jobcost.GFLOPS are at each arch's usual input size


def write_jpegs(root: Path, n_train: int, n_val: int, classes: int, seed: int = 0) -> dict:
    """root/{train,val}/class{k}/*.JPEG of varied ImageNet-like sizes; sizes and bytes."""
    rng = np.random.default_rng(seed)
    sizes, total = [], 0
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            width, height = int(rng.integers(400, 501)), int(rng.integers(300, 501))
            # Smooth colour fields (a small random image upsampled) plus texture, so the JPEGs
            # compress like photographs rather than like noise.
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            base = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
            texture = rng.normal(0, 12, (height, width, 1)).astype(np.int16)
            pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
            path = folder / f"img{i:05d}.JPEG"
            Image.fromarray(pixels).save(path, quality=90)
            sizes.append((width, height))
            total += path.stat().st_size
    return {"images": len(sizes), "mean_kb": total / len(sizes) / 1e3, "sizes": sizes}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(loader: data.Loader, min_seconds: float, min_epochs: int) -> dict:
    """Shuffled epochs of host batches until both minimums are reached: images/s and CPU use."""
    generator = torch.Generator().manual_seed(0)
    images, epochs = 0, 0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    while epochs < min_epochs or time.perf_counter() - wall0 < min_seconds:
        for _, x, _ in loader.host_batches(shuffle=True, generator=generator):
            images += len(x)
        epochs += 1
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return {
        "images": images,
        "epochs": epochs,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s": images / wall,
        "cpu_cores_busy": cpu / wall,
    }


def gpu_needs(preset: dict) -> dict[str, dict]:
    """Samples/s one GPU consumes on ResNet-50 per regime (cost model; 224 px and 160 px)."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    default = schema["properties"]["job_resources"]["properties"]["gpu_tflops"]["default"]
    limits = {"gpu_tflops": default, **(preset.get("job_resources") or {})}
    if isinstance(limits["gpu_tflops"], dict):  # a per-arch mapping
        limits["gpu_tflops"] = limits["gpu_tflops"]["resnet50"]
    # a measured arch_tflops.resnet50 (benchmarks/gpu_check.py) wins, as in the time limits
    tflops = jobcost.tflops({"job_resources": limits}, "resnet50")
    gflops = jobcost.GFLOPS["resnet50"]
    side = preset["datasets"]["imagenet"].get("decode", {}).get("resolution", COST_MODEL_SIDE)
    needs = {}
    for kind in REGIMES:
        found = [(n, r) for n, r in preset["regimes"].items() if r.get("type", "standard") == kind]
        name, regime = found[0] if found else (None, {"type": kind})
        passes = jobcost.regime_passes(regime)
        at_224 = tflops * 1e12 / (passes * gflops * 1e9)
        needs[kind] = {
            "regime": name or f"(none in the preset: {kind} with jobcost's default steps)",
            "steps": regime.get("steps"),
            "passes": passes,
            "samples_per_s_224": at_224,
            f"samples_per_s_{side}": at_224 * (COST_MODEL_SIDE / side) ** 2,
        }
    return {"gpu_tflops": tflops, "gflops_resnet50_224": gflops, "side": side, "regimes": needs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="train images (+10 %% val)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--out", default=str(REPO / "results/bench_input.json"))
    args = parser.parse_args()
    import torchvision.transforms.functional  # noqa: F401  (imported once, before any fork)

    preset = yaml.safe_load((REPO / "presets" / "imagenet.yaml").read_text())
    side, workers = args.resolution, args.workers
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        jpegs = write_jpegs(
            root / "tree", args.images, max(args.classes, args.images // 10), args.classes
        )
        print(
            f"{jpegs['images']} synthetic JPEGs, mean {jpegs['mean_kb']:.0f} KB, "
            f"400–500 × 300–500 px, quality 90"
        )

        # (a) the folder path: every epoch decodes, resizes and crops every image
        data.prepare("imagefolder", root / "folder", data_root=root / "tree", image_size=side)
        folder_train, _ = data.load(root / "folder")
        folder = data.Loader(
            folder_train, args.batch_size, "cpu", num_workers=workers, image_size=side
        )
        folder_rate = measure(folder, min_seconds=4.0, min_epochs=2)
        folder_rate["cores"] = workers

        # (b) the array path: decode once, then stream uint8 batches from the memory maps
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        meta = data.prepare(
            "imagefolder",
            root / "shards",
            data_root=root / "tree",
            decode={"resolution": side, "shard_size": 64},
            workers=workers,
        )
        decode_wall, decode_cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        decoded = meta["n_train"] + meta["n_test"]
        shard_train, _ = data.load(root / "shards")
        shards = data.Loader(shard_train, args.batch_size, "cpu", num_workers=1)
        shard_rate = measure(shards, min_seconds=3.0, min_epochs=3)
        shard_rate["cores"] = 1  # one gather thread (num_workers=1)

        # the two paths serve the same pixels
        first_folder = next(folder.host_batches())[1]
        first_shards = next(shards.host_batches())[1]
        same = bool(torch.equal(first_folder, first_shards))

    per_core = {}
    for name, rate in (("folder", folder_rate), ("shards", shard_rate)):
        rate["per_core"] = rate["images_per_s"] / rate["cores"]
        rate["per_cpu_second"] = rate["images"] / rate["cpu_s"]
        per_core[name] = rate["per_core"]
    decode = {
        "images": decoded,
        "workers": workers,
        "wall_s": decode_wall,
        "cpu_s": decode_cpu,
        "images_per_s": decoded / decode_wall,
        "per_core": decoded / decode_wall / workers,
        "per_cpu_second": decoded / decode_cpu,
    }
    ratio = per_core["shards"] / per_core["folder"]
    needs = gpu_needs(preset)

    cpu_name = platform.processor() or platform.machine()
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_name}), torch {torch.__version__}; "
        f"batches of {args.batch_size} at {side}×{side}; same pixels on both paths: {same}"
    )
    print(f"{'path':<34}{'images/s':>10}{'cores':>7}{'per core':>10}{'per CPU-s':>11}")
    rows = (
        ("(a) folder: decode every epoch", folder_rate),
        ("(b) shards: stream memory maps", shard_rate),
        ("    one-off decode (prepare)", {**decode, "cores": workers}),
    )
    for label, rate in rows:
        print(
            f"{label:<34}{rate['images_per_s']:>10.0f}{rate['cores']:>7}"
            f"{rate['per_core']:>10.0f}{rate['per_cpu_second']:>11.0f}"
        )
    print(f"ratio shards / folder per core: {ratio:.0f}×")
    print(
        f"one GPU at gpu_tflops = {needs['gpu_tflops']} on ResNet-50 "
        f"({needs['gflops_resnet50_224']} GFLOPs at 224 px) needs, and the cores to feed it:"
    )
    print(
        f"{'regime':<10}{'passes':>7}{'px':>5}{'samples/s':>11}"
        f"{'folder cores':>22}{'shard cores':>22}"
    )
    print(f"{'':<33}{'(÷ cores, ÷ CPU-s)':>22}{'(÷ cores, ÷ CPU-s)':>22}")
    cores_needed = {}
    for kind, need in needs["regimes"].items():
        cores_needed[kind] = {}
        for px in sorted({COST_MODEL_SIDE, needs["side"]}):
            rate = need[f"samples_per_s_{px}"]
            cores = {
                name: {
                    "per_core": rate / rates["per_core"],
                    "per_cpu_second": rate / rates["per_cpu_second"],
                }
                for name, rates in (("folder", folder_rate), ("shards", shard_rate))
            }
            cores_needed[kind][px] = cores
            folder_cores = (
                f"{cores['folder']['per_core']:.1f}, {cores['folder']['per_cpu_second']:.1f}"
            )
            shard_cores = (
                f"{cores['shards']['per_core']:.3f}, {cores['shards']['per_cpu_second']:.3f}"
            )
            print(
                f"{kind:<10}{need['passes']:>7.0f}{px:>5}{rate:>11.0f}"
                f"{folder_cores:>22}{shard_cores:>22}"
            )
        if need["regime"].startswith("(none"):
            print(f"  {kind}: {need['regime']}")
    load = os.getloadavg()
    print(
        f"load average (1, 5 min) at the end: {load[0]:.1f}, {load[1]:.1f} on {os.cpu_count()} "
        "CPUs: other processes share the machine if above the cores in use"
    )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": cpu_name,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "images": args.images,
            "classes": args.classes,
            "workers": workers,
            "batch_size": args.batch_size,
            "resolution": side,
        },
        "jpegs": {"images": jpegs["images"], "mean_kb": jpegs["mean_kb"]},
        "folder": folder_rate,
        "shards": shard_rate,
        "decode": decode,
        "ratio_per_core": ratio,
        "same_pixels": same,
        "gpu_need": needs,
        "cores_to_feed_one_gpu": cores_needed,
        "load_average": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
