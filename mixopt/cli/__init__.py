"""The ``mixopt`` command line.

``serve``, ``db`` and ``token create`` work on the database directly (they run where the server
runs); ``experiment``, ``runs``, ``fit`` and ``recommend`` talk to a server through
``mixopt.client`` (``--url``/``$MIXOPT_URL``, ``--token``/``$MIXOPT_TOKEN``); ``backtest`` works
on a file. Each command group has its module; heavy imports (the client, rich, the service)
happen inside the commands, so that ``mixopt --help`` stays fast.
"""

from __future__ import annotations

import typer

from mixopt.cli import corpus, demo, experiments, fits, launch, runs, server, worker

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
app.command()(fits.backtest)
app.command()(worker.worker)
app.command()(launch.launch)
app.add_typer(server.db_app, name="db")
app.add_typer(server.token_app, name="token")
app.add_typer(experiments.experiment_app, name="experiment")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(corpus.corpus_app, name="corpus")
