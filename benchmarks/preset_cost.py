"""Job count and a GPU-hour estimate of a configuration, from its dry run and FLOP counts.

    python benchmarks/preset_cost.py presets/cifar10.yaml [--tflops 100]

Every job the dry run plans is costed by `robustcore.jobcost` — the model that also sizes the
workflow's Slurm requests: (samples it processes) × (passes per sample) × (forward FLOPs per
sample of its model) — divided by a sustained throughput (default: the config's
job_resources.gpu_tflops, 25 TFLOP/s unless set: an assumption, not a measurement), plus a
start-up allowance per GPU job (default 30 s). Archs with a measured `arch_tflops` entry (the
lines benchmarks/gpu_check.py prints) use it. Data loading and idle time are not counted: read
the result as a lower bound.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from robustcore.jobcost import job_flops, job_seconds, ranks  # noqa: E402


def planned_jobs(configfile: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run of `configfile` plans."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
         "--configfile", str(configfile), "--forceall"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    jobs = []
    for block in re.split(r"\n(?=\[.*\]\nrule |rule )", out):
        rule = re.search(r"^(?:\[.*\]\n)?rule (\w+):", block, re.M)
        if rule is None:
            continue
        found = re.search(r"wildcards: (.*)", block)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((rule.group(1), wildcards))
    return jobs


def main() -> None:
    """Print jobs and estimated GPU-hours per rule and in total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configfile", type=Path)
    parser.add_argument("--tflops", type=float, default=None, help="sustained TFLOP/s per GPU")
    parser.add_argument("--startup", type=float, default=30.0, help="seconds per GPU job")
    args = parser.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    # The workflow's schema defaults, so that entries read as the rules read them.
    from snakemake.utils import validate

    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    if args.tflops is not None:  # one throughput for every model, measured ones ignored
        config["job_resources"] = {**config["job_resources"], "gpu_tflops": args.tflops}
        config["job_resources"]["arch_tflops"] = {}
    resources = config["job_resources"]
    jobs, hours = defaultdict(int), defaultdict(float)
    for rule, wildcards in planned_jobs(args.configfile.resolve()):
        jobs[rule] += 1
        startup = args.startup if job_flops(config, rule, wildcards) > 0 else 0.0
        # A job on W GPUs holds all W for its wall time (its work / (W × efficiency)).
        gpus = ranks(config, rule, wildcards)
        hours[rule] += gpus * (job_seconds(config, rule, wildcards) + startup) / 3600
    measured = ", ".join(f"{a} {v:g}" for a, v in resources["arch_tflops"].items())
    print(
        f"{args.configfile}: {sum(jobs.values())} jobs, ~{sum(hours.values()):,.1f} GPU-hours "
        f"at {resources['gpu_tflops']:g} TFLOP/s sustained"
        + (f" (measured: {measured})" if measured else " (assumed, not measured)")
        + f" and {args.startup:g} s start-up per GPU job"
    )
    for rule in sorted(jobs, key=lambda r: -hours[r]):
        print(f"  {rule:<24} {jobs[rule]:>6} jobs  {hours[rule]:>10,.2f} GPU-hours")


if __name__ == "__main__":
    main()
