"""The API commands of the ``mixopt`` CLI, run in-process (CliRunner) against a live server on
SQLite and on Postgres; ``runs import`` of the real RegMix files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url
from typer.testing import CliRunner, Result

import mixopt.client
from mixopt.cli import app
from mixopt.client import MixoptClient
from mixopt.settings import Settings
from service.main import create_app
from service.store import NewRun, SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer

REGMIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "regmix"
WEIGHTS_FILE = REGMIX / "train_mixture_1m.csv"
LOSSES_FILE = REGMIX / "train_pile_loss_1m.csv"
PILE_PREFIX = "train_the_pile_"

Invoke = Callable[..., Result]


def regmix_domains() -> list[str]:
    with WEIGHTS_FILE.open() as handle:
        header = next(csv.reader(handle))
    return [c[len(PILE_PREFIX) :] for c in header if c.startswith(PILE_PREFIX)]


def experiment_spec(name: str, domains: list[str], objective: str) -> dict[str, Any]:
    return {
        "name": name,
        "method": "regmix",
        "domains": [{"name": d} for d in domains],
        "objective": {"metrics": {objective: 1.0}},
        "config": {"seed": 1},
    }


@pytest.fixture
def server(store: SqlStore) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(Settings(token_cache_seconds=0), store)) as running:
        yield running


@pytest.fixture
def mixopt_cli(server: ThreadedServer, tokens: Tokens) -> Invoke:
    """Run ``mixopt ARGS --url URL --token TOKEN`` in-process (admin token unless given)."""
    runner = CliRunner()

    def invoke(*args: str, token: str | None = None, expect: int | None = 0) -> Result:
        result = runner.invoke(
            app,
            [*args, "--url", server.url, "--token", token or tokens.admin],
            env={"COLUMNS": "240", "MIXOPT_URL": None, "MIXOPT_TOKEN": None},
        )
        if expect is not None:
            assert result.exit_code == expect, (result.output, result.exception)
        return result

    return invoke


@pytest.fixture
def api(server: ThreadedServer, tokens: Tokens) -> Iterator[MixoptClient]:
    with MixoptClient(server.url, tokens.admin) as client:
        yield client


def create(api: MixoptClient, tmp_path: Path, invoke: Invoke, spec: dict[str, Any]) -> str:
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    result = invoke("experiment", "create", "-f", str(path))
    return result.stdout.strip().splitlines()[-1]


def test_experiment_create_from_yaml_or_json_and_list(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path, tokens: Tokens
) -> None:
    yaml_spec = tmp_path / "spec.yaml"
    yaml_spec.write_text(
        "name: pile-3\n"
        "method: regmix\n"
        "domains:\n"
        # YAML 1.2 numbers (PyYAML alone reads both as strings, which strict bodies refuse)
        "  - {name: web, tokens: 6e9}\n"
        "  - {name: code, tokens: 2.0e9}\n"
        "  - {name: papers, max_weight: 0.5}\n"
        "objective:\n"
        "  metrics: {val_loss/web: 1.0}\n"
        "config: {seed: 7}\n"
    )
    result = mixopt_cli("experiment", "create", "-f", str(yaml_spec))
    eid = result.stdout.strip().splitlines()[-1]
    assert "regmix over 3 domains" in result.stdout
    experiment = api.get_experiment(eid)
    assert experiment.name == "pile-3"
    assert [d.name for d in experiment.domains] == ["web", "code", "papers"]
    assert experiment.domains[2].max_weight == 0.5
    assert experiment.config["seed"] == 7

    json_spec = tmp_path / "spec.json"
    json_spec.write_text(json.dumps({**experiment_spec("other", ["a", "b"], "loss"), "config": {}}))
    other = mixopt_cli("experiment", "create", "-f", str(json_spec)).stdout.split()[-1]

    for run in api.propose(eid, 3):
        api.complete(run.id, {"val_loss/web": 3.0})
    api.propose(eid, 2)
    api.exclude(api.propose(other, 1)[0].id)

    listing = mixopt_cli("experiment", "list").stdout
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if "│" in line}
    assert [cell.strip() for cell in rows[eid].split("│")[2:12]] == [
        "pile-3", "offline", "regmix", "3", "active", "2", "0", "3", "0", "0",
    ]  # fmt: skip
    assert [cell.strip() for cell in rows[other].split("│")[2:12]] == [
        "other", "offline", "regmix", "2", "active", "1", "0", "0", "0", "1",
    ]  # fmt: skip
    assert "2 experiments" in listing
    as_json = json.loads(mixopt_cli("experiment", "list", "--json").stdout)
    assert {e["id"] for e in as_json} == {eid, other}
    api.archive_experiment(other)
    archived = json.loads(mixopt_cli("experiment", "list", "--status", "archived", "--json").stdout)
    assert [e["id"] for e in archived] == [other]

    # Refusals: a duplicate name (409), an invalid file (before sending), a read token (403).
    duplicate = mixopt_cli("experiment", "create", "-f", str(yaml_spec), expect=1)
    assert "409" in duplicate.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: x\nmethod: regmix\ndomains: [{name: a}]\n")
    refused = mixopt_cli("experiment", "create", "-f", str(invalid), expect=2)
    assert "domains" in refused.stderr
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("name: [unclosed\n")
    assert "cannot read" in mixopt_cli("experiment", "create", "-f", str(not_yaml), expect=2).stderr
    json_spec.write_text(json.dumps(experiment_spec("third", ["a", "b"], "loss")))
    forbidden = mixopt_cli(
        "experiment", "create", "-f", str(json_spec), token=tokens.read, expect=1
    )
    assert "403" in forbidden.stderr


def test_regmix_import_creates_512_runs_and_reimport_is_a_no_op(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    domains = regmix_domains()
    assert len(domains) == 17
    objective = "metric/the_pile_pile_cc_val_loss"
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("regmix-1m", domains, objective))

    imported = mixopt_cli(
        "runs", "import", eid, str(WEIGHTS_FILE), "--metrics-file", str(LOSSES_FILE)
    ).stdout
    assert "512 rows, 17 domains (columns train_the_pile_<domain>), 13 metrics" in imported
    assert "renormalised 303 rows" in imported  # 209 rows sum to 1, 303 within 1 %, none beyond
    assert "512 new, 0 already present" in imported

    experiment = api.get_experiment(eid)
    assert experiment.counts.completed == 512
    runs = list(api.iter_runs(eid))
    assert len(runs) == 512
    with WEIGHTS_FILE.open() as handle:
        table = {row["index"]: row for row in csv.DictReader(handle)}
    with LOSSES_FILE.open() as handle:
        losses = {row["index"]: row for row in csv.DictReader(handle)}
    for run in runs:
        assert run.external_id is not None
        stem, key = run.external_id.split(":")
        assert stem == "train_mixture_1m"
        assert set(run.weights) == set(domains)
        assert abs(math.fsum(run.weights.values()) - 1) <= 1e-9
        raw = {d: float(table[key][PILE_PREFIX + d]) for d in domains}
        total = math.fsum(raw.values())
        for d in domains:
            assert math.isclose(run.weights[d], raw[d] / total, rel_tol=1e-12, abs_tol=1e-15)
        assert len(run.metrics) == 13
        assert run.metrics == {n: float(v) for n, v in losses[key].items() if n != "index"}

    again = mixopt_cli(
        "runs", "import", eid, str(WEIGHTS_FILE), "--metrics-file", str(LOSSES_FILE)
    ).stdout
    assert "0 new, 512 already present" in again
    assert [r.id for r in api.iter_runs(eid)] == [r.id for r in runs]

    fitted = mixopt_cli("fit", eid, "--model", "linear").stdout
    assert "linear (requested linear) on 512 runs" in fitted
    assert "5-fold cross-validation" in fitted
    assert "domain importance" in fitted
    report = next(api.iter_fits(eid))
    assert 0.85 <= (report.cv.spearman or 0) <= 0.95  # the known linear baseline, about 0.9
    recommended = mixopt_cli("recommend", eid).stdout
    stored = api.recommendation(eid)
    top = max(stored.weights, key=lambda d: stored.weights[d])
    row = next(line for line in recommended.splitlines() if f"│ {top} " in line)
    assert row.split("│")[2].strip() == f"{stored.weights[top]:.4f}"
    assert "predicted minimize objective" in recommended
    assert json.loads(mixopt_cli("recommend", eid, "--json").stdout)["fit_id"] == stored.fit_id


def regmix_swarm() -> list[tuple[dict[str, float], dict[str, float]]]:
    """The RegMix training swarm: renormalised weights and the 13 losses of each run."""
    with WEIGHTS_FILE.open() as handle:
        mixtures = list(csv.DictReader(handle))
    with LOSSES_FILE.open() as handle:
        losses = {row.pop("index"): row for row in csv.DictReader(handle)}
    swarm = []
    for row in mixtures:
        raw = {k[len(PILE_PREFIX) :]: float(v) for k, v in row.items() if k != "index"}
        total = math.fsum(raw.values())
        metrics = {name: float(value) for name, value in losses[row["index"]].items()}
        swarm.append(({d: w / total for d, w in raw.items()}, metrics))
    return swarm


# Postgres only, to keep these tests within their time budget: it is the backend that could alter
# floats (JSONB keeps numbers as decimals); SQLite's exactness is checked by the RegMix import.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_exported_runs_csv_round_trips_into_a_fresh_experiment(
    mixopt_cli: Invoke, api: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    domains = regmix_domains()
    objective = "metric/the_pile_pile_cc_val_loss"
    source = create(api, tmp_path, mixopt_cli, experiment_spec("source", domains, objective))
    swarm = regmix_swarm()
    runs = [
        NewRun(weights, metrics=metrics, status="completed", tags={"seed": str(i % 3)})
        for i, (weights, metrics) in enumerate(swarm[:500])
    ]
    runs += [NewRun(w, tags={"size": "1M"}, params={"lr": 0.001}) for w, _ in swarm[500:510]]
    runs += [NewRun(w, status="failed") for w, _ in swarm[510:]]
    stored = store.add_runs(source, runs)
    for run in stored[::100]:
        api.exclude(run.id, reason="bad node")

    exported = tmp_path / "regmix-export.csv"
    mixopt_cli("runs", "export", source, "-o", str(exported))
    on_stdout = mixopt_cli("runs", "export", source).stdout
    assert on_stdout == exported.read_text()
    assert len(on_stdout.splitlines()) == 513

    fresh = create(api, tmp_path, mixopt_cli, experiment_spec("copy", domains, objective))
    copied = mixopt_cli("runs", "import", fresh, str(exported), "--jobs", "4").stdout
    assert "512 rows, 17 domains (columns weight/<domain>), 13 metrics" in copied
    assert "renormalised 0 rows" in copied
    assert "512 new, 0 already present" in copied
    originals = {r.id: r for r in api.iter_runs(source)}
    copies = list(api.iter_runs(fresh))
    assert len(copies) == 512
    for copy in copies:
        assert copy.external_id is not None
        stem, original_id = copy.external_id.split(":")
        assert stem == "regmix-export"
        original = originals[original_id]
        assert copy.weights == original.weights  # exactly: floats survive the CSV round trip
        assert copy.metrics == original.metrics
        assert (copy.status, copy.tags, copy.params, copy.excluded) == (
            original.status,
            original.tags,
            original.params,
            original.excluded,
        )
    counts = api.get_experiment(fresh).counts
    assert (counts.completed, counts.pending, counts.failed, counts.excluded) == (500, 10, 2, 6)
    again = mixopt_cli("runs", "import", fresh, str(exported)).stdout
    assert "0 new, 512 already present" in again


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def export_rows(text: str) -> list[dict[str, str]]:
    """An export's rows without run_id and created_at, which each experiment's runs have of
    their own."""
    return [
        {k: v for k, v in row.items() if k not in ("run_id", "created_at")}
        for row in csv.DictReader(text.splitlines())
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_export_of_imported_regmix_runs_imports_into_a_fresh_experiment_as_the_same_file(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    # The first 40 runs of the RegMix files, under their own names (the stem makes the lineage).
    for source_file in (WEIGHTS_FILE, LOSSES_FILE):
        lines = source_file.read_text().splitlines(keepends=True)
        (tmp_path / source_file.name).write_text("".join(lines[:41]))
    weights, losses = tmp_path / WEIGHTS_FILE.name, tmp_path / LOSSES_FILE.name
    domains = regmix_domains()
    objective = "metric/the_pile_pile_cc_val_loss"
    source = create(api, tmp_path, mixopt_cli, experiment_spec("source", domains, objective))
    args = ["--metrics-file", str(losses), "--tag", "size=1M"]
    mixopt_cli("runs", "import", source, str(weights), *args)
    api.exclude(next(api.iter_runs(source)).id, reason="bad node")
    first = tmp_path / "runs.csv"
    mixopt_cli("runs", "export", source, "-o", str(first))
    header = first.read_text().splitlines()[0]
    assert "metric/metric/" not in header
    assert "metric/the_pile_pile_cc_val_loss" in header.split(",")

    fresh = create(api, tmp_path, mixopt_cli, experiment_spec("copy", domains, objective))
    copied = mixopt_cli("runs", "import", fresh, str(first))
    assert "40 new, 0 already present" in copied.stdout
    assert "warning" not in copied.stderr
    originals = list(api.iter_runs(source))
    copies = list(api.iter_runs(fresh))
    assert [r.external_id for r in copies] == [f"train_mixture_1m:{i}" for i in range(1, 41)]
    assert [r.external_id for r in copies] == [r.external_id for r in originals]
    assert [r.metrics for r in copies] == [r.metrics for r in originals]
    assert {r.id for r in copies}.isdisjoint(r.id for r in originals)
    second = mixopt_cli("runs", "export", fresh).stdout
    assert export_rows(second) == export_rows(first.read_text())
    assert second.splitlines()[0] == header


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_import_warns_when_the_runs_lack_the_objectives_metric_and_says_how_to_fix_it(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    domains = regmix_domains()
    spec = experiment_spec("unprefixed", domains, "the_pile_pile_cc_val_loss")
    eid = create(api, tmp_path, mixopt_cli, spec)
    args = ["runs", "import", eid, str(WEIGHTS_FILE), "--metrics-file", str(LOSSES_FILE)]
    imported = mixopt_cli(*args)
    assert "512 new" in imported.stdout
    warning = " ".join(imported.stderr.split())  # as one line, however the console wraps it
    assert (
        "warning: no imported run has the objective's metric the_pile_pile_cc_val_loss, "
        "so a fit cannot use them; the file's metrics are "
        "metric/the_pile_arxiv_val_loss, metric/the_pile_dm_mathematics_val_loss, "
        "metric/the_pile_freelaw_val_loss, metric/the_pile_github_val_loss, "
        "metric/the_pile_gutenberg_pg_19_val_loss and 8 more"
    ) in warning
    assert (
        "it has 'metric/the_pile_pile_cc_val_loss': name the objective's metric so "
        f"(mixopt experiment edit {eid} --objective FILE), "
        "or import into a new experiment with --metric-prefix metric/"
    ) in warning
    refused = mixopt_cli("fit", eid, "--model", "linear", expect=1)
    assert "the_pile_pile_cc_val_loss" in refused.stderr

    # The fix it names: the objective renamed, the same import finds its metric.
    objective = tmp_path / "objective.json"
    objective.write_text(json.dumps({"metrics": {"metric/the_pile_pile_cc_val_loss": 1.0}}))
    mixopt_cli("experiment", "edit", eid, "--objective", str(objective))
    again = mixopt_cli(*args)
    assert "0 new, 512 already present" in again.stdout
    assert "warning" not in again.stderr

    # The other way round: the objective in full, the file's names stripped of the prefix.
    prefixed = create(
        api,
        tmp_path,
        mixopt_cli,
        experiment_spec("prefixed", domains, "metric/the_pile_pile_cc_val_loss"),
    )
    stripped = mixopt_cli(
        "runs",
        "import",
        prefixed,
        str(WEIGHTS_FILE),
        "--metrics-file",
        str(LOSSES_FILE),
        "--metric-prefix",
        "metric/",
    )
    assert (
        "it has 'the_pile_pile_cc_val_loss': name the objective's metric so "
        f"(mixopt experiment edit {prefixed} --objective FILE), "
        "or import into a new experiment without --metric-prefix metric/"
    ) in " ".join(stripped.stderr.split())

    # Runs without metrics (to be trained) bring no warning.
    pending = write_csv(tmp_path / "todo.csv", domains, [[1] + [0] * (len(domains) - 1)])
    assert "warning" not in mixopt_cli("runs", "import", eid, str(pending)).stderr


def test_import_renormalises_rows_within_one_percent_and_refuses_the_others(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("small", ["a", "b", "c"], "loss"))
    table = write_csv(
        tmp_path / "mixes.csv",
        ["id", "w_a", "w_b", "w_c", "eval:loss", "eval:acc", "note"],
        [
            ["r1", 0.5, 0.3, 0.2, 3.0, 0.5, "x"],  # sums to 1
            ["r2", 0.5, 0.3, 0.195, 3.1, "", "x"],  # 0.995: renormalised; no accuracy
            ["r3", 0.5, 0.308, 0.2, 3.2, 0.4, "x"],  # 1.008: renormalised
            ["r4", 0.5, 0.28, 0.2, 3.3, 0.4, "x"],  # 0.98: refused
            ["r5", 0.5, -0.1, 0.6, 3.4, 0.4, "x"],  # negative: refused
            ["r6", 0.5, 0.3, 0.2, "nan", 0.4, "x"],  # not finite: refused
        ],
    )
    args = ["runs", "import", eid, str(table), "--external-id-column", "id"]
    args += ["--metric-prefix", "eval:", "--tag", "size=1M"]
    refused = mixopt_cli(*args, expect=1)
    assert "3 rows refused" in refused.stderr
    for label, reason in [("id=r4", "sum to 0.98"), ("id=r5", "negative"), ("id=r6", "nan")]:
        line = next(line for line in refused.stderr.splitlines() if label in line)
        assert reason in line
    assert "nothing imported" in refused.stderr
    assert list(api.iter_runs(eid)) == []

    done = mixopt_cli(*args, "--skip-invalid").stdout
    assert "renormalised 2 rows" in done
    assert "ignored columns: mixes.csv:note" in done
    assert "3 new, 0 already present, 3 rows skipped" in done
    runs = {r.external_id: r for r in api.iter_runs(eid)}
    assert set(runs) == {"mixes:r1", "mixes:r2", "mixes:r3"}
    assert runs["mixes:r1"].weights == {"a": 0.5, "b": 0.3, "c": 0.2}
    assert runs["mixes:r2"].weights == {"a": 0.5 / 0.995, "b": 0.3 / 0.995, "c": 0.195 / 0.995}
    assert runs["mixes:r2"].metrics == {"loss": 3.1}
    assert runs["mixes:r3"].metrics == {"loss": 3.2, "acc": 0.4}
    assert all(r.tags == {"size": "1M"} for r in runs.values())

    # A weights-only table without a key column: pending runs keyed by row number.
    pending = write_csv(tmp_path / "todo.csv", ["a", "b", "c"], [[0.2, 0.3, 0.5], [1, 0, 0]])
    out = mixopt_cli("runs", "import", eid, str(pending)).stdout
    assert "columns <domain>" in out
    assert "2 new" in out
    todo = [r for r in api.iter_runs(eid) if (r.external_id or "").startswith("todo:")]
    assert [(r.external_id, r.status) for r in todo] == [
        ("todo:1", "pending"),
        ("todo:2", "pending"),
    ]


def test_import_refuses_files_that_do_not_fit_the_experiment(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path, tokens: Tokens, server: ThreadedServer
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("fit", ["a", "b"], "loss"))
    cases = {
        "extra domain": (["index", "w_a", "w_b", "w_c"], "w_c", ["--weight-prefix", "w_"]),
        "missing domain": (["index", "w_a", "loss"], "cannot find a column", []),
        "bad metric name": (["index", "a", "b", "val loss"], "'val loss'", []),
    }
    for name, (header, message, extra) in cases.items():
        path = write_csv(tmp_path / "bad.csv", header, [[1] + [0.5] * (len(header) - 1)])
        result = mixopt_cli("runs", "import", eid, str(path), *extra, expect=2)
        assert message in result.stderr, name
    weights = write_csv(tmp_path / "w.csv", ["index", "a", "b"], [[1, 0.5, 0.5], [2, 1, 0]])
    metrics = write_csv(tmp_path / "m.csv", ["index", "loss"], [[1, 3.0], [3, 2.0]])
    joined = mixopt_cli(
        "runs", "import", eid, str(weights), "--metrics-file", str(metrics), expect=1
    ).stderr
    assert "no row with index=2 in m.csv" in joined
    assert "in m.csv but not in w.csv" in joined
    missing = mixopt_cli("runs", "import", "999999", str(weights), expect=1)
    assert "404" in missing.stderr
    many = write_csv(tmp_path / "many.csv", ["a", "b"], [[0.5, 0.5]] * 200)
    reader = mixopt_cli("runs", "import", eid, str(many), token=tokens.read, expect=1)
    assert "403" in reader.stderr
    # The import stopped at the first refusal instead of sending every row to be refused: the
    # 200 rows went in one batch request, and none alone.
    exposition = httpx.get(f"{server.url}/metrics").text
    refused = 'mixopt_http_requests_total{method="POST",route="add_runs_batch",status="403"}'
    assert [line.split()[-1] for line in exposition.splitlines() if line.startswith(refused)] == [
        "1.0"
    ]
    assert 'route="add_run"' not in exposition
    assert list(api.iter_runs(eid)) == []


def test_a_changed_file_conflicts_with_the_first_import(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("conflict", ["a", "b"], "loss"))
    path = tmp_path / "runs.csv"
    write_csv(path, ["index", "a", "b", "loss"], [[1, 0.5, 0.5, 3.0], [2, 0.4, 0.6, 3.5]])
    mixopt_cli("runs", "import", eid, str(path))
    write_csv(path, ["index", "a", "b", "loss"], [[1, 0.5, 0.5, 3.0], [2, 0.4, 0.6, 3.25]])
    result = mixopt_cli("runs", "import", eid, str(path), expect=1)
    assert "1 rows not imported" in result.stderr
    assert "index=2" in result.stderr
    assert "1 already present" in result.stdout
    assert sorted(r.metrics["loss"] for r in api.iter_runs(eid)) == [3.0, 3.5]


def test_a_refused_batch_is_sent_again_row_by_row_so_the_other_rows_go_in(
    mixopt_cli: Invoke,
    api: MixoptClient,
    tmp_path: Path,
    server: ThreadedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("fallback", ["a", "b"], "loss"))
    path = tmp_path / "runs.csv"
    write_csv(path, ["index", "a", "b", "loss"], [[1, 0.5, 0.5, 3.0], [2, 0.4, 0.6, 3.5]])
    mixopt_cli("runs", "import", eid, str(path))
    rows = [[1, 0.5, 0.5, 3.0], [2, 0.4, 0.6, 3.25], [3, 0.3, 0.7, 3.1], [4, 0.2, 0.8, 3.2]]
    write_csv(path, ["index", "a", "b", "loss"], rows)
    with monkeypatch.context() as patched:
        # As if the first import had committed after this one listed the stored runs: the
        # changed row goes in the batch, whose 409 stores nothing.
        patched.setattr(MixoptClient, "iter_runs", lambda *args, **kwargs: iter([]))
        result = mixopt_cli("runs", "import", eid, str(path), expect=1)
    assert "2 new, 1 already present" in result.stdout
    assert "1 rows not imported" in result.stderr
    line = next(line for line in result.stderr.splitlines() if "index=2" in line)
    assert "already stored with other weights or metrics" in line
    assert sorted(r.metrics["loss"] for r in api.iter_runs(eid)) == [3.0, 3.1, 3.2, 3.5]
    exposition = httpx.get(f"{server.url}/metrics").text
    counts = {
        line.split("{")[1].split("}")[0]: line.split()[-1]
        for line in exposition.splitlines()
        if line.startswith("mixopt_http_requests_total{") and "add_run" in line
    }
    assert counts == {
        'method="POST",route="add_runs_batch",status="201"': "1.0",  # the first import
        'method="POST",route="add_runs_batch",status="409"': "1.0",
        'method="POST",route="add_run",status="200"': "1.0",
        'method="POST",route="add_run",status="201"': "2.0",
        'method="POST",route="add_run",status="409"': "1.0",
    }

    # A row the schema refuses before sending: the others of its batch go in too.
    export = write_csv(
        tmp_path / "copy.csv",
        ["run_id", "status", "weight/a", "weight/b", "metric/loss", "tag/note"],
        [[1, "completed", 0.5, 0.5, 3.0, "ok"], [2, "completed", 0.4, 0.6, 3.5, "x" * 2000]],
    )
    copied = mixopt_cli("runs", "import", eid, str(export), expect=1)
    assert "1 new, 0 already present" in copied.stdout
    line = next(line for line in copied.stderr.splitlines() if "run_id=2" in line)
    assert "tags" in line
    assert len(list(api.iter_runs(eid))) == 5


# --- fit and recommend: every part of the contract's example answers is shown -----------------

FIT = {
    "id": "5", "model": "lightgbm", "requested": "auto", "n_runs": 512,
    "fitted_at": "2026-01-01T00:00:00Z",
    "cv": {"folds": 5, "spearman": 0.97, "pearson": 0.98, "mae": 0.004, "r2": 0.95},
    "candidates": [{"model": "linear", "spearman": 0.9}, {"model": "lightgbm", "spearman": 0.97}],
    "importance": {"web": 0.7, "code": 0.3}, "noise": {"replicate_groups": 3, "std": 0.004},
}  # fmt: skip
PREDICTED = {"value": 3.05, "low": 3.01, "high": 3.09}
RECOMMENDATION = {
    "weights": {"web": 0.6, "code": 0.4}, "predicted": PREDICTED,
    "baseline": {"weights": {"web": 0.75, "code": 0.25},
                 "predicted": {"value": 3.12, "low": 3.08, "high": 3.16}},
    "p_better_than_baseline": 0.97,
    "alternatives": [{"weights": {"web": 0.55, "code": 0.45},
                      "predicted": {"value": 3.06, "low": 3.02, "high": 3.10}}],
    "fit_id": "5", "model": "lightgbm",
    "n_runs": 512,
}  # fmt: skip
EXPERIMENT = {
    "id": "1", "name": "pile-2", "mode": "offline", "method": "regmix",
    "domains": [{"name": "web", "prior": 0.75}, {"name": "code", "prior": 0.25}],
    "objective": {"metrics": {"val_loss/web": 1.0}, "direction": "minimize"},
    "config": {}, "status": "active", "created_at": "2026-01-01T00:00:00Z",
}  # fmt: skip


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """The CLI's clients answer from the contract's examples instead of a server."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path.endswith("/fit"):
            return httpx.Response(200, json=FIT)
        if path.endswith("/recommendation"):
            return httpx.Response(200, json=RECOMMENDATION)
        return httpx.Response(200, json=EXPERIMENT)

    class Scripted(MixoptClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "transport": httpx.MockTransport(handler)})

    monkeypatch.setattr(mixopt.client, "MixoptClient", Scripted)
    return seen


def test_fit_and_recommend_print_tables(scripted: list[httpx.Request]) -> None:
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    fitted = runner.invoke(app, ["fit", "1", "--model", "lightgbm", "--token", "t"], env=env)
    assert fitted.exit_code == 0, fitted.output
    assert "fit 5: lightgbm (requested auto) on 512 runs" in fitted.stdout
    assert "0.9700" in fitted.stdout
    assert "lightgbm *" in fitted.stdout
    assert json.loads(scripted[0].read())["model"] == "lightgbm"
    assert scripted[0].headers["authorization"] == "Bearer t"

    shown = runner.invoke(app, ["recommend", "1"], env=env)
    assert shown.exit_code == 0, shown.output
    web = next(line for line in shown.stdout.splitlines() if "│ web" in line)
    # domain, recommended, baseline, prior, and the alternative's weight
    assert [c.strip() for c in web.split("│")[1:6]] == [
        "web",
        "0.6000",
        "0.7500",
        "0.7500",
        "0.5500",
    ]
    assert "3.0500 [3.0100, 3.0900]" in shown.stdout
    assert "0.97" in shown.stdout
    assert "alt 1: predicted 3.0600 [3.0200, 3.1000] (column alt 1)" in shown.stdout
    as_json = runner.invoke(app, ["recommend", "1", "--json"], env=env)
    assert json.loads(as_json.stdout)["weights"] == {"web": 0.6, "code": 0.4}
    fitted_json = runner.invoke(app, ["fit", "1", "--json", "--token", "t"], env=env)
    assert json.loads(fitted_json.stdout)["cv"]["spearman"] == 0.97


def test_recommend_says_whether_the_best_run_or_the_search_won_and_why(
    scripted: list[httpx.Request], monkeypatch: pytest.MonkeyPatch
) -> None:
    contest = {
        "weights": {"web": 0.55, "code": 0.45},
        "chosen": "best_run",
        "best_run": {
            "run_id": "17", "weights": {"web": 0.55, "code": 0.45}, "observed": 3.041,
            "predicted": {"value": 3.06, "low": 3.02, "high": 3.10},
        },
        "alternatives": [{"weights": {"web": 0.6, "code": 0.4}, "predicted": PREDICTED}],
        "reason": "best run: the model predicts the searched mixture 0.01 better than run 17",
    }  # fmt: skip
    for key, value in contest.items():
        monkeypatch.setitem(RECOMMENDATION, key, value)
    shown = CliRunner().invoke(app, ["recommend", "1"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "best observed run 17: reported 3.041, predicted 3.0600 [3.0200, 3.1000]" in (
        shown.stdout
    )
    assert "recommended: the best run (best run: the model predicts" in shown.stdout
    assert "alt 1: the searched mixture, predicted 3.0500" in shown.stdout


def test_fit_shows_the_tied_candidates_and_each_metric_of_a_per_metric_fit(
    scripted: list[httpx.Request], monkeypatch: pytest.MonkeyPatch
) -> None:
    per_metric_fit = {
        "model": "per_metric(gp)",
        "candidates": [
            {"model": "gp", "spearman": 0.95},
            {"model": "per_metric(gp)", "spearman": 0.96},
            {"model": "linear", "spearman": 0.5},
        ],
        "tied": ["per_metric(gp)", "gp"],
        "per_metric": [
            {"metric": "val_loss/web", "weight": 0.5, "model": "gp", "spearman": 0.9, "mae": 0.01},
            {"metric": "val_loss/code", "weight": 0.5, "model": "lightgbm", "spearman": 0.8},
        ],
    }
    for key, value in per_metric_fit.items():
        monkeypatch.setitem(FIT, key, value)  # what the scripted server answers
    fitted = CliRunner().invoke(app, ["fit", "1", "--token", "t"], env={"COLUMNS": "80"})
    assert fitted.exit_code == 0, fitted.output
    rows = {line.split("│")[1].strip(): line for line in fitted.stdout.splitlines() if "│" in line}
    assert "tied" in rows["per_metric(gp) *"] and "tied" in rows["gp"]
    assert "tied" not in rows["linear"]
    assert "metrics fitted one by one" in fitted.stdout
    assert [c.strip() for c in rows["val_loss/code"].split("│")[1:6]] == [
        "val_loss/code", "0.5000", "lightgbm", "0.8000", "-",
    ]  # fmt: skip
    assert "0.0100" in rows["val_loss/web"]


@pytest.fixture
def running_fit(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A server whose fits answer 202 running, then poll running once before ``final``."""
    script: dict[str, Any] = {"final": FIT, "polls": 0, "bodies": []}
    running = {**FIT, "n_runs": 0, "cv": {"folds": 0}, "candidates": [], "status": "running",
               "progress": {"elapsed_seconds": 0.5, "stage": "cross-validating auto"}}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/fit"):
            script["bodies"].append(json.loads(request.read()))
            return httpx.Response(202, json=running)
        script["polls"] += 1
        return httpx.Response(200, json=running if script["polls"] == 1 else script["final"])

    class Scripted(MixoptClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "transport": httpx.MockTransport(handler)})
            self._sleep = lambda seconds: None

    monkeypatch.setattr(mixopt.client, "MixoptClient", Scripted)
    return script


def test_fit_follows_a_running_fit_to_its_report(running_fit: dict[str, Any]) -> None:
    fitted = CliRunner().invoke(app, ["fit", "1", "--token", "t"], env={"COLUMNS": "200"})
    assert fitted.exit_code == 0, fitted.output
    assert running_fit["bodies"] == [{"model": "auto", "wait": False}]
    assert running_fit["polls"] == 2
    assert "fit 5: lightgbm (requested auto) on 512 runs" in fitted.stdout
    assert "lightgbm *" in fitted.stdout


def test_fit_no_wait_prints_the_id_and_a_failed_fit_is_an_error(
    running_fit: dict[str, Any],
) -> None:
    runner = CliRunner()
    started = runner.invoke(app, ["fit", "1", "--no-wait", "--token", "t"])
    assert started.exit_code == 0, started.output
    assert started.stdout == "5\n" and running_fit["polls"] == 0
    running_fit["final"] = {
        **FIT,
        "status": "failed",
        "reason": "every usable run has the same mixture",
    }
    failed = runner.invoke(app, ["fit", "1", "--token", "t"])
    assert failed.exit_code == 1
    assert "fit 5 failed: every usable run has the same mixture" in failed.stderr


def test_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mixopt.cli._common.CLI_RETRIES", 0)
    result = CliRunner().invoke(
        app, ["experiment", "list", "--url", "http://127.0.0.1:9", "--token", "t"]
    )
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr


# --- backtest (local: no server) -----------------------------------------------------------------


def backtest_cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["backtest", *args], env={"COLUMNS": "240"})


def test_backtest_replays_a_swarm_file_with_a_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "backtest.json"
    common = [
        str(WEIGHTS_FILE),
        "--metrics-file", str(LOSSES_FILE),
        "--weight-prefix", "train_the_pile_",
        "--objective", "metric/the_pile_pile_cc_val_loss",
        "--model", "linear", "--model", "auto",
        "--size", "32", "--size", "512",
    ]  # fmt: skip
    result = backtest_cli(*common, "-o", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "512 usable runs of 512, 17 domains" in result.stdout
    assert "auto → linear" in result.stdout
    assert "reference: lightgbm on all 512 runs" in result.stdout
    # --json: the same result on stdout and nothing else there; the commentary on stderr.
    as_json = backtest_cli(*common[:7], "--model", "linear", "--size", "32", "--json")
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.stdout)
    assert [(r["n_runs"], r["requested"]) for r in printed["rows"]] == [(32, "linear")]
    assert "512 usable runs of 512" in as_json.stderr
    report = json.loads(out.read_text())
    assert [(r["n_runs"], r["requested"]) for r in report["rows"]] == [
        (32, "linear"), (32, "auto"), (512, "linear"), (512, "auto"),
    ]  # fmt: skip
    assert report["rows"][0]["heldout_spearman"] > 0.7


def test_backtest_errors_are_clear(tmp_path: Path) -> None:
    common = [str(WEIGHTS_FILE), "--metrics-file", str(LOSSES_FILE)]
    several = backtest_cli(*common, "--weight-prefix", "train_the_pile_")
    assert several.exit_code == 2
    assert "pass --objective" in several.output and "the_pile_pile_cc_val_loss" in several.output
    unknown = backtest_cli(
        *common,
        "--weight-prefix", "train_the_pile_",
        "--objective", "metric/the_pile_pile_cc_val_loss",
        "--model", "forest",
    )  # fmt: skip
    assert unknown.exit_code == 2
    assert "unknown models 'forest'" in unknown.output
    no_weights = backtest_cli(*common)
    assert no_weights.exit_code == 2
    assert "pass --weight-prefix" in no_weights.output


def test_runs_retry_puts_failed_runs_back_by_id_or_by_experiment(
    mixopt_cli: Invoke, store: SqlStore
) -> None:
    from tests.test_worker import experiment

    eid = experiment(store, 3, max_attempts=1)
    runs = list(store.iter_runs(eid))
    for _ in runs:
        claimed = store.claim(eid, "w", 60)
        assert claimed is not None
        store.fail(claimed.id, "exit code 1", "w")
    first = mixopt_cli("runs", "retry", runs[0].id)
    assert f"run {runs[0].id}: pending (attempt 1)" in first.stdout
    rest = mixopt_cli("runs", "retry", "--failed-of", eid)
    assert "2 run(s) back in the queue" in rest.output
    assert sorted(r.status for r in store.iter_runs(eid)) == ["pending"] * 3
    again = mixopt_cli("runs", "retry", runs[0].id, expect=1)  # it is pending now: 409
    assert "409" in again.output and "only a failed run" in again.output
    assert "give --failed-of" in mixopt_cli("runs", "retry", expect=2).output


def test_without_a_token_the_error_says_how_to_get_one(server: ThreadedServer) -> None:
    result = CliRunner().invoke(
        app,
        ["experiment", "list", "--url", server.url],
        env={"MIXOPT_URL": None, "MIXOPT_TOKEN": None, "COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert "401" in result.output
    assert "MIXOPT_TOKEN" in result.output and "mixopt token create" in result.output


def test_a_missing_or_unreachable_database_is_one_line_not_a_traceback() -> None:
    from tests.conftest import PG_SERVER
    from tests.servers import free_port

    runner = CliRunner()
    missing = make_url(PG_SERVER).set(database="mixopt_no_such_database")
    result = runner.invoke(
        app,
        ["token", "create", "--name", "x", "--database-url", missing.render_as_string(False)],
    )
    assert result.exit_code == 2
    assert 'database "mixopt_no_such_database" does not exist' in result.output
    assert "createdb" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    nowhere = make_url(PG_SERVER).set(host="127.0.0.1", port=free_port())
    result = runner.invoke(
        app, ["db", "upgrade", "--database-url", nowhere.render_as_string(False)]
    )
    assert result.exit_code == 2 and "cannot connect to the database at 127.0.0.1" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- runs, proposals and experiments by hand ----------------------------------------------------


def test_runs_propose_list_show_exclude_and_include(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("by-hand", ["web", "code"], "loss"))
    proposed = mixopt_cli("runs", "propose", eid, "--count", "4", "--request-id", "b1")
    assert "4 runs proposed by regmix" in proposed.stdout
    first = json.loads(
        mixopt_cli("runs", "propose", eid, "-n", "4", "--request-id", "b1", "--json").stdout
    )
    assert len(first) == 4 and api.get_experiment(eid).counts.pending == 4  # the same 4 again
    done, failed = first[0]["id"], first[1]["id"]
    api.complete(done, {"loss": 2.5})
    api.claim(eid, "w")  # the oldest pending run: ``failed``
    api.fail(failed, "CUDA out of memory", worker="w")

    listed = mixopt_cli("runs", "list", eid).stdout
    rows = {line.split("│")[1].strip(): line for line in listed.splitlines() if "│" in line}
    assert [c.strip() for c in rows[done].split("│")[2:5]] == ["completed", "1", "2.5000"]
    assert "CUDA out of memory" in rows[failed]
    completed = json.loads(
        mixopt_cli("runs", "list", eid, "--status", "completed", "--json").stdout
    )
    assert [r["id"] for r in completed] == [done]
    assert len(json.loads(mixopt_cli("runs", "list", eid, "--limit", "3", "--json").stdout)) == 3

    excluded = mixopt_cli("runs", "exclude", done, "--reason", "bad node")
    assert f"run {done}: excluded (completed)" in excluded.stdout
    only = json.loads(mixopt_cli("runs", "list", eid, "--excluded", "--json").stdout)
    assert [(r["id"], r["reason"]) for r in only] == [(done, "bad node")]
    assert "x: excluded" in mixopt_cli("runs", "list", eid).stdout
    assert f"run {done}: included" in mixopt_cli("runs", "include", done).stdout
    assert not api.get_run(done).excluded

    shown = mixopt_cli("runs", "show", done).stdout
    assert f"run {done} of experiment {eid}: completed, attempt 1" in shown
    assert "loss" in shown and "2.5000" in shown
    assert json.loads(mixopt_cli("runs", "show", done, "--json").stdout)["metrics"] == {"loss": 2.5}

    assert (
        "--status must be one of"
        in mixopt_cli("runs", "list", eid, "--status", "done", expect=2).output
    )
    assert "404" in mixopt_cli("runs", "show", "999999", expect=1).output


def test_experiment_show_and_archive(mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path) -> None:
    eid = create(
        api, tmp_path, mixopt_cli, experiment_spec("shown", ["web", "code", "books"], "loss")
    )
    shown = mixopt_cli("experiment", "show", eid).stdout
    assert f"experiment {eid} 'shown': offline regmix, active" in shown
    assert "objective: minimize 1×loss" in shown and "3 domains" in shown
    assert json.loads(mixopt_cli("experiment", "show", eid, "--json").stdout)["config"]["seed"] == 1
    archived = mixopt_cli("experiment", "archive", eid)
    assert f"experiment {eid} 'shown' is archived" in archived.stdout
    refused = mixopt_cli("runs", "propose", eid, "--count", "1", expect=1)
    assert "409" in refused.output and "archived" in refused.output


def test_tables_fit_80_columns_without_folding_names(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path, tokens: Tokens, server: ThreadedServer
) -> None:
    long_name = "regmix-the-pile-17-domains-1m-proxies"
    eid = create(api, tmp_path, mixopt_cli, experiment_spec(long_name, ["web", "code"], "loss"))
    run = api.propose(eid, 1)[0]
    api.claim(eid, "node3/gpu1")
    api.fail(run.id, "a long reason " * 10, worker="node3/gpu1")
    for args in (["experiment", "list"], ["runs", "list", eid]):
        result = CliRunner().invoke(
            app, [*args, "--url", server.url, "--token", tokens.admin], env={"COLUMNS": "80"}
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, result.stdout
        assert "not shown at 80 columns" in result.stdout or args[0] == "runs"
    experiments = CliRunner().invoke(
        app, ["experiment", "list", "--url", server.url, "--token", tokens.admin],
        env={"COLUMNS": "80"},
    ).stdout  # fmt: skip
    assert long_name in experiments  # whole, on one line


def test_help_reads_well_at_80_columns() -> None:
    import typer.main

    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in top.splitlines()) <= 80
    # The demo's docstring was wrapped by hand after "recommend,": now one flowing paragraph.
    assert "fit, recommend, train a larger model" in top
    root = typer.main.get_command(app)
    context = root.make_context("mixopt", [], resilient_parsing=True)
    for name in root.list_commands(context):  # type: ignore[attr-defined]
        command = root.get_command(context, name)  # type: ignore[attr-defined]
        helps = [command.help or ""]
        if hasattr(command, "commands"):
            helps += [sub.help or "" for sub in command.commands.values()]
        for text in helps:
            assert "\n" not in text.replace("\n\n", ""), (name, text)
    # "[default: ...]" in a help text is rich markup and vanished; defaults are shown as such.
    worker = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "120"}).stdout
    assert "HOST/PID" in worker and "a third of the lease" in worker


def test_fits_list_show_predict_methods_and_a_runs_curve(
    mixopt_cli: Invoke, api: MixoptClient, tmp_path: Path
) -> None:
    eid = create(api, tmp_path, mixopt_cli, experiment_spec("fitted", ["web", "code"], "loss"))
    runs = api.propose(eid, 10)
    for run in runs:
        api.append_metrics(run.id, [("loss", 10, 4.0), ("loss", 20, 3.5)])
        api.complete(run.id, {"loss": 3.0 - run.weights["web"]})
    fit_id = mixopt_cli("fit", eid, "--model", "linear", "--no-wait").stdout.strip()
    report = api.wait_for_fit(fit_id, poll=0.2)
    listed = mixopt_cli("fits", "list", eid).stdout
    assert f"1 fits of experiment {eid}" in listed and "linear" in listed
    assert [f["id"] for f in json.loads(mixopt_cli("fits", "list", eid, "--json").stdout)] == [
        fit_id
    ]
    shown = mixopt_cli("fits", "show", fit_id).stdout
    assert f"fit {fit_id}: linear (requested linear) on 10 runs" in shown
    assert json.loads(mixopt_cli("fits", "show", fit_id, "--json").stdout)["n_runs"] == 10

    predicted = mixopt_cli("predict", eid, "web=0.9,code=0.1", '{"web": 0.1, "code": 0.9}')
    rows = [line for line in predicted.stdout.splitlines() if "│ web" in line]
    values = [float(row.split("│")[2]) for row in rows]
    assert len(values) == 2 and values[0] < values[1]  # the loss falls with web's share
    as_json = json.loads(mixopt_cli("predict", eid, "web=0.5,code=0.5", "--json").stdout)
    assert as_json[0]["low"] <= as_json[0]["value"] <= as_json[0]["high"]
    assert report.status == "completed"
    bad = mixopt_cli("predict", eid, "web:0.5", expect=2)
    assert "'web:0.5' has no =WEIGHT" in bad.output
    refused = mixopt_cli("predict", eid, "web=0.7,code=0.7", expect=1)
    assert "422" in refused.output

    curve = mixopt_cli("runs", "metrics", runs[0].id).stdout
    assert f"2 metric points of run {runs[0].id}" in curve and "3.5000" in curve
    points = json.loads(mixopt_cli("runs", "metrics", runs[0].id, "--json").stdout)
    assert [(p["step"], p["value"]) for p in points] == [(10, 4.0), (20, 3.5)]

    methods = json.loads(mixopt_cli("methods", "--mode", "offline", "--json").stdout)
    assert "regmix" in {m["name"] for m in methods} and {m["mode"] for m in methods} == {"offline"}
    assert "regmix" in mixopt_cli("methods").stdout


def test_tokens_are_listed_and_revoked_on_the_database(tmp_path: Path) -> None:
    runner = CliRunner()
    database = ["--database-url", f"sqlite:///{tmp_path / 'tokens.db'}"]
    created = runner.invoke(app, ["token", "create", "--name", "ci", "--scope", "read", *database])
    assert created.exit_code == 0, created.output
    token_id = created.stdout.split()[1]
    listed = runner.invoke(app, ["token", "list", *database], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "│ ci" in line)
    assert [c.strip() for c in row.split("│")[1:4]] == [token_id, "ci", "read"]
    revoked = runner.invoke(app, ["token", "revoke", token_id, *database])
    assert revoked.exit_code == 0 and f"token {token_id} 'ci' revoked" in revoked.stdout
    [record] = json.loads(runner.invoke(app, ["token", "list", "--json", *database]).stdout)
    assert record["id"] == token_id and record["revoked_at"] is not None
    unknown = runner.invoke(app, ["token", "revoke", "999999", *database])
    assert unknown.exit_code == 1 and "999999" in unknown.output
