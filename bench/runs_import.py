"""``mixopt runs import`` of the 512 RegMix runs against ``mixopt serve``, on SQLite and Postgres.

    .venv/bin/python bench/runs_import.py [--backend sqlite|postgres|both] [--repeat 3]

Each repeat imports into a fresh experiment of one server process. Prints, per backend, the
median and best of: the whole command run in-process (planning the CSV files, reading the
experiment and its runs, the imports), the planning alone, and their difference, the HTTP part;
once, the command as a child process (``python -m mixopt.cli``, with Python's start-up) and a
re-import of the same files (all present); and the import requests alone, timed through
``MixoptClient`` under the same load: one ``import_run`` per run against ``import_runs``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from typer.testing import CliRunner

# Run as a script (python bench/x.py): the repository root is what imports resolve against.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import SERVER
from mixopt.cli import app
from mixopt.cli.runs import _import_fields
from mixopt.client import MixoptClient
from mixopt.runs_csv import plan_import
from mixopt.settings import normalise_database_url
from service.store import SqlStore, schema
from service.store.sql import make_engine
from tests.regmix_data import DATA, WEIGHT_PREFIX
from tests.servers import ServerProcess

WEIGHTS = DATA / "train_mixture_1m.csv"
LOSSES = DATA / "train_pile_loss_1m.csv"


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A migrated, empty database of ``backend``; a Postgres one is dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
        return
    server_url = normalise_database_url(SERVER)
    name = f"mixopt_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench(backend: str, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, database(backend, Path(tmp)) as url:
        engine = make_engine(url)
        _, token = SqlStore(engine).create_token("bench", "admin", None)
        engine.dispose()
        process = ServerProcess(url, Path(tmp)).start()
        try:
            with WEIGHTS.open() as handle:
                header = handle.readline().strip().split(",")
            domains = [c.removeprefix(WEIGHT_PREFIX) for c in header if c != "index"]
            client = MixoptClient(process.url, token)

            def experiment(i: int) -> str:
                return client.create_experiment(
                    {
                        "name": f"regmix-{backend}-{i}",
                        "method": "regmix",
                        "domains": [{"name": d} for d in domains],
                        "objective": {"metrics": {"metric/the_pile_pile_cc_val_loss": 1.0}},
                    }
                ).id

            def command(eid: str) -> list[str]:
                args = ["runs", "import", eid, str(WEIGHTS), "--metrics-file", str(LOSSES)]
                return [*args, "--url", process.url, "--token", token]

            runner = CliRunner()

            def in_process(eid: str) -> None:
                result = runner.invoke(app, command(eid), env={"COLUMNS": "200"})
                assert result.exit_code == 0, result.output
                assert "512 new, 0 already present" in result.stdout, result.stdout

            totals = []
            for i in range(repeat):
                eid = experiment(i)
                totals.append(timed(partial(in_process, eid)))
            plans = [
                timed(lambda: plan_import(domains, WEIGHTS, metrics_path=LOSSES))
                for _ in range(repeat)
            ]
            child_eid = experiment(repeat)
            child = timed(
                lambda: subprocess.run(
                    [sys.executable, "-m", "mixopt.cli", *command(child_eid)],
                    check=True,
                    capture_output=True,
                )
            )
            again = timed(lambda: in_process_again(runner, command(child_eid)))
            # The requests alone, as the command sends them: one per run, or batches.
            rows = [
                _import_fields(r) for r in plan_import(domains, WEIGHTS, metrics_path=LOSSES).rows
            ]
            singles: list[float] = []
            batches: list[float] = []

            def one_by_one(eid: str) -> None:
                for fields in rows:
                    client.import_run(eid, **fields)

            for i in range(repeat):
                eid = experiment(repeat + 1 + 2 * i)
                singles.append(timed(partial(one_by_one, eid)))
                eid = experiment(repeat + 2 + 2 * i)
                batches.append(timed(partial(client.import_runs, eid, rows)))
            client.close()
        finally:
            process.stop()
    total, plan = statistics.median(totals), statistics.median(plans)
    print(
        f"{backend:8s} in-process {total:.3f} s (best {min(totals):.3f}), planning {plan:.3f} s, "
        f"HTTP part {total - plan:.3f} s; child process {child:.3f} s; "
        f"re-import (all present) {again:.3f} s"
    )
    print(
        f"{'':8s} requests alone: one per run {statistics.median(singles):.3f} s "
        f"(best {min(singles):.3f}), one batch {statistics.median(batches):.3f} s "
        f"(best {min(batches):.3f})"
    )


def in_process_again(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "0 new, 512 already present" in result.stdout, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        bench(backend, args.repeat)


if __name__ == "__main__":
    main()
