"""``version``, and the commands that work on the database directly, where the server runs:
``serve``, ``db`` and ``token``."""

from __future__ import annotations

import atexit
import gc
import os
import re
import sys
from datetime import timedelta
from typing import Annotated, Any, cast

import typer

from mixopt import __version__
from mixopt.cli._common import (
    Column,
    DatabaseUrl,
    JsonFlag,
    _direct_store,
    _fail,
    _open_database,
    _print_fitted,
    _print_json,
    _settings,
)
from mixopt.schemas import API_PREFIX, NAME_PATTERN, Scope
from mixopt.settings import Settings, is_loopback

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[
        str | None, typer.Option(help="address to bind", show_default="127.0.0.1")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port", show_default="8000")] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="skip auth; refused unless bound to loopback")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="load a demo experiment and print an admin token")
    ] = False,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level")] = None,
    fit_workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="processes that run fits, per server process (0: in the server's threads)",
            show_default="1",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="server processes (Postgres only: SQLite has a single writer); each keeps "
            "its own token cache and connection pool",
        ),
    ] = 1,
) -> None:
    """Upgrade the schema (under a lock) and serve the API."""
    import uvicorn

    from service.main import create_app
    from service.store import SqlStore

    settings = _settings(
        database_url,
        host=host,
        port=port,
        log_level=log_level,
        no_auth=no_auth or None,
        fit_workers=fit_workers,
    )
    if settings.no_auth and not is_loopback(settings.host):
        raise _fail(
            f"--no-auth is refused on {settings.host}: "
            "bind to a loopback address (127.0.0.1 or ::1)"
        )
    if workers > 1 and not settings.database_url.startswith("postgresql"):
        raise _fail("--workers > 1 needs Postgres: SQLite takes one writer at a time")
    engine, _ = _open_database(settings.database_url, pool_size=settings.db_pool_size)
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
            f"http://{settings.host}:{settings.port}{API_PREFIX}/experiments"
        )
    if workers > 1:
        # Each worker process builds its own app, store and pool from these settings (passed in
        # the environment: uvicorn spawns the workers). The caches stay correct across them:
        # the weights cache follows LISTEN/NOTIFY, a token lookup is cached a few seconds per
        # process (as with one), and each lease sweep is an idempotent UPDATE.
        store.close()
        os.environ[_WORKER_SETTINGS] = settings.model_dump_json()
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
        return
    try:
        uvicorn.run(
            _served(create_app(settings, store)),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        store.close()


_WORKER_SETTINGS = "_MIXOPT_SERVE_SETTINGS"


def _served(app: Any) -> Any:
    """``app``, with what was allocated to build it moved out of the garbage collector's
    reach: a full collection then walks only what requests allocate, which shortens the pauses
    behind the weights poll's p99 (the tens of thousands of objects of FastAPI, pydantic and
    SQLAlchemy never become garbage)."""
    gc.collect()
    gc.freeze()
    return app


def worker_app() -> Any:
    """The app of one ``serve --workers N`` process (a uvicorn factory)."""
    from service.main import create_app
    from service.store import SqlStore
    from service.store.sql import make_engine

    settings = Settings.model_validate_json(os.environ[_WORKER_SETTINGS])
    store = SqlStore(
        make_engine(settings.database_url, pool_size=settings.db_pool_size),
        weights_cache=settings.weights_cache,
    )
    atexit.register(store.close)
    return _served(create_app(settings, store))


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Apply the schema migrations (safe while other replicas start: it takes a lock)."""

    _, reached = _open_database(_settings(database_url).database_url, revision=revision)
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
    from service.store import SqlStore
    from service.store.sql import utcnow

    if scope not in ("read", "write", "admin"):
        raise _fail(f"--scope must be read, write or admin, not {scope!r}")
    if not re.fullmatch(NAME_PATTERN, name):
        raise _fail(f"--name must match {NAME_PATTERN}")
    engine, _ = _open_database(_settings(database_url).database_url)
    store = SqlStore(engine)
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    record, secret = store.create_token(name, cast(Scope, scope), expires)
    typer.echo(
        f"token {record.id} {record.name!r} scope={record.scope} "
        f"expires={record.expires_at.isoformat() if record.expires_at else 'never'}"
    )
    typer.echo(secret)
    sys.stdout.flush()


@token_app.command("list")
def token_list(
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Every token (revoked ones too), oldest first, never with its secret."""
    with _direct_store(_settings(database_url).database_url) as store:
        records, cursor = [], None
        while True:
            page = store.list_tokens(limit=1000, cursor=cursor)
            records += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    rows = [
        {
            "id": r.id,
            "name": r.name,
            "scope": r.scope,
            "created_at": r.created_at.isoformat(),
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in records
    ]
    if as_json:
        _print_json(rows)
        return
    columns = [
        Column("id", keep=9),
        Column("name", keep=9),
        Column("scope", keep=8),
        Column("created", keep=3),
        Column("expires", keep=5),
        Column("revoked", keep=7),
    ]
    minute = "%Y-%m-%d %H:%M"
    cells = [
        [
            r.id,
            r.name,
            r.scope,
            r.created_at.strftime(minute),
            r.expires_at.strftime(minute) if r.expires_at else "never",
            r.revoked_at.strftime(minute) if r.revoked_at else "",
        ]
        for r in records
    ]
    _print_fitted(f"{len(rows)} tokens", columns, cells)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (mixopt token list)")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: requests with it are refused with 401 from then on (within the servers'
    token cache, a few seconds). Revoking a revoked token changes nothing."""
    with _direct_store(_settings(database_url).database_url) as store:
        record = store.revoke_token(token_id)
    typer.echo(f"token {record.id} {record.name!r} revoked")
