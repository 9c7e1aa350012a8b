import json
import re
import shlex
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def interval(schema):
    """The allowed range of a numeric schema in interval notation, e.g. (0, 1]."""
    low = schema.get("exclusiveMinimum", schema.get("minimum", "-inf"))
    high = schema.get("exclusiveMaximum", schema.get("maximum", "inf"))
    left = "(" if "exclusiveMinimum" in schema or low == "-inf" else "["
    right = ")" if "exclusiveMaximum" in schema or high == "inf" else "]"
    return f"{left}{low}, {high}{right}"


def explain_config_errors(schema_file):
    """Every schema violation as 'key: problem; expected ...' lines, before Snakemake's validate."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    problems = []
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(
        validator.iter_errors(config), key=lambda e: list(map(str, e.path))
    ):
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        if error.validator == "additionalProperties":
            unknown = sorted(
                set(error.instance) - set(error.schema.get("properties", {}))
            )
            allowed = sorted(error.schema.get("properties", {}))
            problems.append(f"{key}: unknown key(s) {unknown}; allowed keys: {allowed}")
        elif error.validator == "unevaluatedProperties":
            # A regime entry: the general training keys plus those of its own type.
            own = schema["$defs"]["regimes"].get(error.instance.get("type"), {})
            allowed = sorted(
                set(error.schema.get("properties", {})) | set(own.get("properties", {}))
            )
            unknown = sorted(set(error.instance) - set(allowed))
            if unknown:
                problems.append(
                    f"{key}: unknown key(s) {unknown}; allowed keys: {allowed}"
                )
        elif error.validator == "enum":
            problems.append(
                f"{key} = {error.instance!r}: expected one of {error.validator_value}"
            )
        elif error.validator in BOUNDS:
            problems.append(
                f"{key} = {error.instance!r}: expected a value in {interval(error.schema)}"
            )
        else:
            problems.append(f"{key}: {error.message}")
    if problems:
        raise ValueError("config error:\n  " + "\n  ".join(problems))


explain_config_errors(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
validate(config, "../schemas/config.schema.yaml")


NAME = "[a-z][a-z0-9_]*"
FRACTION = "[0-9]+(?:[.][0-9]+)?(?:e-?[0-9]+)?"
TORCHVISION_FILES = {
    "mnist": "MNIST/raw/",
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "imagefolder": "train/ and val/ class folders",
}

# Jobs run `python -m robustcore` from src/, installed or not (conda envs and cluster nodes included).
SRC = shlex.quote(str(Path(workflow.basedir) / "src"))
shell.prefix(f"export PYTHONPATH={SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


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


def config_error(key, value, allowed):
    """Stop before any job runs, naming the key, its value and the allowed values."""
    raise ValueError(
        f"config error: {key} = {value!r} is not defined; expected one of {sorted(allowed)}"
    )


def check_reference(key, value, section):
    if value not in config.get(section, {}):
        config_error(key, value, config.get(section, {}))


def expand_study_scores():
    """A study's `scores` × `ends` become selections named <score>_<end> (defined if missing)."""
    for study in config["studies"].values():
        # Schema defaults may hand every study the same list object: give each its own.
        study["selections"] = list(study["selections"])
        study["regimes"] = list(study["regimes"])
        for score in study["scores"]:
            for end in study["ends"]:
                name = f"{score}_{end}"
                config["selections"].setdefault(
                    name,
                    {"score": score, "keep": end, "balanced": True, "min_per_class": 0},
                )
                if name not in study["selections"]:
                    study["selections"].append(name)


def check_config():
    """Cross-references between config sections, and data roots, checked before any job."""
    for name, entry in config.get("scores", {}).items():
        if entry["method"] == "fgsm_cs" and abs(sum(entry["weights"]) - 1) > 1e-9:
            raise ValueError(
                f"config error: scores.{name}.weights = {entry['weights']}: the three weights "
                "(w_adv, w_unc, w_rob) must sum to 1"
            )
    for name, proxy in config.get("proxies", {}).items():
        check_reference(f"proxies.{name}.model", proxy["model"], "models")
        check_reference(f"proxies.{name}.regime", proxy["regime"], "regimes")
    for name, selection in config.get("selections", {}).items():
        if selection["keep"] != "random":
            if "score" not in selection:
                raise ValueError(
                    f"config error: selections.{name} keeps {selection['keep']!r} scores "
                    "but names no score; add score: <a scores entry>"
                )
            check_reference(f"selections.{name}.score", selection["score"], "scores")
    for name, study in config["studies"].items():
        for score in study["scores"]:
            check_reference(f"studies.{name}.scores", score, "scores")
    expand_study_scores()
    for name, study in config["studies"].items():
        key = f"studies.{name}"
        check_reference(f"{key}.dataset", study["dataset"], "datasets")
        check_reference(f"{key}.model", study["model"], "models")
        if "regime" in study and study["regime"] not in study["regimes"]:
            study["regimes"].insert(0, study["regime"])
        if not study["regimes"]:
            raise ValueError(
                f"config error: {key} names no regime (regime: or regimes:)"
            )
        for regime in study["regimes"]:
            check_reference(f"{key}.regimes", regime, "regimes")
        if not study_arms(study):
            raise ValueError(
                f"config error: {key} trains nothing: give selections (or scores) with "
                "fractions, or full: true"
            )
        if study["selections"] and not study["fractions"]:
            raise ValueError(
                f"config error: {key}.fractions is empty but selections are given"
            )
        for selection in study["selections"]:
            check_reference(f"{key}.selections", selection, "selections")
        if any(
            config["selections"][s]["keep"] != "random" for s in study["selections"]
        ):
            check_reference(f"{key}.proxy", study.get("proxy"), "proxies")
        for attack in study["attacks"]:
            check_reference(f"{key}.attacks", attack, "attacks")
    for name in used_datasets():
        dataset = config["datasets"][name]
        if dataset["source"] in TORCHVISION_FILES:
            root = Path(dataset.get("root", config["data_root"])).resolve()
            if not root.is_dir():
                raise ValueError(
                    f"config error: datasets.{name}: data root {root} does not exist; create it "
                    f"and put {TORCHVISION_FILES[dataset['source']]} there (or set "
                    "download: true on a machine with internet), or set data_root / "
                    f"datasets.{name}.root"
                )


def used_datasets():
    return sorted({study["dataset"] for study in config["studies"].values()})


def as_json(entry):
    """A config entry as compact JSON for a CLI argument (quote it with :q in shell)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def fraction_tag(fraction):
    return f"{float(fraction):g}"


def coreset_name(selection, fraction, proxy, seed):
    """Coreset file stem: selection, fraction, proxy (for scored selections) and seed."""
    if selection == "full":
        return "full"
    if config["selections"][selection]["keep"] == "random":
        return f"{selection}-f{fraction_tag(fraction)}-seed{seed}"
    return f"{selection}-f{fraction_tag(fraction)}-{proxy}-seed{seed}"


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
    training = dict(config["regimes"][entry["regime"]])
    if "epochs" in entry:
        training["epochs"] = entry["epochs"]
    training["capture"] = entry["capture"]
    return training


def data_files(dataset):
    return multiext(f"results/data/{dataset}/", "train.npz", "test.npz", "meta.json")


def study_arms(study):
    """(selection, fraction) pairs a study trains, full data last."""
    arms = [(s, f) for s in study["selections"] for f in study["fractions"]]
    return arms + ([("full", 1.0)] if study["full"] else [])


def study_evals(wildcards):
    """Every evaluation file a study's report reads."""
    study = config["studies"][wildcards.study]
    files = []
    for selection, fraction in study_arms(study):
        for seed in study["seeds"]:
            coreset = coreset_name(selection, fraction, study.get("proxy"), seed)
            for regime in study["regimes"]:
                for attack in study["attacks"]:
                    files.append(
                        f"results/eval/{study['dataset']}/{study['model']}/{regime}/"
                        f"{coreset}/seed{seed}/{attack}.json"
                    )
    return files


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
    return as_json({"name": wildcards.study, **config["studies"][wildcards.study]})


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


check_config()
