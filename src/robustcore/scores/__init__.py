"""Per-sample scores computed from a proxy; each method declares which end its paper keeps."""

from __future__ import annotations

from robustcore.scores.dynamics import aign, read_dynamics

# Natural order: the end of the ranking the method's paper keeps ("low" = smallest scores).
NATURAL_ORDER: dict[str, str] = {"aign": "low"}
METHODS = tuple(NATURAL_ORDER)

__all__ = ["METHODS", "NATURAL_ORDER", "aign", "read_dynamics"]
