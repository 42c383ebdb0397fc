"""``mixopt methods``: the mixing methods a server knows (``GET /methods``)."""

from __future__ import annotations

from typing import Annotated

import typer

from mixopt.cli._common import (
    Column,
    JsonFlag,
    Token,
    Url,
    _api,
    _fail,
    _print_fitted,
    _print_json,
)
from mixopt.schemas import DEFAULT_URL


def methods(
    mode: Annotated[
        str | None, typer.Option(help="offline or online (default: both)", show_default=False)
    ] = None,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The experiment methods the server knows, with what each does; --json adds the JSON
    Schema of each method's config (its options and their defaults)."""
    if mode not in (None, "offline", "online"):
        raise _fail(f"--mode must be offline or online, not {mode!r}")
    with _api(url, token) as client:
        found = [m for m in client.list_methods() if mode is None or m.mode == mode]
    if as_json:
        _print_json(found)
        return
    columns = [
        Column("method", keep=9),
        Column("mode", keep=8),
        Column("options", "right", keep=3),
        Column("description", keep=7, fold=True),
    ]
    rows = [
        [m.name, m.mode, str(len(m.config_schema.get("properties", {}))), m.description]
        for m in found
    ]
    _print_fitted(f"{len(found)} methods", columns, rows)
