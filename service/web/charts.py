"""Plotly figures for the dashboard, as plain ``{"data": ..., "layout": ...}`` dicts.

Built here rather than in the browser so each chart is a pure function of store records that a
test can check, and the page's script only hands the dict to ``Plotly.newPlot``. Every chart of
an experiment colours a domain the same way (``domain_colors``), names its axes with units, and
keeps plotly's own hover and PNG download.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from plotly.colors import qualitative

__all__ = [
    "best_so_far",
    "domain_colors",
    "importance_chart",
    "losses_chart",
    "metric_curves",
    "oof_chart",
    "parallel_chart",
    "readable",
    "recommendation_chart",
    "weights_area_chart",
]

Figure = dict[str, Any]

# 34 distinct colours before any repeats: plotly's default ten, then Dark24.
PALETTE: tuple[str, ...] = (*qualitative.Plotly, *qualitative.Dark24)
FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 13}


MANY = 8
"""Above this many legend entries, bars or axes, a chart rearranges itself (see ``readable``)."""


def readable(figure: Figure) -> Figure:
    """The figure laid out for the number of things it shows, so 17 domains stay legible: a
    short legend above the plot (not over the x title), a long one in a column on the right
    with the chart grown to hold it, slanted labels under many bars, and slanted axis names
    with room above a parallel-coordinates chart of many dimensions."""
    layout = dict(figure["layout"])
    data = figure["data"]
    legend = layout.get("legend")
    entries = sum(1 for trace in data if trace.get("showlegend", True) is not False)
    if legend and layout.get("showlegend", True) is not False:
        if entries > MANY:
            layout["legend"] = {
                "orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top",
                "font": {"size": 11},
            }  # fmt: skip
            layout["height"] = 110 + 19 * entries
        else:
            layout["legend"] = {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02,
                                "yanchor": "bottom"}  # fmt: skip
    bars = [len(t["x"]) for t in data if t.get("type") == "bar" and t.get("orientation") != "h"]
    if bars and max(bars) > MANY and "xaxis" in layout:
        layout["xaxis"] = {**layout["xaxis"], "tickangle": -45}
    for trace in data:
        if trace.get("type") == "parcoords" and len(trace["dimensions"]) > MANY:
            trace.update(
                labelangle=-30,
                labelside="top",
                labelfont={"size": 11},
                rangefont={"size": 9},
                tickfont={"size": 10},
            )
            layout["margin"] = {**layout.get("margin", {}), "t": 140}
    return {"data": data, "layout": layout}


def domain_colors(domains: Sequence[str]) -> dict[str, str]:
    """A colour per domain by its position in the experiment (stable across every chart)."""
    return {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(domains)}


def _layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "font": FONT,
        "margin": {"l": 64, "r": 16, "t": 24, "b": 56},
        "xaxis": {"title": {"text": x_title}, "automargin": True},
        "yaxis": {"title": {"text": y_title}, "automargin": True},
        "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.2},
        **extra,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def oof_chart(
    oof: Sequence[Mapping[str, Any]], objective_label: str, *, coverage: float = 0.8
) -> Figure:
    """Out-of-fold predicted against actual, with the band that holds ``coverage`` of the
    out-of-fold errors around the diagonal (what the recommendation's interval is built on)."""
    actual = [float(o["actual"]) for o in oof]
    predicted = [float(o["predicted"]) for o in oof]
    errors = sorted(abs(a - p) for a, p in zip(actual, predicted, strict=True))
    half = errors[min(len(errors) - 1, int(coverage * len(errors)))] if errors else 0.0
    low = min([*actual, *predicted], default=0.0)
    high = max([*actual, *predicted], default=1.0)
    pad = (high - low) * 0.03 or 0.01
    line = [low - pad, high + pad]
    return {
        "data": [
            {
                "type": "scatter",
                "x": [*line, *line[::-1]],
                "y": [line[0] + half, line[1] + half, line[1] - half, line[0] - half],
                "mode": "lines",
                "fill": "toself",
                "fillcolor": "rgba(99,110,250,0.12)",
                "line": {"width": 0},
                "hoverinfo": "skip",
                "name": f"{coverage:.0%} of errors (±{half:.4g})",
            },
            {
                "type": "scatter",
                "x": line,
                "y": line,
                "mode": "lines",
                "line": {"color": "#888", "dash": "dot"},
                "hoverinfo": "skip",
                "name": "predicted = actual",
            },
            {
                "type": "scattergl" if len(oof) > 2000 else "scatter",
                "x": actual,
                "y": predicted,
                "mode": "markers",
                "marker": {"size": 6, "color": "#636efa", "opacity": 0.75},
                "text": [str(o["run_id"]) for o in oof],
                "hovertemplate": "run %{text}<br>actual %{x:.4f}<br>predicted %{y:.4f}"
                "<extra></extra>",
                "name": "runs (out of fold)",
            },
        ],
        "layout": _layout(f"actual {objective_label}", "predicted (out of fold)"),
    }


def importance_chart(importance: Mapping[str, float], colors: Mapping[str, str]) -> Figure:
    ordered = sorted(importance.items(), key=lambda kv: kv[1])
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "x": [v for _, v in ordered],
                "y": [d for d, _ in ordered],
                "marker": {"color": [colors.get(d, "#636efa") for d, _ in ordered]},
                "hovertemplate": "%{y}: %{x:.3f}<extra></extra>",
                "name": "importance",
            }
        ],
        "layout": _layout("importance (share of the model's total)", "domain", showlegend=False),
    }


def recommendation_chart(
    recommended: Mapping[str, float],
    prior: Mapping[str, float],
    colors: Mapping[str, str],
) -> Figure:
    domains = list(recommended)
    return {
        "data": [
            {
                "type": "bar",
                "x": domains,
                "y": [recommended[d] for d in domains],
                "marker": {"color": [colors.get(d, "#636efa") for d in domains]},
                "name": "recommended",
                "hovertemplate": "%{x}: %{y:.3f} (recommended)<extra></extra>",
            },
            {
                "type": "bar",
                "x": domains,
                "y": [prior.get(d, 0.0) for d in domains],
                "marker": {
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": [colors.get(d, "#444") for d in domains], "width": 2},
                },
                "name": "prior",
                "hovertemplate": "%{x}: %{y:.3f} (prior)<extra></extra>",
            },
        ],
        "layout": _layout("domain", "weight (share of training tokens)", barmode="group"),
    }


def parallel_chart(
    domains: Sequence[str],
    runs: Sequence[tuple[Mapping[str, float], float]],
    objective_label: str,
) -> Figure:
    """The mixture space: one line per completed run, coloured by its objective."""
    values = [objective for _, objective in runs]
    dimensions = [
        {"label": d, "values": [w.get(d, 0.0) for w, _ in runs], "range": [0, 1]} for d in domains
    ]
    dimensions.append({"label": objective_label, "values": values})
    return {
        "data": [
            {
                "type": "parcoords",
                "line": {
                    "color": values,
                    "colorscale": "Viridis",
                    "reversescale": True,
                    "showscale": True,
                    "colorbar": {"title": {"text": objective_label}},
                },
                "dimensions": dimensions,
            }
        ],
        "layout": {"font": FONT, "margin": {"l": 48, "r": 48, "t": 48, "b": 24}},
    }


def best_so_far(objectives: Sequence[float | None], direction: str) -> list[float | None]:
    """The best objective among the first n runs, for each n (None until one completed)."""
    better = min if direction == "minimize" else max
    best: float | None = None
    out: list[float | None] = []
    for value in objectives:
        if value is not None and math.isfinite(value):
            best = value if best is None else better(best, value)
        out.append(best)
    return out


def best_chart(objectives: Sequence[float | None], direction: str, objective_label: str) -> Figure:
    best = best_so_far(objectives, direction)
    counts = list(range(1, len(objectives) + 1))
    return {
        "data": [
            {
                "type": "scatter",
                "x": counts,
                "y": [_finite(v) for v in objectives],
                "mode": "markers",
                "marker": {"size": 4, "color": "#bbb"},
                "name": "run",
                "hovertemplate": "run %{x}: %{y:.4f}<extra></extra>",
            },
            {
                "type": "scatter",
                "x": counts,
                "y": best,
                "mode": "lines",
                "line": {"shape": "hv", "color": "#ef553b", "width": 2},
                "name": "best so far",
                "hovertemplate": "after %{x} runs: %{y:.4f}<extra></extra>",
            },
        ],
        "layout": _layout("runs (in creation order)", objective_label),
    }


def metric_curves(
    series: Mapping[str, Sequence[tuple[int, float, float, float]]], *, y_title: str = "value"
) -> Figure:
    """Loss against step, one line per metric; a shaded min-max band where downsampled."""
    data: list[dict[str, Any]] = []
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        steps = [p[0] for p in points]
        if any(p[2] != p[3] for p in points):
            data.append(
                {
                    "type": "scatter",
                    "x": [*steps, *steps[::-1]],
                    "y": [p[3] for p in points] + [p[2] for p in points][::-1],
                    "fill": "toself",
                    "fillcolor": color,
                    "opacity": 0.15,
                    "line": {"width": 0},
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": name,
                    "name": f"{name} range",
                }
            )
        data.append(
            {
                "type": "scatter",
                "x": steps,
                "y": [p[1] for p in points],
                "mode": "lines",
                "line": {"color": color},
                "name": name,
                "legendgroup": name,
                "hovertemplate": f"{name}<br>step %{{x}}: %{{y:.4f}}<extra></extra>",
            }
        )
    layout = _layout("step", y_title)
    values = [p[1] for points in series.values() for p in points]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        # e.g. a learning rate of 3e-4 beside a gradient norm of 2: both stay readable
        layout["yaxis"] = {**layout["yaxis"], "type": "log"}
    return {"data": data, "layout": layout}


def weights_area_chart(
    history: Sequence[tuple[int, Mapping[str, float]]], colors: Mapping[str, str]
) -> Figure:
    """An online run's weights over time: each version holds from its step to the next."""
    steps = [step for step, _ in history]
    return {
        "data": [
            {
                "type": "scatter",
                "x": steps,
                "y": [w.get(d, 0.0) for _, w in history],
                "mode": "lines",
                "line": {"shape": "hv", "width": 0.5, "color": color},
                "stackgroup": "weights",
                "fillcolor": color,
                "name": d,
                "hovertemplate": f"{d}<br>from step %{{x}}: %{{y:.3f}}<extra></extra>",
            }
            for d, color in colors.items()
        ],
        "layout": _layout(
            "step",
            "weight (share of the batch)",
            yaxis={"title": {"text": "weight (share of the batch)"}, "range": [0, 1]},
            hovermode="x unified",
        ),
    }


def losses_chart(
    rounds: Sequence[tuple[int, Mapping[str, float]]], colors: Mapping[str, str], y_title: str
) -> Figure:
    """Per-domain losses reported at each feedback step."""
    names = list(colors) + sorted(
        {n for _, losses in rounds for n in losses} - set(colors), key=str
    )
    data = []
    for i, name in enumerate(names):
        xs = [step for step, losses in rounds if name in losses]
        if not xs:
            continue
        data.append(
            {
                "type": "scatter",
                "x": xs,
                "y": [losses[name] for _, losses in rounds if name in losses],
                "mode": "lines+markers",
                "marker": {"size": 4},
                "line": {"color": colors.get(name, PALETTE[(len(colors) + i) % len(PALETTE)])},
                "name": name,
                "hovertemplate": f"{name}<br>step %{{x}}: %{{y:.4f}}<extra></extra>",
            }
        )
    return {"data": data, "layout": _layout("step", y_title)}
