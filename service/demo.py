"""A small demo experiment, so that a fresh ``mixopt serve --demo`` has something to look at."""

from __future__ import annotations

import numpy as np

from mixopt import schemas
from mixopt.errors import Conflict
from service.operations import Operations, space_of

__all__ = ["DEMO_NAME", "load_demo"]

DEMO_NAME = "demo-5-domains"

_DOMAINS = [
    {"name": "web", "tokens": 600e9},
    {"name": "code", "tokens": 150e9},
    {"name": "papers", "tokens": 90e9},
    {"name": "books", "tokens": 60e9},
    {"name": "wiki", "tokens": 20e9, "max_weight": 0.3},
]


def _proxy_loss(weights: np.ndarray, rng: np.random.Generator) -> float:
    """A Data-Mixing-Law-shaped validation loss: each domain helps with diminishing returns."""
    gains = np.array([0.9, 0.5, 0.35, 0.3, 0.45])
    return float(3.0 + np.sum(gains * np.exp(-6.0 * weights)) + rng.normal(0, 0.005))


def load_demo(ops: Operations, *, runs: int = 24, completed: int = 16) -> str | None:
    """Create the demo experiment with proposals, some of them trained; None if it exists."""
    body = schemas.ExperimentCreate.model_validate(
        {
            "name": DEMO_NAME,
            "method": "regmix",
            "domains": _DOMAINS,
            "objective": {"metrics": {"val_loss/web": 1.0}, "direction": "minimize"},
            "config": {"seed": 7, "train_tokens": 100e9, "max_epochs": 4},
        }
    )
    try:
        experiment = ops.create_experiment(body)
    except Conflict:
        return None
    space = space_of(experiment)
    proposals = ops.propose(
        experiment.id, schemas.ProposalRequest(count=runs, request_id="demo-proposals")
    )
    rng = np.random.default_rng(7)
    for _ in proposals[:completed]:
        claimed = ops.store.claim(experiment.id, "demo-worker", 600)
        assert claimed is not None
        loss = _proxy_loss(space.to_array(claimed.weights), rng)
        ops.store.append_metrics(claimed.id, [("val_loss/web", 100, loss + 0.4)])
        ops.store.complete(claimed.id, {"val_loss/web": loss}, "demo-worker")
    return experiment.id
