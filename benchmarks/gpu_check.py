"""The device check: every code path on one device, throughput per regime and model, host syncs
per training step, and the cost model's calibration, in one command.

    python benchmarks/gpu_check.py                 # on the GPU (about 5 minutes on one H200)
    python benchmarks/gpu_check.py --tiny          # the same at toy sizes: any CPU, ~1 minute
    make gpu-check                                 # the first, from the project's venv

1. Code paths: the workflow's own subcommands (`robustcore.cli.main`) on CIFAR-shaped synthetic
   data with ResNet-18 and ImageNet-shaped data with ResNet-50: a proxy with each capture mode
   (`eval`, `train_step`), Sparse FGSM, every registered score method, training under every
   regime (standard, pgd, trades, fgsm_rs, selective by margin/gradmatch/random, ACS with CRAIG
   and GradMatch) in fp32, bf16, fp16 with its scaler, channels_last and torch.compile where a
   regime allows it, and the evaluation suite (FGSM, PGD, AutoAttack). Each is reported as
   passed or with its error; the check goes on after a failure so one run shows them all.
2. Throughput: samples/s of `robustcore.train.fit` for each regime of presets/cifar10.yaml
   (ResNet-18) and presets/imagenet.yaml (ResNet-50) at the presets' batch sizes and
   precisions, the peak device memory of each, and the same model, batch and precision in a
   minimal hand-written loop (data on the device, no augmentation, nothing around it); our
   standard regime is printed as a ratio to it.
3. Host synchronisations per training step of each regime (`robustcore.hostsync`): measured
   with CUDA's sync debug mode on a GPU, the reviewed count on a CPU.
4. Calibration: each (arch, regime)'s sustained TFLOP/s in the cost model's own FLOP count
   (`robustcore.jobcost`); per arch the slowest regime's value is printed as the
   `job_resources.arch_tflops` lines to paste into a config, so its time limits follow it.

Everything goes to one JSON (its path is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
try:
    import robustcore  # noqa: F401
except ImportError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from robustcore import cli, data, jobcost, models  # noqa: E402
from robustcore.hostsync import syncs_per_step  # noqa: E402
from robustcore.io import write_json, write_npz  # noqa: E402
from robustcore.precision import AUTOCAST, precision_of  # noqa: E402
from robustcore.regimes import regime_of  # noqa: E402
from robustcore.runtime import resolve_device, software_versions  # noqa: E402
from robustcore.scores import REGISTRY  # noqa: E402
from robustcore.train import fit  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big the check runs: the GPU sizes, or toy sizes for a CPU."""

    n_train: int  # CIFAR-shaped training samples of the code-path pass
    n_test: int
    width: int  # ResNet-18 width (64 is the real one)
    imagenet_px: int  # ResNet-50 input side
    imagenet_batch: int  # ResNet-50 batch in the code-path pass
    max_steps: int | None  # cap on attack steps (None: the presets' own)
    batch: int | None  # batch size of the code-path pass and throughput (None: the presets')
    warmup: int  # untimed steps before timing (cuDNN autotuning, compilation, caches)
    timed: int  # timed steps per throughput row
    sync_steps: int  # steps of the shorter of the two sync-counting loops
    autoattack_points: int


GPU = Sizes(1024, 256, 64, 224, 64, None, None, 3, 10, 4, 128)
TINY = Sizes(48, 16, 8, 64, 2, 1, 8, 1, 2, 2, 8)


# --------------------------------------------------------------------------------- synthetic data


def write_dataset(folder: Path, n_train: int, n_test: int, shape: tuple[int, ...], classes: int):
    """A prepared dataset (train.npz, test.npz, meta.json) of class-shifted random uint8 images."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.int64) % classes
        shift = (labels * (160 // max(classes - 1, 1))).reshape(-1, 1, 1, 1)
        images = (rng.integers(0, 96, size=(n, *shape)) + shift).clip(0, 255).astype(np.uint8)
        write_npz(folder / f"{name}.npz", images=images, labels=labels)
        splits[name] = images
    write_json(
        folder / "meta.json",
        {
            "source": "synthetic",
            "format": "array",
            "classes": [str(c) for c in range(classes)],
            "num_classes": classes,
            "shape": list(shape),
            "mean": [0.45] * shape[0],
            "std": [0.25] * shape[0],
            "n_train": n_train,
            "n_test": n_test,
        },
    )
    return folder


def preset_image_size() -> int:
    """The side of the images the ImageNet preset trains on."""
    dataset = next(iter(yaml.safe_load((REPO / "presets/imagenet.yaml").read_text())["datasets"]
                        .values()))  # fmt: skip
    return int((dataset.get("decode") or {}).get("resolution") or dataset.get("image_size", 224))


# ------------------------------------------------------------------------------- 1. code paths


class CodePaths:
    """Runs workflow subcommands, recording each one's outcome instead of stopping."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.results: list[dict[str, Any]] = []

    def run(self, stage: str, variant: str, argv: list[str]) -> bool:
        """`robustcore <argv>` on the device; True if it exited 0."""
        argv = [*argv, "--device", str(self.device)] if argv[0] not in ("coreset",) else argv
        started = time.perf_counter()
        stderr = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                status = cli.main(argv)
            if status != 0:
                error = stderr.getvalue().strip().splitlines()[-1:] or [f"exit status {status}"]
                error = error[0]
        except Exception as err:  # a crash is what this check is for: record it, go on
            frames = traceback.extract_tb(err.__traceback__)
            where = next(
                (f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                 if "robustcore" in f.filename), "?",
            )  # fmt: skip
            error = f"{type(err).__name__} at {where}: {err}"
        seconds = time.perf_counter() - started
        self.results.append(
            {"stage": stage, "variant": variant, "ok": error is None, "seconds": round(seconds, 2),
             "error": error}
        )  # fmt: skip
        mark = "ok  " if error is None else "FAIL"
        print(f"  {mark} {stage:<12} {variant:<34} {seconds:6.1f} s  {error or ''}", flush=True)
        return error is None


def _capped(entry: dict[str, Any], sizes: Sizes, epochs: int) -> dict[str, Any]:
    """A regime entry shortened to `epochs` (and, at tiny sizes, few attack steps, small batch)."""
    # One process here: `gpus` (ranks of a cluster job) is the workflow's, not the run's.
    entry = {**{k: v for k, v in entry.items() if k != "gpus"}, "epochs": epochs}
    if sizes.batch is not None:
        entry["batch_size"] = sizes.batch
    if sizes.max_steps is not None and "steps" in entry:
        entry["steps"] = min(int(entry["steps"]), sizes.max_steps)
    return entry


def code_paths(
    device: torch.device, sizes: Sizes, work: Path, compile_backend: str
) -> list[dict[str, Any]]:
    """Every stage's subcommand on the device (see the module docstring, item 1)."""
    cifar = yaml.safe_load((REPO / "presets/cifar10.yaml").read_text())
    regimes = cifar["regimes"]
    check = CodePaths(device)
    cifar_dir = write_dataset(work / "cifar", sizes.n_train, sizes.n_test, (3, 32, 32), 10)
    resnet18 = json.dumps({"arch": "resnet18", "kwargs": {"width": sizes.width}})
    mlp = json.dumps({"arch": "mlp", "kwargs": {"hidden": [64]}})
    proxy_dir = work / "proxy"
    base = _capped(regimes["standard"], sizes, 2)
    common = ["--data", str(cifar_dir), "--seed", "0"]
    check.run("proxy", "resnet18 capture=eval", [
        "proxy", *common, "--model", resnet18, "--out", str(proxy_dir),
        "--training", json.dumps({**base, "capture": "eval"})])  # fmt: skip
    check.run("proxy", "mlp capture=train_step", [
        "proxy", *common, "--model", mlp, "--out", str(work / "proxy_mlp"),
        "--training", json.dumps({**base, "capture": "train_step", "augment": {}})])  # fmt: skip
    sparse = {"eps": 8 / 255, "ks": [1, 4, 16], "mode": "pixel", "batch_size": 64}
    check.run("sensitivity", "sparse FGSM k=1,4,16", [
        "sensitivity", *common, "--proxy", str(proxy_dir), "--params", json.dumps(sparse),
        "--out", str(proxy_dir / "sparse_fgsm.parquet")])  # fmt: skip
    for name in REGISTRY:
        out = work / f"scores/{name}.parquet"
        check.run("score", name, [
            "score", *common, "--proxy", str(proxy_dir), "--params",
            json.dumps({"method": name}), "--out", str(out)])  # fmt: skip
    full = work / "full.parquet"
    check.run("coreset", "full", ["coreset", "--data", str(cifar_dir), "--params",
                                  json.dumps({"keep": "all"}), "--out", str(full)])  # fmt: skip
    train_variants = {
        "standard fp32": regimes["standard"],
        "standard bf16": {**regimes["standard"], "precision": "bf16"},
        "standard fp16 (scaler)": {**regimes["standard"], "precision": "fp16"},
        "standard channels_last bf16": {**regimes["standard"], "precision": "bf16",
                                        "channels_last": True},  # fmt: skip
        "standard compile": {**regimes["standard"], "compile": True,
                             "compile_backend": compile_backend},  # fmt: skip
        "pgd fp32": regimes["pgd"],
        "pgd bf16 channels_last": {**regimes["pgd"], "precision": "bf16", "channels_last": True},
        "pgd compile": {**regimes["pgd"], "compile": True, "compile_backend": compile_backend},
        "trades": regimes["trades"],
        "fgsm_rs": regimes["fgsm_rs"],
        "selective margin": {**regimes["selective_margin"], "warmup_epochs": 0},
        "selective gradmatch": {**regimes["selective_margin"], "criterion": "gradmatch",
                                "warmup_epochs": 0},  # fmt: skip
        "selective random": {**regimes["selective_margin"], "criterion": "random"},
        "acs craig pgd": {**regimes["acs"], "epoch_plan": "compact", "warm_start_epochs": 1,
                          "freq": 1},  # fmt: skip
        "acs gradmatch trades": {**regimes["acs_trades_f01"], "method": "gradmatch",
                                 "epoch_plan": "compact", "warm_start_epochs": 1, "freq": 1},
    }  # fmt: skip
    runs = {}
    for variant, entry in train_variants.items():
        out = work / "runs" / variant.replace(" ", "_").replace("(", "").replace(")", "")
        epochs = 3 if entry["type"] == "acs" else 1
        ok = check.run("train", variant, [
            "train", *common, "--coreset", str(full), "--model", resnet18,
            "--regime", json.dumps(_capped(entry, sizes, epochs)), "--out", str(out)])  # fmt: skip
        runs[variant] = out if ok else None
    attacks = {
        "fgsm": {"type": "fgsm", "eps": 8 / 255},
        "pgd": {
            "type": "pgd",
            "eps": 8 / 255,
            "steps": 10 if sizes.max_steps is None else 2,
            "step_size": 2 / 255,
            "restarts": 2,
        },  # fmt: skip
        "autoattack": {
            "type": "autoattack",
            "eps": 8 / 255,
            "version": "standard",
            "n_points": sizes.autoattack_points,
        },  # fmt: skip
    }
    if sizes.max_steps is not None:  # toy sizes: the standard version's Square is 5,000 queries
        attacks["autoattack"] = {**attacks["autoattack"], "version": "custom",
                                 "attacks": ["apgd-ce", "apgd-dlr"], "hygiene": False}  # fmt: skip
    model_dir = runs.get("pgd fp32") or runs.get("standard fp32")
    for name, attack in attacks.items():
        if model_dir is None:
            check.results.append(
                {
                    "stage": "evaluate",
                    "variant": name,
                    "ok": False,
                    "seconds": 0.0,
                    "error": "no trained model to attack",
                }
            )
            continue
        check.run("evaluate", name, [
            "evaluate", "--model", str(model_dir), "--data", str(cifar_dir), "--seed", "0",
            "--attack", json.dumps(attack), "--out", str(work / f"eval/{name}.json")])  # fmt: skip
    px = sizes.imagenet_px if sizes.batch is not None else preset_image_size()
    imagenet_dir = write_dataset(work / "imagenet", sizes.imagenet_batch, 4, (3, px, px), 1000)
    imagenet = yaml.safe_load((REPO / "presets/imagenet.yaml").read_text())["regimes"]
    step = {**imagenet["standard"], "epochs": 1, "batch_size": sizes.imagenet_batch}
    full_in = work / "full_imagenet.parquet"
    cli.main(["coreset", "--data", str(imagenet_dir), "--params", json.dumps({"keep": "all"}),
              "--out", str(full_in)])  # fmt: skip
    check.run("train", f"resnet50 {px}px one step (preset precision)", [
        "train", "--data", str(imagenet_dir), "--coreset", str(full_in), "--seed", "0",
        "--model", json.dumps({"arch": "resnet50"}), "--regime", json.dumps(step),
        "--out", str(work / "runs/resnet50")])  # fmt: skip
    return check.results


# -------------------------------------------------------------------------------- 2. throughput


def _synthetic_loader(n: int, shape: tuple[int, ...], classes: int, batch: int, device):
    """A Loader over n random uint8 images on the device."""
    rng = np.random.default_rng(1)
    split = data.Split(
        labels=(np.arange(n) % classes).astype(np.int64),
        images=rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
    )
    return data.Loader(split, batch, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(
    arch: str, kwargs: dict, shape: tuple[int, ...], classes: int, device
) -> torch.nn.Module:
    meta = {"shape": list(shape), "num_classes": classes, "mean": [0.45] * 3, "std": [0.25] * 3}
    torch.manual_seed(0)
    return models.build(models.model_spec(arch, kwargs, meta)).to(device)


def fit_throughput(model, entry: dict, shape, classes: int, sizes: Sizes, device) -> dict:
    """Samples/s of `fit` under a regime entry (warm-up epoch untimed), and peak device memory."""
    batch = int(entry["batch_size"])
    spec = {**entry, "epochs": 1}
    generator = torch.Generator().manual_seed(0)
    fit(model, _synthetic_loader(batch * sizes.warmup, shape, classes, batch, device), spec,
        generator=generator)  # fmt: skip
    loader = _synthetic_loader(batch * sizes.timed, shape, classes, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    started = time.perf_counter()
    fit(model, loader, spec, generator=generator)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"samples_per_s": len(loader) / seconds, "seconds": seconds,
            "peak_memory_gib": None if peak is None else round(peak, 2)}  # fmt: skip


def minimal_throughput(model, entry: dict, shape, classes: int, sizes: Sizes, device) -> float:
    """Samples/s of a bare loop: device-resident batches, SGD, CE, the entry's precision."""
    batch = int(entry["batch_size"])
    steps = sizes.warmup + sizes.timed
    x = torch.rand((steps, batch, *shape), device=device)
    y = torch.randint(0, classes, (steps, batch), device=device)
    if entry.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dtype = AUTOCAST[precision_of(entry, device)]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    model.train()
    started = 0.0
    for i in range(steps):
        if i == sizes.warmup:
            _sync(device)
            started = time.perf_counter()
        inputs = x[i]
        if entry.get("channels_last"):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(inputs).float(), y[i])
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    _sync(device)
    return batch * sizes.timed / (time.perf_counter() - started)


def _preset_rows(preset: str, sizes: Sizes) -> list[tuple[str, dict]]:
    """(name, entry) of one regime per kind in a preset: the first of each type/criterion."""
    regimes = yaml.safe_load((REPO / preset).read_text())["regimes"]
    rows, seen = [], set()
    for name, entry in regimes.items():
        kind = (entry["type"], entry.get("criterion"), entry.get("adv_loss"))
        if kind in seen or entry["type"] == "acs":  # ACS trains with its adv_loss step
            continue
        seen.add(kind)
        entry = _capped(entry, sizes, 1)
        if entry["type"] == "selective":
            entry["warmup_epochs"] = 0  # time the criterion, not the warm-up's random choice
        rows.append((name, entry))
    if ("selective", "margin", None) in seen:  # the other criteria at the same settings
        margin = next(e for _, e in rows if e.get("criterion") == "margin")
        rows += [
            (f"selective_{c}", {**margin, "criterion": c})
            for c in ("gradmatch", "random")
            if ("selective", c, None) not in seen
        ]
    return rows


def throughput(device: torch.device, sizes: Sizes, compile_backend: str) -> list[dict]:
    """Throughput rows of every preset regime and model (module docstring, item 2)."""
    rows = []
    imagenet_px = sizes.imagenet_px if sizes.batch is not None else preset_image_size()
    for preset, arch, kwargs, shape, classes in (
        ("presets/cifar10.yaml", "resnet18", {"width": sizes.width}, (3, 32, 32), 10),
        ("presets/imagenet.yaml", "resnet50", {}, (3, imagenet_px, imagenet_px), 1000),
    ):
        entries = _preset_rows(preset, sizes)
        standard = dict(entries[0][1])
        # Precision variants of the standard regime, for the mixed-precision speed-up.
        extra = [
            ("standard fp32", {**standard, "precision": "fp32", "channels_last": False}),
            ("standard bf16", {**standard, "precision": "bf16", "channels_last": False}),
            ("standard bf16 channels_last",
             {**standard, "precision": "bf16", "channels_last": True}),
        ]  # fmt: skip
        if arch == "resnet18":  # compiling ResNet-50 takes minutes: the code-path pass has one
            extra.append(
                (
                    "standard compile",
                    {**standard, "compile": True, "compile_backend": compile_backend},
                )
            )
        for name, entry in entries + extra:
            regime, resolved = regime_of(entry)
            row = {"preset": preset, "arch": arch, "regime": name, "type": regime.name,
                   "batch_size": int(entry["batch_size"]),
                   "precision": precision_of(resolved, device),
                   "channels_last": bool(entry.get("channels_last", False)),
                   "compile": bool(entry.get("compile", False))}  # fmt: skip
            try:
                model = _build(arch, kwargs, shape, classes, device)
                row.update(fit_throughput(model, entry, shape, classes, sizes, device))
                # In jobcost's own count (its per-arch GFLOPs, its passes), so that pasting the
                # value makes its estimate of this job equal the measured time.
                passes = jobcost.regime_passes(resolved)
                flops = row["samples_per_s"] * passes * jobcost.GFLOPS[arch]
                row["tflops_in_cost_model"] = flops / 1e3
                if name == entries[0][0] or name.startswith("standard "):
                    bare = _build(arch, kwargs, shape, classes, device)
                    minimal = minimal_throughput(bare, entry, shape, classes, sizes, device)
                    row["minimal_loop_samples_per_s"] = minimal
                    row["ratio_to_minimal_loop"] = row["samples_per_s"] / minimal
                row["ok"] = True
            except Exception as err:  # record and go on: one run shows every failure
                row.update({"ok": False, "error": f"{type(err).__name__}: {err}"})
            rows.append(row)
            _print_row(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _print_row(row: dict) -> None:
    if not row["ok"]:
        print(f"  FAIL {row['arch']:<9} {row['regime']:<28} {row['error']}", flush=True)
        return
    ratio = row.get("ratio_to_minimal_loop")
    memory = row["peak_memory_gib"]
    print(
        f"  {row['arch']:<9} {row['regime']:<28} batch {row['batch_size']:>4} "
        f"{row['precision']:<4}{' cl' if row['channels_last'] else '   '} "
        f"{row['samples_per_s']:>9.1f} samples/s  {row['tflops_in_cost_model']:7.2f} TFLOP/s"
        + (f"  peak {memory:.2f} GiB" if memory is not None else "")
        + (f"  {ratio:.2f}× the minimal loop" if ratio is not None else ""),
        flush=True,
    )


# ---------------------------------------------------------------------------------- 3. host syncs


SYNC_REGIMES = {
    "standard": {"type": "standard"},
    "pgd": {"type": "pgd"},
    "trades": {"type": "trades"},
    "fgsm_rs": {"type": "fgsm_rs"},
    "selective margin": {"type": "selective", "criterion": "margin", "warmup_epochs": 0},
    "selective gradmatch": {"type": "selective", "criterion": "gradmatch", "warmup_epochs": 0},
    "selective random": {"type": "selective", "criterion": "random", "warmup_epochs": 0},
    "standard fp16 (scaler)": {"type": "standard", "precision": "fp16"},
    "standard bf16": {"type": "standard", "precision": "bf16"},
}


def host_syncs(device: torch.device, sizes: Sizes) -> dict[str, dict]:
    """Synchronisations per training step of each regime (and of the train_step capture)."""
    from robustcore.dynamics import train_proxy

    shape, classes, batch = (3, 32, 32), 10, 8
    base = {"epochs": 1, "batch_size": batch, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
            "augment": {"crop_padding": 4, "flip": True}, "eps": 8 / 255, "steps": 2,
            "step_size": 2 / 255}  # fmt: skip
    out = {}
    for name, extra in SYNC_REGIMES.items():
        spec = {**base, **extra}
        if extra["type"] == "fgsm_rs":
            spec = {k: v for k, v in spec.items() if k not in ("steps", "step_size")}

        def prepare(steps: int, spec=spec):
            model = _build("small_cnn", {"width": 8}, shape, classes, device)
            loader = _synthetic_loader(batch * steps, shape, classes, batch, device)
            return lambda: fit(model, loader, spec, generator=torch.Generator().manual_seed(0))

        counted = syncs_per_step(prepare, device, steps=sizes.sync_steps)
        out[name] = {"per_step": counted.per_step, "per_run": counted.per_run,
                     "sites": counted.sites}  # fmt: skip

    def proxy(steps: int):
        model = _build("mlp", {"hidden": [32]}, shape, classes, device)
        split = _synthetic_loader(batch * steps, shape, classes, batch, "cpu").split
        spec = {**base, "augment": {}, "capture": "train_step"}

        def loop() -> None:
            with tempfile.TemporaryDirectory() as folder:
                train_proxy(model, split, spec, device=device, out_dir=folder,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip

        return loop

    counted = syncs_per_step(proxy, device, steps=sizes.sync_steps)
    out["proxy capture=train_step"] = {"per_step": counted.per_step, "per_run": counted.per_run,
                                       "sites": counted.sites}  # fmt: skip
    how = "measured (torch.cuda sync debug mode)" if device.type == "cuda" else "reviewed (CPU)"
    for name, row in out.items():
        sites = ", ".join(f"{s} ×{n:g}" for s, n in row["sites"].items()) or "-"
        print(f"  {name:<26} {row['per_step']:4.1f} per step ({how}); {sites}", flush=True)
    return out


# -------------------------------------------------------------------------------- 4. calibration


def calibration(rows: list[dict]) -> dict[str, float]:
    """Per arch, the slowest preset regime's TFLOP/s in the cost model's count (conservative)."""
    values: dict[str, float] = {}
    for row in rows:
        if not row["ok"] or row["compile"] or row["regime"].startswith("standard "):
            continue  # the presets' own settings only: their jobs are what the limits are for
        arch = row["arch"]
        values[arch] = min(values.get(arch, math.inf), row["tflops_in_cost_model"])
    return {arch: round(v, 2) for arch, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the four parts, write the JSON, print the calibration lines; 1 if anything failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU; what the test runs)")
    parser.add_argument("--out", type=Path, default=REPO / "results/gpu_check/gpu_check.json")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; aot_eager with --tiny)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["paths", "speed", "syncs"])
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = TINY if args.tiny else GPU
    backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    started = time.perf_counter()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    print(f"device check on {device} ({name}), {'tiny' if args.tiny else 'full'} sizes", flush=True)
    report: dict[str, Any] = {"device": str(device), "device_name": name,
                              "sizes": sizes.__dict__, "versions": software_versions()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        if "paths" not in args.skip:
            print("1. code paths", flush=True)
            report["code_paths"] = code_paths(device, sizes, Path(work), backend)
    if "speed" not in args.skip:
        print("2. throughput (samples/s of robustcore.train.fit; TFLOP/s in jobcost's count)")
        report["throughput"] = throughput(device, sizes, backend)
    if "syncs" not in args.skip:
        print("3. host synchronisations per training step")
        report["host_syncs"] = host_syncs(device, sizes)
    report["arch_tflops"] = calibration(report.get("throughput", []))
    report["seconds"] = round(time.perf_counter() - started, 1)
    failures = [f"{r['stage']} {r['variant']}" for r in report.get("code_paths", []) if not r["ok"]]
    failures += [f"throughput {r['arch']} {r['regime']}" for r in report.get("throughput", [])
                 if not r["ok"]]  # fmt: skip
    report["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print("4. calibration: paste into the config (job_resources) to size the time limits")
    today = time.strftime("%Y-%m-%d")
    print(f"# measured by benchmarks/gpu_check.py on {name} ({device}), {today}")
    print("job_resources:")
    print("  arch_tflops: {" + ", ".join(f"{a}: {v}" for a, v in report["arch_tflops"].items())
          + "}")  # fmt: skip
    print(f"{len(failures)} failure(s){': ' + '; '.join(failures) if failures else ''}")
    print(f"wrote {args.out} in {report['seconds']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
