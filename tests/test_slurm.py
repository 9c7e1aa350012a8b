"""The workflow through `snakemake --profile slurm` on a real single-node Slurm (Debian's 22.05).

The test installs the Debian packages when they are missing (root and apt needed), starts munge,
MariaDB, slurmdbd, slurmctld and slurmd with two fake GPUs (tests/slurm/cluster.sh), submits a
tiny configuration through a profile derived from profiles/slurm, and checks that every job went
through sbatch (sacct lists them; GPU rules with gres/gpu) and that the results equal a local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import REPO, TINY

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("apt-get") is None,
    reason="starting a Slurm cluster needs root and apt (CI has both)",
)


def _run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _test_profile(folder: Path) -> Path:
    """profiles/slurm with requests this one small node can grant and short status polling."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for entry in [profile["default-resources"], *profile["set-resources"].values()]:
        if "mem_mb" in entry:
            entry["mem_mb"] = 1000
        if "cpus_per_gpu" in entry:
            entry["cpus_per_gpu"] = 1
    profile["default-resources"]["cpus_per_task"] = 1
    profile.update(
        {
            "jobs": 2,
            "latency-wait": 5,
            "retries": 0,
            "slurm-init-seconds-before-status-checks": 2,
        }
    )
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node cluster; yields the environment that points at it."""
    install = subprocess.run(["bash", str(CLUSTER), "install"], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    folder = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(
        ["bash", str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=180
    )
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        env = {
            **os.environ,
            "SLURM_CONF": str(folder / "slurm.conf"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "ROBUSTCORE_SLURM_ACCOUNT": "robustcore",
            "ROBUSTCORE_CPU_PARTITION": "gpu",
            "ROBUSTCORE_GPU_PARTITION": "gpu",
        }
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True)


def test_tiny_workflow_through_slurm_equals_a_local_run(cluster, tmp_path):
    config = yaml.safe_dump(TINY)
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for folder in (on_slurm, local):
        folder.mkdir()
        (folder / "config.yaml").write_text(config)
    profile = _test_profile(tmp_path / "profile")
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

    run = _run([*snakemake, "--profile", str(profile)], on_slurm, cluster)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "executor: slurm" in log.lower() or "slurm" in log.lower()
    done = _run([*snakemake, "--cores", "2"], local, cluster)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    # The same numbers from the cluster as from the local run (CPU, same seeds).
    name = "results/report/tiny/tables/accuracy.csv"
    # Everything but the wall-clock column is computed, so equal.
    timed = ["train_seconds_mean"]
    cluster_table = pd.read_csv(on_slurm / name).drop(columns=timed)
    assert cluster_table.equals(pd.read_csv(local / name).drop(columns=timed))
    assert cluster_table["seeds"].tolist() == [1, 1]
    for path in sorted((local / "results").rglob("*.parquet")):
        twin = on_slurm / path.relative_to(local)
        assert pd.read_parquet(twin).equals(pd.read_parquet(path)), path
    for path in sorted((local / "results/runs").rglob("model.pt")):
        twin = on_slurm / path.relative_to(local)
        assert twin.read_bytes() == path.read_bytes(), path

    # Every job went through sbatch: sacct (slurmdbd) lists them, GPU rules with a GPU.
    sacct = _run(
        ["sacct", "-X", "-n", "-P", "-a", "-o", "JobID,Comment%80,State,AllocTRES%80"],
        tmp_path,
        cluster,
        timeout=60,
    )
    assert sacct.returncode == 0, sacct.stderr
    print("sacct listing:\n" + sacct.stdout)
    rows = [line.split("|") for line in sacct.stdout.strip().splitlines()]
    rules = {}
    for _job, comment, state, tres in rows:
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        rules.setdefault(rule, []).append((state, tres))
    expected = {"prepare_data", "train_proxy", "score_samples", "select_coreset", "train_model",
                "evaluate_model", "report_study", "report_index"}  # fmt: skip
    assert expected <= set(rules), sorted(rules)
    assert all(state == "COMPLETED" for jobs in rules.values() for state, _ in jobs)
    for rule in ("train_proxy", "train_model", "evaluate_model", "score_samples"):
        assert all("gres/gpu=1" in tres for _, tres in rules[rule]), (rule, rules[rule])
    for rule in ("prepare_data", "select_coreset", "report_study"):
        assert all("gres/gpu" not in tres for _, tres in rules[rule]), (rule, rules[rule])
