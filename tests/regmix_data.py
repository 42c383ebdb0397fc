# ruff: noqa: N806 - X is the conventional name of a design matrix (scikit-learn)
"""The real RegMix swarm in ../shared/data/regmix, as the tests read it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "regmix"
TARGET = "metric/the_pile_pile_cc_val_loss"
WEIGHT_PREFIX = "train_the_pile_"


def load_regmix_losses(
    split: str,
) -> tuple[FloatArray, FloatArray, list[str], list[str], list[str]]:
    """(X, losses, domain names, loss metric names, run ids) of one split: every run's 13
    per-domain validation losses (columns of ``losses``, named as in the file), mixtures joined
    with losses on ``index``.

    The weights are as stored (rounded to 1e-3, so rows sum to 1 only within 1 %).
    """
    with (DATA / f"{split}_mixture_1m.csv").open() as f:
        mixtures = list(csv.DictReader(f))
    with (DATA / f"{split}_pile_loss_1m.csv").open() as f:
        losses = {row["index"]: row for row in csv.DictReader(f)}
    columns = [c for c in mixtures[0] if c != "index"]
    metrics = [c for c in next(iter(losses.values())) if c != "index"]
    X = np.array([[float(row[c]) for c in columns] for row in mixtures])
    V = np.array([[float(losses[row["index"]][m]) for m in metrics] for row in mixtures])
    names = [c.removeprefix(WEIGHT_PREFIX) for c in columns]
    return X, V, names, metrics, [f"{split}-{row['index']}" for row in mixtures]


def load_regmix(split: str) -> tuple[FloatArray, FloatArray, list[str], list[str]]:
    """(X, y, domain names, run ids) of one split, ``y`` the Pile-CC validation loss."""
    X, V, names, metrics, ids = load_regmix_losses(split)
    return X, V[:, metrics.index(TARGET)], names, ids


def regmix_splits() -> dict[str, Any]:
    """Both splits for a test module's fixture: ``X``, ``y``, ``names``, ``ids`` (train) and
    ``X_test``, ``y_test``; the test is skipped when the data is not beside the repository."""
    if not DATA.is_dir():
        pytest.skip(f"RegMix data not found at {DATA}")
    X, y, names, ids = load_regmix("train")
    X_test, y_test, test_names, _ = load_regmix("test")
    assert test_names == names
    return {"X": X, "y": y, "names": names, "ids": ids, "X_test": X_test, "y_test": y_test}
