"""Run the default config in a temporary folder and say where the machine's time went.

    python benchmarks/bench_default.py [--cores 2] [--keep DIR] [-- extra snakemake args]

Prints the wall time, the core-seconds the run had (wall × cores), the useful-work share (the
seconds every job spent in its subcommand's own work, summed, over those core-seconds), the work
per stage, the Snakemake process's own CPU seconds and the job count per rule. A job's work is
timed by the CLI itself (ROBUSTCORE_WORK_LOG): after its imports, from the start to the end of
the subcommand; every job of the default config uses one thread, so its work seconds are its
core-seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process itself (not its children), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(workdir: Path, cores: int, extra: list[str]) -> dict:
    """Run the workflow in `workdir`; return timings, the work log and the job counts."""
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    work_log = workdir / "work.jsonl"
    env = {
        **os.environ,
        "ROBUSTCORE_WORK_LOG": str(work_log),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               "--cores", str(cores), *extra]  # fmt: skip
    started = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=log)
        last = [0.0]

        def poll() -> None:
            while process.poll() is None:
                last[0] = _own_cpu_seconds(process.pid) or last[0]
                time.sleep(0.2)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        returncode = process.wait()
        watcher.join()
    wall = time.perf_counter() - started
    text = (workdir / "snakemake.log").read_text()
    if returncode != 0:
        raise SystemExit(f"snakemake failed ({returncode}); see {workdir / 'snakemake.log'}")
    jobs = collections.Counter(re.findall(r"^(?:local)?rule (\w+):$", text, re.M))
    work = [json.loads(line) for line in work_log.read_text().splitlines()]
    return {"wall": wall, "snakemake_cpu": last[0], "jobs": jobs, "work": work}


def report(result: dict, cores: int) -> None:
    """Print the summary."""
    core_seconds = result["wall"] * cores
    by_stage = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for entry in result["work"]:
        stage = by_stage[entry["command"]]
        stage[0] += 1
        stage[1] += entry["work_seconds"]
        stage[2] += entry["process_seconds"] or 0.0
    useful = sum(stage[1] for stage in by_stage.values())
    print(f"wall time            {result['wall']:9.1f} s on {cores} cores")
    print(f"core-seconds         {core_seconds:9.1f}")
    print(f"useful work          {useful:9.1f} s  share {useful / core_seconds:.3f}")
    print(f"snakemake own CPU    {result['snakemake_cpu']:9.1f} s")
    print("per stage (subcommand): processes, work s, process lifetime s, work share of lifetime")
    for name, (count, seconds, alive) in sorted(by_stage.items(), key=lambda kv: -kv[1][1]):
        share = seconds / alive if alive else float("nan")
        print(f"  {name:<12} {count:5d} {seconds:9.1f} {alive:9.1f}   {share:.2f}")
    print("jobs per rule:")
    for rule, count in sorted(result["jobs"].items()):
        print(f"  {rule:<26} {count:5d}")
    print(f"  {'total':<26} {sum(result['jobs'].values()):5d}")


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--keep", type=Path, default=None, help="run here and keep the results")
    parser.add_argument("extra", nargs="*", help="further snakemake arguments (after --)")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        result = run(args.keep, args.cores, args.extra)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_default_") as folder:
            result = run(Path(folder), args.cores, args.extra)
    report(result, args.cores)


if __name__ == "__main__":
    main()
