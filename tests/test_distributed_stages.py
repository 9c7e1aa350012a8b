"""Per-sample stages under torch.distributed (gloo, 2 CPU processes) write what 1 process writes.

`robustcore proxy` (eval-mode and train_step capture, the probe), `evaluate` (PGD with random
starts and its hygiene runs), `score` with DeepFool and `sensitivity` (Sparse FGSM) run as 2
ranks of one process group (spawned workers calling `cli.main` with torchrun's variables, one
thread each) and as 1 process (in this process, one thread), on the real digits data.

Tolerances. The evaluation, DeepFool and Sparse FGSM read the same saved model in both runs, and
each rank computes whole batches of the 1-process pass (with per-batch random starts), so their
files are equal bitwise. A 2-process proxy ends at the 1-process weights only up to float
summation order (tests/test_distributed.py), so its dynamics and probe are compared at
atol 1e-5 + rtol 1e-5 (float32 values of order 0.01 to 10; the measured differences are printed,
about 1e-6 and below); sample indices and labels are equal, and `correct` is equal except where
a sample's margin is within 1e-4 of the boundary. A 2-process run stopped by SIGUSR1 and resumed
with 2 processes writes bitwise what an uninterrupted 2-process run writes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

from robustcore import cli, data, models
from robustcore.distributed import World, batch_shard
from robustcore.io import PREEMPTED_EXIT, read_npz
from robustcore.probe import PROBE_KEYS

MODEL = {"arch": "mlp", "kwargs": {"hidden": [32]}}  # no BatchNorm: shards cannot differ in it
TRAINING = {
    "epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
    "eval_batch_size": 96,  # 1347 train samples: 15 eval batches (8 + 7), 450 test: 5 (3 + 2)
}  # fmt: skip
PGD = {
    "type": "pgd", "eps": 0.1, "steps": 10, "step_size": 0.025, "random_start": True,
    "batch_size": 64, "n_points": 300, "hygiene_points": 150,  # 5 batches (3 + 2), 3 (2 + 1)
}  # fmt: skip
DEEPFOOL = {"method": "deepfool", "max_iter": 10, "batch_size": 200}  # 7 batches (4 + 3)
SPARSE_FGSM = {"eps": 0.1, "ks": [1, 4], "mode": "pixel", "batch_size": 200}
ATOL = RTOL = 1e-5
MARGIN_SLACK = 1e-4
LAUNCH_VARIABLES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID",
)  # fmt: skip
DEADLINE = 240  # seconds a 2-process launch may take before its workers are killed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _SignallingLoader(data.Loader):
    """A Loader that sends this process SIGUSR1 at step AT[1] of shuffled (training) epoch AT[0]."""

    AT = (0, 0)
    shuffled_epochs = 0

    def epoch(self, shuffle=False, generator=None, **options):
        if shuffle:
            type(self).shuffled_epochs += 1
        for step, batch in enumerate(super().epoch(shuffle, generator, **options)):
            if shuffle and (type(self).shuffled_epochs, step) == self.AT:
                os.kill(os.getpid(), signal.SIGUSR1)  # Slurm's warning, mid-epoch
            yield batch


def _worker(rank, size, commands, folder):
    """One rank: run each (argv, port, signal_at) through cli.main; save the exit codes."""
    import robustcore.dynamics as dynamics

    torch.set_num_threads(1)
    codes = []
    for argv, port, signal_at in commands:
        os.environ.update(
            WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        signalling = signal_at is not None and rank == 1  # one rank gets the signal
        if signalling:
            _SignallingLoader.AT, _SignallingLoader.shuffled_epochs = tuple(signal_at), 0
            dynamics.Loader = _SignallingLoader
        try:
            codes.append(cli.main(argv))
        finally:
            dynamics.Loader = data.Loader
    Path(folder, f"rank{rank}.json").write_text(json.dumps(codes))


def _two(folder: Path, commands: list[list[str]], signal_at=None) -> list[list[int]]:
    """Run the commands in 2 spawned ranks (a fresh port each); each rank's exit codes."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = [(argv, _free_port(), signal_at) for argv in commands]
    context = mp.start_processes(
        _worker, args=(2, plan, str(folder)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=max(deadline - time.monotonic(), 1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the 2-process launch of {commands} took over {DEADLINE} s")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def _one(argv: list[str]) -> int:
    """Run a command in this process, as one process with one thread."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCH_VARIABLES:
            patch.delenv(name, raising=False)
        try:
            return cli.main(argv)
        finally:
            torch.set_num_threads(threads)


def _options(digits: str) -> list[str]:
    return ["--data", digits, "--seed", "3", "--threads", "1", "--device", "cpu"]


def _proxy(digits: str, out: Path, capture: str, epochs: int = 2) -> list[str]:
    training = {**TRAINING, "capture": capture, "epochs": epochs}
    return ["proxy", *_options(digits), "--model", json.dumps(MODEL),
            "--training", json.dumps(training), "--out", str(out)]  # fmt: skip


def _stages(digits: str, proxy: Path, out: Path) -> list[list[str]]:
    """evaluate, score (DeepFool) and sensitivity of one saved proxy."""
    return [
        ["evaluate", *_options(digits), "--model", str(proxy), "--attack", json.dumps(PGD),
         "--out", str(out / "pgd.json")],
        ["score", *_options(digits), "--proxy", str(proxy), "--params", json.dumps(DEEPFOOL),
         "--out", str(out / "deepfool.parquet")],
        ["sensitivity", *_options(digits), "--proxy", str(proxy),
         "--params", json.dumps(SPARSE_FGSM), "--out", str(out / "sparse_fgsm.parquet")],
        # a method over the probe (NumPy): rank 0 alone computes and writes it
        ["score", *_options(digits), "--proxy", str(proxy), "--params", '{"method": "margin"}',
         "--out", str(out / "margin.parquet")],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(digits_dir, tmp_path_factory):
    """Every stage in 1 process and in 2; the later stages read the 1-process proxy in both."""
    root = tmp_path_factory.mktemp("stages")
    one, two = root / "one", root / "two"
    for capture in ("eval", "train_step"):
        assert _one(_proxy(digits_dir, one / capture, capture)) == 0
    for argv in _stages(digits_dir, one / "eval", one / "stages"):
        assert _one(argv) == 0
    commands = [_proxy(digits_dir, two / capture, capture) for capture in ("eval", "train_step")]
    commands += _stages(digits_dir, one / "eval", two / "stages")
    assert _two(root / "codes", commands) == [[0] * len(commands)] * 2
    return one, two


def _compare_dynamics(one: Path, two: Path) -> dict[str, float]:
    """Every epoch file (train, test): the same rows, floats within tolerance; max |diff|s."""
    names = sorted(p.name for p in (one / "dynamics").iterdir())
    assert names == sorted(p.name for p in (two / "dynamics").iterdir())
    assert "test_epoch002.parquet" in names and "epoch002.parquet" in names
    largest: dict[str, float] = {}
    for name in names:
        a, b = pd.read_parquet(one / "dynamics" / name), pd.read_parquet(two / "dynamics" / name)
        assert list(a.columns) == list(b.columns) and list(a.dtypes) == list(b.dtypes), name
        assert a["index"].tolist() == list(range(len(a))), name  # one row per sample, in order
        assert a["index"].equals(b["index"]) and a["label"].equals(b["label"]), name
        near = a["margin"].abs().to_numpy() < MARGIN_SLACK
        assert ((a["correct"] == b["correct"]).to_numpy() | near).all(), name
        for column in a.columns.drop(["index", "label", "correct"]):
            np.testing.assert_allclose(b[column], a[column], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} {column}")  # fmt: skip
            difference = float(np.abs(b[column] - a[column]).max())
            largest[column] = max(largest.get(column, 0.0), difference)
    return largest


@pytest.mark.parametrize("capture", ["eval", "train_step"])
def test_two_process_proxy_writes_the_one_process_dynamics_and_probe(runs, capture):
    one, two = (folder / capture for folder in runs)
    assert sorted(os.listdir(two)) == sorted(os.listdir(one)) == [
        "cost.json", "dynamics", "log.csv", "model.json", "model.pt", "probe.npz",
    ]  # fmt: skip
    largest = _compare_dynamics(one, two)
    a, b = read_npz(one / "probe.npz", PROBE_KEYS), read_npz(two / "probe.npz", PROBE_KEYS)
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["labels"], b["labels"])
    probe_largest = 0.0
    for key in ("features", "logits", "last_weight", "last_bias"):
        np.testing.assert_allclose(b[key], a[key], rtol=RTOL, atol=ATOL, err_msg=key)
        probe_largest = max(probe_largest, float(np.abs(b[key] - a[key]).max()))
    shown = ", ".join(f"{column} {value:.2g}" for column, value in largest.items())
    print(f"{capture}: max |2 processes - 1| dynamics: {shown}; probe {probe_largest:.2g}")
    cost_one, cost_two = (json.loads((f / "cost.json").read_text()) for f in (one, two))
    assert (cost_one["world_size"], cost_two["world_size"]) == (1, 2)
    for key in ("forward_samples", "backward_samples", "forward_total", "backward_total"):
        assert cost_two[key] == cost_one[key], key  # capture and probe passes: the sum
    log_one, log_two = pd.read_csv(one / "log.csv"), pd.read_csv(two / "log.csv")
    assert log_one["train_acc"].tolist() == log_two["train_acc"].tolist()
    for column in ("train_loss", "mean_input_grad_norm"):
        np.testing.assert_allclose(log_two[column], log_one[column], rtol=RTOL, err_msg=column)


def test_two_process_evaluation_writes_the_one_process_table(runs):
    one, two = (folder / "stages" for folder in runs)
    a, b = pd.read_parquet(one / "pgd.parquet"), pd.read_parquet(two / "pgd.parquet")
    assert len(a) == PGD["n_points"] and a["index"].tolist() == list(range(len(a)))
    assert a.equals(b)
    s1, s2 = (json.loads((f / "pgd.json").read_text()) for f in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert (s2["clean_acc"], s2["robust_acc"]) == (s1["clean_acc"], s1["robust_acc"])
    assert s1["robust_acc"] < s1["clean_acc"]  # the attack bites
    assert s2["hygiene"] == s1["hygiene"] and s2["max_perturbation"] == s1["max_perturbation"]
    for part in ("attack", "hygiene"):  # counted forwards: the sum over ranks
        assert s2["cost"][part]["sample_forwards"] == s1["cost"][part]["sample_forwards"] > 0
    assert s2["cost"]["hygiene"]["runs"] == s1["cost"]["hygiene"]["runs"]
    print(f"pgd: clean {s1['clean_acc']:.4f} robust {s1['robust_acc']:.4f} in 1 and 2 processes")


def test_two_process_deepfool_and_sparse_fgsm_write_the_one_process_tables(runs, digits_dir):
    one, two = (folder / "stages" for folder in runs)
    a, b = pd.read_parquet(one / "deepfool.parquet"), pd.read_parquet(two / "deepfool.parquet")
    n = len(data.load(digits_dir)[0])
    assert a["index"].tolist() == list(range(n)) and a.equals(b)
    assert a["flipped"].any()
    meta = json.loads((two / "deepfool.json").read_text())
    assert meta["world_size"] == 2 and meta["n"] == n
    a, b = (pq.read_table(f / "sparse_fgsm.parquet") for f in (one, two))
    assert a.num_rows == n and a.equals(b)
    assert json.loads((two / "sparse_fgsm.json").read_text())["world_size"] == 2


def test_score_methods_without_the_model_run_on_rank_0_alone(runs):
    one, two = (folder / "stages" for folder in runs)
    assert pd.read_parquet(one / "margin.parquet").equals(pd.read_parquet(two / "margin.parquet"))
    assert json.loads((two / "margin.json").read_text())["world_size"] == 1  # no process group


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_batch_shard_gives_each_rank_whole_batches_and_all_ranks_every_row(size):
    for total, batch in ((0, 4), (1, 4), (13, 4), (16, 4), (17, 5), (3, 8)):
        shards = [batch_shard(total, batch, World(r, size, r, "cpu")) for r in range(size)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(total))
        for rank, rows in enumerate(shards):
            assert all(b % size == rank for b in np.unique(rows // batch))
            starts = [s for s in range(0, total, batch) if (s // batch) % size == rank]
            expected = [list(range(s, min(s + batch, total))) for s in starts]
            assert rows.tolist() == sum(expected, [])  # whole batches, in order


def test_two_process_proxy_stopped_by_sigusr1_resumes_to_the_uninterrupted_run(
    digits_dir, tmp_path
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # SIGUSR1 to rank 1 only, at its second step of epoch 2 (of 3): both ranks stop after it.
    codes = _two(tmp_path / "a", [_proxy(digits_dir, whole, "eval", epochs=3)])
    assert codes == [[0], [0]]
    codes = _two(tmp_path / "b", [_proxy(digits_dir, cut, "eval", epochs=3)], signal_at=(2, 1))
    assert codes == [[PREEMPTED_EXIT], [PREEMPTED_EXIT]]
    assert sorted(p.name for p in (cut / ".dynamics.partial").iterdir()) == [
        "epoch001.parquet", "epoch002.parquet", "test_epoch001.parquet", "test_epoch002.parquet",
    ]  # fmt: skip
    assert not (cut / "dynamics").exists() and (cut / "checkpoint" / "last.pt").exists()
    assert _two(tmp_path / "c", [_proxy(digits_dir, cut, "eval", epochs=3)]) == [[0], [0]]
    assert sorted(os.listdir(cut)) == sorted(os.listdir(whole))
    names = sorted(p.name for p in (whole / "dynamics").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (cut / "dynamics").iterdir())
    for name in names:  # gloo on a CPU is deterministic: bitwise
        assert pd.read_parquet(cut / "dynamics" / name).equals(
            pd.read_parquet(whole / "dynamics" / name)
        ), name
    a, b = read_npz(whole / "probe.npz", PROBE_KEYS), read_npz(cut / "probe.npz", PROBE_KEYS)
    assert all(np.array_equal(a[k], b[k]) for k in PROBE_KEYS)
    weights_a, weights_b = (models.load(f).state_dict() for f in (whole, cut))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    log_a, log_b = (pd.read_csv(f / "log.csv").drop(columns="seconds") for f in (whole, cut))
    assert log_a.equals(log_b)
    cost_a, cost_b = (json.loads((f / "cost.json").read_text()) for f in (whole, cut))
    assert cost_a["forward_samples"] == cost_b["forward_samples"] and cost_a["world_size"] == 2
