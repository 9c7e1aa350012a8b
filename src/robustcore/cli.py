"""Thin command-line interface: one subcommand per workflow stage, explicit paths in and out."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Only what every subcommand needs: torch is imported by the subcommands that use it.
from robustcore.io import PREEMPTED_EXIT, DivergedError, InputError, Preempted


def _json_arg(text: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _write_log_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Write per-epoch log rows as CSV, atomically."""
    import pandas as pd

    from robustcore.io import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def cmd_prepare(args: argparse.Namespace) -> None:
    """Write a dataset's train/test arrays (index tables, or decoded shards) and meta.json."""
    from robustcore import data

    params = dict(args.params)
    source = params.pop("source")
    root = params.pop("root", None) or args.data_root
    download = params.pop("download", False)
    meta = data.prepare(
        source, args.out, data_root=root, download=download, workers=args.workers, **params
    )
    print(
        f"prepared {source}: {meta['n_train']} train / {meta['n_test']} test samples -> {args.out}"
    )


def _setup(args: argparse.Namespace, *, distributed: bool = False):
    """Resolve the device, join the process group torchrun/srun describe (where `distributed`),
    seed everything; return (device, CPU generator, World)."""
    from robustcore.distributed import World, init_from_env, launched_size
    from robustcore.runtime import resolve_device, seed_everything

    device = resolve_device(args.device)
    if distributed:
        world = init_from_env(str(device))
        device = world.device
    elif (size := launched_size()) > 1:
        raise InputError(
            f"{args.command} does not run under torch.distributed yet, but the environment "
            f"describes {size} processes (WORLD_SIZE or SLURM_NTASKS); launch one"
        )
    else:
        world = World(0, 1, 0, device)
    generator = seed_everything(args.seed, args.threads)  # the same seed on every rank
    return device, generator, world


@contextlib.contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[tuple[Any, Any, Any]]:
    """`_setup` with the process group torchrun/srun describe, left again when the block ends."""
    from robustcore.distributed import destroy

    device, generator, world = _setup(args, distributed=True)
    try:
        yield device, generator, world
    finally:
        destroy(world)


def _fresh_model(args: argparse.Namespace, device):
    """The dataset's meta, the model spec and a freshly initialised model on `device`."""
    from robustcore import data, models

    meta = data.load_meta(args.data)
    spec = models.model_spec(args.model["arch"], args.model.get("kwargs", {}), meta)
    return meta, spec, models.build(spec).to(device)


def cmd_proxy(args: argparse.Namespace) -> None:
    """Train a proxy on the full training set and record per-sample dynamics every epoch
    (one rank of several under torchrun/srun)."""
    with _process_group(args) as (device, generator, world):
        _proxy_run(args, device, generator, world)


def _proxy_run(args: argparse.Namespace, device, generator, world) -> None:
    """cmd_proxy once the process group (if any) is up: every rank computes, rank 0 writes."""
    from robustcore import data, models
    from robustcore.checkpoint import clear as clear_checkpoints
    from robustcore.distributed import barrier, is_main
    from robustcore.dynamics import train_proxy
    from robustcore.io import write_json
    from robustcore.probe import run_probe, save_probe
    from robustcore.runtime import device_info

    train, test = data.load(args.data)
    meta, spec, model = _fresh_model(args, device)
    size = meta.get("image_size")
    log, cost = train_proxy(
        model,
        train,
        args.training,
        device=device,
        generator=generator,
        out_dir=args.out,
        image_size=size,
        test=test,
        workers=args.workers,
        world=world,
    )
    out = Path(args.out)
    # The shared probe pass: penultimate features and logits of the final proxy.
    probe_loader = data.Loader(
        train, 4 * args.training["batch_size"], device, image_size=size, num_workers=args.workers
    )
    probe = run_probe(model, probe_loader, world)  # rank 0's: every rank's rows; others: None
    if is_main(world):
        save_probe(out / "probe.npz", probe)
        cost.add("probe", len(train), backward=False)  # the whole pass (cost: summed by fit)
        _write_log_csv(out / "log.csv", log)
        write_json(
            out / "cost.json", {**cost.as_dict(), "seed": args.seed, "training": args.training}
        )
        models.save(model, {**spec, "trained_on": device_info(device, args.training)}, out)
        clear_checkpoints(out / "checkpoint")
        print(f"proxy trained: final train acc {log[-1]['train_acc']:.4f} -> {out}")
    barrier(world)  # the other ranks wait until rank 0 has written


def cmd_score(args: argparse.Namespace) -> None:
    """Compute a per-sample score (or a greedy pick order) from a trained proxy.

    Under a multi-process launch (torchrun/srun), a method that scores each sample from the
    model alone, batch by batch (deepfool), is sharded: every rank scores its whole batches,
    rank 0 gathers the rows in index order and writes. Every other method reads the probe,
    dynamics or sensitivity table with NumPy: rank 0 computes it alone (no process group) and
    the other ranks return at once.
    """
    from robustcore.distributed import World, destroy, launched_rank, launched_size
    from robustcore.runtime import resolve_device, seed_everything
    from robustcore.scores import REGISTRY

    params = dict(args.params)
    name = params.pop("method")
    if name not in REGISTRY:
        raise InputError(f"score method {name!r} unknown; expected one of {sorted(REGISTRY)}")
    method = REGISTRY[name]
    shardable = method.needs == ("model",) and method.kind == "score"
    shardable = shardable and "batch_size" in method.defaults  # scored batch by batch
    if shardable:
        device, _, world = _setup(args, distributed=True)
    else:
        if (size := launched_size()) > 1 and (rank := launched_rank()) != 0:
            print(f"score {name}: runs on rank 0 alone; rank {rank} of {size} has nothing to do")
            return
        device = resolve_device(args.device)
        seed_everything(args.seed, args.threads)
        world = World(0, 1, 0, device)  # no process group, also on rank 0 of a launch
    try:
        _score_run(args, method, name, params, device, world)
    finally:
        destroy(world)


def _score_run(args: argparse.Namespace, method, name: str, params: dict, device, world) -> None:
    """cmd_score on this rank: the method over this rank's samples; rank 0 writes."""
    import resource

    import numpy as np
    import pandas as pd

    from robustcore.distributed import (
        barrier,
        batch_shard,
        gather_in_order,
        is_distributed,
        is_main,
    )
    from robustcore.io import read_npz, write_json, write_parquet
    from robustcore.scores import ScoreInputs, load_inputs
    from robustcore.scores.base import check_frame, int_param

    rows = None
    if is_distributed(world):  # whole batches of the method's batch_size, as in one process
        batch = int_param(name, "batch_size", {**method.defaults, **params}["batch_size"], 1)
        labels = read_npz(Path(args.data) / "train.npz", ["labels"])["labels"]
        rows = batch_shard(len(labels), batch, world)
    inputs = load_inputs(method, args.proxy, args.data, device, rows)
    rss_before = _reset_peak_rss_mib()
    started = time.perf_counter()
    frame = None  # a rank may hold no batch (fewer batches than ranks): it scores nothing
    if len(inputs.index) or not is_distributed(world):
        frame = method(inputs, seed=args.seed, **params)
    if is_distributed(world):  # rank 0: every rank's rows, one row per sample in index order
        parts = [part for part in gather_in_order([frame], world) if part is not None]
        if is_main(world):
            whole = ScoreInputs(index=np.arange(len(labels), dtype=np.int64), labels=labels)
            frame = check_frame(name, pd.concat(parts, ignore_index=True), whole)
    seconds = time.perf_counter() - started
    method_peak = _proc_status_mib("VmHWM")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not is_main(world):
        barrier(world)
        return
    out = Path(args.out)
    write_parquet(out, frame)
    write_json(
        out.with_suffix(".json"),
        {
            "method": name,
            "natural_order": method.natural,
            "kind": method.kind,
            "needs": list(method.needs),
            "params": {**method.defaults, **params},
            "seed": args.seed,
            "n": len(frame),
            "wall_seconds": round(seconds, 3),
            # The job's peak resident memory (imports and inputs included), and how far the
            # method itself raised it above the memory in use when it started (rank 0's).
            "peak_rss_mib": round(peak, 1),
            "method_peak_rss_mib": (
                round(max(method_peak - rss_before, 0.0), 1)
                if method_peak is not None and rss_before is not None
                else None
            ),
            "device": str(device),
            "world_size": world.world_size,
        },
    )
    print(f"score {name}: {len(frame)} samples in {seconds:.2f} s -> {out}")
    barrier(world)


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss_mib() -> float | None:
    """Reset this process's peak-RSS mark (Linux clear_refs) and return the RSS now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_mib("VmRSS")


def cmd_sensitivity(args: argparse.Namespace) -> None:
    """Sparse FGSM on the proxy: per sample and k, the softmax output and prediction
    (one rank of several under torchrun/srun: each attacks its whole batches, rank 0 writes)."""
    with _process_group(args) as (device, _, world):
        _sensitivity_run(args, device, world)


def _sensitivity_run(args: argparse.Namespace, device, world) -> None:
    """cmd_sensitivity once the process group (if any) is up."""
    from robustcore import data, models
    from robustcore.distributed import barrier, is_main
    from robustcore.io import write_json
    from robustcore.sensitivity import flip_rates, sensitivity_blocks, write_sensitivity

    model = models.load(args.proxy, device)
    train, _ = data.load(args.data)
    loader = data.Loader(train, args.params.get("batch_size", 256), device)
    started = time.perf_counter()
    blocks = sensitivity_blocks(  # checks the parameters; attacks batch by batch as written
        model,
        loader,
        eps=args.params["eps"],
        ks=args.params["ks"],
        mode=args.params["mode"],
        world=world,
    )
    if not is_main(world):
        for _ in blocks:  # sends this rank's blocks to rank 0 (nothing is yielded here)
            pass
        barrier(world)
        return
    table = write_sensitivity(args.out, blocks, ks=sorted(args.params["ks"]))
    seconds = time.perf_counter() - started
    flips = flip_rates(table)
    write_json(
        Path(args.out).with_suffix(".json"),
        {
            "params": args.params,
            "n_rows": len(table),
            # Share of samples whose prediction flips at each k: near 0 everywhere, the
            # invariance and robustness terms of ISEF/FGSM-CS/PSS carry no signal.
            "flip_rate": {str(k): rate for k, rate in flips.items()},
            "wall_seconds": round(seconds, 3),
            "world_size": world.world_size,
        },
    )
    print(f"sparse FGSM: {len(table)} samples, flips {flips} in {seconds:.2f} s -> {args.out}")
    barrier(world)


def cmd_coreset(args: argparse.Namespace) -> None:
    """Select the kept training samples and write their indices and labels."""
    import numpy as np
    import pandas as pd

    from robustcore.io import read_json, read_npz, read_parquet, write_json, write_parquet
    from robustcore.select import hybrid_select, select

    params = args.params
    keep = params.get("keep", "low")
    end = keep
    if args.scores:
        scores = read_parquet(args.scores, ["index", "label", "score"])
        index, labels, score = (scores[c].to_numpy() for c in ("index", "label", "score"))
        if keep in ("top", "bottom"):
            # top = the end the method's paper keeps (its natural order), bottom = the other end.
            natural = read_json(Path(args.scores).with_suffix(".json"))["natural_order"]
            keep = natural if end == "top" else {"low": "high", "high": "low"}[natural]
    else:
        labels = read_npz(Path(args.data) / "train.npz", ["labels"])["labels"]
        index, score = np.arange(len(labels), dtype=np.int64), None
        if keep not in ("random", "all"):
            raise InputError(f"coreset keep {keep!r} needs --scores; without scores use 'random'")
    if keep == "all":
        kept, info = index, {"size": len(index), "n_total": len(index), "fraction": 1.0}
    elif keep == "hybrid":
        kept, info = hybrid_select(
            index, labels, score, args.fraction, hard_share=params.get("hard_share", 0.5)
        )
    else:
        kept, info = select(
            index,
            labels,
            score,
            args.fraction,
            keep=keep,
            balanced=params.get("balanced", True),
            seed=args.seed,
            min_per_class=params.get("min_per_class", 0),
        )
    label_of = pd.Series(labels, index=index)
    frame = pd.DataFrame({"index": kept, "label": label_of.loc[kept].to_numpy()})
    write_parquet(args.out, frame)
    counts = frame["label"].value_counts().sort_index()
    info.setdefault("per_class", {str(k): int(v) for k, v in counts.items()})
    write_json(
        Path(args.out).with_suffix(".json"),
        {**info, "end": end, "keep": keep, "params": params, "seed": args.seed},
    )
    print(f"coreset: kept {len(frame)} of {len(index)} -> {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    """Train a model on a coreset under a regime (one rank of several under torchrun/srun)."""
    from robustcore.regimes import regime_of

    regime_of(args.regime)  # an unknown regime fails before any data is read
    with _process_group(args) as (device, generator, world):
        _train_run(args, device, generator, world)


def _train_run(args: argparse.Namespace, device, generator, world) -> None:
    """cmd_train once the process group (if any) is up: every rank trains, rank 0 writes."""
    from robustcore import data, models
    from robustcore.checkpoint import clear as clear_checkpoints
    from robustcore.distributed import is_main
    from robustcore.io import read_parquet, write_json
    from robustcore.runtime import device_info
    from robustcore.train import fit

    train, _ = data.load(args.data)
    kept = read_parquet(args.coreset, ["index", "label"])["index"].to_numpy()
    if len(kept) == 0 or kept.min() < 0 or kept.max() >= len(train):
        raise InputError(f"{args.coreset}: indices must lie in 0..{len(train) - 1}")
    meta, spec, model = _fresh_model(args, device)
    loader = data.Loader(
        train,
        args.regime["batch_size"],
        device,
        indices=kept,
        image_size=meta.get("image_size"),
        num_workers=args.workers,
    )
    out = Path(args.out)
    try:
        log, cost = fit(
            model,
            loader,
            args.regime,
            generator=generator,
            desc="train",
            checkpoint_dir=out / "checkpoint",
            world=world,
        )
    except DivergedError:
        if is_main(world):
            clear_checkpoints(out / "checkpoint")  # a resumed run would diverge again
        raise
    if not is_main(world):
        return  # every rank holds the same weights, log and summed cost: rank 0 writes them
    _write_log_csv(out / "log.csv", log)
    write_json(
        out / "cost.json",
        {**cost.as_dict(), "seed": args.seed, "n_train": len(kept), "regime": args.regime},
    )
    models.save(model, {**spec, "trained_on": device_info(device, args.regime)}, out)
    clear_checkpoints(out / "checkpoint")
    print(f"trained on {len(kept)} samples: final train acc {log[-1]['train_acc']:.4f} -> {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Clean and robust test accuracy of a trained model under one attack (one rank of several
    under torchrun/srun: each attacks its whole batches, rank 0 writes)."""
    with _process_group(args) as (device, _, world):
        _evaluate_run(args, device, world)


def _evaluate_run(args: argparse.Namespace, device, world) -> None:
    """cmd_evaluate once the process group (if any) is up."""
    from robustcore import data, models
    from robustcore.distributed import barrier, is_main
    from robustcore.evaluate import evaluate
    from robustcore.io import read_json, write_json, write_parquet
    from robustcore.runtime import software_versions

    model = models.load(args.model, device)
    _, test = data.load(args.data)
    image_size = data.load_meta(args.data).get("image_size")
    loader = data.Loader(
        test,
        args.attack.get("batch_size", 256),
        device,
        image_size=image_size,
        num_workers=args.workers,
    )
    summary, frame = evaluate(model, loader, args.attack, seed=args.seed, world=world)
    if is_main(world):  # every rank holds the same summary and frame
        if args.cost:
            # The run's counted training compute travels with its accuracy, for the report.
            summary["train_cost"] = read_json(args.cost)
        out = Path(args.out)
        write_parquet(out.with_suffix(".parquet"), frame)
        write_json(out, {**summary, "run": args.tags, "versions": software_versions()})
        print(f"clean {summary['clean_acc']:.4f} robust {summary['robust_acc']:.4f} -> {out}")
    barrier(world)


def cmd_report(args: argparse.Namespace) -> None:
    """Render a study's tables and figures, or the index linking all studies."""
    from robustcore import report

    if args.index:
        report.write_index(args.out, args.study)
    else:
        writers = {
            "study": report.write_study,
            "compute": report.write_compute,
            "top_vs_bottom": report.write_top_vs_bottom,
        }
        writers[args.part](args.out, args.study, args.inputs)
    print(f"report -> {args.out}")


def cmd_figure(args: argparse.Namespace) -> None:
    """Draw one of a study's figures that read stage files other than evaluations."""
    from robustcore.report import jobs

    jobs.run(args.kind, args.params, args.out)
    print(f"figure {args.kind} -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    """The robustcore argument parser."""
    parser = argparse.ArgumentParser(prog="robustcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def torch_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
        p.add_argument(
            "--workers", type=int, default=0, help="DataLoader workers for image-folder data"
        )

    p = add("prepare", cmd_prepare, "write a dataset's arrays (or decoded shards) and meta.json")
    p.add_argument("--params", type=_json_arg, required=True, help="dataset entry (JSON)")
    p.add_argument("--data-root", default="data")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes decoding an image folder (entry with decode:); default decode.workers",
    )
    p.add_argument("--out", required=True)

    p = add("proxy", cmd_proxy, "train a proxy and record per-sample dynamics")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--model", type=_json_arg, required=True, help="model entry (JSON)")
    p.add_argument("--training", type=_json_arg, required=True, help="training settings (JSON)")
    p.add_argument("--out", required=True)
    torch_opts(p)

    p = add("score", cmd_score, "compute per-sample scores from a proxy")
    p.add_argument("--proxy", required=True, help="proxy folder (model, dynamics/, probe.npz)")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--params", type=_json_arg, required=True, help="score entry (JSON)")
    p.add_argument("--out", required=True)
    torch_opts(p)

    p = add("sensitivity", cmd_sensitivity, "Sparse FGSM outputs per training sample and k")
    p.add_argument("--proxy", required=True, help="proxy folder")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--params", type=_json_arg, required=True, help="eps, ks, mode (JSON)")
    p.add_argument("--out", required=True, help="sparse_fgsm.parquet")
    torch_opts(p)

    p = add("coreset", cmd_coreset, "select a coreset")
    p.add_argument("--data", required=True)
    p.add_argument("--scores", default=None)
    p.add_argument("--params", type=_json_arg, required=True, help="selection entry (JSON)")
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = add("train", cmd_train, "train a model on a coreset")
    p.add_argument("--data", required=True)
    p.add_argument("--coreset", required=True)
    p.add_argument("--model", type=_json_arg, required=True, help="model entry (JSON)")
    p.add_argument("--regime", type=_json_arg, required=True, help="regime entry (JSON)")
    p.add_argument("--out", required=True)
    torch_opts(p)

    p = add("evaluate", cmd_evaluate, "clean and robust accuracy on the test set")
    p.add_argument("--model", required=True, help="run folder or its model.pt")
    p.add_argument("--data", required=True)
    p.add_argument("--attack", type=_json_arg, required=True, help="attack entry (JSON)")
    p.add_argument("--tags", type=_json_arg, default={}, help="run identity stored in the output")
    p.add_argument("--cost", default=None, help="the run's cost.json, copied into the output")
    p.add_argument("--out", required=True, help="summary .json (per-sample .parquet beside it)")
    torch_opts(p)

    p = add("report", cmd_report, "render a study's tables and figures, or the index")
    p.add_argument("--study", type=_json_arg, required=True, help="study entry (JSON)")
    p.add_argument("--index", action="store_true", help="write index.md for all studies")
    p.add_argument(
        "--part",
        choices=["study", "compute", "top_vs_bottom"],
        default="study",
        help="study: accuracy and comparison tables, accuracy figures; compute: compute table "
        "and robust-vs-compute figure; top_vs_bottom: the score-ends figure",
    )
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="*", help="evaluation .json files")

    p = add("figure", cmd_figure, "draw a figure from stage files (scores, dynamics, models)")
    p.add_argument(
        "--kind",
        required=True,
        help="hardness, proxy_agreement, decision_boundary, "
        "feature_projection or easy_hard_accuracy",
    )
    p.add_argument("--params", type=_json_arg, required=True, help="input paths and options")
    p.add_argument("--out", required=True, help="the study's report folder")
    return parser


class _ImportClock:
    """Seconds spent in (outermost) import statements while installed, to tell imports from work."""

    def __init__(self) -> None:
        self.seconds, self._depth = 0.0, 0
        self._original = builtins.__import__

    def __enter__(self) -> _ImportClock:
        builtins.__import__ = self._import
        return self

    def __exit__(self, *exc: object) -> None:
        builtins.__import__ = self._original

    def _import(self, *args: Any, **kwargs: Any) -> Any:
        if self._depth:
            return self._original(*args, **kwargs)
        self._depth += 1
        started = time.perf_counter()
        try:
            return self._original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self._depth -= 1


def _log_work(path: str, command: str, seconds: float) -> None:
    """Append one job's work and lifetime (seconds) to a JSON-lines file, one write per job."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            alive = float(uptime.read().split()[0]) - started
    except OSError:  # not Linux
        alive = None
    line = {"command": command, "work_seconds": seconds, "process_seconds": alive}
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input exits 2 with a one-line message.

    With ROBUSTCORE_WORK_LOG set (benchmarks/bench_default.py), the subcommand's time less its
    imports is appended to that file.
    """
    args = build_parser().parse_args(argv)
    work_log = os.environ.get("ROBUSTCORE_WORK_LOG")
    clock = _ImportClock() if work_log else contextlib.nullcontext()
    started = time.perf_counter()
    try:
        with clock:
            args.func(args)
    except (InputError, DivergedError) as err:
        print(f"robustcore {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"robustcore {args.command}: {err}", file=sys.stderr)
        return PREEMPTED_EXIT
    finally:
        if work_log:
            work = time.perf_counter() - started - clock.seconds
            _log_work(work_log, args.command, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
