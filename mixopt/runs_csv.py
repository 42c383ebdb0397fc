"""The ``runs.csv`` format: the service writes it (``GET /experiments/{id}/runs.csv``) and
``mixopt runs import`` reads it back.

One row per run: the fixed columns, then ``weight/<domain>`` in the experiment's domain order,
``metric/<name>``, ``tag/<key>`` (both sorted) and, when any run has some, ``params`` as JSON.
The prefixes cannot clash with names: a column's kind is what stands before its first slash.

A metric whose name starts with ``metric/`` already (RegMix's files name them so, and a table
import keeps the names as they are) is written under its own name, not ``metric/metric/...``
(unless the name without the prefix is a metric too). Reading such a column back, the name is
taken in full when the experiment's objective names its metrics in full (``metric/...``), and
without the prefix otherwise: exporting and importing into a like experiment gives the same
file. A non-empty ``external_id`` cell is kept as the run's external id (its lineage).

The reader also takes other tables: a weights table with one column per domain (the prefix found
from the domain names), optionally joined with a metrics table, such as RegMix's files. Its
errors name the ``mixopt runs import`` options that get around them.

This module needs only the standard library and ``mixopt.schemas`` (pydantic), so the service
and the CLI share it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from mixopt.schemas import NAME_PATTERN, ImportStatus

__all__ = [
    "EXACT_SUM",
    "FIXED_COLUMNS",
    "METRIC_PREFIX",
    "PARAMS_COLUMN",
    "RENORMALISE_WITHIN",
    "TAG_PREFIX",
    "WEIGHT_PREFIX",
    "CsvRun",
    "ImportPlan",
    "ImportRow",
    "TableError",
    "plan_import",
    "read_table",
    "write_runs",
]

FIXED_COLUMNS = ("run_id", "status", "excluded", "attempt", "external_id", "created_at")
WEIGHT_PREFIX = "weight/"
METRIC_PREFIX = "metric/"
TAG_PREFIX = "tag/"
PARAMS_COLUMN = "params"


# --- writing -----------------------------------------------------------------------------------


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
    metric_columns = [_metric_column(name, metric_names) for name in metric_names]
    tag_keys = sorted({key for run in runs for key in run.tags})
    has_params = any(run.params for run in runs)
    header = [
        *FIXED_COLUMNS,
        *(f"{WEIGHT_PREFIX}{d}" for d in domains),
        *metric_columns,
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


def _metric_column(name: str, names: Sequence[str]) -> str:
    """The column of metric ``name``: ``metric/<name>``, or the name itself when it carries the
    prefix once already and the name without it is not a metric too (their columns would clash).
    ``_metric_name`` reads it back."""
    rest = name.removeprefix(METRIC_PREFIX)
    if rest != name and not rest.startswith(METRIC_PREFIX) and rest not in names:
        return name
    return METRIC_PREFIX + name


def _metric_name(column: str, columns: Collection[str], objective: Collection[str]) -> str:
    """The metric a runs.csv column ``metric/<rest>`` holds (``_metric_column`` wrote it).

    ``metric/metric/...`` is a name that carries the prefix (written twice so as not to clash,
    or by an older export). Otherwise ``rest`` is the name, unless the objective names it with
    the prefix or names its metrics with it (the experiment was imported from such files)."""
    rest = column.removeprefix(METRIC_PREFIX)
    if rest.startswith(METRIC_PREFIX) or METRIC_PREFIX + column in columns or rest in objective:
        return rest
    if column in objective or any(name.startswith(METRIC_PREFIX) for name in objective):
        return column
    return rest


# --- reading -----------------------------------------------------------------------------------

EXACT_SUM = 1e-6
"""Rows whose weights sum to 1 within this are sent as they are (the API's own tolerance)."""
RENORMALISE_WITHIN = 0.01
"""Rows within 1 % of sum 1 are renormalised; rows further off are refused."""


class TableError(Exception):
    """The files cannot be imported at all (columns, domains, keys), before looking at rows."""


@dataclass
class ImportRow:
    label: str
    external_id: str
    weights: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    status: ImportStatus | None = None
    excluded: bool = False
    renormalised: bool = False


@dataclass
class ImportPlan:
    """What ``runs import`` will send, and what it refuses."""

    kind: Literal["runs.csv", "table"]
    rows: list[ImportRow]
    invalid: list[tuple[str, str]]
    """(row, reason) of each row that cannot be imported."""
    weight_prefix: str
    metric_names: list[str]
    ignored_columns: list[str]

    @property
    def renormalised(self) -> int:
        return sum(row.renormalised for row in self.rows)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header (names stripped) and the rows of a CSV file; blank lines are skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise TableError(f"{path} is empty")
            header = [name.strip() for name in header]
            duplicated = sorted({name for name in header if header.count(name) > 1})
            if duplicated:
                raise TableError(f"{path}: columns appear twice: {', '.join(duplicated)}")
            rows: list[dict[str, str]] = []
            for number, cells in enumerate(reader, start=2):
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    raise TableError(
                        f"{path}, line {number}: {len(cells)} cells for {len(header)} columns"
                    )
                rows.append(dict(zip(header, cells, strict=True)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"cannot read {path}: {exc}") from None
    return header, rows


def _weight_prefix(columns: Sequence[str], domains: Sequence[str], given: str | None) -> str:
    """The prefix that, followed by each domain name, names the weight columns."""
    present = set(columns)
    if given is not None:
        missing = [d for d in domains if given + d not in present]
        if missing:
            raise TableError(
                f"no weight column for the domains {', '.join(missing)} "
                f"(looked for {given + missing[0]!r}...)"
            )
        return given
    candidates = {
        column[: len(column) - len(domain)]
        for column in columns
        for domain in domains
        if column.endswith(domain)
    }
    found = sorted(p for p in candidates if all(p + d in present for d in domains))
    if WEIGHT_PREFIX in found:
        return WEIGHT_PREFIX
    if len(found) == 1:
        return found[0]
    if not found:
        if not candidates:
            raise TableError(
                f"cannot find a column for any of the experiment's {len(domains)} domains "
                f"(such as {domains[0]!r}); name the columns <prefix><domain> "
                "and pass --weight-prefix"
            )
        # The prefix naming the most domains is the file's; name the domains it lacks.
        closest = max(sorted(candidates), key=lambda p: sum(p + d in present for d in domains))
        missing = [closest + d for d in domains if closest + d not in present]
        raise TableError(
            f"cannot find a column for {len(missing)} of the experiment's {len(domains)} "
            f"domains: no column {', '.join(map(repr, missing))}"
        )
    raise TableError(
        f"the weight columns are ambiguous (prefixes {', '.join(map(repr, found))}); "
        "pass --weight-prefix"
    )


def _float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(f"{text.strip()} is not finite")
    return value


def _weights_of(
    row: Mapping[str, str], prefix: str, domains: Sequence[str]
) -> tuple[dict[str, float], bool]:
    """The row's mixture, renormalised if it sums to within 1 % of 1 (and whether it was)."""
    weights: dict[str, float] = {}
    for domain in domains:
        cell = row[prefix + domain]
        try:
            value = _float(cell)
        except ValueError:
            raise ValueError(
                f"weight of {domain}: {cell.strip()!r} is not a finite number"
            ) from None
        if value < 0:
            raise ValueError(f"weight of {domain} is negative ({value})")
        weights[domain] = value
    total = math.fsum(weights.values())
    if abs(total - 1) <= EXACT_SUM:
        return weights, False
    if abs(total - 1) <= RENORMALISE_WITHIN:
        return {d: w / total for d, w in weights.items()}, True
    raise ValueError(f"weights sum to {total:.6g}, more than 1 % away from 1")


def plan_import(
    domains: Sequence[str],
    path: Path,
    *,
    metrics_path: Path | None = None,
    join: str = "index",
    weight_prefix: str | None = None,
    metric_prefix: str | None = None,
    external_id_column: str | None = None,
    tags: Mapping[str, str] | None = None,
    objective_metrics: Collection[str] = (),
) -> ImportPlan:
    """Read a ``runs.csv`` exported by the service, or a weights table (optionally joined with
    a metrics table on ``join``), into runs for an experiment over ``domains``.

    ``objective_metrics`` (the experiment's objective) decides how a runs.csv's ``metric/``
    columns are named back (``_metric_name``); a table's metrics are named as its columns."""
    header, rows = read_table(path)
    stem = path.stem
    extra_tags = dict(tags or {})
    is_runs_csv = "run_id" in header and any(c.startswith(WEIGHT_PREFIX) for c in header)
    if is_runs_csv:
        if metrics_path is not None:
            raise TableError(f"{path} is a runs.csv export; it holds its metrics already")
        id_column = external_id_column or "run_id"
        key_columns = {id_column} | (set(FIXED_COLUMNS) | {PARAMS_COLUMN}) & set(header)
        as_exported = metric_prefix is None  # metric/<name> as the service writes it
        metric_prefix = METRIC_PREFIX if metric_prefix is None else metric_prefix
        weight_prefix = WEIGHT_PREFIX if weight_prefix is None else weight_prefix
    else:
        id_column = external_id_column or (join if join in header else "")
        key_columns = {join, id_column} & set(header)
        as_exported = False
    if external_id_column is not None and external_id_column not in header:
        raise TableError(f"{path} has no column {external_id_column!r}")

    candidates = [c for c in header if c not in key_columns and not c.startswith(TAG_PREFIX)]
    prefix = _weight_prefix(candidates, domains, weight_prefix)
    weight_columns = {prefix + d for d in domains}
    if prefix:
        strangers = [c for c in candidates if c.startswith(prefix) and c not in weight_columns]
        if strangers:
            raise TableError(
                f"weight columns name no domain of the experiment: {', '.join(strangers)} "
                f"(its domains: {', '.join(domains)})"
            )

    # metric columns of the table and of the joined metrics table: column -> metric name
    metric_columns: dict[str, str] = {}
    ignored: list[str] = []
    tag_columns = [c for c in header if c.startswith(TAG_PREFIX)]

    def take_metrics(columns: Sequence[str], where: str) -> dict[str, str]:
        taken: dict[str, str] = {}
        for column in columns:
            if metric_prefix is not None and not column.startswith(metric_prefix):
                ignored.append(f"{where}:{column}")
                continue
            name = column[len(metric_prefix or "") :]
            if as_exported:
                name = _metric_name(column, header, objective_metrics)
            if name in metric_columns.values() or name in taken.values():
                raise TableError(f"metric {name!r} appears in both files")
            taken[column] = name
        return taken

    metric_columns = take_metrics([c for c in candidates if c not in weight_columns], path.name)
    joined: dict[str, dict[str, str]] = {}
    joined_metrics: dict[str, str] = {}
    if metrics_path is not None:
        metrics_header, metrics_rows = read_table(metrics_path)
        for where, columns in ((path, header), (metrics_path, metrics_header)):
            if join not in columns:
                raise TableError(f"{where} has no column {join!r} to join on (--join)")
        joined_metrics = take_metrics([c for c in metrics_header if c != join], metrics_path.name)
        for row in metrics_rows:
            key = row[join].strip()
            if key in joined:
                raise TableError(f"{metrics_path}: {join}={key} appears twice")
            joined[key] = row
    names = [*metric_columns.values(), *joined_metrics.values()]
    bad = [n for n in names if not re.fullmatch(NAME_PATTERN, n)]
    bad += [c for c in tag_columns if not re.fullmatch(NAME_PATTERN, c[len(TAG_PREFIX) :])]
    if bad:
        raise TableError(
            f"names must match {NAME_PATTERN}: {', '.join(map(repr, bad))}"
            + ("" if metric_prefix else " (strip a prefix with --metric-prefix)")
        )

    plan = ImportPlan(
        kind="runs.csv" if is_runs_csv else "table",
        rows=[],
        invalid=[],
        weight_prefix=prefix,
        metric_names=sorted(names),
        ignored_columns=ignored,
    )
    names_of = {**metric_columns, **joined_metrics}
    keeps_lineage = is_runs_csv and external_id_column is None
    seen: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        key = row[id_column].strip() if id_column else str(number)
        label = f"{id_column}={key}" if id_column else f"row {number}"
        try:
            if not key:
                raise ValueError(f"empty {id_column}")
            # An exported run's lineage is kept; a run without one is named after this file.
            lineage = row.get("external_id", "").strip() if keeps_lineage else ""
            external_id = lineage or f"{stem}:{key}"
            if len(external_id) > 256:
                raise ValueError("the external id (file stem:key) is over 256 characters")
            if external_id in seen:
                same = "external_id" if lineage else id_column or "key"
                raise ValueError(f"the same {same} as {seen[external_id]}")
            seen[external_id] = label
            weights, renormalised = _weights_of(row, prefix, domains)
            cells = [(column, row[column]) for column in metric_columns]
            if metrics_path is not None:
                join_key = row[join].strip()
                other = joined.get(join_key)
                if other is None:
                    raise ValueError(f"no row with {join}={join_key} in {metrics_path.name}")
                cells += [(column, other[column]) for column in joined_metrics]
            metrics: dict[str, float] = {}
            for column, cell in cells:
                if not cell.strip():
                    continue  # no value for this metric
                try:
                    metrics[names_of[column]] = _float(cell)
                except ValueError:
                    raise ValueError(f"{column}: {cell.strip()!r} is not a finite number") from None
            run_tags = {c[len(TAG_PREFIX) :]: row[c] for c in tag_columns if row[c] != ""}
            run_tags.update(extra_tags)
            item = ImportRow(
                label=label,
                external_id=external_id,
                weights=weights,
                metrics=metrics,
                tags=run_tags,
                renormalised=renormalised,
            )
            if is_runs_csv:
                status = row.get("status", "").strip()
                if status in ("pending", "running"):
                    item.status = "pending"  # a running run comes back as work to do
                elif status in ("completed", "failed"):
                    item.status = cast(ImportStatus, status)
                elif status:
                    raise ValueError(f"unknown status {status!r}")
                item.excluded = row.get("excluded", "").strip().lower() == "true"
                if row.get(PARAMS_COLUMN, "").strip():
                    try:
                        params = json.loads(row[PARAMS_COLUMN])
                    except ValueError as exc:
                        raise ValueError(f"params are not JSON: {exc}") from None
                    if not isinstance(params, dict):
                        raise ValueError("params must be a JSON object")
                    item.params = params
        except ValueError as exc:
            plan.invalid.append((label, str(exc)))
            continue
        plan.rows.append(item)
    if metrics_path is not None:
        keys = {row[join].strip() for row in rows}
        for key in joined:
            if key not in keys:
                plan.invalid.append(
                    (f"{join}={key}", f"in {metrics_path.name} but not in {path.name}")
                )
    return plan
