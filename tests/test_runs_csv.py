"""The runs.csv format of ``mixopt.runs_csv``: written from stored or wire runs alike, and read
back by the importer's planner."""

from __future__ import annotations

import csv
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mixopt import schemas
from mixopt.runs_csv import ImportPlan, TableError, plan_import, write_runs
from service.store import RunRecord

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
DOMAINS = ["web", "code/x", 'q"uote,d']


def record(number: int, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "id": str(number),
        "experiment_id": "1",
        "status": "completed",
        "weights": {"web": 0.1, "code/x": 0.2, 'q"uote,d': 0.7},
        "params": {},
        "tags": {},
        "metrics": {},
        "excluded": False,
        "reason": None,
        "worker": None,
        "lease_expires_at": None,
        "attempt": 1,
        "external_id": None,
        "created_at": NOW + timedelta(seconds=number),
        "updated_at": NOW,
    }
    return RunRecord(**{**values, **fields})


RUNS = [
    record(1, metrics={"loss": 1 / 3, "b": 1e-300}, tags={"k": "v,\n2"}),
    record(2, status="pending", excluded=True, attempt=3, external_id="f:1", params={"z": [1]}),
    record(3, weights={"web": 1, "code/x": 0, 'q"uote,d': 0}, metrics={"loss": 2}),
]
EXPECTED = (
    "run_id,status,excluded,attempt,external_id,created_at,weight/web,weight/code/x,"
    '"weight/q""uote,d",metric/b,metric/loss,tag/k,params\n'
    '1,completed,false,1,,2026-01-02T03:04:06.678901+00:00,0.1,0.2,0.7,1e-300,0.3333333333333333,"v,\n'
    '2",{}\n'
    '2,pending,true,3,f:1,2026-01-02T03:04:07.678901+00:00,0.1,0.2,0.7,,,,"{""z"": [1]}"\n'
    "3,completed,false,1,,2026-01-02T03:04:08.678901+00:00,1.0,0.0,0.0,,2.0,,{}\n"
)


def test_the_header_and_each_run_come_as_separate_chunks() -> None:
    chunks = list(write_runs(DOMAINS, RUNS))
    assert len(chunks) == 1 + len(RUNS)
    assert "".join(chunks) == EXPECTED


def test_no_runs_is_the_header_of_the_fixed_and_weight_columns() -> None:
    assert "".join(write_runs(["web"], [])) == (
        "run_id,status,excluded,attempt,external_id,created_at,weight/web\n"
    )


def test_wire_runs_are_written_like_stored_runs() -> None:
    wire = [schemas.Run.model_validate(asdict(run)) for run in RUNS]
    assert "".join(write_runs(DOMAINS, wire)) == EXPECTED


def test_a_written_file_plans_the_same_runs_back(tmp_path: Path) -> None:
    running = record(4, status="running", tags={"k": "x"})
    path = tmp_path / "export.csv"
    path.write_text("".join(write_runs(DOMAINS, [*RUNS, running])), encoding="utf-8")
    plan = plan_import(DOMAINS, path)
    assert (plan.kind, plan.weight_prefix, plan.invalid) == ("runs.csv", "weight/", [])
    assert plan.metric_names == ["b", "loss"]
    # Run 2's lineage (its external_id) is kept; the others are named after the file.
    assert [row.external_id for row in plan.rows] == ["export:1", "f:1", "export:3", "export:4"]
    assert [row.status for row in plan.rows] == ["completed", "pending", "completed", "pending"]
    assert [row.excluded for row in plan.rows] == [False, True, False, False]
    for row, run in zip(plan.rows, [*RUNS, running], strict=True):
        assert row.weights == run.weights
        assert row.metrics == run.metrics
        assert row.tags == run.tags
        assert row.params == run.params


def stored_as(plan: ImportPlan, first_id: int) -> list[RunRecord]:
    """The planned rows as the service would store them in a fresh experiment."""
    return [
        record(
            first_id + i,
            status=row.status or "pending",
            excluded=row.excluded,
            external_id=row.external_id,
            weights=row.weights,
            metrics=row.metrics,
            tags=row.tags,
            params=row.params,
        )
        for i, row in enumerate(plan.rows)
    ]


def without_run_ids(text: str) -> list[list[str]]:
    """The rows of an export without run_id and created_at, which a new experiment's runs
    have of their own."""
    rows = list(csv.reader(text.splitlines(keepends=True)))
    return [row[1:5] + row[6:] for row in rows]


def test_metrics_named_with_the_prefix_are_not_prefixed_twice_and_read_back_in_full(
    tmp_path: Path,
) -> None:
    # As a table import of RegMix's losses stores them, lineage included.
    runs = [
        record(1, metrics={"metric/pile_cc": 3.5, "metric/arxiv": 4.0}, external_id="train:1"),
        record(2, metrics={"metric/pile_cc": 3.25}, external_id="train:2", tags={"size": "1M"}),
    ]
    exported = "".join(write_runs(DOMAINS, runs))
    header = exported.splitlines()[0]
    assert "metric/metric/" not in header
    assert header.endswith(",metric/arxiv,metric/pile_cc,tag/size")
    path = tmp_path / "runs.csv"
    path.write_text(exported, encoding="utf-8")

    plan = plan_import(DOMAINS, path, objective_metrics=["metric/pile_cc"])
    assert plan.metric_names == ["metric/arxiv", "metric/pile_cc"]
    assert [row.metrics for row in plan.rows] == [run.metrics for run in runs]
    assert [row.external_id for row in plan.rows] == ["train:1", "train:2"]
    again = "".join(write_runs(DOMAINS, stored_as(plan, first_id=571)))
    assert again != exported  # other run ids
    assert without_run_ids(again) == without_run_ids(exported)

    # An experiment whose objective names the metric without the prefix reads the names so,
    # and writes the same file.
    plain = plan_import(DOMAINS, path, objective_metrics=["pile_cc"])
    assert plain.metric_names == ["arxiv", "pile_cc"]
    assert plain.rows[1].metrics == {"pile_cc": 3.25}
    plain_export = "".join(write_runs(DOMAINS, stored_as(plain, first_id=9)))
    assert without_run_ids(plain_export) == without_run_ids(exported)


def test_a_name_with_and_without_the_prefix_keeps_both_apart(tmp_path: Path) -> None:
    runs = [record(1, metrics={"loss": 1.0, "metric/loss": 2.0, "metric/metric/x": 3.0})]
    exported = "".join(write_runs(DOMAINS, runs))
    assert exported.splitlines()[0].endswith(
        ",metric/loss,metric/metric/loss,metric/metric/metric/x"
    )
    path = tmp_path / "runs.csv"
    path.write_text(exported, encoding="utf-8")
    for objective in (["loss"], ["metric/loss"]):
        plan = plan_import(DOMAINS, path, objective_metrics=objective)
        assert plan.rows[0].metrics == runs[0].metrics, objective


def test_a_file_of_old_exports_prefixed_twice_reads_the_names_once(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text(
        'run_id,status,weight/web,weight/code/x,"weight/q""uote,d",metric/metric/loss\n'
        "7,completed,0.5,0.5,0,3.0\n",
        encoding="utf-8",
    )
    plan = plan_import(DOMAINS, path, objective_metrics=["loss"])
    assert plan.rows[0].metrics == {"metric/loss": 3.0}
    assert plan.rows[0].external_id == "old:7"  # no external_id column: named after the file


def test_an_empty_external_id_cell_is_named_after_the_file_and_a_repeated_one_is_refused(
    tmp_path: Path,
) -> None:
    runs = [record(1, external_id="a:1"), record(2), record(3, external_id="a:1")]
    path = tmp_path / "export.csv"
    path.write_text("".join(write_runs(DOMAINS, runs)), encoding="utf-8")
    plan = plan_import(DOMAINS, path)
    assert [row.external_id for row in plan.rows] == ["a:1", "export:2"]
    assert plan.invalid == [("run_id=3", "the same external_id as run_id=1")]
    # --external-id-column names every run after the file, as for any table.
    by_run_id = plan_import(DOMAINS, path, external_id_column="run_id")
    assert [row.external_id for row in by_run_id.rows] == ["export:1", "export:2", "export:3"]


def test_a_missing_domain_column_is_named_alone(tmp_path: Path) -> None:
    domains = [f"d{i}" for i in range(17)]
    path = tmp_path / "mixtures.csv"
    header = ["index", *(f"train_{d}" for d in domains if d not in ("d3", "d11")), "loss"]
    path.write_text(",".join(header) + "\n", encoding="utf-8")
    with pytest.raises(TableError) as raised:
        plan_import(domains, path)
    assert str(raised.value) == (
        "cannot find a column for 2 of the experiment's 17 domains: "
        "no column 'train_d3', 'train_d11'"
    )
    path.write_text("index,loss\n", encoding="utf-8")
    with pytest.raises(TableError, match="any of the experiment's 17 domains"):
        plan_import(domains, path)
