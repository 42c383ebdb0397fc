"""The dashboard's figures as data: what each chart is built from, before any browser."""

from __future__ import annotations

from typing import Any

import pytest

from service.web import charts


def test_a_domain_keeps_its_colour_and_domains_get_distinct_colours():
    domains = [f"d{i}" for i in range(17)]
    colours = charts.domain_colors(domains)
    assert len(set(colours.values())) == 17
    assert charts.domain_colors(domains) == colours
    assert charts.domain_colors([*domains, "extra"])["d3"] == colours["d3"]


def test_best_so_far_ignores_unfinished_runs_and_follows_the_direction():
    values = [None, 3.0, 2.5, None, 2.7, 2.0]
    assert charts.best_so_far(values, "minimize") == [None, 3.0, 2.5, 2.5, 2.5, 2.0]
    assert charts.best_so_far(values, "maximize") == [None, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert charts.best_so_far([float("nan"), 1.0], "minimize") == [None, 1.0]


def test_the_out_of_fold_band_holds_the_stated_share_of_the_errors():
    oof: list[dict[str, Any]] = [
        {"run_id": str(i), "actual": 2.0 + i / 100, "predicted": 2.0 + i / 100 + e}
        for i, e in enumerate([0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08, 0.09, -0.1])
    ]
    band, diagonal, points = charts.oof_chart(oof, "loss")["data"]
    half = float(band["y"][0]) - float(band["x"][0])
    inside = sum(abs(o["predicted"] - o["actual"]) <= half + 1e-12 for o in oof)
    assert inside >= 8
    assert half == pytest.approx(0.09)
    assert points["x"] == [o["actual"] for o in oof] and points["text"][0] == "0"
    assert diagonal["x"] == diagonal["y"]


def test_the_weights_area_stacks_every_domain_from_each_version_step():
    colours = charts.domain_colors(["web", "code"])
    history = [(0, {"web": 0.5, "code": 0.5}), (100, {"web": 0.8, "code": 0.2})]
    figure = charts.weights_area_chart(history, colours)
    web, code = figure["data"]
    assert web["x"] == [0, 100] and web["y"] == [0.5, 0.8] and code["y"] == [0.5, 0.2]
    assert web["line"]["shape"] == "hv"  # a version holds until the next one
    assert {t["stackgroup"] for t in figure["data"]} == {"weights"}


def test_loss_curves_shade_the_range_only_where_points_were_downsampled():
    exact = {"eval": [(0, 3.0, 3.0, 3.0), (10, 2.0, 2.0, 2.0)]}
    assert [t["name"] for t in charts.metric_curves(exact)["data"]] == ["eval"]
    bucketed = {"train": [(9, 2.5, 2.0, 3.0), (19, 2.0, 1.8, 2.2)]}
    band, line = charts.metric_curves(bucketed)["data"]
    assert band["fill"] == "toself" and band["y"] == [3.0, 2.2, 1.8, 2.0]
    assert line["y"] == [2.5, 2.0]


def test_losses_chart_keeps_domain_colours_and_adds_other_series_after_them():
    colours = charts.domain_colors(["web", "code"])
    rounds = [(100, {"web": 3.0, "mean": 3.1}), (200, {"web": 2.8, "code": 2.9, "mean": 2.9})]
    figure = charts.losses_chart(rounds, colours, "loss")
    names = [t["name"] for t in figure["data"]]
    assert names == ["web", "code", "mean"]
    assert figure["data"][1]["x"] == [200]
    assert figure["data"][0]["line"]["color"] == colours["web"]


def test_many_domains_get_a_side_legend_and_slanted_labels_and_few_keep_theirs_above():
    many = charts.domain_colors([f"domain_{i}" for i in range(17)])
    history = [(0, dict.fromkeys(many, 1 / 17))]
    crowded = charts.readable(charts.weights_area_chart(history, many))
    assert crowded["layout"]["legend"]["orientation"] == "v"
    assert crowded["layout"]["height"] > 360  # grown to hold the column
    bars = charts.readable(charts.recommendation_chart(dict.fromkeys(many, 1 / 17), {}, many))
    assert bars["layout"]["xaxis"]["tickangle"] == -45
    few = charts.domain_colors(["web", "code"])
    short = charts.readable(charts.weights_area_chart([(0, {"web": 0.5, "code": 0.5})], few))
    assert short["layout"]["legend"]["y"] > 1 and "height" not in short["layout"]
    runs = [(dict.fromkeys(many, 0.1), 1.0)]
    parallel = charts.readable(charts.parallel_chart(list(many), runs, "loss"))
    assert parallel["data"][0]["labelangle"] == -30


def test_metrics_of_very_different_sizes_share_a_log_axis():
    lr, grad_norm = [(0, 3e-4, 3e-4, 3e-4)], [(0, 2.0, 2.0, 2.0)]
    figure = charts.metric_curves({"lr": lr, "grad_norm": grad_norm})
    assert figure["layout"]["yaxis"]["type"] == "log"
    assert "type" not in charts.metric_curves({"a": [(0, 1.0, 1.0, 1.0)]})["layout"]["yaxis"]
