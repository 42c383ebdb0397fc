"""``mixopt runs``: import runs from CSV files (planned by ``mixopt.runs_csv``) and export them."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mixopt.cli._common import Token, Url, _api, _console, _fail
from mixopt.runs_csv import ImportRow, TableError, plan_import
from mixopt.schemas import DEFAULT_URL, NAME_PATTERN

if TYPE_CHECKING:
    from mixopt import schemas

runs_app = typer.Typer(help="Runs (through the API).", no_args_is_help=True)


def _same(stored: schemas.Run, row: ImportRow) -> bool:
    return stored.weights == row.weights and stored.metrics == row.metrics


def _parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(NAME_PATTERN, key):
            raise _fail(f"--tag takes KEY=VALUE with KEY matching {NAME_PATTERN}, not {pair!r}")
        tags[key] = value
    return tags


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
            help="column identifying each row (default: run_id for runs.csv, else the --join "
            "column, else the row number); prefixed with the file name's stem",
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
        int, typer.Option(min=1, max=64, help="parallel requests (1 keeps the file's order)")
    ] = 1,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Import trained (or to-be-trained) runs from CSV files, idempotently.

    Rows whose weights sum to within 1 % of 1 are renormalised; rows further off are refused.
    Each run's external_id is FILE's stem and the row's key, so importing the same file again
    changes nothing.
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
        created = present = 0
        failures: list[tuple[str, str]] = []

        stop = threading.Event()

        def send(row: ImportRow) -> tuple[ImportRow, bool | None, str]:
            known = stored.get(row.external_id)
            if known is not None and _same(known, row):
                return row, False, ""
            if stop.is_set():
                return row, None, "not sent: the import stopped"
            try:
                run = client.import_run(
                    experiment_id,
                    row.weights,
                    metrics=row.metrics,
                    params=row.params,
                    tags=row.tags,
                    status=row.status,
                    external_id=row.external_id,
                )
                if row.excluded and not run.excluded:
                    client.exclude(run.id, True, reason=f"excluded in {file.name}")
            except (ConflictError, ValidationError) as exc:
                return row, None, exc.detail  # this row's problem: the others go on
            except BaseException:
                stop.set()  # 401, 403, 404, a lost server: no other row would fare better
                raise
            return row, run.created, ""

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
                for row, new, problem in pool.map(send, plan.rows):
                    if new is None:
                        failures.append((row.label, problem))
                    elif new:
                        created += 1
                    else:
                        present += 1
                    progress.advance(task)
        finally:
            # After an error that ends the import (401, 404, a lost server, ^C), the rows not
            # yet sent are dropped rather than each failing in turn.
            pool.shutdown(wait=True, cancel_futures=True)
    out.print(
        f"imported {created + present} runs into experiment {experiment_id}: "
        f"{created} new, {present} already present"
        + (f", {len(plan.invalid)} rows skipped" if plan.invalid else "")
    )
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
