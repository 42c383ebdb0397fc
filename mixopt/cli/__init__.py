"""The ``mixopt`` command line.

``serve``, ``db`` and ``token create`` work on the database directly (they run where the server
runs); ``experiment``, ``runs``, ``fit``, ``fits``, ``recommend``, ``predict`` and ``methods``
talk to a server through ``mixopt.client`` (``--url``/``$MIXOPT_URL``,
``--token``/``$MIXOPT_TOKEN``); ``backtest`` works on a file. Each command group has its module;
heavy imports (the client, rich, the service) happen inside the commands, so that
``mixopt --help`` stays fast.
"""

from __future__ import annotations

import inspect

import typer

from mixopt.cli import corpus, demo, experiments, fits, launch, methods, runs, server, worker

__all__ = ["app"]

app = typer.Typer(
    help="mixopt: find the best data mixture for training a language model.", no_args_is_help=True
)
# The order of registration is the order of ``mixopt --help``.
app.command()(demo.demo)
app.command()(server.version)
app.command()(server.serve)
app.command()(fits.fit)
app.command()(fits.recommend)
app.command()(fits.predict)
app.command()(fits.backtest)
app.command()(worker.worker)
app.command()(launch.launch)
app.command()(methods.methods)
app.add_typer(server.db_app, name="db")
app.add_typer(server.token_app, name="token")
app.add_typer(experiments.experiment_app, name="experiment")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(fits.fits_app, name="fits")
app.add_typer(corpus.corpus_app, name="corpus")


def _unwrapped(doc: str) -> str:
    """A docstring's paragraphs each on one line: Typer's rich help keeps a docstring's line
    breaks in command lists, so hand-wrapped lines broke mid-sentence at any other width."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _unwrap_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = _unwrapped(command.callback.__doc__)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _unwrap_help(sub.typer_instance)


_unwrap_help(app)
