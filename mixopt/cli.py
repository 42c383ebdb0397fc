"""The ``mixopt`` command line.

``serve``, ``db`` and ``token create`` work on the database directly (they run where the server
runs); ``experiment``, ``runs``, ``fit`` and ``recommend`` talk to a server through
``mixopt.client`` (``--url``/``$MIXOPT_URL``, ``--token``/``$MIXOPT_TOKEN``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from mixopt import __version__
from mixopt.runs_csv import WEIGHT_PREFIX, ImportRow, TableError, plan_import, read_table
from mixopt.schemas import DEFAULT_URL, NAME_PATTERN, ExperimentStatus, Scope
from mixopt.settings import Settings, is_loopback

if TYPE_CHECKING:
    from rich.console import Console

    from mixopt import schemas
    from mixopt.client import MixoptClient

app = typer.Typer(
    help="mixopt: find the best data mixture for training a language model.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
experiment_app = typer.Typer(help="Experiments (through the API).", no_args_is_help=True)
runs_app = typer.Typer(help="Runs (through the API).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(experiment_app, name="experiment")
app.add_typer(runs_app, name="runs")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL (default: $MIXOPT_DATABASE_URL, else sqlite:///mixopt.db)",
        show_default=False,
    ),
]


def _settings(database_url: str | None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url is not None:
        values["database_url"] = database_url
    return Settings(**values)  # type: ignore[arg-type]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str | None, typer.Option(help="address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [default: 8000]")] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="skip auth; refused unless bound to loopback")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="load a demo experiment and print an admin token")
    ] = False,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level")] = None,
) -> None:
    """Upgrade the schema (under a lock) and serve the API."""
    import uvicorn

    from service.main import create_app
    from service.store import SqlStore, schema
    from service.store.sql import make_engine

    settings = _settings(
        database_url, host=host, port=port, log_level=log_level, no_auth=no_auth or None
    )
    if settings.no_auth and not is_loopback(settings.host):
        raise _fail(
            f"--no-auth is refused on {settings.host}: "
            "bind to a loopback address (127.0.0.1 or ::1)"
        )
    engine = make_engine(settings.database_url)
    schema.upgrade(engine)
    store = SqlStore(engine, weights_cache=settings.weights_cache)
    if demo:
        from service.demo import load_demo
        from service.operations import Operations

        created = load_demo(Operations(store))
        typer.echo("demo experiment loaded" if created else "demo experiment already present")
        if not settings.no_auth:
            _, secret = store.create_token("demo-admin", "admin", None)
            typer.echo("admin token for this demo (shown once):")
            typer.echo(f"  export MIXOPT_TOKEN={secret}")
        typer.echo(
            f'try: curl -H "Authorization: Bearer $MIXOPT_TOKEN" '
            f"http://{settings.host}:{settings.port}/api/v1/experiments"
        )
    try:
        uvicorn.run(
            create_app(settings, store),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        store.close()


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Apply the schema migrations (safe while other replicas start: it takes a lock)."""
    from service.store import schema
    from service.store.sql import make_engine

    engine = make_engine(_settings(database_url).database_url)
    reached = schema.upgrade(engine, revision)
    typer.echo(f"database at revision {reached}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the database's schema revision and the head revision."""
    from service.store import schema
    from service.store.sql import make_engine

    engine = make_engine(_settings(database_url).database_url)
    with engine.connect() as connection:
        current = schema.current_revision(connection)
    typer.echo(f"current: {current}\nhead: {schema.head_revision()}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="who or what the token is for")],
    scope: Annotated[str, typer.Option(help="read, write or admin")] = "write",
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, help="expire after this many days")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token; the token is printed alone on the last line (shown once)."""
    from service.store import SqlStore, schema
    from service.store.sql import make_engine, utcnow

    if scope not in ("read", "write", "admin"):
        raise _fail(f"--scope must be read, write or admin, not {scope!r}")
    if not re.fullmatch(NAME_PATTERN, name):
        raise _fail(f"--name must match {NAME_PATTERN}")
    engine = make_engine(_settings(database_url).database_url)
    schema.upgrade(engine)
    store = SqlStore(engine)
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    record, secret = store.create_token(name, cast(Scope, scope), expires)
    typer.echo(
        f"token {record.id} {record.name!r} scope={record.scope} "
        f"expires={record.expires_at.isoformat() if record.expires_at else 'never'}"
    )
    typer.echo(secret)
    sys.stdout.flush()


# --- commands that talk to a server --------------------------------------------------------------

Url = Annotated[
    str,
    typer.Option("--url", envvar="MIXOPT_URL", help="the mixopt server", show_envvar=True),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MIXOPT_TOKEN",
        help="API token (Bearer)",
        show_default=False,
        show_envvar=True,
    ),
]
CLI_RETRIES = 3


def _console(stderr: bool = False) -> Console:
    """A rich console that prints text as it is: names from files and servers are data, never
    markup or emoji codes."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False, emoji=False)


def _error(message: str) -> None:
    from rich.text import Text

    _console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", message))


@contextmanager
def _api(url: str, token: str | None) -> Iterator[MixoptClient]:
    """A client of the server; its errors become a message and exit status 1."""
    import httpx

    from mixopt.client import MixoptAPIError, MixoptClient

    try:
        with MixoptClient(url, token, retries=CLI_RETRIES) as client:
            yield client
    except MixoptAPIError as exc:
        _error(f"{exc.status} {exc.problem.title}: {exc.problem.detail}")
        err = _console(stderr=True)
        for item in exc.errors:
            err.print(f"  {'.'.join(str(part) for part in item.loc)}: {item.msg}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        _error(f"cannot reach {url}: {exc}")
        raise typer.Exit(1) from None


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


# --- experiment --------------------------------------------------------------------------------


def _read_spec(path: Path) -> Any:
    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


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


# --- runs commands -----------------------------------------------------------------------------


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


# --- fit and recommend -------------------------------------------------------------------------


@app.command()
def fit(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment")],
    model: Annotated[
        str, typer.Option(help="auto, lightgbm, linear, loglinear, mixing_law or gp")
    ] = "auto",
    top: Annotated[int, typer.Option(min=1, help="domains to show by importance")] = 20,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Fit a regressor on the completed runs, cross-validate it and search the recommendation."""
    from rich.table import Table

    with _api(url, token) as client:
        report = client.fit(experiment_id, model)
    out = _console()
    out.print(
        f"fit {report.id}: {report.model} (requested {report.requested}) on {report.n_runs} runs"
    )
    cv = Table(title=f"{report.cv.folds}-fold cross-validation")
    for name in ("spearman", "pearson", "mae", "r2"):
        cv.add_column(name, justify="right")
    cv.add_row(*(_number(getattr(report.cv, n)) for n in ("spearman", "pearson", "mae", "r2")))
    out.print(cv)
    if report.candidates:
        candidates = Table(title="models compared")
        candidates.add_column("model")
        candidates.add_column("spearman", justify="right")
        for candidate in sorted(
            report.candidates, key=lambda c: -(c.spearman if c.spearman is not None else -2)
        ):
            marker = " *" if candidate.model == report.model else ""
            candidates.add_row(candidate.model + marker, _number(candidate.spearman))
        out.print(candidates)
    if report.importance:
        importance = Table(title="domain importance")
        importance.add_column("domain")
        importance.add_column("importance", justify="right")
        ranked = sorted(report.importance.items(), key=lambda item: -item[1])
        for domain, value in ranked[:top]:
            importance.add_row(domain, _number(value))
        out.print(importance)
    if report.noise.replicate_groups:
        out.print(
            f"run-to-run noise: std {_number(report.noise.std)} "
            f"from {report.noise.replicate_groups} groups of replicates"
        )


def _interval(predicted: schemas.Predicted | None) -> str:
    if predicted is None:
        return "-"
    return f"{predicted.value:.4f} [{predicted.low:.4f}, {predicted.high:.4f}]"


@app.command()
def recommend(
    experiment_id: Annotated[str, typer.Argument(help="the experiment")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The recommended mixture (of the latest fit, or of an online experiment's runs)."""
    from rich.table import Table

    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
        rec = client.recommendation(experiment_id)
    if as_json:
        typer.echo(json.dumps(rec.model_dump(mode="json"), indent=2))
        return
    out = _console()
    source = (
        f"fit {rec.fit_id} ({rec.model}, {rec.n_runs} runs)"
        if rec.fit_id
        else f"run {rec.run_id}"
        if rec.run_id
        else "the service"
    )
    table = Table(title=f"recommended mixture for {experiment.name!r} from {source}")
    table.add_column("domain")
    table.add_column("recommended", justify="right")
    baseline = rec.baseline.weights if rec.baseline is not None else None
    if baseline is not None:
        table.add_column("baseline", justify="right")
    table.add_column("prior", justify="right")
    priors = {d.name: d.prior for d in experiment.domains}
    for domain in sorted(rec.weights, key=lambda d: -rec.weights[d]):
        cells = [domain, f"{rec.weights[domain]:.4f}"]
        if baseline is not None:
            cells.append(f"{baseline.get(domain, 0.0):.4f}")
        cells.append(_number(priors.get(domain)))
        table.add_row(*cells)
    out.print(table)
    objective = ", ".join(f"{w:g}×{m}" for m, w in experiment.objective.metrics.items())
    if rec.predicted is not None:
        out.print(
            f"predicted {experiment.objective.direction} objective ({objective}): "
            f"{_interval(rec.predicted)} (80 % interval)"
        )
    if rec.baseline is not None and rec.baseline.predicted is not None:
        out.print(f"baseline (the prior mixture): {_interval(rec.baseline.predicted)}")
    if rec.p_better_than_baseline is not None:
        out.print(f"probability better than the baseline: {rec.p_better_than_baseline:.2f}")
    if rec.alternatives:
        out.print(f"{len(rec.alternatives)} alternative mixtures within the noise of the best")


# --- backtest ----------------------------------------------------------------------------------


def _domains_in(path: Path, weight_prefix: str | None) -> list[str]:
    """The domains a table's weight columns name: ``weight/<d>`` in a runs.csv, or every column
    starting with ``--weight-prefix``."""
    header, _ = read_table(path)
    prefix = weight_prefix if weight_prefix is not None else WEIGHT_PREFIX
    domains = [c[len(prefix) :] for c in header if c.startswith(prefix) and len(c) > len(prefix)]
    if not domains:
        raise TableError(
            f"{path} has no weight columns {prefix}<domain>"
            + ("" if weight_prefix else "; pass --weight-prefix")
        )
    return domains


@app.command()
def backtest(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="runs.csv exported by mixopt, or a weights table (with --weight-prefix)",
        ),
    ],
    objective: Annotated[
        str | None,
        typer.Option(help="the metric to predict (default: the only metric in the files)"),
    ] = None,
    maximize: Annotated[bool, typer.Option(help="higher objective is better")] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file", exists=True, dir_okay=False, help="metrics table to join with FILE"
        ),
    ] = None,
    join: Annotated[str, typer.Option(help="the key column joining the two tables")] = "index",
    weight_prefix: Annotated[
        str | None,
        typer.Option(help="weight columns are PREFIX<domain> (default: weight/)"),
    ] = None,
    metric_prefix: Annotated[
        str | None, typer.Option(help="metric columns are PREFIX<name>", show_default=False)
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="regressor to compare, or auto (repeatable; default: all and auto)"),
    ] = None,
    size: Annotated[
        list[int] | None,
        typer.Option(help="runs to replay (repeatable; default: 32, 64, ... and all)"),
    ] = None,
    design: Annotated[
        list[str] | None,
        typer.Option(
            help="stored, random, or an offline method such as regmix (repeatable; default: stored)"
        ),
    ] = None,
    reference_model: Annotated[
        str, typer.Option(help="the regressor fitted on every run to judge the others")
    ] = "lightgbm",
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the full result (weights too) here")
    ] = None,
) -> None:
    """Replay a finished swarm locally: what each regressor and design would have recommended
    with 32, 64, 128 ... runs, judged by a model fitted on every run.

    The runs are replayed in the file's order (their creation order in a runs.csv); only
    completed, not excluded runs with the objective count. The swarm's mean mixture is the
    prior. POST /experiments/{id}/backtest does the same on a stored experiment.
    """
    import numpy as np
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from mixers import DomainSpace
    from mixers.backtest import BacktestPlan
    from mixers.backtest import backtest as run_backtest
    from mixopt.errors import MixoptError

    try:
        domains = _domains_in(file, weight_prefix)
        plan = plan_import(
            domains,
            file,
            metrics_path=metrics_file,
            join=join,
            weight_prefix=weight_prefix,
            metric_prefix=metric_prefix,
        )
    except TableError as exc:
        raise _fail(str(exc)) from None
    if plan.invalid:
        label, reason = plan.invalid[0]
        raise _fail(f"{len(plan.invalid)} rows cannot be read; first: {label}: {reason}")
    if objective is None:
        if len(plan.metric_names) != 1:
            raise _fail(
                "pass --objective: the files hold the metrics "
                + (", ".join(plan.metric_names) or "(none)")
            )
        objective = plan.metric_names[0]
    elif objective not in plan.metric_names:
        raise _fail(
            f"no metric {objective!r}; the files hold: {', '.join(plan.metric_names) or '(none)'}"
        )
    rows = [
        row
        for row in plan.rows
        if row.status in (None, "completed") and not row.excluded and objective in row.metrics
    ]
    out = _console()
    out.print(
        f"{file.name}: {len(rows)} usable runs of {len(plan.rows)}, {len(domains)} domains, "
        f"objective {objective} ({'maximize' if maximize else 'minimize'})"
    )
    if not rows:
        raise _fail("no usable runs")
    weights = np.array([[row.weights[d] for d in domains] for row in rows])
    y = np.array([row.metrics[objective] for row in rows], dtype=float)
    space = DomainSpace.from_swarm(domains, weights)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("backtest", total=None)

        def report(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=what)

        try:
            result = run_backtest(
                space,
                weights,
                y,
                [row.external_id for row in rows],
                BacktestPlan(
                    models=model or None,
                    sizes=size or None,
                    designs=design or ["stored"],
                    reference_model=reference_model,
                    progress=report,
                ),
                direction="maximize" if maximize else "minimize",
                seed=seed,
            )
        except MixoptError as exc:
            raise _fail(str(exc)) from None
    table = Table(title=f"backtest of {file.name} (regret: judged minus the reference's best)")
    for column, justify in [
        ("design", "left"),
        ("runs", "right"),
        ("model", "left"),
        ("cv spearman", "right"),
        ("held-out spearman", "right"),
        ("predicted", "right"),
        ("judged", "right"),
        ("regret", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        label = row.model if row.requested == row.model else f"auto → {row.model}"
        table.add_row(
            row.design + (f" (match {row.match_l1:.2f})" if row.match_l1 is not None else ""),
            str(row.n_runs),
            label,
            _number(row.cv_spearman, 3),
            _number(row.heldout_spearman, 3),
            _number(row.predicted),
            _number(row.judged),
            f"{row.regret:+.4f}",
        )
    out.print(table)
    ref = result.reference
    out.print(
        f"reference: {ref.model} on all {result.n_runs} runs, cv spearman "
        f"{_number(ref.cv_spearman, 3)}, its recommendation judged {ref.judged:.4f}; "
        f"{result.seconds:.0f} s"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
        out.print(f"wrote {json_out}")


# --- worker ------------------------------------------------------------------------------------


@app.command()
def worker(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment to work for")],
    command: Annotated[
        str,
        typer.Option(
            "--command",
            "-c",
            help="training command for one run; it reads MIXOPT_WEIGHTS / MIXOPT_RUN_FILE and "
            "writes its final metrics as JSON to MIXOPT_METRICS_FILE",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="worker name [default: HOST/PID]", show_default=False)
    ] = None,
    lease_seconds: Annotated[int, typer.Option(min=10, max=86400)] = 600,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="wait when nothing is pending")] = 30,
    max_runs: Annotated[int | None, typer.Option(min=1, help="stop after this many runs")] = None,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="stop when no run is pending")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Claim pending runs and train each with COMMAND: complete, fail (retried) or release."""
    import logging

    from mixopt.worker import Worker, default_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not command.strip():
        raise _fail("--command is empty: give the command that trains one run")
    with _api(url, token) as client:
        runner = Worker(
            client,
            experiment_id,
            command,
            name=name or default_name(),
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
        )
        runner.install_signal_handlers()
        stats = runner.run(max_runs=max_runs, exit_when_idle=exit_when_idle)
    typer.echo(
        f"worker done: {stats.completed} completed, {stats.failed} failed, "
        f"{stats.released} released"
    )


if __name__ == "__main__":
    app()
