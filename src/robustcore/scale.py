"""What a score job needs at a dataset's full size; the config checks refuse what would not fit.

A model per score method of its peak host memory and its CPU time, from the config alone (the
dataset's size and classes, the proxy's feature width, the method's parameters), so that a
configuration that would blow up a node fails in ``snakemake -n``, before any job runs, naming
the method, its estimate and the setting that fixes it (:func:`check`). The same estimates size
the score jobs' Slurm requests (:mod:`robustcore.jobcost`).

Terms (bytes ``B = 8`` per float64; a group is one class with ``per_class: true``, else all ``N``
samples; ``n`` its size, ``k`` the greedy steps = ``ceil(budget n)`` or ``n``, ``d`` the feature
width, ``C`` the classes, ``w`` a pairwise entry's width: ``d`` for feature similarities,
``d + 1 + C`` for last-layer gradient products):

- inputs: the probe as float32, ``N (d + C) 4``, plus float64 copies of a group's rows;
- pairwise rows: precomputed (``n^2 B``, ``2 n^2 w`` flops) when ``n <= DENSE_LIMIT``, else one
  matrix-vector product per step (``n w B`` bytes read per step);
- incremental Cholesky (``log_det``, ``gradmatch``): a ``k x n`` float64 factor and ``k^2 n B / 2``
  bytes read over the run (``gradmatch`` with ``nnls``: ``k^2 n B``, and ``4 k^2 B`` for the NNLS
  systems: about 100 GB with ``per_class: false`` at N = 50,000);
- ``glister``: per step two ``n x (d+1) x C`` products (``4 n (d+1) C`` flops);
- every greedy step also pays a fixed Python overhead (``STEP_SECONDS``).

Throughputs are config settings (``limits.cpu_gflops`` for float64 matrix products,
``limits.cpu_gbps`` for memory-bound passes); ``benchmarks/bench_scale.py`` measures the methods at
CIFAR and ImageNet shapes and prints measured beside estimated. Standard library only: the
Snakemake process imports it without numpy or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# (train, test) samples and values per sample of each source (toy2d: from its entry).
SOURCES = {
    "cifar10": (50_000, 10_000, 3 * 32 * 32),
    "cifar100": (50_000, 10_000, 3 * 32 * 32),
    "mnist": (60_000, 10_000, 28 * 28),
    "imagefolder": (1_281_167, 50_000, 3 * 224 * 224),
    "digits": (1_347, 450, 8 * 8),
}
B = 8  # bytes per float64
DENSE_LIMIT = 8192  # robustcore.scores.greedy.DENSE_LIMIT (a test keeps them equal)
STEP_SECONDS = 60e-6  # Python and small-array overhead of one greedy step (bench_scale)
BASE_BYTES = 1.5e9  # the interpreter with torch, numpy and pandas loaded
# Classes and the largest class's share of the training set (the group size with per_class).
CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "imagefolder": 1000, "digits": 10}
LARGEST_CLASS = {"cifar10": 5_000, "cifar100": 500, "mnist": 6_742, "imagefolder": 1_300}
# Penultimate feature width of each architecture at its default width.
FEATURES = {"resnet18": 512, "vgg16": 512, "resnet50": 2048, "small_cnn": 64, "mlp": 256}
# Greedy set methods (kind "order"); craig always runs per class (block-diagonal similarity).
ORDER_METHODS = (
    "herding", "kcenter", "contextual_diversity", "craig", "gradmatch", "glister",
    "facility_location", "graph_cut", "log_det",
)  # fmt: skip
GRADIENT_METHODS = ("craig", "gradmatch")  # pairwise entries over last-layer gradient embeddings


def dataset_size(entry: dict[str, Any]) -> tuple[int, int, int]:
    """(train samples, test samples, values per sample) of a dataset entry."""
    if entry.get("source") == "toy2d":
        return int(entry.get("n_train", 1200)), int(entry.get("n_test", 400)), 2
    return SOURCES.get(entry.get("source", ""), (1_200, 400, 64))


@dataclass(frozen=True)
class Shape:
    """The sizes a score job's cost depends on."""

    n: int  # training samples
    classes: int
    features: int  # penultimate width d
    values: int  # input values per sample (C × H × W)
    largest_class: int


@dataclass(frozen=True)
class Estimate:
    """Peak host bytes and CPU seconds of one score job, and what dominates each."""

    mem_bytes: float
    seconds: float
    mem_detail: str
    time_detail: str


def shape_of(config: dict[str, Any], dataset: str, proxy: str) -> Shape:
    """The sizes of a (dataset, proxy) pair from the config."""
    entry = config["datasets"][dataset]
    n_train, _, values = dataset_size(entry)
    source = entry.get("source", "")
    if source == "toy2d":
        classes, largest = 2, math.ceil(n_train / 2)
    else:
        classes = CLASSES.get(source, 10)
        largest = LARGEST_CLASS.get(source, math.ceil(1.2 * n_train / classes))
    model = config["models"][config["proxies"][proxy]["model"]]
    kwargs = model.get("kwargs") or {}
    if model["arch"] == "mlp" and kwargs.get("hidden"):
        features = int(kwargs["hidden"][-1])
    elif model["arch"] == "small_cnn":
        features = 2 * int(kwargs.get("width", 32))
    elif model["arch"] == "resnet18":
        features = 8 * int(kwargs.get("width", 64))
    else:
        features = FEATURES.get(model["arch"], 512)
    return Shape(n_train, classes, features, values, min(largest, n_train))


def _gb(value: float) -> str:
    """Bytes as a short GB figure."""
    return f"{value / 1e9:.3g} GB"


def _hours(seconds: float) -> str:
    """Seconds as a short duration."""
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.3g} min"


def greedy_estimate(
    method: str, params: dict[str, Any], shape: Shape, limits: dict[str, Any]
) -> Estimate:
    """Memory and time of one greedy set method over all its groups."""
    per_class = bool(params.get("per_class", True)) or method == "craig"
    groups = shape.classes if per_class else 1
    n = shape.largest_class if per_class else shape.n
    budget = params.get("budget")
    k = n if budget is None else min(n, max(1, math.ceil(budget * n)))
    d, c = shape.features, shape.classes
    width = d + 1 + c if method in GRADIENT_METHODS else d
    gemm, stream = limits["cpu_gflops"] * 1e9, limits["cpu_gbps"] * 1e9
    inputs = shape.n * (d + c) * 4 + 2 * n * (d + 1 + c) * B
    memory = {"inputs": inputs}
    work = {"steps": groups * k * STEP_SECONDS + groups * k * 6 * n * B / stream}
    if method != "contextual_diversity":  # the others read pairwise rows
        if n <= DENSE_LIMIT:
            memory["pairwise matrix (n^2 float64)"] = n * n * B
            work["pairwise matrix"] = groups * 2 * n * n * width / gemm
        else:
            work[f"a {n:,} x {width} matrix-vector product per step"] = (
                groups * k * n * width * B / stream
            )
    else:  # contextual diversity precomputes its distances where that is cheaper (k C >= 64 n)
        memory["probabilities"] = 3 * n * c * B
        if n <= DENSE_LIMIT and k * c >= 64 * n:
            memory["pairwise matrix (n^2 float64)"] = n * n * B
            work["pairwise matrix"] = groups * 4 * n * n * c / gemm
        else:
            work["two probability matrix-vector products per step"] = (
                groups * k * 2 * n * c * B / stream
            )
    if method in ("log_det", "gradmatch"):
        memory[f"{k:,} x {n:,} float64 factor"] = k * n * B
        nnls = method == "gradmatch" and params.get("nnls", True)
        if nnls:  # two k x k arrays, and two more while the NNLS factor is rebuilt
            memory[f"{k:,} x {k:,} NNLS systems"] = 4 * k * k * B
        work["incremental factor updates"] = (
            groups * (1.0 if nnls else 0.5) * k * k * n * B / stream
        )
    if method == "glister":
        memory["validation logits"] = 5 * n * c * B
        work["validation gradient per step"] = groups * k * 4 * n * (d + 1) * c / gemm
    if method == "facility_location" or method == "craig":
        work["lazy re-evaluations (>= 16 rows per step)"] = groups * k * 16 * n * B / stream
    return _estimate(memory, work)


def cal_estimate(params: dict[str, Any], shape: Shape, limits: dict[str, Any]) -> Estimate:
    """CAL: k nearest neighbours by blocked distance products, per class or over all samples."""
    per_class = bool(params.get("per_class", True))
    n = shape.largest_class if per_class else shape.n
    groups = shape.classes if per_class else 1
    gemm = limits["cpu_gflops"] * 1e9
    memory = {"inputs": shape.n * (shape.features + shape.classes) * 4, "blocks": 2**22 * B * 4}
    work = {"neighbour distances": groups * 2 * n * n * shape.features / gemm}
    return _estimate(memory, work)


def deepfool_estimate(params: dict[str, Any], shape: Shape, limits: dict[str, Any]) -> Estimate:
    """DeepFool: the candidate-class input gradients of one batch (on the job's device)."""
    top = params.get("top_classes")
    candidates = shape.classes if top is None else min(int(top), shape.classes)
    batch = int(params.get("batch_size", 256))
    memory = {
        f"{batch} x {candidates} candidate-class input gradients": (
            batch * candidates * shape.values * 4 * 2
        )
    }
    return _estimate(memory, {})


def sensitivity_estimate(shape: Shape, levels: int, limits: dict[str, Any]) -> Estimate:
    """ISEF, FGSM-CS, PSS: predictions in memory, probabilities read in 8 MiB blocks."""
    memory = {
        "predictions and per-sample parts": shape.n * (levels + 8) * B,
        "probability blocks (float32 read, float64 work)": 8 * 2**20 * 10,
    }
    work = {"table pass": shape.n * levels * shape.classes * 4 * 10 / (limits["cpu_gbps"] * 1e9)}
    return _estimate(memory, work)


def pointwise_estimate(shape: Shape, epochs: int) -> Estimate:
    """Uncertainty and training-dynamics scores: every epoch's per-sample table in memory."""
    return _estimate(
        {"dynamics tables": shape.n * epochs * 6 * B * 2, "probe": shape.n * shape.classes * 4},
        {"table pass": shape.n * epochs * 1e-7},
    )


def _estimate(memory: dict[str, float], work: dict[str, float]) -> Estimate:
    """Sum the terms; name the largest of each."""
    mem_key = max(memory, key=memory.get)
    time_key = max(work, key=work.get) if work else "none"
    return Estimate(
        BASE_BYTES + sum(memory.values()),
        sum(work.values()),
        f"{_gb(memory[mem_key])} for the {mem_key}",
        f"{_hours(work[time_key])} for the {time_key}" if work else "seconds",
    )


def score_estimate(config: dict[str, Any], dataset: str, proxy: str, score: str) -> Estimate:
    """The estimate of one score job (a `scores` entry on a dataset's proxy)."""
    return entry_estimate(config, dataset, proxy, config["scores"][score])


def entry_estimate(
    config: dict[str, Any], dataset: str, proxy: str, entry: dict[str, Any]
) -> Estimate:
    """The estimate of a score method's entry (method and parameters) on a dataset's proxy."""
    proxy_entry = config["proxies"][proxy]
    epochs = proxy_entry.get("epochs") or config["regimes"][proxy_entry["regime"]]["epochs"]
    ks = (proxy_entry.get("sparse_fgsm") or {}).get("ks", [1, 4, 16, 64])
    shape = shape_of(config, dataset, proxy)
    return estimate(entry, shape, config["limits"], epochs=int(epochs), levels=1 + len(ks))


def estimate(
    entry: dict[str, Any], shape: Shape, limits: dict[str, Any], *, epochs: int, levels: int
) -> Estimate:
    """The estimate of a score method's entry at a shape (`epochs` of dynamics, table `levels`)."""
    method = entry["method"]
    if method in ORDER_METHODS:
        return greedy_estimate(method, entry, shape, limits)
    if method == "cal":
        return cal_estimate(entry, shape, limits)
    if method == "deepfool":
        return deepfool_estimate(entry, shape, limits)
    if method in ("isef", "fgsm_cs", "pss"):
        return sensitivity_estimate(shape, levels, limits)
    return pointwise_estimate(shape, epochs)


def _fits(limits: dict[str, Any], method: str, est: Estimate) -> bool:
    """Whether an estimate fits the node (a GPU's memory for DeepFool)."""
    memory = limits["gpu_mem_gb"] if method == "deepfool" else limits["mem_gb"]
    return est.mem_bytes <= memory * 1e9 and est.seconds <= limits["hours"] * 3600


def _fixes(
    config: dict[str, Any], dataset: str, proxy: str, entry: dict[str, Any], fraction: float | None
) -> str:
    """The settings of the entry that bring its estimate within the limits (each one checked)."""
    method = entry["method"]
    candidates: list[tuple[str, dict[str, Any]]] = []
    if method == "deepfool":
        if entry.get("top_classes") is None or entry["top_classes"] > 10:
            candidates.append(("top_classes: 10 (the DeepFool reference code's num_classes)",
                               {"top_classes": 10}))  # fmt: skip
        batch = int(entry.get("batch_size", 256))
        while batch > 1:
            batch //= 2
            candidates.append((f"batch_size: {batch}", {"batch_size": batch}))
    elif method == "cal" or (method in ORDER_METHODS and method != "craig"):
        if not entry.get("per_class", True):
            candidates.append(("per_class: true", {"per_class": True}))
    if method in ORDER_METHODS and entry.get("budget") is None and fraction and fraction < 1:
        note = " (the largest fraction selected from it)"
        candidates.append((f"budget: {fraction:g}{note}", {"budget": fraction}))
        if not entry.get("per_class", True) and method != "craig":
            candidates.append((f"per_class: true and budget: {fraction:g}",
                               {"per_class": True, "budget": fraction}))  # fmt: skip
    fitting = []
    for text, change in candidates:
        if _fits(
            config["limits"], method, entry_estimate(config, dataset, proxy, {**entry, **change})
        ):
            fitting.append(text)
            if method == "deepfool":
                break  # the first (largest) batch size that fits
    if fitting:
        return "set " + " or ".join(fitting)
    tried = f" (tried {', '.join(t for t, _ in candidates)})" if candidates else ""
    return (
        f"no setting of this method fits these limits{tried}: raise limits if your nodes are "
        "larger or faster, or leave the method out"
    )


def score_jobs(config: dict[str, Any]) -> dict[tuple[str, str, str], float | None]:
    """Every (dataset, proxy, score) the studies compute, and the largest fraction kept from it.

    A selection that keeps the last picks (high, bottom, hybrid) reads the whole order: 1.
    """
    jobs: dict[tuple[str, str, str], float | None] = {}

    def add(dataset: str, proxy: str | None, score: str, fraction: float | None) -> None:
        if proxy is None:
            return
        key = (dataset, proxy, score)
        known = jobs.get(key)
        jobs[key] = fraction if known is None else max(known, fraction or 0.0)

    for study in config["studies"].values():
        for name in study["selections"]:
            selection = config["selections"][name]
            if selection["keep"] != "random":
                proxy = selection.get("proxy", study.get("proxy"))
                first_picks = selection["keep"] in ("top", "low")
                fraction = max(study["fractions"]) if first_picks else 1.0
                add(study["dataset"], proxy, selection["score"], fraction)
        for kind, figure in (study.get("figures") or {}).items():
            proxies = figure.get("proxies") if kind == "proxy_agreement" else [study.get("proxy")]
            scores = figure.get("scores", [figure["score"]] if "score" in figure else [])
            for proxy in proxies:
                for score in scores:
                    add(study["dataset"], proxy, score, figure.get("fraction"))
    return jobs


def check(config: dict[str, Any]) -> list[str]:
    """Every score job whose estimate exceeds `limits`, and selections that misuse pick orders."""
    limits = config["limits"]
    problems = []
    for (dataset, proxy, score), fraction in sorted(score_jobs(config).items()):
        entry = config["scores"][score]
        method = entry["method"]
        est = score_estimate(config, dataset, proxy, score)
        where = f"scores.{score} (method {method}) on datasets.{dataset} with proxies.{proxy}"
        memory_limit = limits["gpu_mem_gb"] if method == "deepfool" else limits["mem_gb"]
        memory_key = "limits.gpu_mem_gb" if method == "deepfool" else "limits.mem_gb"
        if est.mem_bytes > memory_limit * 1e9:
            problems.append(
                f"{where}: needs about {_gb(est.mem_bytes)} ({est.mem_detail}) but "
                f"{memory_key} = {memory_limit}; {_fixes(config, dataset, proxy, entry, fraction)}"
            )
        if est.seconds > limits["hours"] * 3600:
            problems.append(
                f"{where}: needs about {_hours(est.seconds)} of CPU time ({est.time_detail}) "
                f"at limits.cpu_gflops = {limits['cpu_gflops']} and limits.cpu_gbps = "
                f"{limits['cpu_gbps']}, over limits.hours = {limits['hours']}; "
                f"{_fixes(config, dataset, proxy, entry, fraction)}"
            )
    problems += order_misuse(config)
    return problems


def order_misuse(config: dict[str, Any]) -> list[str]:
    """Selections that read past a budget or compare per-class positions across classes."""
    problems = []
    for study_name, study in config["studies"].items():
        for name in study["selections"]:
            selection = config["selections"][name]
            if selection["keep"] == "random" or "score" not in selection:
                continue
            entry = config["scores"][selection["score"]]
            if entry["method"] not in ORDER_METHODS:
                continue
            budget = entry.get("budget")
            # Orders keep their first picks at the low end (top = low); high, bottom and the
            # hybrid's hard share read the last picks, which a budget leaves to the tail.
            over = [f for f in study["fractions"] if budget is not None and f > budget]
            if selection["keep"] in ("top", "low") and over:
                problems.append(
                    f"studies.{study_name}: selections.{name} keeps fraction(s) {over} of "
                    f"scores.{selection['score']}, whose greedy order runs for only budget = "
                    f"{budget} of each group (the rest is a one-shot ranking); set "
                    f"scores.{selection['score']}.budget: {max(over):g} or more"
                )
            elif selection["keep"] in ("high", "bottom", "hybrid") and budget not in (None, 1):
                problems.append(
                    f"studies.{study_name}: selections.{name} keeps the last picks of "
                    f"scores.{selection['score']} (keep: {selection['keep']}), but with budget = "
                    f"{budget} they are a one-shot ranking, not greedy picks; set "
                    f"scores.{selection['score']}.budget: null"
                )
            per_class = entry.get("per_class", True) or entry["method"] == "craig"
            if per_class and not selection.get("balanced", True):
                problems.append(
                    f"selections.{name}: balanced: false with scores.{selection['score']} "
                    f"({entry['method']}, per_class: true): positions in per-class pick orders "
                    f"are not comparable across classes; set balanced: true, or per_class: false "
                    f"on scores.{selection['score']}"
                )
    return problems


__all__ = [
    "CLASSES",
    "DENSE_LIMIT",
    "FEATURES",
    "ORDER_METHODS",
    "Estimate",
    "Shape",
    "check",
    "entry_estimate",
    "estimate",
    "order_misuse",
    "score_estimate",
    "score_jobs",
    "shape_of",
]
