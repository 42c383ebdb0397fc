"""``mixopt runs``: import runs from CSV files (planned by ``mixopt.runs_csv``) and export them;
list and show runs, propose new ones, exclude, include and retry them."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast, get_args

import typer

from mixopt.cli._common import (
    Column,
    JsonFlag,
    Token,
    Url,
    _api,
    _console,
    _fail,
    _number,
    _print_fitted,
    _print_json,
)
from mixopt.runs_csv import METRIC_PREFIX, ImportPlan, ImportRow, TableError, plan_import
from mixopt.schemas import DEFAULT_URL, MAX_RUN_BATCH, NAME_PATTERN, RunStatus

if TYPE_CHECKING:
    from mixopt import schemas

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)

runs_app = typer.Typer(help="Runs (through the API).", no_args_is_help=True)


def _same(stored: schemas.Run, row: ImportRow) -> bool:
    return stored.weights == row.weights and stored.metrics == row.metrics


def _import_fields(row: ImportRow) -> dict[str, Any]:
    """What the API takes of a row (``RunImport``'s fields; ``status`` None is its default)."""
    fields: dict[str, Any] = {
        "weights": row.weights,
        "metrics": row.metrics,
        "params": row.params,
        "tags": row.tags,
        "external_id": row.external_id,
    }
    if row.status is not None:
        fields["status"] = row.status
    return fields


def _parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(NAME_PATTERN, key):
            raise _fail(f"--tag takes KEY=VALUE with KEY matching {NAME_PATTERN}, not {pair!r}")
        tags[key] = value
    return tags


LISTED_METRICS = 5
"""The imported metric names a warning lists (of the RegMix files' 13, say)."""


def _absent_objective_metrics(experiment_id: str, objective: list[str], plan: ImportPlan) -> str:
    """A warning when the file has metrics but not the objective's (a fit would find no usable
    run): the names it has, and the fix when a name differs only by a ``metric/`` prefix."""
    names = set(plan.metric_names)
    missing = [name for name in objective if name not in names]
    if not names or not missing:
        return ""
    shown = ", ".join(plan.metric_names[:LISTED_METRICS])
    more = len(names) - LISTED_METRICS
    lines = [
        f"warning: no imported run has the objective's metric{'s' * (len(missing) > 1)} "
        f"{', '.join(missing)}, so a fit cannot use them; the file's metrics are {shown}"
        + (f" and {more} more" if more > 0 else "")
    ]
    for name in missing:
        variants = [METRIC_PREFIX + name, name.removeprefix(METRIC_PREFIX)]
        variant = next((v for v in variants if v != name and v in names), None)
        if variant is None:
            continue
        how = "with" if variant.startswith(METRIC_PREFIX) else "without"
        lines.append(
            f"  it has {variant!r}: name the objective's metric so (mixopt experiment edit "
            f"{experiment_id} --objective FILE), or import into a new experiment "
            f"{how} --metric-prefix {METRIC_PREFIX}"
        )
    return "\n".join(lines)


@runs_app.command("import")
def runs_import(
    experiment_id: Annotated[str, typer.Argument(help="the experiment to import into")],
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="runs.csv exported by mixopt, or a table with one column per domain weight",
        ),
    ],
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file", exists=True, dir_okay=False, help="metrics table to join with FILE"
        ),
    ] = None,
    join: Annotated[str, typer.Option(help="the key column joining the two tables")] = "index",
    weight_prefix: Annotated[
        str | None,
        typer.Option(
            help="weight columns are PREFIX<domain> (default: found from the domain names)",
            show_default=False,
        ),
    ] = None,
    metric_prefix: Annotated[
        str | None,
        typer.Option(
            help="metric columns are PREFIX<name>; other columns are ignored "
            "(default: every other column is a metric, named as it is)",
            show_default=False,
        ),
    ] = None,
    external_id_column: Annotated[
        str | None,
        typer.Option(
            help="column identifying each row, prefixed with the file name's stem (default: "
            "for runs.csv its external_id, as it is, or else its run_id; else the --join "
            "column, else the row number)",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE tag for every run (repeatable)")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="import the valid rows even if some are refused")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="parallel requests of 1,000 runs each (1 keeps the file's order)"
        ),
    ] = 1,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Import trained (or to-be-trained) runs from CSV files, idempotently.

    Rows whose weights sum to within 1 % of 1 are renormalised; rows further off are refused.
    Each run's external_id is FILE's stem and the row's key (a runs.csv's own external_id when
    it has one), so importing the same file again changes nothing. Runs go in batches of 1,000
    (one request each, all or nothing); a batch with a refused row is sent again row by row, so
    that the other rows still go in. A warning follows when the runs have metrics but lack one of
    the objective's.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from mixopt.client import ConflictError, ValidationError

    extra_tags = _parse_tags(tag or [])
    out = _console()
    err = _console(stderr=True)
    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
        if experiment.mode != "offline":
            raise _fail(f"experiment {experiment_id} is online: its runs are training runs")
        domains = [d.name for d in experiment.domains]
        try:
            plan = plan_import(
                domains,
                file,
                metrics_path=metrics_file,
                join=join,
                weight_prefix=weight_prefix,
                metric_prefix=metric_prefix,
                external_id_column=external_id_column,
                tags=extra_tags,
                objective_metrics=list(experiment.objective.metrics),
            )
        except TableError as exc:
            raise _fail(str(exc)) from None
        source = f"{file.name}" + (f" + {metrics_file.name}" if metrics_file else "")
        out.print(
            f"{source}: {len(plan.rows) + len(plan.invalid)} rows, "
            f"{len(domains)} domains (columns {plan.weight_prefix}<domain>), "
            f"{len(plan.metric_names)} metrics"
        )
        if plan.ignored_columns:
            out.print(f"ignored columns: {', '.join(plan.ignored_columns)}")
        out.print(f"renormalised {plan.renormalised} rows whose weights summed to within 1 % of 1")
        if plan.invalid:
            table = Table(title=f"{len(plan.invalid)} rows refused")
            table.add_column("row", overflow="fold")
            table.add_column("reason", overflow="fold")
            for label, reason in plan.invalid[:50]:
                table.add_row(label, reason)
            if len(plan.invalid) > 50:
                table.add_row("...", f"and {len(plan.invalid) - 50} more")
            err.print(table)
            if not skip_invalid:
                err.print("nothing imported; fix the rows or pass --skip-invalid")
                raise typer.Exit(1)

        stored = {
            run.external_id: run
            for run in client.iter_runs(experiment_id)
            if run.external_id is not None
        }
        created = 0
        failures: list[tuple[str, str]] = []

        stop = threading.Event()

        def exclude_if_marked(row: ImportRow, run: schemas.Run) -> None:
            if row.excluded and not run.excluded:
                client.exclude(run.id, True, reason=f"excluded in {file.name}")

        def send_one(row: ImportRow) -> tuple[ImportRow, bool | None, str]:
            if stop.is_set():
                return row, None, "not sent: the import stopped"
            try:
                run = client.import_run(experiment_id, **_import_fields(row))
                exclude_if_marked(row, run)
            except (ConflictError, ValidationError) as exc:
                return row, None, exc.detail  # this row's problem: the others go on
            except BaseException:
                stop.set()  # 401, 403, 404, a lost server: no other row would fare better
                raise
            return row, run.created, ""

        def send(batch: list[ImportRow]) -> tuple[int, int, list[tuple[str, str]]]:
            """One request for the batch: (its rows, how many were new, the rows refused)."""
            if stop.is_set():
                return len(batch), 0, [(row.label, "not sent: the import stopped") for row in batch]
            try:
                result = client.import_runs(experiment_id, [_import_fields(r) for r in batch])
                for row, run in zip(batch, result.items, strict=True):
                    exclude_if_marked(row, run)
            except (ConflictError, ValidationError):
                # A batch stores nothing if one row is refused: then each row on its own, so
                # that the others go in and each refusal names its row.
                return send_alone(batch)
            except BaseException:
                stop.set()
                raise
            return len(batch), result.new, []

        def send_alone(rows: list[ImportRow]) -> tuple[int, int, list[tuple[str, str]]]:
            """One request per row, as ``send`` answers."""
            outcomes = [send_one(row) for row in rows]
            refused = [(row.label, problem) for row, new, problem in outcomes if new is None]
            return len(rows), sum(bool(new) for _, new, _ in outcomes), refused

        to_send = [row for row in plan.rows if row.external_id not in stored]
        # A row stored with other weights or metrics is refused (409): sent alone, as it would
        # take the batch around it down with it.
        changed = [
            row
            for row in plan.rows
            if row.external_id in stored and not _same(stored[row.external_id], row)
        ]
        present = len(plan.rows) - len(to_send) - len(changed)
        tasks: list[Callable[[], tuple[int, int, list[tuple[str, str]]]]] = [
            partial(send, to_send[i : i + MAX_RUN_BATCH])
            for i in range(0, len(to_send), MAX_RUN_BATCH)
        ]
        tasks += [partial(send_alone, [row]) for row in changed]

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        )
        pool = ThreadPoolExecutor(jobs)
        try:
            with progress:
                task = progress.add_task("importing", total=len(plan.rows))
                progress.advance(task, present)
                for rows, new, refused in pool.map(lambda call: call(), tasks):
                    failures += refused
                    created += new
                    present += rows - new - len(refused)
                    progress.advance(task, rows)
        finally:
            # After an error that ends the import (401, 404, a lost server, ^C), the batches
            # not yet sent are dropped rather than each failing in turn.
            pool.shutdown(wait=True, cancel_futures=True)
    out.print(
        f"imported {created + present} runs into experiment {experiment_id}: "
        f"{created} new, {present} already present"
        + (f", {len(plan.invalid)} rows skipped" if plan.invalid else "")
    )
    warning = _absent_objective_metrics(experiment_id, list(experiment.objective.metrics), plan)
    if warning:
        err.print(warning, markup=False, highlight=False)
    if failures:
        table = Table(title=f"{len(failures)} rows not imported")
        table.add_column("row", overflow="fold")
        table.add_column("reason", overflow="fold")
        for label, reason in failures:
            table.add_row(label, reason)
        err.print(table)
        raise typer.Exit(1)


@runs_app.command("export")
def runs_export(
    experiment_id: Annotated[str, typer.Argument(help="the experiment")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="file to write (default: stdout)"),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Every run of the experiment as CSV (weight/, metric/ and tag/ columns)."""
    with _api(url, token) as client:
        text = client.export_runs_csv(experiment_id)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output.write_text(text, encoding="utf-8")
    runs = max(0, len(text.splitlines()) - 1)
    _console(stderr=True).print(f"wrote {runs} runs to {output}")


@runs_app.command("retry")
def runs_retry(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="failed runs to retry", show_default=False)
    ] = None,
    failed_of: Annotated[
        str | None,
        typer.Option(
            "--failed-of",
            help="retry every failed run of this experiment",
            show_default=False,
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Put failed runs back in the queue with a fresh attempt budget (after fixing what made
    them fail): the runs named, or every failed run of an experiment with --failed-of."""
    if not run_ids and failed_of is None:
        raise _fail("name the runs to retry, or give --failed-of EXPERIMENT_ID")
    with _api(url, token) as client:
        targets = list(run_ids or [])
        if failed_of is not None:
            targets += [r.id for r in client.iter_runs(failed_of, status="failed")]
        for run_id in targets:
            run = client.retry_run(run_id)
            _console().print(f"run {run.id}: {run.status} (attempt {run.attempt})")
    _console(stderr=True).print(f"{len(targets)} run(s) back in the queue")


# --- reading runs, proposing and excluding them ---------------------------------------------

RunStatusFilter = Annotated[
    str | None,
    typer.Option(
        "--status", help="pending, running, completed or failed (default: all)", show_default=False
    ),
]
SHOWN_METRICS = 3
"""The objective's metrics shown as columns of a runs table (the others are in --json)."""


def _print_runs(runs: Sequence[schemas.Run], objective: schemas.Objective, title: str) -> None:
    """One row per run: the objective's metrics, where it came from, why it failed."""
    metrics = list(objective.metrics)[:SHOWN_METRICS]
    columns = [
        Column("id", keep=9),
        Column("status", keep=8),
        Column("attempt", "right", keep=2),
        *(Column(metric, "right", keep=7) for metric in metrics),
        Column("external id / worker", keep=4),
        Column("reason", keep=5, fold=True),
    ]
    rows = [
        [
            run.id,
            run.status + (" x" if run.excluded else ""),
            str(run.attempt),
            *(_number(run.metrics.get(metric)) for metric in metrics),
            run.external_id or run.worker or "",
            run.reason or "",
        ]
        for run in runs
    ]
    _print_fitted(title, columns, rows)
    if any(run.excluded for run in runs):
        _console().print("x: excluded from fits and claims")


@runs_app.command("list")
def runs_list(
    experiment_id: Annotated[str, typer.Argument(help="the experiment")],
    status: RunStatusFilter = None,
    excluded: Annotated[
        bool | None,
        typer.Option(
            "--excluded/--included",
            help="only excluded runs, or only included ones (default: both)",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="at most this many runs, oldest first")
    ] = None,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The experiment's runs, oldest first, with the objective's metrics and failure reasons."""
    from itertools import islice

    if status not in (None, *RUN_STATUSES):
        raise _fail(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
        runs = list(
            islice(
                client.iter_runs(
                    experiment_id, status=cast(RunStatus | None, status), excluded=excluded
                ),
                limit,
            )
        )
    if as_json:
        _print_json(runs)
        return
    which = " ".join(
        part for part in (status, {True: "excluded", False: "included", None: ""}[excluded]) if part
    )
    _print_runs(
        runs,
        experiment.objective,
        f"{len(runs)} {which + ' ' if which else ''}runs of {experiment.name!r}",
    )


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="the run")],
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """One run: its status, lease, mixture, metrics, parameters and tags."""
    from rich.table import Table

    with _api(url, token) as client:
        run = client.get_run(run_id)
    if as_json:
        _print_json(run)
        return
    out = _console()
    out.print(
        f"run {run.id} of experiment {run.experiment_id}: {run.status}, attempt {run.attempt}"
        + (", excluded" if run.excluded else "")
    )
    lease = run.lease_expires_at.isoformat() if run.lease_expires_at else None
    for label, text in (
        ("external id", run.external_id),
        ("worker", run.worker),
        ("lease expires", lease),
        ("reason", run.reason),
        ("created", run.created_at.isoformat()),
        ("updated", run.updated_at.isoformat()),
    ):
        if text:
            out.print(f"  {label}: {text}")
    mixture = Table(title="mixture")
    mixture.add_column("domain", no_wrap=True, overflow="ellipsis")
    mixture.add_column("weight", justify="right", no_wrap=True)
    for domain, weight in sorted(run.weights.items(), key=lambda item: -item[1]):
        mixture.add_row(domain, f"{weight:.4f}")
    out.print(mixture)
    if run.metrics:
        metrics = Table(title="metrics")
        metrics.add_column("name", overflow="fold")
        metrics.add_column("value", justify="right", no_wrap=True)
        for name, value in sorted(run.metrics.items()):
            metrics.add_row(name, _number(value))
        out.print(metrics)
    for label, values in (("params", run.params), ("tags", run.tags)):
        if values:
            out.print(f"{label}: {json.dumps(values)}")


@runs_app.command("propose")
def runs_propose(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=MAX_RUN_BATCH, help="runs")],
    request_id: Annotated[
        str | None,
        typer.Option(
            help="makes the call safe to repeat: the same id again answers the runs it created "
            "and creates none",
            show_default="a fresh one",
        ),
    ] = None,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Have the experiment's method design COUNT new mixtures, stored as pending runs for
    workers to claim (POST /experiments/{id}/proposals)."""
    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
        runs = client.propose(experiment_id, count, request_id=request_id)
    if as_json:
        _print_json(runs)
        return
    _print_runs(runs, experiment.objective, f"{len(runs)} runs proposed by {experiment.method}")


def _set_excluded(
    run_ids: Sequence[str], excluded: bool, reason: str | None, url: str, token: str | None
) -> None:
    with _api(url, token) as client:
        for run_id in run_ids:
            run = client.exclude(run_id, excluded, reason=reason)
            state = "excluded" if run.excluded else "included"
            _console().print(f"run {run.id}: {state} ({run.status})")


RunIds = Annotated[list[str], typer.Argument(help="the runs", show_default=False)]


@runs_app.command("exclude")
def runs_exclude(
    run_ids: RunIds,
    reason: Annotated[
        str | None, typer.Option(help="why, kept on the run", show_default=False)
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Leave runs out of fits, backtests and claims (a bad import, a broken node); they keep
    their status and metrics."""
    _set_excluded(run_ids, True, reason, url, token)


@runs_app.command("include")
def runs_include(run_ids: RunIds, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Include excluded runs again."""
    _set_excluded(run_ids, False, None, url, token)


@runs_app.command("metrics")
def runs_metrics(
    run_id: Annotated[str, typer.Argument(help="the run")],
    name: Annotated[
        str | None, typer.Option(help="only this metric", show_default="every metric")
    ] = None,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The metric points a run reported while it trained (its curves), ordered by step."""
    with _api(url, token) as client:
        points = list(client.iter_metrics(run_id, name=name))
    if as_json:
        _print_json(points)
        return
    columns = [
        Column("step", "right", keep=9),
        Column("name", keep=9),
        Column("value", "right", keep=9),
    ]
    rows = [[str(p.step), p.name, _number(p.value)] for p in points]
    _print_fitted(f"{len(points)} metric points of run {run_id}", columns, rows)
