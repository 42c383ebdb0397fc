"""``mixopt experiment export/import``, run in-process (CliRunner): straight from an embedded
SQLite file into Postgres without a server, and through a live server."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mixopt import schemas
from mixopt.cli import app
from mixopt.settings import Settings
from service.main import create_app
from service.operations import Operations
from service.store import SqlStore
from service.store.sql import make_engine
from tests.conftest import Tokens, _truncate
from tests.servers import ThreadedServer
from tests.service.conftest import experiment_body


def run_cli(*args: str, expect: int = 0) -> Result:
    result = CliRunner().invoke(
        app, list(args), env={"COLUMNS": "240", "MIXOPT_URL": None, "MIXOPT_TOKEN": None}
    )
    assert result.exit_code == expect, (result.output, result.exception)
    return result


def fill(store: SqlStore) -> str:
    """An offline experiment with completed, pending and excluded runs and metric points."""
    ops = Operations(store)
    experiment = ops.create_experiment(schemas.ExperimentCreate.model_validate(experiment_body()))
    runs = ops.propose(experiment.id, schemas.ProposalRequest(count=5))
    for i, run in enumerate(runs[:3]):
        store.complete(run.id, {"val_loss/web": 3.0 + i}, None)
        store.append_metrics(run.id, [("val_loss/web", 100, 3.5 + i)])
    store.exclude(runs[0].id, True, "bad node")
    return experiment.id


def runs_without_ids(store: SqlStore, experiment_id: str) -> list[dict[str, object]]:
    return [
        {k: v for k, v in vars(r).items() if k not in ("id", "experiment_id")}
        for r in store.iter_runs(experiment_id)
    ]


@pytest.fixture
def sqlite_file(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "embedded.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url(pg_database: str) -> str:
    _truncate(pg_database)
    return pg_database


def test_an_experiment_moves_from_a_sqlite_file_into_postgres_without_a_server(
    sqlite_file: str, postgres_url: str, tmp_path: Path
) -> None:
    source = SqlStore(make_engine(sqlite_file))
    target = SqlStore(make_engine(postgres_url))
    try:
        eid = fill(source)
        archive = tmp_path / "pile.json.gz"
        run_cli("experiment", "export", eid, "-o", str(archive), "--database-url", sqlite_file)
        assert json.loads(gzip.decompress(archive.read_bytes()))["format"] == "mixopt-experiment"

        first = run_cli("experiment", "import", str(archive), "--database-url", postgres_url)
        new = first.stdout.strip().splitlines()[-1]
        assert "imported experiment 'pile-3' (5 runs)" in first.stdout
        assert runs_without_ids(target, new) == runs_without_ids(source, eid)
        moved = next(iter(target.iter_runs(new)))
        assert target.list_metrics(moved.id, name=None, limit=10, cursor=None).items

        again = run_cli("experiment", "import", str(archive), "--database-url", postgres_url)
        assert "already imported" in again.stdout
        assert again.stdout.strip().splitlines()[-1] == new
        assert len(target.list_experiments(status=None, limit=10, cursor=None).items) == 1
    finally:
        source.close()
        target.close()


def test_a_bad_archive_file_is_a_clear_error(sqlite_file: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "mixopt-experiment", "version": 99}))
    result = run_cli("experiment", "import", str(bad), "--database-url", sqlite_file, expect=1)
    assert "archive version 99" in result.output
    result = run_cli(
        "experiment",
        "export",
        "42",
        "-o",
        str(tmp_path / "x.json"),
        "--database-url",
        sqlite_file,
        expect=1,
    )
    assert "experiment 42 not found" in result.output
    assert not (tmp_path / "x.json").exists()


@pytest.fixture
def server(store: SqlStore) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(Settings(token_cache_seconds=0), store)) as running:
        yield running


def test_export_and_import_through_a_server(
    server: ThreadedServer, store: SqlStore, tokens: Tokens, tmp_path: Path
) -> None:
    eid = fill(store)
    remote = ("--url", server.url, "--token", tokens.admin)
    archive = tmp_path / "pile.json"
    run_cli("experiment", "export", eid, "-o", str(archive), *remote)
    assert json.loads(archive.read_text())["experiment"]["id"] == eid

    first = run_cli("experiment", "import", str(archive), "--name", "pile-copy", *remote)
    new = first.stdout.strip().splitlines()[-1]
    assert new != eid and store.get_experiment(new).name == "pile-copy"
    assert runs_without_ids(store, new) == runs_without_ids(store, eid)
    again = run_cli("experiment", "import", str(archive), "--name", "pile-copy", *remote)
    assert again.stdout.strip().splitlines()[-1] == new

    # The archive is known whatever the name asked; a fresh export is a new archive, whose
    # name is taken by the active original: 409, said plainly.
    same = run_cli("experiment", "import", str(archive), *remote)
    assert "already imported" in same.stdout and same.stdout.strip().splitlines()[-1] == new
    run_cli("experiment", "export", eid, "-o", str(archive), *remote)
    taken = run_cli("experiment", "import", str(archive), *remote, expect=1)
    assert "409" in taken.output and "already named 'pile-3'" in taken.output
    refused = run_cli(
        "experiment",
        "export",
        eid,
        "-o",
        str(archive),
        "--url",
        server.url,
        "--token",
        tokens.write,
        expect=1,
    )
    assert "403" in refused.output
