"""``mixopt launch``: N workers on one experiment until it is drained (``mixopt.launch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixopt.cli._common import Token, Url, _api, _console, _fail
from mixopt.cli.worker import (
    CheckpointDir,
    Command,
    CorpusDir,
    Device,
    LeaseSeconds,
    MaxRuns,
    Preset,
    ProxyConfigFile,
    Steps,
    Threads,
    worker_options,
)
from mixopt.schemas import DEFAULT_URL


def launch(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment to drain")],
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="workers to run")] = 1,
    backend: Annotated[
        str, typer.Option(help="local (subprocesses) or ray (tasks on a Ray cluster)")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster (e.g. auto) [default: a local Ray]", show_default=False),
    ] = None,
    command: Command = None,
    corpus: CorpusDir = None,
    preset: Preset = None,
    proxy_config: ProxyConfigFile = None,
    steps: Steps = None,
    device: Device = None,
    threads: Threads = None,
    checkpoint_dir: CheckpointDir = None,
    name: Annotated[
        str | None,
        typer.Option(help="worker name prefix (NAME-0, NAME-1, ...) [default: HOST/PID]"),
    ] = None,
    lease_seconds: LeaseSeconds = 600,
    poll_seconds: Annotated[
        float, typer.Option(min=0.1, help="how often idle workers look for work")
    ] = 5,
    max_runs: MaxRuns = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(help="local workers' logs [default: a temporary directory]"),
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
    options = worker_options(
        command=command,
        corpus=corpus,
        preset=preset,
        proxy_config=proxy_config,
        steps=steps,
        device=device,
        threads=threads,
        checkpoint_dir=checkpoint_dir,
        name=name,
        lease_seconds=lease_seconds,
        poll_seconds=poll_seconds,
        max_runs=max_runs,
        exit_when_done=True,
    )

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
