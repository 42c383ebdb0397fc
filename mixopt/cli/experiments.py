"""``mixopt experiment``: create and list experiments through the API; export and import them
(through the API, or straight from and into a database with ``--database-url``)."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from mixopt.cli._common import (
    Token,
    Url,
    _api,
    _console,
    _error,
    _fail,
    _open_database,
    _settings,
)
from mixopt.schemas import DEFAULT_URL, ExperimentStatus

if TYPE_CHECKING:
    from service.store import Store

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


@experiment_app.command("list")
def experiment_list(
    status: Annotated[str | None, typer.Option(help="active or archived (default: both)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List experiments with their run counts."""
    from rich.table import Table

    if status not in (None, "active", "archived"):
        raise _fail(f"--status must be active or archived, not {status!r}")
    with _api(url, token) as client:
        experiments = list(client.iter_experiments(cast(ExperimentStatus | None, status)))
    if as_json:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in experiments], indent=2))
        return
    table = Table(title=f"{len(experiments)} experiments")
    for name in ("id", "name", "mode", "method", "domains", "status"):
        table.add_column(name, overflow="fold")
    for name in ("pending", "running", "completed", "failed", "excluded"):
        table.add_column(name, justify="right")
    table.add_column("created")
    for e in experiments:
        c = e.counts
        table.add_row(
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
        )
    _console().print(table)


DirectUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="work on this database directly instead of through a server (no server needed)",
        show_default=False,
    ),
]


@contextmanager
def _direct_store(database_url: str) -> Iterator[Store]:
    """The store of a database, migrated to head as ``serve`` would; its errors become a
    message and exit status 1."""
    from mixopt.errors import InvalidInput, MixoptError
    from service.store import SqlStore

    engine, _ = _open_database(_settings(database_url).database_url)
    try:
        store = SqlStore(engine)
        yield store
    except MixoptError as exc:
        _error(f"{type(exc).title}: {exc.detail}")
        err = _console(stderr=True)
        for item in exc.errors if isinstance(exc, InvalidInput) else ():
            err.print(f"  {'.'.join(str(part) for part in item.loc) or '(top level)'}: {item.msg}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


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
