"""Fits stored as data, never as pickles: a versioned JSON document, compressed.

Loading a pickle runs code chosen by whoever wrote the bytes, and an upgrade of mixopt,
scikit-learn or LightGBM can make a pickle unreadable. A stored fit is instead the fit's report
and the regressor's own state (``to_state``: LightGBM's model text, the laws' coefficients, the
GP's training set and hyper-parameters), rebuilt through public constructors
(``from_state``). A per-metric fit (``PerMetricRegressor``) stores each member's state the
same way. A document whose format this version does not know raises ``UnreadableFit`` (a 409
telling the user to fit again), never an arbitrary error.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict
from typing import Any

from mixers.fitting import Candidate, CvScores, Fit, MetricModel, Noise, OutOfFold
from mixers.regressors import make_regressor
from mixers.regressors.per_metric import PerMetricRegressor
from mixopt.errors import Conflict

__all__ = ["FIT_FORMAT", "UnreadableFit", "dump_fit", "load_fit"]

FIT_FORMAT = "mixopt.fit.v1"
"""zlib-compressed UTF-8 JSON: ``{"format", "fit", "estimator": {"class", "params",
"state"}}``; a ``PerMetricRegressor``'s state is ``{"members": [estimator, ...]}`` (one
document like ``estimator`` per metric). A change to any regressor's state is a new format."""


class UnreadableFit(Conflict):
    """A stored fit this version cannot load: the user fits again."""

    title = "Fit unreadable"


def _estimator_document(estimator: Any, model: str) -> dict[str, Any]:
    if isinstance(estimator, PerMetricRegressor):
        state: Any = {
            "members": [
                _estimator_document(member, name)
                for member, name in zip(estimator.estimators_, estimator.models, strict=True)
            ]
        }
    elif hasattr(estimator, "to_state"):
        state = estimator.to_state()
    else:
        raise TypeError(f"regressor {model!r} cannot be stored: it has no to_state()")
    return {
        "class": type(estimator).__name__,
        "params": estimator.get_params(deep=False),
        "state": state,
    }


def _estimator_from(model: str, estimator: dict[str, Any]) -> Any:
    """The estimator a document of ``_estimator_document`` describes; ``model`` is the
    registered regressor it must be (ignored for a ``PerMetricRegressor``, whose members say)."""
    if estimator["class"] == PerMetricRegressor.__name__:
        params = estimator["params"]
        members = estimator["state"]["members"]
        if len(members) != len(params["models"]):
            raise ValueError(f"{len(members)} stored members for {len(params['models'])} metrics")
        return PerMetricRegressor.from_members(
            params,
            [
                _estimator_from(name, doc)
                for name, doc in zip(params["models"], members, strict=True)
            ],
        )
    cls = type(make_regressor(model, 0))
    if cls.__name__ != estimator["class"]:
        raise ValueError(f"model {model!r} is now a {cls.__name__}, not a {estimator['class']}")
    return cls.from_state(estimator["params"], estimator["state"])


def dump_fit(fit: Fit) -> bytes:
    """``fit`` as a data-only document (``TypeError`` if a regressor has no ``to_state``)."""
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
            "metric_models": [asdict(m) for m in fit.metric_models],
            "tied": list(fit.tied),
        },
        "estimator": _estimator_document(fit.estimator, fit.model),
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
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UnreadableFit(f"the stored fit cannot be read: {type(exc).__name__}: {exc}") from None


def _fit_from(fit: dict[str, Any], estimator: dict[str, Any]) -> Fit:
    return Fit(
        model=fit["model"],
        requested=fit["requested"],
        estimator=_estimator_from(fit["model"], estimator),
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
        # Absent from fits stored before per-metric fits existed.
        metric_models=tuple(MetricModel(**m) for m in fit.get("metric_models", [])),
        tied=tuple(str(name) for name in fit.get("tied", [])),
    )
