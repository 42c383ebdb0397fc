"""The ``runs.csv`` format: the service writes it (``GET /experiments/{id}/runs.csv``) and
``mixopt runs import`` reads it back.

One row per run: the fixed columns, then ``weight/<domain>`` in the experiment's domain order,
``metric/<name>``, ``tag/<key>`` (both sorted) and, when any run has some, ``params`` as JSON.
The prefixes cannot clash with names: a column's kind is what stands before its first slash.

This module needs only the standard library, so the service and the CLI share it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "FIXED_COLUMNS",
    "METRIC_PREFIX",
    "PARAMS_COLUMN",
    "TAG_PREFIX",
    "WEIGHT_PREFIX",
    "CsvRun",
    "write_runs",
]

FIXED_COLUMNS = ("run_id", "status", "excluded", "attempt", "external_id", "created_at")
WEIGHT_PREFIX = "weight/"
METRIC_PREFIX = "metric/"
TAG_PREFIX = "tag/"
PARAMS_COLUMN = "params"


class CsvRun(Protocol):
    """What a row is written from: the store's ``RunRecord`` and the wire's ``schemas.Run``
    both fit (read-only properties, so that frozen dataclasses do)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def excluded(self) -> bool: ...
    @property
    def attempt(self) -> int: ...
    @property
    def external_id(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def weights(self) -> Mapping[str, float]: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def params(self) -> Mapping[str, Any]: ...


def write_runs(domains: Sequence[str], runs: Sequence[CsvRun]) -> Iterator[str]:
    """The runs as CSV text: the header, then one chunk per run (a response can stream them).

    Floats are written with ``repr``, which reads back to the same float."""
    metric_names = sorted({name for run in runs for name in run.metrics})
    tag_keys = sorted({key for run in runs for key in run.tags})
    has_params = any(run.params for run in runs)
    header = [
        *FIXED_COLUMNS,
        *(f"{WEIGHT_PREFIX}{d}" for d in domains),
        *(f"{METRIC_PREFIX}{m}" for m in metric_names),
        *(f"{TAG_PREFIX}{k}" for k in tag_keys),
        *([PARAMS_COLUMN] if has_params else []),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for run in runs:
        writer.writerow(
            [
                run.id,
                run.status,
                str(run.excluded).lower(),
                run.attempt,
                run.external_id or "",
                run.created_at.isoformat(),
                *(repr(float(run.weights[d])) for d in domains),
                *(
                    "" if m not in run.metrics else repr(float(run.metrics[m]))
                    for m in metric_names
                ),
                *(run.tags.get(k, "") for k in tag_keys),
                *([json.dumps(run.params, sort_keys=True)] if has_params else []),
            ]
        )
        yield flush()
