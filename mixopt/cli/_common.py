"""What the commands share: the options, settings, errors, the client and the console."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mixopt.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.engine import Engine

    from mixopt.client import MixoptClient
    from service.store import Store

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


# --- opening a database ------------------------------------------------------------------------


def _database_problem(url: str, exc: Exception) -> str:
    """One line saying why the database at ``url`` cannot be used, and what to do about it."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = next((line.strip() for line in cause if line.strip()), type(exc).__name__)
    if parsed.get_backend_name() == "sqlite":
        return f"cannot open the SQLite database {parsed.database}: {first}"
    host, port = parsed.host or "localhost", parsed.port or 5432
    if "does not exist" in first and parsed.database and f'"{parsed.database}"' in first:
        user = f" -U {parsed.username}" if parsed.username else ""
        return (
            f'database "{parsed.database}" does not exist on {host}:{port}; create it with: '
            f"createdb -h {host} -p {port}{user} {parsed.database}"
        )
    return f"cannot connect to the database at {host}:{port}: {first.removeprefix('FATAL:  ')}"


def _open_database(
    url: str, *, pool_size: int = 10, revision: str = "head"
) -> tuple[Engine, str | None]:
    """An engine on ``url`` with the schema migrated to ``revision``, and the revision reached;
    a database that is missing or unreachable is one line and exit status 2, not a traceback."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from service.store import schema
    from service.store.sql import make_engine

    engine = make_engine(url, pool_size=pool_size)
    try:
        reached = schema.upgrade(engine, revision)
    except (OperationalError, DBAPIError) as exc:
        engine.dispose()
        raise _fail(_database_problem(url, exc)) from None
    return engine, reached


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


# --- talking to a server -----------------------------------------------------------------------

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
        if exc.status == 401 and not token:
            err.print(
                "  no token was given: pass --token or set MIXOPT_TOKEN (an admin creates "
                "one with `mixopt token create --scope write --name NAME`; `mixopt serve "
                "--demo` prints one)"
            )
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        _error(f"cannot reach {url}: {exc}")
        raise typer.Exit(1) from None


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


# --- output --------------------------------------------------------------------------------------

JsonFlag = Annotated[
    bool,
    typer.Option("--json", help="print machine-readable JSON to stdout (and nothing else there)"),
]


def _print_json(data: object) -> None:
    """``data`` (JSON values, or pydantic models and lists of them) as JSON on stdout."""
    import json

    from pydantic import BaseModel

    def plain(value: object) -> object:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    typer.echo(json.dumps(plain(data), indent=2))


@dataclass(frozen=True)
class Column:
    """A column of ``_fitted_table``. When the terminal is too narrow for every column, the
    columns of lowest ``keep`` are left out first; ``fold`` columns (free text) wrap rather
    than widen the table; all others never wrap, so a name stays on one line."""

    header: str
    justify: Literal["left", "right"] = "left"
    keep: int = 0
    fold: bool = False


FOLDED_WIDTH = 24  # what a fold column is counted as when deciding which columns fit


def _fitted_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> tuple[Table, list[str]]:
    """A table of ``rows`` within ``width`` characters, and the headers left out to fit."""
    from rich.table import Table

    def needed(index: int) -> int:
        column = columns[index]
        cells = max([len(column.header), *(len(row[index]) for row in rows)])
        return (min(cells, FOLDED_WIDTH) if column.fold else cells) + 3  # padding and border

    shown = list(range(len(columns)))
    while sum(needed(i) for i in shown) + 1 > width and any(columns[i].keep for i in shown):
        lowest = min(columns[i].keep for i in shown)
        shown.remove(max(i for i in shown if columns[i].keep == lowest))
    table = Table(title=title)
    for i in shown:
        column = columns[i]
        if column.fold:
            table.add_column(column.header, justify=column.justify, overflow="fold", ratio=1)
        else:
            table.add_column(
                column.header, justify=column.justify, no_wrap=True, overflow="ellipsis"
            )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    hidden = [c.header for i, c in enumerate(columns) if i not in shown]
    return table, hidden


def _print_fitted(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """``_fitted_table`` on stdout at the terminal's width, saying which columns it left out."""
    out = _console()
    table, hidden = _fitted_table(title, columns, rows, out.width)
    out.print(table)
    if hidden:
        out.print(f"(not shown at {out.width} columns: {', '.join(hidden)}; see --json)")
