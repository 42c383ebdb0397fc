"""``mixopt worker``: train pending runs with a command or the built-in proxy trainer
(``mixopt.worker``). The option types are shared with ``mixopt launch``."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mixopt.cli._common import Token, Url, _api, _fail
from mixopt.schemas import DEFAULT_URL

if TYPE_CHECKING:
    from mixopt.client import MixoptClient
    from mixopt.worker import Worker, WorkerOptions

Command = Annotated[
    str | None,
    typer.Option(
        "--command",
        "-c",
        help="training command for one run, run in --workdir; it reads MIXOPT_WEIGHTS / "
        "MIXOPT_RUN_FILE and writes its final metrics as JSON to MIXOPT_METRICS_FILE. Split "
        "into arguments, not run by a shell: $VARS are not expanded unless --shell",
        show_default=False,
    ),
]
CorpusDir = Annotated[
    Path | None,
    typer.Option(
        "--corpus",
        help="train each run in-process with the built-in proxy trainer on this corpus "
        "directory (needs torch: the trainer extra)",
        show_default=False,
    ),
]
Preset = Annotated[
    str | None, typer.Option(help="proxy model preset: tiny, small, ...", show_default="tiny")
]
ProxyConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--proxy-config",
        help="JSON {model: {...}, train: {...}} merged over the preset",
        show_default=False,
    ),
]
Steps = Annotated[int | None, typer.Option(min=1, help="training steps per run")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto")]
Threads = Annotated[int | None, typer.Option(min=1, help="torch threads per worker")]
CheckpointDir = Annotated[
    Path | None,
    typer.Option(
        help="save a stopped run's checkpoint here; the next claimer resumes it",
        show_default=False,
    ),
]
Workdir = Annotated[
    Path | None,
    typer.Option(
        help="directory the command runs in; each run also gets a scratch directory of its "
        "own in MIXOPT_RUN_DIR",
        show_default="the current directory",
    ),
]
Shell = Annotated[
    bool,
    typer.Option("--shell", help="run the command with /bin/sh -c ($VARS, pipes and && work)"),
]
MaxFailures = Annotated[
    int,
    typer.Option(
        "--max-failures",
        min=0,
        help="stop after this many failed attempts in a row (0: never)",
    ),
]
FailureBackoff = Annotated[
    float,
    typer.Option(
        "--failure-backoff",
        min=0,
        help="seconds to wait after a failed attempt, doubling with each one in a row (at "
        "most 300)",
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="log every HTTP request and debug details")
]
LeaseSeconds = Annotated[
    int, typer.Option(min=10, max=86400, help="a claim's lease, renewed by heartbeats")
]
MaxRuns = Annotated[int | None, typer.Option(min=1, help="stop after this many runs")]

# How each worker trains: the flags ``worker`` and ``launch`` share, defined once here as
# (parameter, annotation, default). ``with_training_flags`` puts them in a command's signature.
TRAINING_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("command", Command, None),
    ("corpus", CorpusDir, None),
    ("preset", Preset, None),
    ("proxy_config", ProxyConfigFile, None),
    ("steps", Steps, None),
    ("device", Device, None),
    ("threads", Threads, None),
    ("checkpoint_dir", CheckpointDir, None),
    ("workdir", Workdir, None),
    ("shell", Shell, False),
    ("max_failures", MaxFailures, 5),
    ("failure_backoff", FailureBackoff, 5.0),
    ("lease_seconds", LeaseSeconds, 600),
    ("max_runs", MaxRuns, None),
)


def with_training_flags(command: Callable[..., None]) -> Callable[..., None]:
    """The command with the training flags (``TRAINING_FLAGS``) in place of its parameter
    ``training``, which receives their values as one dict (keyword arguments of
    ``worker_options``). Typer reads a command's flags from its signature, hence this one."""
    signature = inspect.signature(command, eval_str=True)
    parameters = list(signature.parameters.values())
    at = [p.name for p in parameters].index("training")
    parameters[at : at + 1] = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in TRAINING_FLAGS
    ]

    @functools.wraps(command)
    def with_flags(**values: Any) -> None:
        training = {name: values.pop(name) for name, _, _ in TRAINING_FLAGS}
        command(training=training, **values)

    with_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_flags.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_flags


def worker_options(
    *,
    command: str | None,
    corpus: Path | None,
    preset: str | None,
    proxy_config: Path | None,
    steps: int | None,
    device: str | None,
    threads: int | None,
    checkpoint_dir: Path | None,
    name: str | None = None,
    lease_seconds: int = 600,
    heartbeat_seconds: float | None = None,
    poll_seconds: float = 30,
    max_runs: int | None = None,
    exit_when_idle: bool = False,
    exit_when_done: bool = False,
    workdir: Path | None = None,
    shell: bool = False,
    max_failures: int = 5,
    failure_backoff: float = 5.0,
) -> WorkerOptions:
    """The flags as ``WorkerOptions``, or exit with what is inconsistent."""
    from mixopt.worker import WorkerOptions

    options = WorkerOptions(
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
        heartbeat_seconds=heartbeat_seconds,
        poll_seconds=poll_seconds,
        max_runs=max_runs,
        exit_when_idle=exit_when_idle,
        exit_when_done=exit_when_done,
        workdir=workdir,
        shell=shell,
        max_consecutive_failures=max_failures or None,
        failure_backoff_seconds=failure_backoff,
    )
    try:
        options.check()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return options


@with_training_flags
def worker(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment to work for")],
    *,
    training: dict[str, Any],
    name: Annotated[str | None, typer.Option(help="worker name", show_default="HOST/PID")] = None,
    heartbeat_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="how often to renew the lease", show_default="a third of the lease"
        ),
    ] = None,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="wait when nothing is pending")] = 30,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="stop when no run is pending")
    ] = False,
    exit_when_done: Annotated[
        bool,
        typer.Option(
            "--exit-when-done",
            help="stop when no run is pending or running (others' runs may still come back)",
        ),
    ] = False,
    verbose: Verbose = False,
    stats_file: Annotated[
        Path | None, typer.Option(hidden=True, help="write the final counts here as JSON")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Claim pending runs and train each with --command, or in-process on --corpus (exactly
    one): complete, fail (retried) or release (SIGTERM, SIGINT)."""
    import logging
    from dataclasses import asdict

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not verbose:
        # httpx logs every request at INFO: half the output of a worker, none of it news.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    options = worker_options(
        **training,
        name=name,
        heartbeat_seconds=heartbeat_seconds,
        poll_seconds=poll_seconds,
        exit_when_idle=exit_when_idle,
        exit_when_done=exit_when_done,
    )
    with _api(url, token) as client:
        runner = build_or_exit(client, experiment_id, options)
        runner.install_signal_handlers()
        stats = runner.run(
            max_runs=options.max_runs, exit_when_idle=exit_when_idle, exit_when_done=exit_when_done
        )
    if stats_file is not None:
        stats_file.write_text(json.dumps(asdict(stats)))
    typer.echo(
        f"worker done: {stats.completed} completed, {stats.failed} failed, "
        f"{stats.released} released"
    )
    if stats.gave_up is not None:
        raise _fail(f"{stats.gave_up}. Fix the command and start the worker again")


def build_or_exit(client: MixoptClient, experiment_id: str, options: WorkerOptions) -> Worker:
    """``build_worker``, its errors (a missing corpus, a bad proxy config, no torch) as a
    message and exit status 2 rather than a traceback."""
    from mixopt.worker import build_worker
    from proxy_trainer.corpus.format import CorpusError  # numpy only, no torch

    try:
        return build_worker(client, experiment_id, options)
    except (ValueError, RuntimeError, CorpusError) as exc:
        raise _fail(str(exc)) from None
