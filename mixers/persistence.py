"""Fits stored as data, never as pickles: a versioned JSON document, compressed.

Loading a pickle runs code chosen by whoever wrote the bytes, and an upgrade of mixopt,
scikit-learn or LightGBM can make a pickle unreadable. A stored fit is instead the fit's report
and the regressor's own state (``to_state``: LightGBM's model text, the laws' coefficients, the
GP's training set and hyper-parameters), rebuilt through public constructors
(``from_state``). A document whose format this version does not know raises ``UnreadableFit``
(a 409 telling the user to fit again), never an arbitrary error.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict
from typing import Any

from mixers.fitting import Candidate, CvScores, Fit, Noise, OutOfFold
from mixers.regressors import make_regressor
from mixopt.errors import Conflict

__all__ = ["FIT_FORMAT", "UnreadableFit", "dump_fit", "load_fit"]

FIT_FORMAT = "mixopt.fit.v1"
"""zlib-compressed UTF-8 JSON: ``{"format", "fit", "estimator": {"class", "params",
"state"}}``. A change to any regressor's state is a new format."""


class UnreadableFit(Conflict):
    """A stored fit this version cannot load: the user fits again."""

    title = "Fit unreadable"


def dump_fit(fit: Fit) -> bytes:
    """``fit`` as a data-only document (``TypeError`` if its regressor has no ``to_state``)."""
    estimator = fit.estimator
    if not hasattr(estimator, "to_state"):
        raise TypeError(f"regressor {fit.model!r} cannot be stored: it has no to_state()")
    document = {
        "format": FIT_FORMAT,
        "fit": {
            "model": fit.model,
            "requested": fit.requested,
            "names": list(fit.names),
            "cv": asdict(fit.cv),
            "candidates": [asdict(c) for c in fit.candidates],
            "importance": dict(fit.importance),
            "noise": asdict(fit.noise),
            "oof": [asdict(o) for o in fit.oof],
            "residual_quantiles": list(fit.residual_quantiles),
            "n_runs": fit.n_runs,
            "direction": fit.direction,
            "seed": fit.seed,
            "seconds": fit.seconds,
            "observed_lower": list(fit.observed_lower),
            "observed_upper": list(fit.observed_upper),
        },
        "estimator": {
            "class": type(estimator).__name__,
            "params": estimator.get_params(deep=False),
            "state": estimator.to_state(),
        },
    }
    return zlib.compress(json.dumps(document, allow_nan=True).encode())


def load_fit(data: bytes, stored_format: str | None = FIT_FORMAT) -> Fit:
    """The fit ``dump_fit`` stored, as recorded beside it under ``stored_format``;
    ``UnreadableFit`` for anything else. A pickle (``"pickle"``, or no format: what earlier
    versions wrote) is refused unread: loading it would run whatever code the bytes name."""
    if stored_format in (None, "pickle"):
        raise UnreadableFit(
            "it was stored by an earlier mixopt as a pickle, which this version never loads "
            "(unpickling runs whatever code the bytes name): fit again"
        )
    if stored_format != FIT_FORMAT:
        raise UnreadableFit(
            f"it is stored as {stored_format!r}; this version reads {FIT_FORMAT}: fit again"
        )
    try:
        document = json.loads(zlib.decompress(data))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableFit(f"the stored fit is not a {FIT_FORMAT} document: {exc}") from None
    found = document.get("format") if isinstance(document, dict) else None
    if found != FIT_FORMAT:
        raise UnreadableFit(f"the stored fit has format {found!r}, this version reads {FIT_FORMAT}")
    try:
        return _fit_from(document["fit"], document["estimator"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableFit(f"the stored fit cannot be read: {type(exc).__name__}: {exc}") from None


def _fit_from(fit: dict[str, Any], estimator: dict[str, Any]) -> Fit:
    cls = type(make_regressor(fit["model"], 0))
    if cls.__name__ != estimator["class"]:
        raise ValueError(
            f"model {fit['model']!r} is now a {cls.__name__}, not a {estimator['class']}"
        )
    return Fit(
        model=fit["model"],
        requested=fit["requested"],
        estimator=cls.from_state(estimator["params"], estimator["state"]),
        names=tuple(fit["names"]),
        cv=CvScores(**fit["cv"]),
        candidates=tuple(Candidate(**c) for c in fit["candidates"]),
        importance={str(k): float(v) for k, v in fit["importance"].items()},
        noise=Noise(**fit["noise"]),
        oof=tuple(OutOfFold(**o) for o in fit["oof"]),
        residual_quantiles=(
            float(fit["residual_quantiles"][0]),
            float(fit["residual_quantiles"][1]),
        ),
        n_runs=int(fit["n_runs"]),
        direction=fit["direction"],
        seed=int(fit["seed"]),
        seconds=float(fit["seconds"]),
        observed_lower=tuple(float(x) for x in fit["observed_lower"]),
        observed_upper=tuple(float(x) for x in fit["observed_upper"]),
    )
