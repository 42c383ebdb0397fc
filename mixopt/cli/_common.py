"""What the commands share: the options, settings, errors, the client and the console."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from mixopt.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from mixopt.client import MixoptClient

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
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        _error(f"cannot reach {url}: {exc}")
        raise typer.Exit(1) from None


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"
