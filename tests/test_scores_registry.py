"""Every method is registered once, with the end its paper keeps, and the config schema agrees."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from robustcore.scores import REGISTRY

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

# The end each method's paper keeps; pinned so that a flipped direction fails loudly.
NATURAL = {
    "aign": "low",  # EasyCore keeps the easiest (lowest AIGN)
    "forgetting": "high",  # Toneva et al.: most forgotten are informative
    "el2n": "high",  # Paul et al.: keep high-error samples
    "grand": "high",
    "least_confidence": "high",
    "entropy": "high",
    "margin": "low",  # smallest top-2 margin = most uncertain
    "cal": "high",  # most contrastive
    "deepfool": "low",  # closest to the decision boundary
    "isef": "high",  # top-ranked = most vulnerable
    "fgsm_cs": "high",
    "pss": "high",
}
ORDER_METHODS = {
    "herding",
    "kcenter",
    "contextual_diversity",
    "craig",
    "gradmatch",
    "glister",
    "facility_location",
    "graph_cut",
    "log_det",
}


def test_registry_holds_every_method_with_its_natural_end():
    assert set(REGISTRY) == set(NATURAL) | ORDER_METHODS
    for name, natural in NATURAL.items():
        assert REGISTRY[name].natural == natural, name
        assert REGISTRY[name].kind == "score", name
    for name in ORDER_METHODS:
        # A pick order keeps its first picks: the lowest positions.
        assert REGISTRY[name].kind == "order" and REGISTRY[name].natural == "low", name


def test_schema_lists_every_method_and_its_parameters_with_the_same_defaults():
    entry = SCHEMA["properties"]["scores"]["additionalProperties"]
    assert set(entry["properties"]["method"]["enum"]) == set(REGISTRY)
    branches = {b["if"]["properties"]["method"]["const"] for b in entry["allOf"]}
    assert branches == set(REGISTRY)
    for name, method in REGISTRY.items():
        properties = dict(SCHEMA["$defs"]["methods"][name]["properties"])
        properties.pop("method")
        assert set(properties) == set(method.defaults), name
        for key, value in method.defaults.items():
            expected = list(value) if isinstance(value, tuple) else value
            assert properties[key].get("default") == expected, (name, key)


def test_workflow_knows_which_methods_read_the_sparse_fgsm_table():
    common = (REPO / "workflow/rules/common.smk").read_text()
    listed = re.search(r"SENSITIVITY_METHODS = \(([^)]*)\)", common).group(1)
    names = set(re.findall(r'"(\w+)"', listed))
    assert names == {n for n, m in REGISTRY.items() if "sensitivity" in m.needs}
