# Config validation only: the schema, with readable errors, and the cross-reference checks.
# Included before common.smk; check_config() is called at the end of common.smk (needs study_arms).
import sys
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


# Cross-references between config sections, and data roots (check_config).
TORCHVISION_FILES = {
    "mnist": "MNIST/raw/",
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "imagefolder": "train/ and val/ class folders",
}


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
        for key in ("selections", "regimes", "dynamic", "compare"):
            study[key] = list(study[key])
        study["figures"] = dict(study.get("figures") or {})
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
    for name, dataset in config["datasets"].items():
        if "decode" in dataset and dataset["source"] != "imagefolder":
            raise ValueError(
                f"config error: datasets.{name}.decode applies to source imagefolder only, "
                f"not {dataset['source']!r}; remove it"
            )
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
        if "proxy" in selection:
            check_reference(f"selections.{name}.proxy", selection["proxy"], "proxies")
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
            config["selections"][s]["keep"] != "random"
            and "proxy" not in config["selections"][s]
            for s in study["selections"]
        ):
            check_reference(f"{key}.proxy", study.get("proxy"), "proxies")
        for attack in study["attacks"]:
            check_reference(f"{key}.attacks", attack, "attacks")
        for regime in study["dynamic"]:
            check_reference(f"{key}.dynamic", regime, "regimes")
            if config["regimes"][regime]["type"] != "acs":
                raise ValueError(
                    f"config error: {key}.dynamic = {regime!r}: expected a regime of type acs "
                    f"(dynamic selection), got type {config['regimes'][regime]['type']!r}"
                )
        reference = study["compute_reference"]
        if reference is not None and (
            reference not in study["regimes"] or not study["full"]
        ):
            raise ValueError(
                f"config error: {key}.compute_reference = {reference!r}: expected one of the "
                f"study's regimes {study['regimes']} with full: true"
            )
        for i, entry in enumerate(study["compare"]):
            names = (
                set(study["selections"]) | set(study["regimes"]) | set(study["dynamic"])
            )
            names |= {"full"} if study["full"] else set()
            for side in ("a", "b"):
                if entry[side] not in names:
                    config_error(f"{key}.compare.{i}.{side}", entry[side], names)
            if "attack" in entry and entry["attack"] not in study["attacks"]:
                config_error(
                    f"{key}.compare.{i}.attack", entry["attack"], study["attacks"]
                )
        check_figures(key, study)
    for name in used_datasets():
        dataset = config["datasets"][name]
        if dataset["source"] in TORCHVISION_FILES:
            root = Path(dataset.get("root", config["data_root"])).resolve()
            if not root.is_dir():
                problem = (
                    f"datasets.{name}: data root {root} does not exist; create it "
                    f"and put {TORCHVISION_FILES[dataset['source']]} there (or set "
                    "download: true on a machine with internet), or set data_root / "
                    f"datasets.{name}.root"
                )
                # A dry run only plans (e.g. a preset on a login node without the data yet).
                if (
                    workflow.output_settings is not None
                    and workflow.output_settings.dryrun
                ):
                    print(f"warning: {problem}", file=sys.stderr)
                else:
                    raise ValueError(f"config error: {problem}")


def check_figures(key, study):
    """A study's figure entries name scores, proxies, selections and regimes that exist."""
    figures = study.setdefault("figures", {})
    key = f"{key}.figures"
    for kind, entry in figures.items():
        if "score" in entry:
            check_reference(f"{key}.{kind}.score", entry["score"], "scores")
    needs_proxy = {"hardness", "easy_hard_accuracy", "feature_projection"} & set(
        figures
    )
    if needs_proxy:
        check_reference(
            f"{key}.{sorted(needs_proxy)[0]} needs {key[:-8]}.proxy",
            study.get("proxy"),
            "proxies",
        )
    if "proxy_agreement" in figures:
        for proxy in figures["proxy_agreement"]["proxies"]:
            check_reference(f"{key}.proxy_agreement.proxies", proxy, "proxies")
    if "decision_boundary" in figures:
        entry = figures["decision_boundary"]
        check_reference(
            f"{key}.decision_boundary.selection", entry["selection"], "selections"
        )
    if "feature_projection" in figures:
        for regime in figures["feature_projection"]["regimes"]:
            check_reference(f"{key}.feature_projection.regimes", regime, "regimes")
    if "easy_hard_accuracy" in figures:
        entry = figures["easy_hard_accuracy"]
        for selection in entry["selections"]:
            if selection not in study["selections"]:
                config_error(
                    f"{key}.easy_hard_accuracy.selections",
                    selection,
                    study["selections"],
                )
        if entry["attack"] not in study["attacks"]:
            config_error(
                f"{key}.easy_hard_accuracy.attack", entry["attack"], study["attacks"]
            )
    if "sparse_fgsm_signal" in figures:
        entry = figures["sparse_fgsm_signal"]
        check_reference(f"{key}.sparse_fgsm_signal.score", entry["score"], "scores")
        proxy = config["proxies"].get(study.get("proxy"), {})
        if not proxy.get("sparse_fgsm"):
            raise ValueError(
                f"config error: {key}.sparse_fgsm_signal needs the study's proxy "
                f"{study.get('proxy')!r} to have a sparse_fgsm entry (eps, ks, mode)"
            )
    if "top_vs_bottom" in figures:
        for score in figures["top_vs_bottom"]["scores"]:
            if score not in study["scores"]:
                config_error(f"{key}.top_vs_bottom.scores", score, study["scores"])


def used_datasets():
    return sorted({study["dataset"] for study in config["studies"].values()})
