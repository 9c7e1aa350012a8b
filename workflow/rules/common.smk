# Config to jobs: wildcard constraints, job environment, and path, target, input, params functions.
# Validation is in validate.smk (included before this file); only its check_config() runs here.
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "[a-z][a-z0-9_]*"
FRACTION = "[0-9]+(?:[.][0-9]+)?(?:e-?[0-9]+)?"

# Jobs run `python -m robustcore` from src/, installed or not (conda envs and cluster nodes included).
SRC = shlex.quote(str(Path(workflow.basedir) / "src"))
shell.prefix(f"export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

# Code-aware staleness: every rule's params carry a fingerprint of the package code its
# subcommand runs (read from the source, nothing imported), so editing a module makes exactly
# the jobs that run it stale. `snakemake -n --list-changes params` lists them.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from robustcore import codegraph, jobcost, scale, warm


def code_version(subcommand):
    """The fingerprint of the code `robustcore <subcommand>` runs (a rule param)."""
    return codegraph.fingerprint(subcommand)


# Warm workers (robustcore.warm): in a local run, jobs hand their command to one server process
# that imported torch and the package once and forks a child per job, instead of each paying
# Python's start-up and ~3 s of imports. Not with conda/apptainer envs (the server runs in
# Snakemake's Python) nor on a cluster (jobs run elsewhere); `warm_workers: false` switches it off.
WARM = {}


def start_warm_server():
    """Start the warm server for a local run and point the jobs' environment at it."""
    deployment = {
        method.name for method in workflow.deployment_settings.deployment_method
    }
    if (
        not config["warm_workers"]
        or not workflow.local_exec
        or {"CONDA", "APPTAINER"} & deployment
    ):
        return
    folder = Path(tempfile.mkdtemp(prefix="robustcore-warm-"))
    socket_path = folder / "socket"
    Path("logs").mkdir(exist_ok=True)
    log = open("logs/warm_server.log", "w")
    pythonpath = os.pathsep.join(
        filter(
            None, [str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH")]
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "robustcore.warm", str(socket_path)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(
        1200
    ):  # its imports take seconds; the socket appears when it is ready
        if socket_path.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    WARM.update(process=process, folder=folder, log=log)
    if socket_path.exists():
        os.environ[warm.ENV] = str(socket_path)


def stop_warm_server():
    """Stop the warm server, if one was started."""
    os.environ.pop(warm.ENV, None)
    if "process" in WARM:
        WARM["process"].terminate()
        WARM["process"].wait(timeout=30)
        WARM["log"].close()
        shutil.rmtree(WARM["folder"], ignore_errors=True)
        WARM.clear()


onstart:
    start_warm_server()


onsuccess:
    stop_warm_server()


onerror:
    stop_warm_server()


# Resources come from one cost model (robustcore.jobcost) and the config's job_resources; the
# Slurm profile adds only account and partitions. Slurm allocates `threads` CPUs per job.
def job_threads(rule):
    """CPUs a job of `rule` uses: torch threads (+ DataLoader workers where it reads data)."""
    return jobcost.threads(config, rule)


def job_runtime(rule):
    """Time limit in minutes of a job of `rule`, longer on each retry."""
    return lambda wildcards, attempt: jobcost.runtime_minutes(
        config, rule, dict(wildcards), attempt
    )


def job_mem_mb(rule):
    """Host memory in MB of a job of `rule`."""
    return lambda wildcards: jobcost.mem_mb(config, rule, dict(wildcards))


def torch_threads(wildcards, threads):
    """Torch threads of a job that reads through DataLoader workers: its CPUs less the workers."""
    return max(1, threads - config["workers"])


def job_gpus(rule):
    """GPUs a job of `rule` asks for: one per rank (its entry's `gpus`), 0 with device: cpu."""
    return lambda wildcards: jobcost.job_gpus(config, rule, dict(wildcards))


# A job with `gpus: W` > 1 runs W processes, one per GPU (torch.distributed ranks): the Slurm
# plugin's MPI mechanism (resource `mpi`) makes the job's shell run once in an allocation of W
# tasks, and `srun` in the shell (params.launch) starts the W ranks. With W = 1 none of these
# resources is set and the shell has no prefix.
def multi_gpu(rule, value):
    """A resource that only a multi-GPU job of `rule` has: value(W, wildcards), else None."""

    def resource(wildcards):
        world = jobcost.ranks(config, rule, dict(wildcards))
        return value(world, wildcards) if world > 1 else None

    return resource


def job_tasks(rule):
    """Slurm tasks of a multi-GPU job: one per rank."""
    return multi_gpu(rule, lambda world, wildcards: world)


def job_nodes(rule):
    """Nodes a multi-GPU job spans."""
    return multi_gpu(rule, lambda world, wc: jobcost.job_nodes(config, rule, dict(wc)))


def launcher(rule):
    """The shell prefix that starts a multi-GPU job's ranks (else nothing): srun with the task
    geometry spelled out, since the plugin clears the allocation's SLURM_* defaults before the
    job's shell runs; one GPU and `threads` CPUs per task; a rank that fails ends the others.
    """

    def prefix(wildcards, threads):
        world = jobcost.ranks(config, rule, dict(wildcards))
        if world == 1:
            return ""
        per_node = min(world, config["job_resources"]["gpus_per_node"])
        gpus = " --gpus-per-task=1" if jobcost.uses_gpu(config, rule) else ""
        return (
            f"srun --ntasks={world} --ntasks-per-node={per_node} --cpus-per-task={threads}"
            f"{gpus} --kill-on-bad-exit=1 "
        )

    return prefix


def without_gpus(entry):
    """An entry without its `gpus`: how many GPUs share a job is not a setting of its result."""
    return {k: v for k, v in entry.items() if k != "gpus"}


wildcard_constraints:
    dataset=NAME,
    proxy=NAME,
    method=NAME,
    model=NAME,
    regime=NAME,
    attack=NAME,
    study=NAME,
    seed=r"\d+",
    coreset=f"full|{NAME}-f{FRACTION}(?:-{NAME})?-seed[0-9]+",


def as_json(entry):
    """A config entry as compact JSON for a CLI argument (quote it with :q in shell)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def ordered_json(entry):
    """Like as_json, keeping the config's order (studies, regimes and proxies as listed)."""
    return json.dumps(entry, separators=(",", ":"))


def fraction_tag(fraction):
    return f"{float(fraction):g}"


def coreset_name(selection, fraction, proxy, seed):
    """Coreset file stem: selection, fraction, proxy (for scored selections) and seed.

    `proxy` is the study's; a selection that names its own proxy uses that one.
    """
    if selection == "full":
        return "full"
    entry = config["selections"][selection]
    if entry["keep"] == "random":
        return f"{selection}-f{fraction_tag(fraction)}-seed{seed}"
    return (
        f"{selection}-f{fraction_tag(fraction)}-{entry.get('proxy', proxy)}-seed{seed}"
    )


CORESET_RE = re.compile(
    rf"(?P<selection>{NAME})-f(?P<fraction>{FRACTION})(?:-(?P<proxy>{NAME}))?-seed(?P<seed>[0-9]+)"
)


def parse_coreset(name):
    """Inverse of coreset_name; unknown selection names fail with the allowed values."""
    if name == "full":
        return {"selection": "full", "fraction": 1.0, "proxy": None, "seed": None}
    match = CORESET_RE.fullmatch(name)
    if match is None:
        raise ValueError(
            f"coreset name {name!r} is not <selection>-f<fraction>[-<proxy>]-seed<N>"
        )
    parts = match.groupdict()
    if parts["selection"] not in config["selections"]:
        config_error("coreset selection", parts["selection"], config["selections"])
    return {**parts, "fraction": float(parts["fraction"]), "seed": int(parts["seed"])}


def proxy_training(proxy):
    """The training settings of a proxy: its regime, with the proxy's own overrides."""
    entry = config["proxies"][proxy]
    training = without_gpus(config["regimes"][entry["regime"]])
    if "epochs" in entry:
        training["epochs"] = entry["epochs"]
    training["capture"] = entry["capture"]
    return training


# A dataset is prepared as arrays (train/test.npz), as an image folder's index tables
# (train/test.parquet, images decoded by every job that reads them) or, with `decode`, as
# shards decoded once (train/ and test/ folders). One prepare rule per kind (prepare.smk).
DATA_FILES = {
    "array": ("train.npz", "test.npz", "meta.json"),
    "folder": ("train.parquet", "test.parquet", "meta.json"),
    "shards": ("train", "test", "meta.json"),
}


def dataset_kind(dataset):
    """array, folder or shards: how a datasets entry is prepared."""
    entry = config["datasets"].get(dataset, {})
    if "decode" in entry:
        return "shards"
    return "folder" if entry.get("source") == "imagefolder" else "array"


def datasets_of_kind(kind):
    """A wildcard constraint matching exactly the datasets of one kind (none: nothing)."""
    names = [name for name in config["datasets"] if dataset_kind(name) == kind]
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def data_files(dataset):
    """A prepared dataset's files; for the "{dataset}" pattern, an input function giving them."""
    if dataset == "{dataset}":
        return lambda wildcards: data_files(wildcards.dataset)
    return [
        f"results/data/{dataset}/{name}" for name in DATA_FILES[dataset_kind(dataset)]
    ]


def prepare_params(wildcards):
    """The dataset entry a prepare job gets (decode.workers is its CPU count, not a setting
    of the data, so changing it reruns nothing)."""
    entry = dict(config["datasets"][wildcards.dataset])
    if "decode" in entry:
        entry["decode"] = {k: v for k, v in entry["decode"].items() if k != "workers"}
    return as_json(entry)


def decode_threads(wildcards):
    """CPUs (decoding processes) of a dataset's one-off decode: its decode.workers."""
    return jobcost.threads(config, "prepare_shards", dict(wildcards))


def study_arms(study):
    """(selection, fraction) pairs a study trains, full data last."""
    arms = [(s, f) for s in study["selections"] for f in study["fractions"]]
    return arms + ([("full", 1.0)] if study["full"] else [])


def study_evals(wildcards):
    """Every evaluation file a study's report reads."""
    study = config["studies"][wildcards.study]
    runs = [
        (regime, coreset_name(selection, fraction, study.get("proxy"), seed), seed)
        for selection, fraction in study_arms(study)
        for seed in study["seeds"]
        for regime in study["regimes"]
    ]
    # Dynamic selection (ACS) trains on the full set, choosing its subset every epoch.
    runs += [
        (regime, "full", seed) for regime in study["dynamic"] for seed in study["seeds"]
    ]
    files = [
        eval_file(study, regime, coreset, seed, attack)
        for regime, coreset, seed in runs
        for attack in study["attacks"]
    ]
    return existing_only(files)


def existing_only(files):
    """With report_missing, only the evaluations already on disk (the rest render as missing)."""
    if config["report_missing"]:
        return [f for f in files if Path(f).is_file()]
    return files


def eval_file(study, regime, coreset, seed, attack):
    return (
        f"results/eval/{study['dataset']}/{study['model']}/{regime}/{coreset}/seed{seed}/"
        f"{attack}.json"
    )


def run_dir(study, regime, coreset, seed):
    return f"results/runs/{study['dataset']}/{study['model']}/{regime}/{coreset}/seed{seed}"


def study_coresets(wildcards):
    """Every coreset file of every study (target `all_coresets`: select, do not train)."""
    files = []
    for study in config["studies"].values():
        for selection, fraction in study_arms(study):
            for seed in study["seeds"]:
                name = coreset_name(selection, fraction, study.get("proxy"), seed)
                files.append(f"results/coresets/{study['dataset']}/{name}.parquet")
    return sorted(set(files))


def study_json(wildcards):
    """A study entry for the report: its name, and its dynamic regimes' per-epoch fractions."""
    study = config["studies"][wildcards.study]
    dynamic = {r: config["regimes"][r].get("fraction", 0.5) for r in study["dynamic"]}
    return as_json({**study, "name": wildcards.study, "dynamic": dynamic})


def report_studies():
    """Every study entry as the index reads it, in config order."""
    return ordered_json(
        {
            name: {
                **study,
                "dynamic": {
                    r: config["regimes"][r].get("fraction", 0.5)
                    for r in study["dynamic"]
                },
            }
            for name, study in config["studies"].items()
        }
    )


# The report files of a study besides tables/accuracy.* (rule -> files), by what it configures.
def study_outputs(name):
    """Every report file of one study (the index and `all` need them)."""
    study = config["studies"][name]
    root = f"results/report/{name}"
    files = [
        f"{root}/tables/accuracy.md",
        f"{root}/tables/comparisons.md",
        f"{root}/figures/accuracy_vs_fraction.png",
        f"{root}/figures/clean_vs_robust.png",
    ]
    if study["compute_reference"]:
        files += [f"{root}/tables/compute.md", f"{root}/figures/robust_vs_compute.png"]
    figures = study["figures"]
    if "hardness" in figures:
        files += [
            f"{root}/figures/hardness_examples.png",
            f"{root}/figures/hardness_distribution.png",
        ]
    for kind in (
        "proxy_agreement",
        "decision_boundary",
        "feature_projection",
        "easy_hard_accuracy",
        "top_vs_bottom",
        "sparse_fgsm_signal",
    ):
        if kind in figures:
            files.append(f"{root}/figures/{kind}.png")
    return files


def first_seed(study):
    return study["seeds"][0]


def score_file(study, proxy, seed, score):
    return f"results/scores/{study['dataset']}/{proxy}/seed{seed}/{score}.parquet"


def proxy_dir(study, proxy, seed):
    return f"results/proxy/{study['dataset']}/{proxy}/seed{seed}"


def sparse_fgsm_signal_params(wildcards):
    """Inputs of the Sparse-FGSM signal table: every seed's proxy, its attack settings, the ε list."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["sparse_fgsm_signal"]
    proxy = config["proxies"][study["proxy"]]
    attack = proxy["sparse_fgsm"]
    return {
        "data": f"results/data/{study['dataset']}",
        "seeds": study["seeds"],
        "proxies": [
            f"{proxy_dir(study, study['proxy'], s)}/model.pt" for s in study["seeds"]
        ],
        "eps": sorted({*entry["eps"], attack["eps"]}),
        "ks": attack["ks"],
        "mode": attack["mode"],
        "alpha": config["scores"][entry["score"]].get("alpha", 0.5),
    }


def hardness_params(wildcards):
    """Inputs of Figs. 1-2: the first seed's score, dynamics and the data."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["hardness"]
    seed = first_seed(study)
    return {
        "data": f"results/data/{study['dataset']}",
        "score": score_file(study, study["proxy"], seed, entry["score"]),
        "dynamics": f"{proxy_dir(study, study['proxy'], seed)}/dynamics",
        "share": entry["share"],
    }


def proxy_agreement_params(wildcards):
    """Inputs of Fig. 3: the score from every listed proxy in every seed."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["proxy_agreement"]
    return {
        "seeds": study["seeds"],
        "fraction": entry["fraction"],
        "scores": {
            proxy: [score_file(study, proxy, s, entry["score"]) for s in study["seeds"]]
            for proxy in entry["proxies"]
        },
    }


def decision_boundary_params(wildcards):
    """Inputs of Fig. 4: full-data and coreset models and coresets of every seed."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["decision_boundary"]
    regime = study["regimes"][0]
    arms = {
        "all points": ("full", 1.0),
        entry["selection"]: (entry["selection"], entry["fraction"]),
    }
    params = {
        "data": f"results/data/{study['dataset']}",
        "seeds": study["seeds"],
        "arms": {},
    }
    for label, (selection, fraction) in arms.items():
        coresets = [
            coreset_name(selection, fraction, study.get("proxy"), s)
            for s in study["seeds"]
        ]
        params["arms"][label] = {
            "models": [
                f"{run_dir(study, regime, c, s)}/model.pt"
                for c, s in zip(coresets, study["seeds"])
            ],
            "coresets": [
                (
                    None
                    if c == "full"
                    else f"results/coresets/{study['dataset']}/{c}.parquet"
                )
                for c in coresets
            ],
        }
    return params


def feature_projection_params(wildcards):
    """Inputs of Fig. 5: full-data models under each listed regime, and the score, per seed."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["feature_projection"]
    return {
        "data": f"results/data/{study['dataset']}",
        "seeds": study["seeds"],
        "share": entry["share"],
        "scores": [
            score_file(study, study["proxy"], s, entry["score"]) for s in study["seeds"]
        ],
        "models": {
            regime: [
                f"{run_dir(study, regime, 'full', s)}/model.pt" for s in study["seeds"]
            ]
            for regime in entry["regimes"]
        },
    }


def easy_hard_params(wildcards):
    """Inputs of Fig. 6: the two selections' evaluations and the proxies' test dynamics."""
    study = config["studies"][wildcards.study]
    entry = study["figures"]["easy_hard_accuracy"]
    score = config["scores"][entry["score"]]
    return {
        "seeds": study["seeds"],
        "selections": entry["selections"],
        "attack": entry["attack"],
        "bins": entry["bins"],
        "window": [score.get("first_epoch", 1), score.get("last_epoch")],
        "test_dynamics": [
            f"{proxy_dir(study, study['proxy'], s)}/dynamics" for s in study["seeds"]
        ],
        "evals": existing_only(
            [
                eval_file(
                    study,
                    regime,
                    coreset_name(sel, f, study.get("proxy"), s),
                    s,
                    entry["attack"],
                )
                for regime in study["regimes"][:1]
                for sel in entry["selections"]
                for f in study["fractions"]
                for s in study["seeds"]
            ]
        ),
    }


def figure_inputs(params):
    """Every file path inside a figure job's parameters (its Snakemake inputs)."""

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key != "data":
                    yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)
        elif isinstance(value, str) and value.startswith("results/"):
            yield value

    found = list(walk(params))
    if "data" in params:
        found += [
            f"{params['data']}/{name}"
            for name in ("train.npz", "test.npz", "meta.json")
        ]
    return found


def coreset_scores(wildcards):
    """The score file a coreset is selected from (none for random and full)."""
    parts = parse_coreset(wildcards.coreset)
    if parts["selection"] == "full":
        return []
    selection = config["selections"][parts["selection"]]
    if selection["keep"] == "random":
        return []
    if parts["proxy"] not in config["proxies"]:
        config_error("coreset proxy", parts["proxy"], config["proxies"])
    return (
        f"results/scores/{wildcards.dataset}/{parts['proxy']}/seed{parts['seed']}/"
        f"{selection['score']}.parquet"
    )


# Score methods that read the proxy's Sparse-FGSM table (the others read only what the proxy
# job writes, i.e. model, dynamics, probe). tests/test_workflow.py checks this against the package.
SENSITIVITY_METHODS = ("isef", "fgsm_cs", "pss")


def score_inputs(wildcards):
    """The proxy files a score method reads."""
    proxy = f"results/proxy/{wildcards.dataset}/{wildcards.proxy}/seed{wildcards.seed}"
    files = {
        "data": data_files(wildcards.dataset),
        "model": f"{proxy}/model.pt",
        "dynamics": f"{proxy}/dynamics",
        "probe": f"{proxy}/probe.npz",
    }
    if config["scores"][wildcards.method]["method"] in SENSITIVITY_METHODS:
        files["sensitivity"] = f"{proxy}/sparse_fgsm.parquet"
    return files


def coreset_params(wildcards):
    parts = parse_coreset(wildcards.coreset)
    if parts["selection"] == "full":
        return {"keep": "all"}
    return config["selections"][parts["selection"]]


def eval_tags(wildcards):
    """Identity of an evaluated run, stored in its json for the report."""
    parts = parse_coreset(wildcards.coreset)
    return as_json(
        {
            "dataset": wildcards.dataset,
            "model": wildcards.model,
            "regime": wildcards.regime,
            "coreset": wildcards.coreset,
            "selection": parts["selection"],
            "fraction": parts["fraction"],
            "proxy": parts["proxy"],
            "seed": int(wildcards.seed),
            "attack": wildcards.attack,
        }
    )


# Cross-reference checks (validate.smk) need study_arms above, so they run here, last; then
# every score job's memory and time at full size (robustcore.scale): refused now, not hours in.
check_config()
too_big = scale.check(config)
if too_big:
    raise ValueError("config error:\n  " + "\n  ".join(too_big))
