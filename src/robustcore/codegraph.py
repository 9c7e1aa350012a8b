"""Which package code a CLI subcommand runs, read from the source (stdlib only, no imports run).

The workflow gives every rule a fingerprint of exactly that code, so a job is stale when the code
it runs changes and only then; tests use the same walk to check that each rule's conda env lists
every third-party module it imports.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


@cache
def _parse(source: str, filename: str) -> ast.Module:
    """The syntax tree of a source text (cached: the workflow asks once per rule)."""
    return ast.parse(source, filename)


def _parsed(path: Path) -> ast.Module:
    """A source file's syntax tree, as the file reads now."""
    return _parse(path.read_text(), str(path))


@cache
def modules(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _import_targets(nodes: list[ast.AST], name: str, is_package: bool) -> set[str]:
    """Dotted names imported anywhere under `nodes` (`from a import b` gives a and a.b)."""
    targets: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
    return targets


def _package_edges(name: str, targets: set[str], known: dict[str, Path]) -> set[str]:
    """The package modules among `targets`, with the parent packages importing them runs."""
    edges = set()
    for target in targets:
        if target not in known:
            continue
        edges.add(target)
        parts = target.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent in known and not (name == parent or name.startswith(parent + ".")):
                edges.add(parent)
    edges.discard(name)
    return edges


def imports_of(name: str, root: Path = PACKAGE_DIR) -> tuple[frozenset[str], frozenset[str]]:
    """(package modules, third-party top-level names) one module imports, in functions too."""
    path = modules(root)[name]
    targets = _import_targets([_parsed(path)], name, path.name == "__init__.py")
    external = {t.split(".")[0] for t in targets if t and t.split(".")[0] != PACKAGE}
    return frozenset(_package_edges(name, targets, modules(root))), frozenset(external)


def closure(start: set[str], root: Path = PACKAGE_DIR) -> set[str]:
    """Every package module reachable from `start` through imports (`start` included)."""
    seen: set[str] = set()
    todo = [m for m in start if m in modules(root)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports_of(name, root)[0] - seen)
    return seen


def _cli_functions(subcommand: str, root: Path) -> list[ast.FunctionDef]:
    """The CLI handler `cmd_<subcommand>`, `main`, and the cli helpers they call, transitively.

    `build_parser` is left out: it defines every subcommand's options, and the rules pass theirs
    explicitly, so an option added to one subcommand does not make every job stale.
    """
    tree = _parsed(modules(root)[f"{PACKAGE}.cli"])
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    handler = f"cmd_{subcommand}"
    if handler not in functions:
        handlers = sorted(n[4:] for n in functions if n.startswith("cmd_"))
        raise KeyError(f"robustcore has no subcommand {subcommand!r}; expected one of {handlers}")
    found: dict[str, ast.FunctionDef] = {}
    todo = [handler, "main"]
    while todo:
        fn = functions[todo.pop()]
        if fn.name in found:
            continue
        found[fn.name] = fn
        called = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id in functions}
        todo.extend(called - set(found) - {"build_parser"})
    return [found[k] for k in sorted(found)]


def subcommand_modules(
    subcommand: str, root: Path = PACKAGE_DIR
) -> tuple[tuple[str, ...], frozenset[str]]:
    """(package modules, third-party top-level names) that `robustcore <subcommand>` imports."""
    cli = f"{PACKAGE}.cli"
    tree = _parsed(modules(root)[cli])
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    nodes: list[ast.AST] = [*top_level, *_cli_functions(subcommand, root)]
    targets = _import_targets(nodes, cli, False)
    package = closure(_package_edges(cli, targets, modules(root)) | {PACKAGE}, root)
    external = {t.split(".")[0] for t in targets if t and t.split(".")[0] != PACKAGE}
    for name in package:
        external |= imports_of(name, root)[1]
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return tuple(sorted(package)), frozenset(external - stdlib)


def fingerprint(subcommand: str, root: Path = PACKAGE_DIR) -> str:
    """A short hash of the code `robustcore <subcommand>` runs: its handler and every module."""
    digest = hashlib.sha256()
    cli_source = modules(root)[f"{PACKAGE}.cli"].read_text()
    for fn in _cli_functions(subcommand, root):
        digest.update(ast.get_source_segment(cli_source, fn).encode())
    for name in subcommand_modules(subcommand, root)[0]:
        digest.update(name.encode() + b"\0" + modules(root)[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]
