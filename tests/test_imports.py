"""The package's import graph, imports inside functions included, has no cycles."""

from __future__ import annotations

from pathlib import Path

from robustcore import codegraph


def import_graph(root: Path = codegraph.PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the package modules it imports (codegraph's walk: functions and parents too)."""
    return {name: set(codegraph.imports_of(name, root)[0]) for name in codegraph.modules(root)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "robustcore.regimes.acs" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_function_level_and_parent_package_imports(tmp_path):
    """The checker itself: an import inside a function, through a package's __init__, is a cycle."""
    pkg = tmp_path / "robustcore"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from robustcore.sub import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("X = 1\n")
    (pkg / "top.py").write_text("def f():\n    from robustcore.sub.leaf import X\n    return X\n")
    (pkg / "low.py").write_text("import robustcore.top\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) is None
    assert graph["robustcore.top"] == {"robustcore.sub.leaf", "robustcore.sub"}
    # The leaf now imports `low` inside a function: leaf -> low -> top -> sub(.leaf) -> leaf.
    (pkg / "sub" / "leaf.py").write_text("def g():\n    from robustcore import low\n")
    graph = import_graph(pkg)
    cycle = find_cycle(graph)
    assert cycle is not None and "robustcore.low" in cycle and cycle[0] == cycle[-1]


# DESIGN.md's layers, leaves first: a module may import its own layer and earlier ones only.
LAYERS = [
    ["io", "cost", "precision", "hostsync", "codegraph", "scale", "jobcost"],
    ["runtime", "persample", "distributed"],
    ["data", "models", "perturb", "checkpoint", "probe", "select"],
    ["attacks"],
    ["sensitivity"],
    ["scores"],
    ["regimes"],
    ["train"],
    ["dynamics", "evaluate"],
    ["report"],
    ["cli", "warm", "__main__"],
]


def layer_of(module: str) -> int:
    """The DESIGN.md layer of a package module (its first name below robustcore)."""
    if module == "robustcore":
        return -1
    top = module.split(".")[1]
    for depth, names in enumerate(LAYERS):
        if top in names:
            return depth
    raise AssertionError(f"{module} is in no layer: add it to DESIGN.md and LAYERS")


def test_imports_follow_the_design_layers():
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports against DESIGN.md's layers: " + ", ".join(sorted(upward))
