"""What each dashboard page shows, read from the store: plain dicts for the templates.

The router only authenticates and renders; everything a page needs is gathered here so that a
page is one function of the store a test can call without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.operations import objective_value
from service.store import ExperimentRecord, RunRecord, Store
from service.store.base import every_page
from service.web import charts

__all__ = [
    "RUN_SORTS",
    "ExperimentFilter",
    "experiment_list",
    "objective_label",
    "offline_experiment",
    "online_experiment",
    "online_run",
    "run_page",
]

PAGE_SIZE = 50
CURVE_POINTS = 400
RUN_SORTS = ("id", "status", "objective", "updated")
RUN_STATUSES = ("pending", "running", "completed", "failed")


def objective_label(objective: Mapping[str, Any]) -> str:
    terms = objective["metrics"]
    if len(terms) == 1:
        name, weight = next(iter(terms.items()))
        return name if weight == 1 else f"{weight:g}·{name}"
    return f"objective ({len(terms)} metrics, {objective['direction']})"


def _prior(experiment: ExperimentRecord) -> dict[str, float]:
    return {d["name"]: float(d["prior"]) for d in experiment.domains}


def _domains(experiment: ExperimentRecord) -> list[str]:
    return [d["name"] for d in experiment.domains]


def _objective(experiment: ExperimentRecord, run: RunRecord) -> float | None:
    if run.status != "completed":
        return None
    value = objective_value(experiment.objective, run.metrics)
    return value if value is not None and math.isfinite(value) else None


def _readable(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {name: charts.readable(figure) for name, figure in figures.items()}


def _better(direction: str) -> Any:
    return min if direction == "minimize" else max


# --- the experiments list ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentFilter:
    q: str = ""
    mode: str | None = None
    runs: str | None = None
    """Only experiments with at least one run in this status."""
    archived: bool = False


def experiment_list(store: Store, wanted: ExperimentFilter) -> list[dict[str, Any]]:
    status = None if wanted.archived else "active"
    experiments = every_page(
        lambda cursor: store.list_experiments(status=status, limit=1000, cursor=cursor)
    )
    needle = wanted.q.strip().lower()
    chosen = [
        e
        for e in experiments
        if (not needle or needle in e.name.lower() or needle in e.method.lower() or needle == e.id)
        and (wanted.mode is None or e.mode == wanted.mode)
        and (wanted.runs is None or e.counts.get(wanted.runs, 0) > 0)
    ]
    activity = store.last_activity([e.id for e in chosen])
    rows = []
    for e in chosen:
        best: float | None = None
        if e.mode == "offline" and e.counts.get("completed", 0):
            values = [v for r in store.iter_runs(e.id) if (v := _objective(e, r)) is not None]
            best = _better(e.objective["direction"])(values) if values else None
        rows.append(
            {
                "experiment": e,
                "counts": {s: e.counts.get(s, 0) for s in RUN_STATUSES},
                "best": best,
                "last_activity": activity.get(e.id, e.updated_at),
            }
        )
    return rows


# --- an offline experiment ---------------------------------------------------------------------


def _sort_runs(
    runs: list[tuple[RunRecord, float | None]], sort: str, descending: bool
) -> list[tuple[RunRecord, float | None]]:
    def key(item: tuple[RunRecord, float | None]) -> Any:
        run, objective = item
        if sort == "status":
            return (run.status, int(run.id))
        if sort == "objective":
            # Runs without an objective sort last whichever the order.
            missing = objective is None
            value = 0.0 if objective is None else objective
            return (missing != descending, value, int(run.id))
        if sort == "updated":
            return (run.updated_at, int(run.id))
        return int(run.id)

    return sorted(runs, key=key, reverse=descending)


def runs_table(
    experiment: ExperimentRecord,
    runs: Sequence[RunRecord],
    *,
    sort: str,
    descending: bool,
    page: int,
) -> dict[str, Any]:
    scored = [(r, _objective(experiment, r)) for r in runs]
    ordered = _sort_runs(scored, sort if sort in RUN_SORTS else "id", descending)
    pages = max(1, math.ceil(len(ordered) / PAGE_SIZE))
    page = min(max(1, page), pages)
    start = (page - 1) * PAGE_SIZE
    return {
        "rows": ordered[start : start + PAGE_SIZE],
        "page": page,
        "pages": pages,
        "total": len(ordered),
        "sort": sort,
        "descending": descending,
    }


def offline_experiment(
    store: Store, experiment: ExperimentRecord, *, sort: str, descending: bool, page: int
) -> dict[str, Any]:
    domains = _domains(experiment)
    colors = charts.domain_colors(domains)
    label = objective_label(experiment.objective)
    direction = experiment.objective["direction"]
    runs = list(store.iter_runs(experiment.id))
    objectives = [_objective(experiment, r) for r in runs]
    completed = [
        (r, v) for r, v in zip(runs, objectives, strict=True) if v is not None and not r.excluded
    ]
    best_run = _better(direction)(completed, key=lambda item: item[1]) if completed else None
    fits = store.list_fits(experiment.id, limit=100, cursor=None).items
    latest = next((f for f in fits if f.status == "completed"), None)
    figures: dict[str, Any] = {}
    if completed:
        figures["parallel"] = charts.parallel_chart(
            domains, [(r.weights, v) for r, v in completed], label
        )
        figures["best"] = charts.best_chart(objectives, direction, label)
    recommendation = latest.recommendation if latest else None
    if latest is not None:
        if latest.report.get("oof"):
            figures["oof"] = charts.oof_chart(latest.report["oof"], label)
        if latest.report.get("importance"):
            figures["importance"] = charts.importance_chart(latest.report["importance"], colors)
    if recommendation:
        figures["recommendation"] = charts.recommendation_chart(
            recommendation["weights"], _prior(experiment), colors
        )
    return {
        "experiment": experiment,
        "domains": experiment.domains,
        "colors": colors,
        "objective_label": label,
        "runs": runs_table(experiment, runs, sort=sort, descending=descending, page=page),
        "latest_fit": latest,
        "fits": fits,
        "recommendation": recommendation,
        "best_run": best_run,
        "figures": _readable(figures),
        "whatif": {
            "domains": [
                {
                    "name": d["name"],
                    "min": float(d.get("min_weight", 0.0)),
                    "max": float(d.get("max_weight", 1.0)),
                    "prior": float(d["prior"]),
                    "color": colors[d["name"]],
                }
                for d in experiment.domains
            ],
            "start": (recommendation or {}).get("weights") or _prior(experiment),
            "can_predict": latest is not None,
        },
    }


# --- an online experiment and its runs ---------------------------------------------------------


def online_experiment(store: Store, experiment: ExperimentRecord) -> dict[str, Any]:
    runs = list(store.iter_runs(experiment.id))
    return {
        "experiment": experiment,
        "domains": experiment.domains,
        "colors": charts.domain_colors(_domains(experiment)),
        "runs": runs,
    }


def online_run(
    store: Store, experiment: ExperimentRecord, run: RunRecord, *, etag: str | None = None
) -> dict[str, Any]:
    """The online run page; ``etag``: its ``online_etag`` when the caller already read it."""
    colors = charts.domain_colors(_domains(experiment))
    versions = list(
        every_page(lambda cursor: store.weights_history(run.id, limit=1000, cursor=cursor))
    )
    live = [v for v in versions if not v.superseded]
    feedback = [
        f
        for f in every_page(
            lambda cursor: store.feedback_history(run.id, limit=1000, cursor=cursor)
        )
        if not f.superseded
    ]
    current = live[-1] if live else None
    train = [(f.step, f.body.get("train_losses") or {}) for f in feedback]
    evals = [
        (f.step, f.body.get("eval_losses") or {}) for f in feedback if f.body.get("eval_losses")
    ]
    return {
        "experiment": experiment,
        "run": run,
        "colors": colors,
        "current": current,
        "versions": len(versions),
        "feedback_rounds": len(feedback),
        "etag": etag or online_etag(store, run),
        "active": run.status in ("pending", "running"),
        "figures": _readable(
            {
                "weights": charts.weights_area_chart([(v.step, v.weights) for v in live], colors),
                "train": charts.losses_chart(train, colors, "train loss (nats per token)"),
                "eval": charts.losses_chart(evals, colors, "eval loss (nats per token)"),
            }
        ),
    }


def online_etag(store: Store, run: RunRecord) -> str:
    """Changes with every new weights version, feedback step and run status, and costs two
    small reads: the page's poll answers 304 without building the charts."""
    version = store.get_weights(run.id).version
    last = store.last_feedback(run.id)
    step = last.get("step", "") if last else ""
    return f'"v{version}-s{step}-{run.status}"'


# --- an offline run ----------------------------------------------------------------------------


def run_page(store: Store, experiment: ExperimentRecord, run: RunRecord) -> dict[str, Any]:
    colors = charts.domain_colors(_domains(experiment))
    series = store.metric_series(run.id, max_points=CURVE_POINTS)
    points = {
        name: [(p.step, p.value, p.low, p.high) for p in curve] for name, curve in series.items()
    }
    loss_like = {n: p for n, p in points.items() if "loss" in n}
    other = {n: p for n, p in points.items() if n not in loss_like}
    figures: dict[str, Any] = {}
    if loss_like:
        figures["losses"] = charts.metric_curves(loss_like, y_title="loss (nats per token)")
    if other:
        figures["other"] = charts.metric_curves(other)
    figures["weights"] = charts.importance_chart(run.weights, colors)
    figures["weights"]["layout"]["xaxis"]["title"]["text"] = "weight (share of training tokens)"
    return {
        "experiment": experiment,
        "run": run,
        "objective": _objective(experiment, run),
        "objective_label": objective_label(experiment.objective),
        "colors": colors,
        "figures": _readable(figures),
        "downsampled": any(len(p) >= CURVE_POINTS for p in points.values()),
    }


def age(moment: datetime | None, now: datetime) -> str:
    """``3 min ago``: how long since ``moment``, as people read it."""
    if moment is None:
        return "never"
    seconds = max(0.0, (now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"
