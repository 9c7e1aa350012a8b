"""The report at a preset's full scale: synthetic evaluations of the whole grid, timed report jobs.

Run from the repository root (a few minutes; most of it is Snakemake planning the preset):

    .venv/bin/python benchmarks/bench_report.py [--preset presets/cifar10.yaml] [--workdir DIR]

1. ``snakemake -n -p --forceall`` plans the preset in a scratch folder and prints every job's
   shell command; the report jobs' commands (``report --part study|compute`` per study and
   ``report --index``) are taken from it verbatim.
2. Every evaluation file those commands read (``results/eval/.../{attack}.json``) is written with
   the fields the report reads: the run's tags parsed from its path, clean and robust accuracy
   drawn per (selection, fraction, regime, attack) with seed noise, counted training passes, and
   the attack's settings from the preset.
3. The study and compute jobs run one after another, then the index, each as the workflow runs it
   (``python -m robustcore ...`` in its own process); wall seconds per job and in total are printed.
   The index also reads the plot jobs' outputs (figure summaries and tables; those jobs need
   trained proxies and scores): the files the study jobs did not write are copied from a real
   run's ``results/report`` with ``--figures-from`` (e.g. the default run's).

The goal for the CIFAR-10 preset (about 1,800 evaluations) is the whole report in under 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
EVAL = re.compile(
    r"results/eval/(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?P<regime>[^/]+)/(?P<coreset>[^/]+)/"
    r"seed(?P<seed>[0-9]+)/(?P<attack>[^/]+)\.json"
)
CORESET = re.compile(
    r"(?P<selection>.+?)-f(?P<fraction>[0-9.e-]+)(?:-(?P<proxy>[a-z0-9_]+))?-seed[0-9]+"
)


def plan(preset: Path, workdir: Path) -> list[str]:
    """The report jobs' shell commands from a forced dry run of the preset."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p",
         "--forceall", "--configfile", str(preset)],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    commands = [
        line.split("Shell command: ", 1)[1]
        for line in result.stdout.splitlines()
        if line.startswith("Shell command: python -m robustcore report")
    ]
    return [c for c in commands if "--part study" in c or "--part compute" in c or "--index" in c]


def tags(match: re.Match) -> dict:
    """The run tags the workflow stores in an evaluation (common.smk's eval_tags)."""
    coreset = match["coreset"]
    parts = CORESET.fullmatch(coreset)
    selection = "full" if parts is None else parts["selection"]
    fraction = 1.0 if parts is None else float(parts["fraction"])
    return {
        "dataset": match["dataset"], "model": match["model"], "regime": match["regime"],
        "coreset": coreset, "selection": selection, "fraction": fraction,
        "proxy": None if parts is None else parts["proxy"], "seed": int(match["seed"]),
        "attack": match["attack"],
    }  # fmt: skip


def synthesize(paths: set[str], config: dict, workdir: Path) -> None:
    """Write an evaluation json for every path: accuracies drawn per arm, noise per seed."""
    for path in sorted(paths):
        run = tags(EVAL.fullmatch(path))
        arm = f"{run['selection']}|{run['fraction']}|{run['regime']}|{run['attack']}"
        arm_rng = np.random.default_rng(zlib.crc32(arm.encode()))
        seed_rng = np.random.default_rng(zlib.crc32(path.encode()))
        clean = float(np.clip(0.5 + 0.4 * run["fraction"] ** 0.3 + 0.02 * arm_rng.normal(), 0, 1))
        robust = float(np.clip(clean * (0.4 + 0.1 * arm_rng.normal()), 0, 1))
        passes = 3 * 50_000 * run["fraction"] * 200
        summary = {
            "attack": config["attacks"][run["attack"]],
            "clean_acc": float(np.clip(clean + 0.005 * seed_rng.normal(), 0, 1)),
            "robust_acc": float(np.clip(robust + 0.005 * seed_rng.normal(), 0, 1)),
            "n": 10_000,
            "possible_gradient_masking": False,
            "hygiene": {},
            "device": "cuda",
            "train_cost": {
                "forward_total": passes / 3,
                "backward_total": 2 * passes / 3,
                "wall_seconds": passes / 1e5,
            },  # fmt: skip
            "run": run,
        }
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(summary))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=REPO / "presets" / "cifar10.yaml")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--figures-from",
        type=Path,
        default=None,
        help="a results/report folder whose figure summaries (figures/*.json, written by the "
        "plot jobs, which need proxies and scores) the index reads (else no index)",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_report_"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(args.preset.read_text())

    start = time.perf_counter()
    commands = plan(args.preset.resolve(), workdir)
    planning = time.perf_counter() - start
    evals = {m.group(0) for c in commands for m in EVAL.finditer(c)}
    synthesize(evals, config, workdir)
    print(f"preset {args.preset.name}: {len(evals):,} evaluation files, {len(commands)} report "
          f"jobs (planning {planning:.0f} s), in {workdir}")  # fmt: skip

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("ROBUSTCORE_WARM", None)  # each job in its own process, as on a cluster
    index = [c for c in commands if "--index" in c]
    if args.figures_from is None:
        index = []
        print("index skipped: it reads the plot jobs' outputs (give --figures-from)")
    timings = []
    for command in [c for c in commands if "--index" not in c] + index:
        if command in index:  # the plot jobs' files the study jobs did not write
            for source in args.figures_from.glob("*/*/*"):
                target = workdir / "results" / "report" / source.relative_to(args.figures_from)
                if source.parent.name in ("figures", "tables") and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(source.read_bytes())
        log = re.search(r"> (\S+) 2>&1$", command)
        if log:
            (workdir / log.group(1)).parent.mkdir(parents=True, exist_ok=True)
        part = "index" if "--index" in command else re.search(r"--part (\w+)", command)[1]
        out = shlex.split(command.split(" > ")[0])[shlex.split(command).index("--out") + 1]
        begin = time.perf_counter()
        if subprocess.run(["bash", "-c", command], cwd=workdir, env=env).returncode != 0:
            tail = (workdir / log.group(1)).read_text()[-2000:] if log else ""
            raise SystemExit(f"report job {part} {out} failed:\n{tail}")
        timings.append((part, out, time.perf_counter() - begin))
        print(f"  {part:8s} {out}: {timings[-1][2]:.1f} s", flush=True)
    total = sum(t for _, _, t in timings)
    print(f"report jobs: {len(timings)}, total {total:.1f} s (study + compute "
          f"{sum(t for p, _, t in timings if p != 'index'):.1f} s, index "
          f"{sum(t for p, _, t in timings if p == 'index'):.1f} s); goal < 120 s")  # fmt: skip


if __name__ == "__main__":
    main()
