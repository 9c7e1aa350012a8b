"""Warm workers: a job run through the warm server equals the same job in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cpu_only(
    "the warm server forks a child per job (for local CPU runs: CUDA does not survive a fork); "
    "its jobs never see the test device"
)

SRC = Path(__file__).resolve().parents[1] / "src"
DIGITS = json.dumps({"source": "digits", "seed": 0, "test_fraction": 0.25})


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A warm server, a child of this test process, and its socket path."""
    socket_path = tmp_path_factory.mktemp("warm") / "socket"
    process = subprocess.Popen(
        [sys.executable, "-m", "robustcore.warm", str(socket_path)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(1200):
        if socket_path.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert socket_path.exists(), process.stdout.read() if process.poll() is not None else "slow"
    yield socket_path
    process.terminate()
    process.wait(timeout=30)


def _robustcore(cwd: Path, *args: str, warm: Path | None = None) -> subprocess.CompletedProcess:
    env = _env(ROBUSTCORE_WARM=str(warm)) if warm is not None else _env()
    return subprocess.run(
        [sys.executable, "-m", "robustcore", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_job_through_the_server_writes_what_a_fresh_process_writes(server, tmp_path):
    warm = _robustcore(tmp_path, "prepare", "--params", DIGITS, "--out", "warm", warm=server)
    cold = _robustcore(tmp_path, "prepare", "--params", DIGITS, "--out", "cold")
    assert warm.returncode == cold.returncode == 0, warm.stderr + cold.stderr
    # The child wrote through the client's stdout, relative to the client's working folder.
    assert "prepared digits: 1347 train / 450 test" in warm.stdout
    for name in ("train.npz", "test.npz"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()


def test_errors_and_usage_come_back_with_their_exit_status(server, tmp_path):
    bad = json.dumps({"source": "nope"})
    result = _robustcore(tmp_path, "prepare", "--params", bad, "--out", "x", warm=server)
    assert result.returncode == 2
    assert "unknown dataset source 'nope'" in result.stderr
    usage = _robustcore(tmp_path, "no-such-subcommand", warm=server)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    assert not (tmp_path / "x").exists()


def test_the_environment_of_the_job_is_the_childs(server, tmp_path):
    """ROBUSTCORE_WORK_LOG set in the job's environment reaches the child that runs the job."""
    log = tmp_path / "work.jsonl"
    args = ("prepare", "--params", DIGITS, "--out", "out")
    env = _env(ROBUSTCORE_WARM=str(server), ROBUSTCORE_WORK_LOG=str(log))
    result = subprocess.run(
        [sys.executable, "-m", "robustcore", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(log.read_text())["command"] == "prepare"


def test_without_a_reachable_server_the_job_runs_in_its_own_process(tmp_path):
    result = _robustcore(
        tmp_path, "prepare", "--params", DIGITS, "--out", "out", warm=tmp_path / "no-socket"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "train.npz").exists()
