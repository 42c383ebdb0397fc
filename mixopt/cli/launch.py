"""``mixopt launch``: N workers on one experiment until it is drained (``mixopt.launch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mixopt.cli._common import Token, Url, _api, _console, _fail
from mixopt.cli.worker import with_training_flags, worker_options
from mixopt.schemas import DEFAULT_URL


@with_training_flags
def launch(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment to drain")],
    *,
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="workers to run")] = 1,
    backend: Annotated[
        str, typer.Option(help="local (subprocesses) or ray (tasks on a Ray cluster)")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster (e.g. auto)", show_default="a local Ray"),
    ] = None,
    training: dict[str, Any],
    name: Annotated[
        str | None,
        typer.Option(help="worker name prefix (NAME-0, NAME-1, ...)", show_default="HOST/PID"),
    ] = None,
    poll_seconds: Annotated[
        float, typer.Option(min=0.1, help="how often idle workers look for work")
    ] = 5,
    log_dir: Annotated[
        Path | None,
        typer.Option(help="local workers' logs", show_default="a temporary directory"),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Run N workers (--command, or the built-in trainer on --corpus) until the experiment has
    no run pending or running, with a progress bar; then print a summary."""
    import signal
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from mixopt import launch as engine

    if backend not in engine.BACKENDS:
        raise _fail(f"unknown --backend {backend!r}; known: {', '.join(engine.BACKENDS)}")
    if ray_address is not None and backend != "ray":
        raise _fail("--ray-address needs --backend ray")
    options = worker_options(**training, name=name, poll_seconds=poll_seconds, exit_when_done=True)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # the launcher's cleanup stops the workers, who release

    signal.signal(signal.SIGTERM, interrupt)
    with _api(url, token) as client:
        client.get_experiment(experiment_id)  # a wrong id or token: the API's message
    console = _console(stderr=True)
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{workers} {backend} workers: runs finished", total=None)
        try:
            report = engine.launch(
                url,
                token,
                experiment_id,
                workers=workers,
                backend=backend,
                options=options,
                ray_address=ray_address,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                log_dir=log_dir,
            )
        except KeyboardInterrupt:
            bar.stop()
            console.print(
                f"interrupted after {time.monotonic() - started:.0f} s: "
                "the workers released their runs"
            )
            raise typer.Exit(130) from None
        except (ValueError, RuntimeError) as exc:
            raise _fail(str(exc)) from None
    for line in report.summary_lines():
        typer.echo(line)
    if report.errors:
        raise typer.Exit(1)
