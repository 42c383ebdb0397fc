"""``mixopt experiment``: create, list, show and archive experiments through the API; export
and import them (through the API, or straight from and into a database with
``--database-url``)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from mixopt.cli._common import (
    Column,
    JsonFlag,
    Token,
    Url,
    _api,
    _console,
    _direct_store,
    _error,
    _fail,
    _number,
    _print_fitted,
    _print_json,
)
from mixopt.schemas import DEFAULT_URL, ExperimentStatus

experiment_app = typer.Typer(
    help="Experiments (through the API; export/import also on a database).", no_args_is_help=True
)


def _read_spec(path: Path) -> Any:
    """A spec file as JSON or YAML. YAML numbers follow YAML 1.2, as people write them: PyYAML
    (YAML 1.1) reads ``tokens: 4.6e6`` as a string, which the API's strict bodies refuse."""
    import re

    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)

    class SpecLoader(yaml.SafeLoader):
        pass

    SpecLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: no arbitrary objects


@experiment_app.command("create")
def experiment_create(
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            help="YAML or JSON file with the experiment (the body of POST /experiments)",
        ),
    ],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create an experiment (admin token); its id is printed alone on the last line."""
    from mixopt.client import ValidationError

    try:
        spec = _read_spec(file)
    except Exception as exc:  # OSError, UnicodeDecodeError, JSON and YAML errors
        raise _fail(f"cannot read {file}: {exc}") from None
    if not isinstance(spec, dict):
        raise _fail(f"{file} must hold a mapping (the experiment), not {type(spec).__name__}")
    with _api(url, token) as client:
        try:
            experiment = client.create_experiment(spec)
        except ValidationError as exc:
            if not exc.local:
                raise
            _error(f"{file} is not a valid experiment:")
            err = _console(stderr=True)
            for item in exc.errors:
                loc = ".".join(str(part) for part in item.loc[1:])
                err.print(f"  {loc or '(top level)'}: {item.msg}")
            raise typer.Exit(2) from None
    out = _console()
    out.print(
        f"created {experiment.mode} experiment {experiment.name!r} with method "
        f"{experiment.method} over {len(experiment.domains)} domains"
    )
    typer.echo(experiment.id)


@experiment_app.command("edit")
def experiment_edit(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id")],
    name: Annotated[str | None, typer.Option(help="a new name")] = None,
    objective: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="YAML or JSON file with the new objective ({metrics: {NAME: WEIGHT}, "
            "direction: minimize}), as in the create file",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Rename an experiment or change its objective (admin token). Fits made on the old
    objective stay listed, but recommend and predict need a new fit."""
    if name is None and objective is None:
        raise _fail("nothing to edit: pass --name and/or --objective")
    spec = None
    if objective is not None:
        try:
            spec = _read_spec(objective)
        except Exception as exc:  # OSError, UnicodeDecodeError, JSON and YAML errors
            raise _fail(f"cannot read {objective}: {exc}") from None
        if not isinstance(spec, dict):
            raise _fail(f"{objective} must hold a mapping (the objective)")
    with _api(url, token) as client:
        experiment = client.update_experiment(experiment_id, name=name, objective=spec)
    terms = " + ".join(f"{w:g}×{m}" for m, w in experiment.objective.metrics.items())
    direction = experiment.objective.direction
    _console().print(f"experiment {experiment.id} {experiment.name!r}: {direction} {terms}")


@experiment_app.command("list")
def experiment_list(
    status: Annotated[str | None, typer.Option(help="active or archived (default: both)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List experiments with their run counts."""
    if status not in (None, "active", "archived"):
        raise _fail(f"--status must be active or archived, not {status!r}")
    with _api(url, token) as client:
        experiments = list(client.iter_experiments(cast(ExperimentStatus | None, status)))
    if as_json:
        _print_json(experiments)
        return
    # In a narrow terminal the creation time, mode, domain count and method give way first:
    # the name, the status and the counts are what a list is read for.
    columns = [
        Column("id", keep=9),
        Column("name", keep=9),
        Column("mode", keep=2),
        Column("method", keep=4),
        Column("domains", "right", keep=3),
        Column("status", keep=8),
        Column("pending", "right", keep=7),
        Column("running", "right", keep=5),
        Column("completed", "right", keep=8),
        Column("failed", "right", keep=7),
        Column("excluded", "right", keep=6),
        Column("created", keep=1),
    ]
    rows = []
    for e in experiments:
        c = e.counts
        rows.append([
            e.id,
            e.name,
            e.mode,
            e.method,
            str(len(e.domains)),
            e.status,
            str(c.pending),
            str(c.running),
            str(c.completed),
            str(c.failed),
            str(c.excluded),
            e.created_at.strftime("%Y-%m-%d %H:%M"),
        ])  # fmt: skip
    _print_fitted(f"{len(experiments)} experiments", columns, rows)


@experiment_app.command("show")
def experiment_show(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id")],
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """One experiment: its objective, run counts, config and domains with their bounds."""
    from rich.table import Table

    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
    if as_json:
        _print_json(experiment)
        return
    out = _console()
    e, c = experiment, experiment.counts
    objective = " + ".join(f"{w:g}×{m}" for m, w in e.objective.metrics.items())
    out.print(f"experiment {e.id} {e.name!r}: {e.mode} {e.method}, {e.status}")
    out.print(f"  objective: {e.objective.direction} {objective}")
    out.print(
        f"  runs: {c.pending} pending, {c.running} running, {c.completed} completed, "
        f"{c.failed} failed, {c.excluded} excluded"
    )
    out.print(f"  created: {e.created_at.isoformat()}")
    out.print(f"  config: {json.dumps(e.config)}")
    table = Table(title=f"{len(e.domains)} domains")
    table.add_column("domain", no_wrap=True, overflow="ellipsis")
    for column in ("prior", "tokens", "min", "max"):
        table.add_column(column, justify="right", no_wrap=True)
    for d in e.domains:
        table.add_row(
            d.name,
            _number(d.prior),
            f"{d.tokens:.3g}" if d.tokens is not None else "-",
            _number(d.min_weight, 2),
            _number(d.max_weight, 2),
        )
    out.print(table)


@experiment_app.command("archive")
def experiment_archive(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Archive an experiment (admin token): its runs, fits and recommendation stay readable,
    new work (proposals, imports, claims) is refused, and its name is free again. The API has
    no way back."""
    with _api(url, token) as client:
        experiment = client.archive_experiment(experiment_id)
    _console().print(f"experiment {experiment.id} {experiment.name!r} is {experiment.status}")


DirectUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="work on this database directly instead of through a server (no server needed)",
        show_default=False,
    ),
]


@experiment_app.command("export")
def experiment_export(
    experiment_id: Annotated[str, typer.Argument(help="the experiment's id")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", dir_okay=False, help="archive file to write (.gz: gzip'd; -: stdout)"
        ),
    ],
    database_url: DirectUrl = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Write an experiment with everything it holds (runs, metric points, fits, online state
    and history) to an archive file that ``mixopt experiment import`` reads (admin token)."""
    if database_url is not None:
        from service.transfer import archive_chunks, export_archive

        with _direct_store(database_url) as store:
            data = b"".join(archive_chunks(export_archive(store, experiment_id)))
    else:
        with _api(url, token) as client:
            data = client.export_experiment(experiment_id)
    if str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if output.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc}", 1) from None
    _console(stderr=True).print(f"wrote experiment {experiment_id} to {output} ({len(data)} bytes)")


@experiment_app.command("import")
def experiment_import(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="archive from mixopt experiment export"),
    ],
    name: Annotated[
        str | None, typer.Option(help="import under this name instead of the archive's")
    ] = None,
    database_url: DirectUrl = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create an experiment from an archive, with new ids (admin token). Importing the same
    archive again changes nothing; the experiment's id is printed alone on the last line. A
    server takes archives up to its max_import_bytes (64 MiB); --database-url has no limit."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc}") from None
    if database_url is not None:
        from service.transfer import import_archive, read_archive

        with _direct_store(database_url) as store:
            record, created = import_archive(store, read_archive(data), name=name)
            experiment_id, experiment_name, counts = record.id, record.name, record.counts
    else:
        with _api(url, token) as client:
            imported = client.import_experiment(data, name=name)
        experiment_id, experiment_name = imported.id, imported.name
        created, counts = imported.created, imported.counts.model_dump()
    runs = sum(counts.get(s, 0) for s in ("pending", "running", "completed", "failed"))
    verb = "imported" if created else "already imported: the archive was imported before as"
    _console().print(f"{verb} experiment {experiment_name!r} ({runs} runs)")
    typer.echo(experiment_id)
