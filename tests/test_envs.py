"""Every rule's conda env pins, exactly, each third-party package its subcommand imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from robustcore import codegraph

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"

# Import name -> the package names (pip or conda-forge) that provide it. An import missing here
# fails the test: add it with the package that really provides it, never guess from the name.
PACKAGES: dict[str, set[str]] = {
    "numpy": {"numpy"},
    "pandas": {"pandas"},
    "pyarrow": {"pyarrow"},
    "scipy": {"scipy"},
    "sklearn": {"scikit-learn"},
    "PIL": {"pillow"},
    "yaml": {"pyyaml"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "torch": {"torch", "pytorch"},
    "torchvision": {"torchvision"},
    "pulp": {"pulp"},
    "tqdm": {"tqdm"},
    "pyautoattack": {"pyautoattack"},
    "tabulate": {"tabulate"},
}
# Packages a module needs without importing them by name: pandas reads and writes the stages'
# parquet files through pyarrow, which robustcore.io never imports itself.
IMPLIED: dict[str, set[str]] = {"robustcore.io": {"pyarrow"}}


class Rule(NamedTuple):
    name: str
    source: str  # the .smk file, for messages
    env: Path | None
    subcommand: str | None
    kind: str | None  # `figure --kind <kind>`


def workflow_rules() -> list[Rule]:
    """Every rule of the Snakefile and workflow/rules/*.smk with its env, subcommand and kind."""
    rules = []
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        heads = list(re.finditer(r"^(?:rule|checkpoint) (\w+):", text, re.MULTILINE))
        ends = [head.start() for head in heads][1:] + [len(text)] if heads else []
        for head, end in zip(heads, ends, strict=True):
            body = text[head.end() : end]
            env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, re.MULTILINE)
            sub = re.search(r"python -m robustcore (\w+)", body)
            kind = re.search(r"--kind (\w+)", body)
            rules.append(
                Rule(
                    head.group(1),
                    str(path.relative_to(REPO)),
                    (path.parent / env.group(1)).resolve() if env else None,
                    sub.group(1) if sub else None,
                    kind.group(1) if kind else None,
                )
            )
    return rules


RULES = [rule for rule in workflow_rules() if rule.subcommand]


def env_packages(env: Path) -> tuple[dict[str, str], dict[str, Requirement]]:
    """The conda dependencies (name -> spec) and pip requirements (name -> requirement)."""
    conda: dict[str, str] = {}
    pip: dict[str, Requirement] = {}
    for dep in yaml.safe_load(env.read_text())["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                req = Requirement(line)
                pip[canonicalize_name(req.name)] = req
        else:
            name = re.split(r"[\s=<>!]", dep, maxsplit=1)[0]
            conda[canonicalize_name(name)] = dep
    return conda, pip


# -- which third-party modules a rule's job imports -------------------------------------------


def _not_at_import(test: ast.expr) -> bool:
    """An `if` test false on import: `TYPE_CHECKING`, or `__name__ == "__main__"`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _import_time(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes under `node` that run when it is imported: no function bodies, no guarded code."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Decorators and defaults run at definition; the body only when called.
            decorators = getattr(child, "decorator_list", [])
            defaults = [*child.args.defaults, *(d for d in child.args.kw_defaults if d)]
            for part in [*decorators, *defaults]:
                yield from _import_time(part)
        elif isinstance(child, ast.If) and _not_at_import(child.test):
            for part in child.orelse:
                yield from _import_time(part)
        else:
            yield from _import_time(child)


def _bindings(nodes: list[ast.AST], module: str) -> dict[str, str]:
    """Local name -> dotted target of the import statements among `nodes`."""
    bound = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                is_package = codegraph.modules()[module].name == "__init__.py"
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Name -> the top-level function, class or assignment (a dispatch table) defining it."""
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update((t.id, node) for t in targets if isinstance(t, ast.Name))
    return found


def job_imports(start: list[tuple[str, str | None]]) -> frozenset[str]:
    """Third-party top-level names reachable from (module, function or None for its import).

    Finer than codegraph (which takes every function of every module reached): it follows
    functions, classes and module-level tables through the names they reference, so one
    `figure --kind` job is not charged with the imports of the others. Calls on objects are not
    followed; the runtime test below backs this up where an env leaves packages out.
    """
    known = codegraph.modules()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in known.items()}
    top_level = {name: _definitions(tree) for name, tree in trees.items()}
    module_bound = {name: _bindings(list(_import_time(tree)), name) for name, tree in trees.items()}
    external: set[str] = set()
    seen: set[tuple[str, str | None]] = set()
    todo = list(start)

    def target(dotted: str) -> None:
        """An import of `dotted`: a third-party name, a package module, or a module's name."""
        top = dotted.split(".")[0]
        if top != codegraph.PACKAGE:
            if top not in stdlib:
                external.add(top)
            return
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            if ".".join(parts[:depth]) in known:
                todo.append((".".join(parts[:depth]), None))
        module, _, attr = dotted.rpartition(".")
        if dotted not in known and module in known:
            todo.append((module, attr))

    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        module, name = item
        if name is None:  # importing the module: its import-time statements and calls
            nodes = list(_import_time(trees[module]))
            bound = module_bound[module]
            refs = [n.func for n in nodes if isinstance(n, ast.Call)]
        elif name in top_level[module]:  # a function, class or table: everything in it
            todo.append((module, None))
            nodes = list(ast.walk(top_level[module][name]))
            bound = {**module_bound[module], **_bindings(nodes, module)}
            # A local variable or argument shadows the module's name (jobs.py: `run = ...`).
            local = {n.arg for n in nodes if isinstance(n, ast.arg)} | {
                n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            refs = [n for n in nodes if not (isinstance(n, ast.Name) and n.id in local)]
        else:  # a re-exported name or a variable
            if name in module_bound[module]:
                target(module_bound[module][name])
            continue
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target(alias.name)
            elif isinstance(node, ast.ImportFrom):
                for dotted in set(_bindings([node], module).values()):
                    target(dotted)
        for ref in refs:
            if isinstance(ref, ast.Name) and ref.id in top_level[module]:
                todo.append((module, ref.id))
            elif isinstance(ref, ast.Name) and ref.id in bound:
                target(bound[ref.id])
            elif (
                isinstance(ref, ast.Attribute)
                and isinstance(ref.value, ast.Name)
                and bound.get(ref.value.id) in known
            ):
                todo.append((bound[ref.value.id], ref.attr))
    return frozenset(external)


def figure_kinds() -> list[str]:
    """The kinds `robustcore figure` dispatches on (the JOBS table of report/jobs.py)."""
    tree = ast.parse(codegraph.modules()["robustcore.report.jobs"].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "JOBS":
            return [key.value for key in node.value.keys]
    raise AssertionError("robustcore/report/jobs.py has no JOBS table")


def figure_imports(kind: str) -> frozenset[str]:
    """Third-party names of `robustcore figure --kind <kind>`: the cli, report.jobs, the job."""
    # cmd_figure imports report.jobs and runs JOBS[kind]: start there, not at the whole table.
    cli, jobs = f"{codegraph.PACKAGE}.cli", f"{codegraph.PACKAGE}.report.jobs"
    return job_imports([(cli, None), (jobs, None), (jobs, kind)])


def rule_imports(rule: Rule) -> tuple[frozenset[str], tuple[str, ...]]:
    """(third-party names, package modules) the rule's job imports."""
    modules, external = codegraph.subcommand_modules(rule.subcommand)
    if rule.subcommand == "figure" and rule.kind is not None:
        # One handler runs every figure kind: only this kind's job counts.
        assert rule.kind in figure_kinds(), f"rule {rule.name}: unknown figure kind {rule.kind}"
        external = figure_imports(rule.kind)
    return external, modules


def required_packages(rule: Rule) -> dict[str, set[str]]:
    """What the rule's env must provide: import or reason -> the package names that satisfy it."""
    external, modules = rule_imports(rule)
    required = {}
    for name in sorted(external):
        if name not in PACKAGES:
            pytest.fail(
                f"rule {rule.name} ({rule.source}) imports {name!r}, which tests/test_envs.py "
                f"cannot map to a package: add {name!r} to PACKAGES and the package providing "
                f"it to {rule.env.relative_to(REPO) if rule.env else 'its env'}"
            )
        required[name] = PACKAGES[name]
    for module in modules:
        for package in IMPLIED.get(module, ()):
            required[f"{package} (for {module})"] = {package}
    return required


# -- the tests --------------------------------------------------------------------------------


def test_rules_are_read_from_the_workflow():
    by_name = {rule.name: rule for rule in RULES}
    assert len(RULES) >= 15
    assert by_name["evaluate_model"].subcommand == "evaluate"
    assert by_name["evaluate_model"].env == ENVS / "torch.yaml"
    proxy_agreement = by_name["plot_proxy_agreement"]
    assert proxy_agreement.env == ENVS / "report.yaml" and proxy_agreement.kind == "proxy_agreement"
    assert {r.env for r in RULES} == {ENVS / "torch.yaml", ENVS / "report.yaml"}


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_every_rule_env_lists_what_its_subcommand_imports(rule):
    assert rule.env is not None, f"rule {rule.name} ({rule.source}) runs robustcore without conda:"
    assert rule.env.is_file(), f"rule {rule.name}: {rule.env} not found"
    conda, pip = env_packages(rule.env)
    listed = set(conda) | set(pip)
    missing = {
        need: sorted(packages)
        for need, packages in required_packages(rule).items()
        if not packages & listed
    }
    assert not missing, (
        f"rule {rule.name} ({rule.source}) runs `robustcore {rule.subcommand}`, whose imports "
        f"need packages that {rule.env.relative_to(REPO)} does not list: "
        + "; ".join(f"{need}: one of {names}" for need, names in missing.items())
    )


def test_a_figure_kind_is_charged_with_its_own_imports_only():
    whole = codegraph.subcommand_modules("figure")[1]
    kinds = {kind: figure_imports(kind) for kind in figure_kinds()}
    assert all(found <= whole for found in kinds.values())
    # The walk follows imports inside functions, across modules (data, models, probe: torch),
    # and through tables (models.ARCHS: torchvision's ResNet-50)...
    for kind in ("hardness", "decision_boundary", "feature_projection"):
        assert {"torch", "torchvision"} <= kinds[kind], kind
    assert "matplotlib" in kinds["proxy_agreement"], "reached only through plots.pyplot()"
    # ...and leaves out what only the other kinds import.
    assert "torch" not in kinds["proxy_agreement"] | kinds["easy_hard_accuracy"]


ENV_FILES = sorted(ENVS.glob("*.yaml"))
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*")


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda path: path.name)
def test_every_env_is_locked_exactly(env):
    conda, pip = env_packages(env)
    python = re.fullmatch(r"python =(\d+\.\d+\.\d+)", conda.pop("python", ""))
    assert python, f"{env.name}: conda dependency `python =X.Y.Z` (exact) expected"
    header = re.search(r"^# Locked on .* with Python (\S+)\.$", env.read_text(), re.MULTILINE)
    assert header and header.group(1) == python.group(1), (
        f"{env.name}: python pin {python.group(1)} differs from the lock's Python; "
        f"rerun envs/lock.py {env.stem}"
    )
    conda.pop("pip", None)  # the installer of the pins below (conda-forge's current one)
    assert not conda, f"{env.name}: conda packages {sorted(conda)} are not locked; use pip pins"
    assert pip, f"{env.name}: no pip section"
    for req in pip.values():
        line = str(req).split(";")[0].replace(" ", "")
        assert PIN.fullmatch(line), f"{env.name}: {req} is not an exact `name==version` pin"
    # The lock is of envs/<env>.in: each of its requirements pinned within its range.
    spec = ENVS / f"{env.stem}.in"
    assert spec.is_file(), f"{env.name}: its requirements {spec.name} are missing"
    for line in spec.read_text().splitlines():
        if line.split("#")[0].strip():
            wanted = Requirement(line.split("#")[0])
            pinned = pip.get(canonicalize_name(wanted.name))
            assert pinned, f"{env.name}: {wanted.name} of {spec.name} not pinned; rerun lock.py"
            version = next(iter(pinned.specifier)).version
            assert wanted.specifier.contains(version, prereleases=True), (
                f"{env.name}: {wanted.name}=={version} outside {spec.name}'s {wanted.specifier}"
            )


# -- the report env, run: its figure jobs with only its packages importable ---------------------

BLOCKED_RUN = r"""
import importlib.abc, json, sys

blocked = set(json.loads(sys.argv[1]))

class NotInEnv(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the env)", name=name)
        return None

sys.meta_path.insert(0, NotInEnv())
from robustcore.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _scores(folder: Path, n: int) -> dict[str, Any]:
    """Fig. 3's inputs: two proxies' score files in two seeds."""
    rng = np.random.default_rng(0)
    files: dict[str, list[str]] = {}
    for proxy in ("cnn", "mlp"):
        for seed in (0, 1):
            path = folder / f"{proxy}{seed}.parquet"
            pd.DataFrame({"index": range(n), "score": rng.random(n)}).to_parquet(path)
            files.setdefault(proxy, []).append(str(path))
    return {"seeds": [0, 1], "fraction": 0.5, "scores": files}


def _evaluations(folder: Path, n: int) -> dict[str, Any]:
    """Fig. 6's inputs: proxies' test dynamics and two selections' evaluations in two seeds."""
    rng = np.random.default_rng(0)
    dynamics, evals = [], []
    for seed in (0, 1):
        run = folder / f"proxy{seed}"
        run.mkdir()
        for epoch in (1, 2):
            frame = pd.DataFrame({"index": range(n), "input_grad_norm": rng.random(n)})
            frame.to_parquet(run / f"test_epoch{epoch:03d}.parquet")
        dynamics.append(str(run))
        for selection in ("easy", "random"):
            path = folder / f"{selection}{seed}.json"
            tags = {"selection": selection, "fraction": 0.5, "seed": seed}
            path.write_text(json.dumps({"run": tags}))
            correct = pd.DataFrame({"index": range(n), "robust_correct": rng.random(n) < 0.5})
            correct.to_parquet(path.with_suffix(".parquet"))
            evals.append(str(path))
    return {
        "seeds": [0, 1], "selections": ["easy", "random"], "attack": "pgd", "bins": 2,
        "window": [1, None], "test_dynamics": dynamics, "evals": evals,
    }  # fmt: skip


FIGURE_INPUTS = {"proxy_agreement": _scores, "easy_hard_accuracy": _evaluations}
REPORT_FIGURES = [r for r in RULES if r.env == ENVS / "report.yaml" and r.subcommand == "figure"]


@pytest.mark.parametrize("rule", REPORT_FIGURES, ids=lambda rule: rule.name)
def test_report_env_runs_its_figure_jobs(rule, tmp_path):
    assert rule.kind in FIGURE_INPUTS, (
        f"rule {rule.name} runs figure --kind {rule.kind} in envs/report.yaml: add inputs for "
        "it to FIGURE_INPUTS so this test runs it with only that env's packages"
    )
    _, pip = env_packages(ENVS / "report.yaml")
    blocked = sorted(name for name, packages in PACKAGES.items() if not packages & set(pip))
    assert "torch" in blocked and "sklearn" in blocked
    (tmp_path / "in").mkdir()
    params = FIGURE_INPUTS[rule.kind](tmp_path / "in", 20)
    argv = ["figure", "--kind", rule.kind, "--params", json.dumps(params), "--out", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, json.dumps(blocked), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{rule.name} without {blocked}:\n{run.stderr[-3000:]}"
    assert (tmp_path / "figures" / f"{rule.kind}.png").is_file()
