"""Evaluators: score predictions per horizon and save the results; found by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libtraffic.evaluator.traffic_state_evaluator import TrafficStateEvaluator
from libtraffic.utils.registry import lookup

EVALUATORS: dict[str, type[TrafficStateEvaluator]] = {
    "TrafficStateEvaluator": TrafficStateEvaluator,
}


def get_evaluator(config: Mapping[str, Any]) -> TrafficStateEvaluator:
    """Build the evaluator named by ``config['evaluator']`` from the merged config."""
    name = config["evaluator"]
    cls = lookup(EVALUATORS, name, "evaluator", where="--evaluator / task_config.json")
    return cls(config)


__all__ = ["EVALUATORS", "TrafficStateEvaluator", "get_evaluator"]
