"""Counted work: the forward/backward sample-passes a loop does, per purpose, and its wall time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cost:
    """Work counted by the loop that does it: sample-passes per purpose, wall time, device.

    In a run of several processes the counts are the sum over them (`world_size`).
    """

    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)
    samples_perturbed: int = 0
    attack_steps: int = 0
    wall_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1  # processes that did the work (counts are their sum)

    def add(self, purpose: str, samples: int, backward: bool = True) -> None:
        """Count one forward (and backward) pass over `samples` samples for `purpose`."""
        self.forward[purpose] = self.forward.get(purpose, 0) + samples
        if backward:
            self.backward[purpose] = self.backward.get(purpose, 0) + samples

    def state(self, running_seconds: float = 0.0) -> dict[str, Any]:
        """Everything counted so far, for a checkpoint (wall time includes the running part)."""
        return {
            "forward": dict(self.forward),
            "backward": dict(self.backward),
            "samples_perturbed": self.samples_perturbed,
            "attack_steps": self.attack_steps,
            "wall_seconds": self.wall_seconds + running_seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue counting from a checkpoint's state."""
        self.forward, self.backward = dict(state["forward"]), dict(state["backward"])
        self.samples_perturbed = int(state["samples_perturbed"])
        self.attack_steps = int(state["attack_steps"])
        self.wall_seconds = float(state["wall_seconds"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary, with totals."""
        return {
            "forward_samples": dict(self.forward),
            "backward_samples": dict(self.backward),
            "forward_total": sum(self.forward.values()),
            "backward_total": sum(self.backward.values()),
            "samples_perturbed": self.samples_perturbed,
            "attack_steps": self.attack_steps,
            "wall_seconds": round(self.wall_seconds, 3),
            "device": self.device,
            "world_size": self.world_size,
        }
