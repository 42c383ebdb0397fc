"""``mixopt experiment``: create and list experiments through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from mixopt.cli._common import Token, Url, _api, _console, _error, _fail
from mixopt.schemas import DEFAULT_URL, ExperimentStatus

experiment_app = typer.Typer(help="Experiments (through the API).", no_args_is_help=True)


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
