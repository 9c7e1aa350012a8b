"""Preemption-safe training: a killed or signalled run resumes and ends bitwise identical.

Every run here is on the test device (ROBUSTCORE_TEST_DEVICE). On CUDA the runs set the regime's
`deterministic: true`, the setting under which DESIGN.md promises bitwise resumes on a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import make_split, meta_for, prepared_digits

from robustcore import checkpoint, models
from robustcore.dynamics import train_proxy
from robustcore.runtime import seed_everything
from robustcore.train import fit

REGIME = {"epochs": 40, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
          "schedule": "cosine", "augment": {"crop_padding": 1}}  # fmt: skip
MODEL = {"arch": "mlp", "kwargs": {"hidden": [64]}}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Prepared digits and a coreset of all its training samples."""
    return prepared_digits(tmp_path_factory.mktemp("data"), "all", 1347)


def _deterministic(device: torch.device) -> dict:
    """The regime keys that make runs on `device` bitwise reproducible (CUDA: deterministic)."""
    return {"deterministic": True} if device.type == "cuda" else {}


def _train(digits: Path, out: Path, device: torch.device, **popen) -> subprocess.Popen:
    regime = {**REGIME, **_deterministic(device)}
    cmd = [
        sys.executable, "-m", "robustcore", "train", "--data", str(digits / "digits"),
        "--coreset", str(digits / "all.parquet"), "--model", json.dumps(MODEL),
        "--regime", json.dumps(regime), "--seed", "3", "--threads", "1",
        "--device", str(device), "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _wait_for_two_epochs(folder: Path, process: subprocess.Popen) -> None:
    """Until prev.pt and last.pt both exist: at least two epochs saved, the newest intact.

    checkpoint.save renames last.pt to prev.pt before it writes the new last.pt, so prev.pt
    alone may be the first epoch's file with the second one not yet written.
    """
    _wait_for(folder / "prev.pt", process)
    _wait_for(folder / "last.pt", process)


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory, device):
    out = tmp_path_factory.mktemp("whole")
    run = _train(digits, out, device)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert not (out / "checkpoint").exists(), "a finished run removes its checkpoints"
    return out


def _finish(digits: Path, out: Path, device: torch.device) -> str:
    run = _train(digits, out, device)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return err


def _epoch_of(path: Path, scratch: Path) -> int:
    """The epoch of one checkpoint file (read alone, through checkpoint.load)."""
    scratch.mkdir()
    shutil.copyfile(path, scratch / "last.pt")
    return int(checkpoint.load(scratch)["epoch"])


def test_killed_run_resumes_bitwise_identical(digits, uninterrupted, tmp_path, device):
    run = _train(digits, tmp_path, device)
    _wait_for_two_epochs(tmp_path / "checkpoint", run)  # at least two epochs saved
    run.send_signal(signal.SIGKILL)  # preemption without warning
    run.wait()
    assert not (tmp_path / "model.pt").exists()
    epoch = checkpoint.load(tmp_path / "checkpoint")["epoch"]
    assert 2 <= epoch < REGIME["epochs"]
    err = _finish(digits, tmp_path, device)
    assert f"(epoch {epoch})" in err and "resuming from" in err
    assert (tmp_path / "model.pt").read_bytes() == (uninterrupted / "model.pt").read_bytes()
    resumed, whole = pd.read_csv(tmp_path / "log.csv"), pd.read_csv(uninterrupted / "log.csv")
    assert resumed["train_loss"].tolist() == whole["train_loss"].tolist()
    cost, whole_cost = (
        json.loads((d / "cost.json").read_text()) for d in (tmp_path, uninterrupted)
    )
    assert cost["forward_total"] == whole_cost["forward_total"] == REGIME["epochs"] * 1347


def test_signal_saves_and_exits_then_resumes(digits, uninterrupted, tmp_path, device):
    run = _train(digits, tmp_path, device)
    _wait_for(tmp_path / "checkpoint" / "last.pt", run)
    run.send_signal(signal.SIGUSR1)  # Slurm's --signal warning before the time limit
    _, err = run.communicate(timeout=120)
    assert run.returncode == checkpoint.PREEMPTED_EXIT, err
    assert "rerun to resume" in err and not (tmp_path / "model.pt").exists()
    _finish(digits, tmp_path, device)
    assert (tmp_path / "model.pt").read_bytes() == (uninterrupted / "model.pt").read_bytes()


def test_corrupt_checkpoint_falls_back_to_the_previous_one(digits, uninterrupted, tmp_path, device):
    run = _train(digits, tmp_path, device)
    _wait_for_two_epochs(tmp_path / "checkpoint", run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    last, prev = tmp_path / "checkpoint" / "last.pt", tmp_path / "checkpoint" / "prev.pt"
    previous = _epoch_of(prev, tmp_path / "scratch")
    # Killed between the rename and the write, the run left no last.pt: a truncated one then
    # stands for a write cut short.
    blob = last.read_bytes() if last.exists() else prev.read_bytes()
    last.write_bytes(blob[: len(blob) // 2])  # truncated
    err = _finish(digits, tmp_path, device)
    assert "last.pt: checksum mismatch" in err and f"prev.pt (epoch {previous})" in err
    assert (tmp_path / "model.pt").read_bytes() == (uninterrupted / "model.pt").read_bytes()


def test_no_intact_checkpoint_starts_from_scratch(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    checkpoint.save(folder, {"epoch": 1, "x": torch.ones(3)})
    checkpoint.save(folder, {"epoch": 2, "x": torch.ones(3)})
    assert checkpoint.load(folder)["epoch"] == 2
    for name in ("last.pt", "prev.pt"):
        data = bytearray((folder / name).read_bytes())
        data[-5] ^= 0xFF  # one flipped byte: the file still unzips, the digest does not match
        (folder / name).write_bytes(bytes(data))
    assert checkpoint.load(folder) is None
    assert "no intact checkpoint; starting from scratch" in capsys.readouterr().err


def _stop_at(epoch: int):
    """An after_epoch hook that sends this process SIGUSR1 at the end of `epoch`."""

    def hook(current: int) -> None:
        if current == epoch:
            os.kill(os.getpid(), signal.SIGUSR1)

    return hook


def test_acs_plan_state_survives_a_resume(tmp_path, device):
    """ACS keeps a coreset between selections: a resume in between must restore it."""
    split = make_split(96, classes=3)
    spec = {"type": "acs", "epochs": 6, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
            "weight_decay": 0.0, "fraction": 0.5, "freq": 2, "eps": 0.05, "steps": 1,
            "step_size": 0.05, **_deterministic(device)}  # fmt: skip
    model_spec = models.model_spec("mlp", {"hidden": [16]}, meta_for(split, 3))
    from robustcore.data import Loader

    def run(folder, hook=None):
        seed_everything(0)
        model = models.build(model_spec).to(device)
        loader = Loader(split, 16, device)
        return model, fit(model, loader, spec, generator=seed_everything(1),
                          checkpoint_dir=folder, after_epoch=hook)  # fmt: skip

    whole, _ = run(tmp_path / "whole")
    with pytest.raises(checkpoint.Preempted):
        # ACS's reference plan here: epochs 1-2 full, 3 idle, 4 a random subset, 5 a selection,
        # 6 the same coreset: stopped after the selection, the resume must restore it.
        run(tmp_path / "cut", _stop_at(5))
    resumed, (log, _) = run(tmp_path / "cut")
    assert [row["epoch"] for row in log] == list(range(1, 7))
    for key, value in whole.state_dict().items():
        assert value.device.type == device.type
        assert torch.equal(value.cpu(), resumed.state_dict()[key].cpu()), key


def test_proxy_dynamics_resume_identical(tmp_path, device):
    split = make_split(40)
    spec = {"epochs": 4, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
            "capture": "eval", **_deterministic(device)}  # fmt: skip
    model_spec = models.model_spec("small_cnn", {"width": 8}, meta_for(split, 3))

    def run(out, hook=None):
        seed_everything(0)
        model = models.build(model_spec).to(device)
        if hook is not None:  # stop by signal after epoch 2
            spec_hooked = {**spec}
            with pytest.raises(checkpoint.Preempted):
                _proxy(model, split, spec_hooked, out, hook, device)
            return None
        return _proxy(model, split, spec, out, None, device)

    run(tmp_path / "whole")
    run(tmp_path / "cut", _stop_at(2))
    assert sorted(p.name for p in (tmp_path / "cut/.dynamics.partial").iterdir()) == [
        "epoch001.parquet", "epoch002.parquet",
    ]  # fmt: skip
    run(tmp_path / "cut")
    for epoch in range(1, 5):
        name = f"dynamics/epoch{epoch:03d}.parquet"
        assert pd.read_parquet(tmp_path / "cut" / name).equals(
            pd.read_parquet(tmp_path / "whole" / name)
        ), name


def _proxy(model, split, spec, out, hook, device):
    """train_proxy on `device` with an optional extra after-epoch hook (fit's after_epoch)."""
    import robustcore.dynamics as dynamics

    if hook is None:
        return train_proxy(model, split, spec, device=device,
                           generator=seed_everything(1), out_dir=out)  # fmt: skip
    original = dynamics.fit

    def fit_with_hook(*args, after_epoch=None, **kwargs):
        def both(epoch):
            row = after_epoch(epoch) if after_epoch else None
            hook(epoch)
            return row

        return original(*args, after_epoch=both, **kwargs)

    dynamics.fit = fit_with_hook
    try:
        return train_proxy(model, split, spec, device=device,
                           generator=seed_everything(1), out_dir=out)  # fmt: skip
    finally:
        dynamics.fit = original


def test_model_json_records_where_it_trained(uninterrupted, device):
    trained_on = json.loads((uninterrupted / "model.json").read_text())["trained_on"]
    assert trained_on["device"] == str(device) and trained_on["precision"] == "fp32"
    count = torch.cuda.device_count() if device.type == "cuda" else 1
    assert trained_on["device_count"] == count and trained_on["threads"] == 1
    assert models.load(uninterrupted).training is False, "model.json still loads"


def test_checkpoint_records_the_rng_state_of_its_device(tmp_path, device):
    """The checkpoint holds the CPU RNG state, and CUDA's on CUDA; restoring it repeats draws."""
    split = make_split(32)
    model_spec = models.model_spec("mlp", {"hidden": [8]}, meta_for(split, 3))
    spec = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    generator = seed_everything(0)
    model = models.build(model_spec).to(device)
    start = checkpoint.rng_state(device)

    def draw_global(_epoch):  # a step drawing from the global RNGs (dropout would)
        torch.rand(3), torch.rand(3, device=device)

    from robustcore.data import Loader

    folder = tmp_path / "checkpoint"
    fit(model, Loader(split, 16, device), spec, generator=generator, checkpoint_dir=folder,
        after_epoch=draw_global)  # fmt: skip
    rng = checkpoint.load(folder)["rng"]
    assert set(rng) == ({"torch", "cuda"} if device.type == "cuda" else {"torch"})
    # Taken when the last epoch was saved (nothing drew since), not when the run started.
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert not torch.equal(rng["torch"], start["torch"])
    if device.type == "cuda":
        assert torch.equal(rng["cuda"], torch.cuda.get_rng_state(device))
        assert not torch.equal(rng["cuda"], start["cuda"])

    def draws() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(5), torch.rand(5, device=device).cpu()

    first = draws()  # from the saved state
    more = draws()
    assert not torch.equal(first[1], more[1]), "the device stream advances"
    checkpoint.set_rng_state(rng, device)  # as a resumed fit does
    again = draws()
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    # Draw, save the state, draw more, restore, draw again: the same draws on the device.
    draws()
    saved = checkpoint.rng_state(device)
    expected = draws()
    draws()
    checkpoint.set_rng_state(saved, device)
    got = draws()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_checkpoint_of_other_settings_is_not_resumed(digits, uninterrupted, tmp_path, device):
    """An interrupted run whose regime is then edited must start over, not resume."""
    run = _train(digits, tmp_path, device)
    _wait_for(tmp_path / "checkpoint" / "last.pt", run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    global REGIME
    saved, REGIME = REGIME, {**REGIME, "lr": 0.02}
    try:
        err = _finish(digits, tmp_path, device)
    finally:
        REGIME = saved
    assert "written under other settings or samples; not resumed" in err
    assert "resuming from" not in err
    assert (tmp_path / "model.pt").read_bytes() != (uninterrupted / "model.pt").read_bytes()


def test_cpu_only_jobs_do_not_import_torch():
    """Coreset and report jobs start without torch (about 1 s each at this scale of jobs)."""
    probe = (
        "import sys, robustcore.cli, robustcore.select, robustcore.report; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
