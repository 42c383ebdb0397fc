"""``mixopt worker``: train pending runs with a command (``mixopt.worker``)."""

from __future__ import annotations

from typing import Annotated

import typer

from mixopt.cli._common import Token, Url, _api, _fail
from mixopt.schemas import DEFAULT_URL


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
