"""The workflow through `snakemake --profile slurm` on a real single-node Slurm (Debian's 22.05).

The test installs the Debian packages when they are missing (root and apt needed), starts munge,
MariaDB, slurmdbd, slurmctld and slurmd with two fake GPUs (tests/slurm/cluster.sh), submits a
tiny configuration through a profile derived from profiles/slurm, and checks that every job went
through sbatch (sacct lists them; GPU rules with gres/gpu) and that the results equal a local run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_workflow import REPO, TINY

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("apt-get") is None,
        reason="starting a Slurm cluster needs root and apt (CI has both)",
    ),
    pytest.mark.cpu_only(
        "a local Slurm cluster with fake GPUs; its jobs choose their own device (config "
        "`device`), not the test one, and are compared bitwise with a local CPU run"
    ),
]


def _run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _test_profile(folder: Path, extra_defaults: dict | None = None) -> Path:
    """profiles/slurm as it is (resources come from the workflow), polling status quickly."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(extra_defaults or {})
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


# The tiny study with requests this 2-CPU node can grant and that differ between rules, so that
# an ignored or swapped setting shows: CPUs 2 (threads + a worker) for the rules that read data
# through workers, 1 for scoring; a memory base of its own per rule; time limits from the cost
# model at a deliberately slow GPU (1 MFLOP/s), so each rule's work gives its own limit.
SIZED = {
    **TINY,
    "threads": 1,
    "workers": 1,
    "job_resources": {
        "gpu_tflops": 1e-6,
        "startup_minutes": 0,
        "safety": 1,
        "min_minutes": 1,
        "mem_mb": {
            "default": 300,
            "train_proxy": 700,
            "train_model": 600,
            "evaluate_model": 500,
            "score_samples": 400,
        },  # fmt: skip
    },
}
GPU_RULES = {"train_proxy", "score_samples", "train_model", "evaluate_model"}
LOCAL_RULES = {"prepare_data", "select_coreset", "report_study", "report_index"}


def planned_requests(dry_run: str) -> dict[str, dict[str, int]]:
    """What the workflow computed per job, keyed by the plugin's comment (rule and wildcards)."""
    requests = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", dry_run):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule is None or rule.group(1) not in GPU_RULES:
            continue
        values = re.search(r"wildcards: (.*)", block).group(1).split(", ")
        resources = dict(
            kv.split("=", 1) for kv in re.search(r"resources: (.*)", block)[1].split(", ")
        )
        comment = f"rule_{rule.group(1)}_wildcards_" + "_".join(v.split("=", 1)[1] for v in values)
        threads = re.search(r"threads: (\d+)", block)  # printed only when above 1
        requests[comment] = {
            "cpu": int(threads.group(1)) if threads else 1,
            "mem": int(resources["mem_mb"]),
            "gpu": int(resources["gpu"]),
            "minutes": int(resources["runtime"]),
        }
    return requests


def allocations(sacct: str) -> dict[str, dict[str, int]]:
    """What Slurm allocated per job (sacct -P: comment|state|AllocTRES|TimelimitRaw)."""
    allocated = {}
    for line in sacct.strip().splitlines():
        comment, state, tres, minutes = line.split("|")
        assert state == "COMPLETED", line
        tres = dict(kv.split("=", 1) for kv in tres.split(","))
        allocated[comment] = {
            "cpu": int(tres["cpu"]),
            "mem": int(tres["mem"].removesuffix("M")),
            "gpu": int(tres.get("gres/gpu", 0)),
            "minutes": int(minutes),
        }
    return allocated


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


def _sized_run(cluster, tmp_path, extra_defaults=None):
    """Run SIZED through the Slurm profile; return (folder, planned requests, allocations)."""
    on_slurm = tmp_path / "slurm"
    on_slurm.mkdir()
    (on_slurm / "config.yaml").write_text(yaml.safe_dump(SIZED))
    profile = _test_profile(tmp_path / "profile", extra_defaults)
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    plan = _run([*snakemake, "--profile", str(profile), "-n"], on_slurm, cluster)
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    planned = planned_requests(plan.stdout)
    run = _run([*snakemake, "--profile", str(profile)], on_slurm, cluster)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    sacct = _run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", "now-1hour", "-o",
         "Comment%200,State,AllocTRES%120,TimelimitRaw"],
        tmp_path, cluster, timeout=60,
    )  # fmt: skip
    assert sacct.returncode == 0, sacct.stderr
    print("sacct listing:\n" + sacct.stdout)
    # Only this run's jobs: the same comments may come from an earlier test in this cluster.
    rows = [line for line in sacct.stdout.splitlines() if line.split("|")[0] in planned]
    return on_slurm, planned, allocations("\n".join(rows[-len(planned) :]))


def test_tiny_workflow_through_slurm_equals_a_local_run_with_the_computed_allocations(
    cluster, tmp_path
):
    on_slurm, planned, allocated = _sized_run(cluster, tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.yaml").write_text(yaml.safe_dump(SIZED))
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
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

    # Only the GPU rules went through sbatch; downloads, selection and the report ran locally.
    rules = {comment.removeprefix("rule_").split("_wildcards_")[0] for comment in allocated}
    assert rules == GPU_RULES, sorted(rules)
    assert not LOCAL_RULES & rules
    # Each job got exactly what the workflow computed for it, and the rules differ.
    assert allocated == planned
    per_rule = {rule: {
        (a["cpu"], a["mem"], a["minutes"]) for c, a in allocated.items() if f"rule_{rule}_" in c
    } for rule in GPU_RULES}  # fmt: skip
    assert len({value for values in per_rule.values() for value in values}) >= len(GPU_RULES)
    assert {a["cpu"] for a in allocated.values()} == {1, 2}
    assert all(a["gpu"] == 1 for a in allocated.values())


# Training on two GPUs: each train_model job is one Slurm job of two tasks (one per fake GPU, one
# CPU each on this 2-CPU node), whose `srun` starts two torch.distributed ranks (gloo on the CPU).
TWO_RANKS = {
    **TINY,
    "threads": 1,
    "workers": 0,
    "regimes": {"quick": {**TINY["regimes"]["quick"], "gpus": 2}},
    "job_resources": {"startup_minutes": 1, "mem_mb": {"default": 300}},
}


def test_a_two_gpu_training_job_runs_two_ranks_with_their_allocation(cluster, tmp_path):
    on_slurm = tmp_path / "slurm"
    on_slurm.mkdir()
    (on_slurm / "config.yaml").write_text(yaml.safe_dump(TWO_RANKS))
    profile = _test_profile(tmp_path / "profile")
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    plan = _run([*snakemake, "--profile", str(profile), "-n"], on_slurm, cluster)
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    blocks = re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", plan.stdout)
    for block in blocks:
        resources = re.search(r"resources: (.*)", block)
        if "rule train_model:" in block:
            assert {"gpu=2", "tasks=2", "tasks_per_gpu=1", "nodes=1", "mpi=srun"} <= set(
                resources.group(1).split(", ")
            ), block
        elif resources is not None:  # one process: none of the multi-task resources
            assert "tasks=" not in resources.group(1) and "mpi=" not in resources.group(1)
    run = _run([*snakemake, "--profile", str(profile)], on_slurm, cluster)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    sacct = _run(
        ["sacct", "-n", "-P", "-a", "-S", "now-1hour", "-o",
         "JobIDRaw,JobName,Comment%200,State,AllocTRES%120,NTasks"],
        tmp_path, cluster, timeout=60,
    )  # fmt: skip
    assert sacct.returncode == 0, sacct.stderr
    print("sacct listing:\n" + sacct.stdout)
    lines = [line.split("|") for line in sacct.stdout.strip().splitlines()]
    # This run's two training jobs (the study's two coresets): the newest of that name, since an
    # earlier test in this cluster may have run jobs with the same comments.
    named = [f for f in lines if "." not in f[0] and f[2].startswith("rule_train_model_")]
    jobs = {f[0]: f for f in sorted(named, key=lambda f: int(f[0]))[-2:]}
    assert len(jobs) == 2, sacct.stdout
    for job_id, fields in jobs.items():
        tres = dict(kv.split("=", 1) for kv in fields[4].split(","))
        assert fields[3] == "COMPLETED" and tres["cpu"] == "2" and tres["gres/gpu"] == "2", fields
        # The job's srun step started two tasks: the two ranks.
        steps = [f for f in lines if f[0].startswith(f"{job_id}.") and f[5] == "2"]
        assert steps, f"no 2-task step of job {job_id}: {sacct.stdout}"
    costs = sorted((on_slurm / "results/runs").rglob("cost.json"))
    assert len(costs) == 2
    for path in costs:
        cost = yaml.safe_load(path.read_text())
        assert cost["world_size"] == 2, path

    # The same study in one process, locally: the same weights up to float summation order.
    local = tmp_path / "local"
    local.mkdir()
    one = {**TWO_RANKS, "regimes": {"quick": TINY["regimes"]["quick"]}}
    (local / "config.yaml").write_text(yaml.safe_dump(one))
    done = _run([*snakemake, "--cores", "2"], local, cluster)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for path in sorted((local / "results/runs").rglob("model.pt")):
        twin = torch.load(on_slurm / path.relative_to(local), weights_only=True)
        for name, tensor in torch.load(path, weights_only=True).items():
            assert torch.allclose(twin[name], tensor, atol=1e-5), (path, name)
