"""Multi-process training (torch.distributed, gloo on 2 CPU processes) equals the 1-process run.

Each multi-process test spawns 2 workers with `torch.multiprocessing.spawn` on a free port;
every worker uses one thread. Tolerances: float sums in another order (a shard's mean, then the
weighted sum over ranks, instead of one batch mean) make a 2-process run agree with the
1-process run to float rounding, here checked at atol 1e-5 on the weights after 3 epochs (the
measured difference is ~1e-7); two 2-process runs (gloo on a CPU is deterministic) agree
bitwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import make_split, meta_for, prepared_digits

from robustcore import checkpoint, data, distributed, models
from robustcore.distributed import World, expand_nodelist, init_from_env, shard_batch
from robustcore.io import InputError
from robustcore.runtime import seed_everything
from robustcore.train import fit

TRAINING = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
AUGMENT = {"crop_padding": 2, "flip": True}
MODEL = {"arch": "mlp", "kwargs": {"hidden": [32]}}  # no BatchNorm: shards cannot differ in it
WEIGHT_ATOL = 1e-5
LAUNCH_VARIABLES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, size: int, port: int) -> World:
    """In a spawned worker: one thread, torchrun's variables, the process group."""
    torch.set_num_threads(1)
    os.environ.update(
        WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    return init_from_env("cpu")


def _spawn(worker, *args, size: int = 2) -> None:
    mp.spawn(worker, args=(size, _free_port(), *args), nprocs=size, join=True)


class _SignallingLoader(data.Loader):
    """A Loader that sends this process SIGUSR1 at step `at[1]` of epoch `at[0]`."""

    at: tuple[int, int] = (0, 0)
    epochs_started = 0

    def epoch(self, shuffle=False, generator=None, shard=None):
        self.epochs_started += 1
        for step, batch in enumerate(super().epoch(shuffle, generator, shard)):
            if (self.epochs_started, step) == self.at:
                os.kill(os.getpid(), signal.SIGUSR1)  # Slurm's warning, mid-epoch
            yield batch


def _run(world, n: int, training: dict, checkpoint_dir=None, signal_at=None) -> dict:
    """One fit of MODEL on make_split(n); what it ends with (weights, log, cost, resumed epoch)."""
    generator = seed_everything(0)
    split = make_split(n)
    spec = models.model_spec(MODEL["arch"], MODEL["kwargs"], meta_for(split, 3))
    model = models.build(spec)
    loader_type = data.Loader if signal_at is None else _SignallingLoader
    loader = loader_type(split, training["batch_size"], "cpu")
    if signal_at is not None:
        loader.at = signal_at
    resumed_after: list[int] = []
    out: dict = {"preempted": None}
    try:
        log, cost = fit(
            model, loader, training, generator=generator, world=world,
            checkpoint_dir=checkpoint_dir, on_resume=resumed_after.append,
        )  # fmt: skip
    except checkpoint.Preempted as err:
        out["preempted"] = str(err)
        return out
    out.update(
        weights={k: v.clone() for k, v in model.state_dict().items()},
        log=log,
        cost=cost.as_dict(),
        resumed_after=resumed_after[0],
    )
    return out


def _fit_worker(rank, size, port, n, training, folder, checkpoint_dir, signal_rank, signal_at):
    world = _join(rank, size, port)
    try:
        at = signal_at if rank == signal_rank else None
        result = _run(world, n, training, checkpoint_dir, at)
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        distributed.destroy(world)


def _fit_2(tmp: Path, n: int, training: dict, checkpoint_dir=None, signal_rank=-1, at=None):
    """A 2-process fit; both ranks' results."""
    tmp.mkdir(parents=True, exist_ok=True)
    _spawn(_fit_worker, n, training, str(tmp), checkpoint_dir, signal_rank, at)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _single(n: int, training: dict) -> dict:
    """The 1-process run (no world), with one thread as in the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(None, n, training)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("n", "augment"),
    [
        (45, {}),  # last global batch 13: shards of 7 and 6 rows
        (33, AUGMENT),  # last global batch 1: rank 1 has no row in it
    ],
)
def test_two_processes_train_like_one(tmp_path, n, augment):
    training = {**TRAINING, "augment": augment}
    single = _single(n, training)
    ranks = _fit_2(tmp_path, n, training)
    for k, value in ranks[0]["weights"].items():  # every rank holds the same weights
        assert torch.equal(value, ranks[1]["weights"][k]), k
    difference = _max_difference(ranks[0]["weights"], single["weights"])
    print(f"n={n} augment={augment}: max |w_2proc - w_1proc| = {difference:.3g}")
    assert difference <= WEIGHT_ATOL
    for row, reference in zip(ranks[0]["log"], single["log"], strict=True):
        assert (row["epoch"], row["lr"], row["train_acc"]) == (
            reference["epoch"], reference["lr"], reference["train_acc"],
        )  # fmt: skip
        assert row["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    for r in ranks:  # every rank logs the global rows
        assert [row["train_loss"] for row in r["log"]] == [
            row["train_loss"] for row in ranks[0]["log"]
        ]
    cost = ranks[0]["cost"]
    assert cost["world_size"] == 2 and single["cost"]["world_size"] == 1
    assert cost["forward_total"] == single["cost"]["forward_total"] == 3 * n
    assert cost["forward_samples"] == single["cost"]["forward_samples"]
    assert cost["backward_total"] == single["cost"]["backward_total"]


def test_signal_on_one_rank_stops_both_and_resumes_bitwise(tmp_path):
    training = {**TRAINING, "epochs": 4, "augment": AUGMENT}
    whole = _fit_2(tmp_path / "whole", 45, training, str(tmp_path / "whole_ckpt"))
    folder = tmp_path / "ckpt"
    # SIGUSR1 to rank 1 only, at its second step of epoch 2: both ranks stop after epoch 2.
    stopped = _fit_2(tmp_path / "stopped", 45, training, str(folder), signal_rank=1, at=(2, 1))
    for r in stopped:
        assert r["preempted"] is not None and "stopped after epoch 2 of 4" in r["preempted"]
    assert checkpoint.load(folder)["epoch"] == 2 and sorted(os.listdir(folder)) == [
        "last.pt", "prev.pt",
    ]  # fmt: skip
    resumed = _fit_2(tmp_path / "resumed", 45, training, str(folder))
    assert [r["resumed_after"] for r in resumed] == [2, 2]
    for r in resumed:
        for k, value in whole[0]["weights"].items():
            assert torch.equal(r["weights"][k], value), k
        assert [row["train_loss"] for row in r["log"]] == [
            row["train_loss"] for row in whole[0]["log"]
        ]
        assert r["cost"]["forward_total"] == whole[0]["cost"]["forward_total"] == 4 * 45


def _gradient_worker(rank, size, port, folder):
    world = _join(rank, size, port)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
        y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
        index = torch.arange(7)
        # The 1-process reference: the gradient of the global batch's mean loss.
        F.cross_entropy(model(x), y).backward()
        reference = [p.grad.clone() for p in model.parameters()]
        results = {}
        for name, weight in (("weighted", None), ("equal", 0.5)):
            model.zero_grad(set_to_none=True)
            shard_index, xs, ys = shard_batch(index, x, y, world)
            F.cross_entropy(model(xs), ys).backward()  # this rank's mean over 4 or 3 rows
            share = len(ys) / len(y) if weight is None else weight
            distributed.all_reduce_gradients(model, world, share)
            results[name] = max(
                float((p.grad - g).abs().max())
                for p, g in zip(model.parameters(), reference, strict=True)
            )
        gathered = distributed.gather_rows(shard_index, len(index), world)
        results["gathered"] = gathered.tolist()
        results["shard"] = len(ys)
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        distributed.destroy(world)


def test_gradient_reduction_weights_ranks_by_their_share_of_an_uneven_batch(tmp_path):
    _spawn(_gradient_worker, str(tmp_path))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["shard"] == (4, 3)[rank]
        assert result["weighted"] < 1e-6  # Σ n_r g_r / N: the global mean's gradient
        assert result["equal"] > 1e-3  # a plain average of the ranks' means is not
        assert result["gathered"] == list(range(7))  # gather_rows undoes shard_batch


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shard_batch_partitions_every_global_batch(size):
    for batch in range(1, 20):
        index = torch.arange(100, 100 + batch)
        x, y = torch.randn(batch, 2, 3, 3), torch.arange(batch) % 3
        rows = []
        for rank in range(size):
            shard_index, xs, ys = shard_batch(index, x, y, World(rank, size, rank, "cpu"))
            assert len(shard_index) in (batch // size, -(-batch // size))
            assert torch.equal(shard_index, index[rank::size])  # rank order: rank, rank + W...
            assert torch.equal(xs, x[rank::size]) and torch.equal(ys, y[rank::size])
            rows += shard_index.tolist()
        assert sorted(rows) == index.tolist()  # disjoint, and together the global batch


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node01", ["node01"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("gpu-a100-[009-010],cpu", ["gpu-a100-009", "gpu-a100-010", "cpu"]),
    ],
)
def test_slurm_nodelist_expands(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["n[3-1]", "n[01", "n[a-b]", ""])
def test_bad_slurm_nodelist_is_an_input_error(nodelist):
    with pytest.raises(InputError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(nodelist)


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}, {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}]
)
def test_single_process_needs_no_process_group(clean_env, env):
    for name, value in env.items():
        clean_env.setenv(name, value)
    world = init_from_env("cpu")
    assert world == World(0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    assert distributed.is_main(world) and not distributed.is_distributed(world)
    distributed.destroy(world)  # a no-op


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, "MASTER_PORT"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_NODELIST": "n1"}, "SLURM_JOB_ID"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "5", "SLURM_NODELIST": "n1"}, "SLURM_PROCID=5"),
    ],
)
def test_misconfigured_launch_names_the_variable(clean_env, env, named):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(InputError, match=named.replace("[", r"\[")):
        init_from_env("cpu")
    assert not torch.distributed.is_initialized()


def test_slurm_rendezvous_is_the_first_host_and_a_port_from_the_job_id(clean_env):
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[03-04,09]")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    assert distributed._rendezvous_slurm() == ("gpu03", distributed.SLURM_PORT_BASE + 4242)
    clean_env.setenv("MASTER_ADDR", "head")
    clean_env.setenv("MASTER_PORT", "29400")
    assert distributed._rendezvous_slurm() == ("head", 29400)


def test_regimes_that_choose_within_a_batch_are_refused():
    world = World(0, 2, 0, torch.device("cpu"))  # never reaches a collective
    split = make_split(16)
    spec = models.model_spec("mlp", {"hidden": [8]}, meta_for(split, 3))
    loader = data.Loader(split, 8, "cpu")
    for regime in ({"type": "selective"}, {"type": "acs"}):
        with pytest.raises(InputError, match="not supported with world_size > 1 yet"):
            fit(models.build(spec), loader, {**TRAINING, **regime}, generator=seed_everything(0),
                world=world)  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Prepared digits and a coreset of its first 300 training samples."""
    return prepared_digits(tmp_path_factory.mktemp("data"), "some", 300)


def _cli_train(digits: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    regime = {**TRAINING, "batch_size": 32, "augment": {"crop_padding": 1}}
    launcher = [sys.executable, "-m"]
    if processes > 1:  # torchrun: torch's own launcher, as on a node
        launcher[2:] = ["torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        launcher.append("-m")
    cmd = [
        *launcher, "robustcore", "train", "--data", str(digits / "digits"),
        "--coreset", str(digits / "some.parquet"), "--model", json.dumps(MODEL),
        "--regime", json.dumps(regime), "--seed", "3", "--threads", "1",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_cli_train_under_torchrun_writes_once_what_one_process_writes(digits, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, processes in ((one, 1), (two, 2)):
        run = _cli_train(digits, out, processes)
        assert run.returncode == 0, run.stderr
    assert run.stdout.count("trained on 300 samples") == 1  # rank 0 reports, and writes
    assert sorted(os.listdir(two)) == sorted(os.listdir(one)) == [
        "cost.json", "log.csv", "model.json", "model.pt",
    ]  # fmt: skip
    a, b = (models.load(out).state_dict() for out in (one, two))
    assert _max_difference(a, b) <= WEIGHT_ATOL
    cost_one, cost_two = (json.loads((out / "cost.json").read_text()) for out in (one, two))
    assert (cost_one["world_size"], cost_two["world_size"]) == (1, 2)
    assert cost_one["forward_total"] == cost_two["forward_total"] == 3 * 300
    log_one, log_two = (pd.read_csv(out / "log.csv") for out in (one, two))
    assert log_one["train_acc"].tolist() == log_two["train_acc"].tolist()
    assert np.allclose(log_one["train_loss"], log_two["train_loss"], rtol=1e-5)
