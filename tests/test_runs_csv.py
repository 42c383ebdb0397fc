"""The runs.csv format of ``mixopt.runs_csv``: written from stored or wire runs alike, and read
back by the importer's planner."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mixopt import schemas
from mixopt.runs_csv import plan_import, write_runs
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
    assert [row.external_id for row in plan.rows] == [f"export:{n}" for n in range(1, 5)]
    assert [row.status for row in plan.rows] == ["completed", "pending", "completed", "pending"]
    assert [row.excluded for row in plan.rows] == [False, True, False, False]
    for row, run in zip(plan.rows, [*RUNS, running], strict=True):
        assert row.weights == run.weights
        assert row.metrics == run.metrics
        assert row.tags == run.tags
        assert row.params == run.params
