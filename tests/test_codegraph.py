"""Code-aware staleness: a subcommand's fingerprint follows exactly the code it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from robustcore import codegraph

SUBCOMMANDS = [
    "prepare", "proxy", "score", "sensitivity", "coreset", "train", "evaluate", "report", "figure",
]  # fmt: skip


def _fingerprints(root: Path) -> dict[str, str]:
    return {sub: codegraph.fingerprint(sub, root) for sub in SUBCOMMANDS}


def _edited_copy(tmp_path: Path, name: str, module: str | None) -> Path:
    """A copy of the package with a comment appended to `module` (a path under the package)."""
    root = tmp_path / name / "robustcore"
    shutil.copytree(codegraph.PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    if module is not None:
        with open(root / module, "a") as handle:
            handle.write("# an appended comment\n")
    return root


@pytest.mark.parametrize(
    ("module", "stale"),
    [
        ("attacks.py", {"evaluate"}),  # the evaluation-only attacks
        ("perturb.py", {"evaluate", "train", "proxy"}),  # PGD: training and evaluation run it
        ("report/tables.py", {"report", "figure"}),
        ("select.py", {"coreset"}),
        ("scores/herding.py", {"score", "figure", "train", "proxy"}),  # ACS imports the registry
        ("regimes/trades.py", {"train", "proxy"}),
        ("io.py", set(SUBCOMMANDS)),
    ],
)
def test_editing_a_module_changes_exactly_the_subcommands_that_run_it(tmp_path, module, stale):
    before = _fingerprints(_edited_copy(tmp_path, "before", None))
    after = _fingerprints(_edited_copy(tmp_path, "after", module))
    assert {sub for sub in SUBCOMMANDS if before[sub] != after[sub]} == stale


def test_the_cli_handler_is_part_of_its_fingerprint_only(tmp_path):
    root = _edited_copy(tmp_path, "cli", None)
    before = _fingerprints(root)
    cli = root / "cli.py"
    cli.write_text(cli.read_text().replace('"""Select the', '"""Select  the', 1))
    changed = {sub for sub, value in _fingerprints(root).items() if value != before[sub]}
    assert changed == {"coreset"}


def test_subcommand_imports_are_read_from_the_source():
    modules, external = codegraph.subcommand_modules("evaluate")
    assert "robustcore.attacks" in modules and "robustcore.train" not in modules
    assert "pyautoattack" in external and "torch" in external and "json" not in external
    _, coreset_external = codegraph.subcommand_modules("coreset")
    assert "torch" not in coreset_external and "pulp" in coreset_external
    with pytest.raises(KeyError, match="no subcommand 'nope'"):
        codegraph.subcommand_modules("nope")
