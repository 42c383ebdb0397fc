"""Fit, recommend (through the API) and backtest (locally, on a file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mixopt.cli._common import (
    Column,
    JsonFlag,
    Token,
    Url,
    _api,
    _console,
    _fail,
    _fitted_table,
    _number,
    _print_fitted,
    _print_json,
)
from mixopt.runs_csv import WEIGHT_PREFIX, TableError, plan_import, read_table
from mixopt.schemas import DEFAULT_URL

if TYPE_CHECKING:
    from mixopt import schemas
    from mixopt.client import MixoptClient


def fit(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment")],
    model: Annotated[
        str, typer.Option(help="auto, lightgbm, linear, loglinear, mixing_law or gp")
    ] = "auto",
    top: Annotated[int, typer.Option(min=1, help="domains to show by importance")] = 20,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the started fit's id and return")
    ] = False,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Fit a regressor on the completed runs (at least 8), cross-validate it and search the
    recommendation."""
    with _api(url, token) as client:
        # Started without waiting, then followed: the request never outlives its timeout and
        # the terminal shows how far the fit is.
        report = client.fit(experiment_id, model, wait=False)
        if no_wait:
            if as_json:
                _print_json(report)
            else:
                typer.echo(report.id)
            return
        if report.status == "running":
            report = _follow(client, report)
    if as_json:
        _print_json(report)
    if report.status == "failed":
        raise _fail(f"fit {report.id} failed: {report.reason}", 1)
    if not as_json:
        _print_report(report, top)


def _print_report(report: schemas.FitReport, top: int) -> None:
    """A completed fit: its cross-validation, the models compared, the domains' importance."""
    from rich.table import Table

    out = _console()
    out.print(
        f"fit {report.id}: {report.model} (requested {report.requested}) on {report.n_runs} runs"
    )
    cv = Table(title=f"{report.cv.folds}-fold cross-validation")
    for name in ("spearman", "pearson", "mae", "r2"):
        cv.add_column(name, justify="right")
    cv.add_row(*(_number(getattr(report.cv, n)) for n in ("spearman", "pearson", "mae", "r2")))
    out.print(cv)
    if report.candidates:
        candidates = Table(title="models compared")
        candidates.add_column("model")
        candidates.add_column("spearman", justify="right")
        # Within one standard error of the best: auto took the simplest of them.
        candidates.add_column("", justify="left")
        for candidate in sorted(
            report.candidates, key=lambda c: -(c.spearman if c.spearman is not None else -2)
        ):
            marker = " *" if candidate.model == report.model else ""
            tied = "tied" if candidate.model in report.tied else ""
            candidates.add_row(candidate.model + marker, _number(candidate.spearman), tied)
        out.print(candidates)
    if report.per_metric:
        per_metric = Table(title="metrics fitted one by one")
        per_metric.add_column("metric")
        for name in ("weight", "model", "spearman", "mae"):
            per_metric.add_column(name, justify="left" if name == "model" else "right")
        for metric in report.per_metric:
            per_metric.add_row(
                metric.metric,
                _number(metric.weight),
                metric.model,
                _number(metric.spearman),
                _number(metric.mae),
            )
        out.print(per_metric)
    if report.importance:
        importance = Table(title="domain importance")
        importance.add_column("domain")
        importance.add_column("importance", justify="right")
        ranked = sorted(report.importance.items(), key=lambda item: -item[1])
        for domain, value in ranked[:top]:
            importance.add_row(domain, _number(value))
        out.print(importance)
    if report.noise.replicate_groups:
        out.print(
            f"run-to-run noise: std {_number(report.noise.std)} "
            f"from {report.noise.replicate_groups} groups of replicates"
        )


def _follow(client: MixoptClient, report: schemas.FitReport) -> schemas.FitReport:
    """Poll a running fit to its end with a progress line on stderr."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn(f"fit {report.id}: {{task.description}}", markup=False),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def show(polled: schemas.FitReport) -> None:
            stage = polled.progress.stage if polled.progress else None
            bar.update(task, description=stage or polled.status)

        try:
            return client.wait_for_fit(report.id, poll=1.0, on_progress=show)
        except KeyboardInterrupt:
            bar.stop()
            raise _fail(
                f"stopped following; fit {report.id} goes on on the server "
                f"(GET /api/v1/fits/{report.id})",
                130,
            ) from None


SHOWN_ALTERNATIVES = 3
"""Alternatives shown as columns of the recommendation's table (all of them in --json)."""


fits_app = typer.Typer(help="Stored fits (through the API).", no_args_is_help=True)


@fits_app.command("list")
def fits_list(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment")],
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The experiment's fits, newest first: running, completed and failed ones."""
    with _api(url, token) as client:
        reports = list(client.iter_fits(experiment_id))
    if as_json:
        _print_json(reports)
        return
    columns = [
        Column("id", keep=9),
        Column("status", keep=9),
        Column("model", keep=8),
        Column("requested", keep=3),
        Column("runs", "right", keep=7),
        Column("cv spearman", "right", keep=6),
        Column("fitted", keep=2),
        Column("reason", keep=5, fold=True),
    ]
    rows = [
        [
            r.id,
            r.status,
            r.model,
            r.requested,
            str(r.n_runs),
            _number(r.cv.spearman, 3),
            r.fitted_at.strftime("%Y-%m-%d %H:%M"),
            r.reason or "",
        ]
        for r in reports
    ]
    _print_fitted(f"{len(reports)} fits of experiment {experiment_id}", columns, rows)


@fits_app.command("show")
def fits_show(
    fit_id: Annotated[str, typer.Argument(help="the fit (as mixopt fit --no-wait prints it)")],
    top: Annotated[int, typer.Option(min=1, help="domains to show by importance")] = 20,
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """One stored fit: its report if it completed, how far it is if it runs, why it failed."""
    with _api(url, token) as client:
        report = client.get_fit(fit_id)
    if as_json:
        _print_json(report)
    elif report.status == "running":
        stage = report.progress.stage if report.progress else None
        _console().print(f"fit {report.id}: running" + (f" ({stage})" if stage else ""))
    elif report.status == "failed":
        raise _fail(f"fit {report.id} failed: {report.reason}", 1)
    else:
        _print_report(report, top)


def _parse_mixture(text: str) -> dict[str, float]:
    """``web=0.6,code=0.4`` or a JSON object ``{"web": 0.6, "code": 0.4}``; exit status 2 for
    anything else."""
    problem = f"a mixture is DOMAIN=WEIGHT,... or a JSON object, not {text!r}"
    try:
        if text.lstrip().startswith("{"):
            parsed = json.loads(text)
            if not isinstance(parsed, dict):
                raise _fail(problem)
            return {str(name): float(weight) for name, weight in parsed.items()}
        mixture: dict[str, float] = {}
        for part in filter(str.strip, text.split(",")):
            name, sep, weight = part.partition("=")
            if not sep:
                raise _fail(f"{problem}: {part.strip()!r} has no =WEIGHT")
            mixture[name.strip()] = float(weight)
        return mixture
    except (ValueError, TypeError) as exc:
        raise _fail(f"{problem}: {exc}") from None


def predict(
    experiment_id: Annotated[str, typer.Argument(help="the offline experiment")],
    mixtures: Annotated[
        list[str],
        typer.Argument(
            help="mixtures as DOMAIN=WEIGHT,... (e.g. web=0.6,code=0.3,papers=0.1) or JSON "
            "objects; weights sum to 1",
            show_default=False,
        ),
    ],
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The latest fit's predicted objective for each mixture, with its 80 % interval."""
    parsed = [_parse_mixture(text) for text in mixtures]
    with _api(url, token) as client:
        predictions = client.predict(experiment_id, parsed)
    if as_json:
        _print_json(predictions)
        return
    columns = [
        Column("mixture", keep=9, fold=True),
        Column("predicted", "right", keep=9),
        Column("low", "right", keep=8),
        Column("high", "right", keep=8),
    ]
    rows = [
        [
            ", ".join(f"{d} {w:g}" for d, w in mixture.items()),
            f"{p.value:.4f}",
            f"{p.low:.4f}",
            f"{p.high:.4f}",
        ]
        for mixture, p in zip(parsed, predictions, strict=True)
    ]
    _print_fitted(f"predictions of experiment {experiment_id}'s latest fit", columns, rows)


def _interval(predicted: schemas.Predicted | None) -> str:
    if predicted is None:
        return "-"
    return f"{predicted.value:.4f} [{predicted.low:.4f}, {predicted.high:.4f}]"


def recommend(
    experiment_id: Annotated[str, typer.Argument(help="the experiment")],
    as_json: JsonFlag = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The recommended mixture (of the latest fit, or of an online experiment's runs), with the
    alternative mixtures predicted within the noise of the best."""

    with _api(url, token) as client:
        experiment = client.get_experiment(experiment_id)
        rec = client.recommendation(experiment_id)
    if as_json:
        _print_json(rec)
        return
    out = _console()
    source = (
        f"fit {rec.fit_id} ({rec.model}, {rec.n_runs} runs)"
        if rec.fit_id
        else f"run {rec.run_id}"
        if rec.run_id
        else "the service"
    )
    baseline = rec.baseline.weights if rec.baseline is not None else None
    shown = rec.alternatives[:SHOWN_ALTERNATIVES]
    columns = [
        Column("domain", keep=9),
        Column("recommended", "right", keep=9),
        *([Column("baseline", "right", keep=8)] if baseline is not None else []),
        Column("prior", "right", keep=7),
        *(Column(f"alt {n}", "right", keep=6 - n) for n in range(1, len(shown) + 1)),
    ]
    priors = {d.name: d.prior for d in experiment.domains}
    rows = []
    for domain in sorted(rec.weights, key=lambda d: -rec.weights[d]):
        cells = [domain, f"{rec.weights[domain]:.4f}"]
        if baseline is not None:
            cells.append(f"{baseline.get(domain, 0.0):.4f}")
        cells.append(_number(priors.get(domain)))
        cells += [f"{alternative.weights.get(domain, 0.0):.4f}" for alternative in shown]
        rows.append(cells)
    table, hidden = _fitted_table(
        f"recommended mixture for {experiment.name!r} from {source}", columns, rows, out.width
    )
    out.print(table)
    objective = ", ".join(f"{w:g}×{m}" for m, w in experiment.objective.metrics.items())
    if rec.predicted is not None:
        out.print(
            f"predicted {experiment.objective.direction} objective ({objective}): "
            f"{_interval(rec.predicted)} (80 % interval)"
        )
    if rec.baseline is not None and rec.baseline.predicted is not None:
        out.print(f"baseline (the prior mixture): {_interval(rec.baseline.predicted)}")
    if rec.p_better_than_baseline is not None:
        out.print(f"probability better than the baseline: {rec.p_better_than_baseline:.2f}")
    if rec.best_run is not None:
        out.print(
            f"best observed run {rec.best_run.run_id}: reported {rec.best_run.observed:.4g}, "
            f"predicted {_interval(rec.best_run.predicted)}"
        )
    if rec.reason:
        won = "the best run" if rec.chosen == "best_run" else "the searched mixture"
        out.print(f"recommended: {won} ({rec.reason})")
    if rec.alternatives:
        out.print(f"{len(rec.alternatives)} alternative mixtures within the noise of the best:")
        for number, alternative in enumerate(rec.alternatives, 1):
            in_table = number <= len(shown) and f"alt {number}" not in hidden
            column = f" (column alt {number})" if in_table else ""
            searched = " the searched mixture," if number == 1 and rec.chosen == "best_run" else ""
            out.print(
                f"  alt {number}:{searched} predicted {_interval(alternative.predicted)}{column}"
            )
        if len(rec.alternatives) > len(shown) or hidden:
            out.print("  (every alternative's weights: mixopt recommend --json)")


# --- backtest ----------------------------------------------------------------------------------


def _domains_in(path: Path, weight_prefix: str | None) -> list[str]:
    """The domains a table's weight columns name: ``weight/<d>`` in a runs.csv, or every column
    starting with ``--weight-prefix``."""
    header, _ = read_table(path)
    prefix = weight_prefix if weight_prefix is not None else WEIGHT_PREFIX
    domains = [c[len(prefix) :] for c in header if c.startswith(prefix) and len(c) > len(prefix)]
    if not domains:
        raise TableError(
            f"{path} has no weight columns {prefix}<domain>"
            + ("" if weight_prefix else "; pass --weight-prefix")
        )
    return domains


def backtest(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="runs.csv exported by mixopt, or a weights table (with --weight-prefix)",
        ),
    ],
    objective: Annotated[
        str | None,
        typer.Option(help="the metric to predict (default: the only metric in the files)"),
    ] = None,
    maximize: Annotated[bool, typer.Option(help="higher objective is better")] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file", exists=True, dir_okay=False, help="metrics table to join with FILE"
        ),
    ] = None,
    join: Annotated[str, typer.Option(help="the key column joining the two tables")] = "index",
    weight_prefix: Annotated[
        str | None,
        typer.Option(help="weight columns are PREFIX<domain> (default: weight/)"),
    ] = None,
    metric_prefix: Annotated[
        str | None, typer.Option(help="metric columns are PREFIX<name>", show_default=False)
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="regressor to compare, or auto (repeatable; default: all and auto)"),
    ] = None,
    size: Annotated[
        list[int] | None,
        typer.Option(help="runs to replay (repeatable; default: 32, 64, ... and all)"),
    ] = None,
    design: Annotated[
        list[str] | None,
        typer.Option(
            help="stored, random, or an offline method such as regmix (repeatable; default: stored)"
        ),
    ] = None,
    reference_model: Annotated[
        str, typer.Option(help="the regressor fitted on every run to judge the others")
    ] = "lightgbm",
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", dir_okay=False, help="also write the full result (weights too) here"
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Replay a finished swarm locally: what each regressor and design would have recommended
    with 32, 64, 128 ... runs, judged by a model fitted on every run.

    The runs are replayed in the file's order (their creation order in a runs.csv); only
    completed, not excluded runs with the objective count. The swarm's mean mixture is the
    prior. POST /experiments/{id}/backtest does the same on a stored experiment.
    """
    import numpy as np
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from mixers import DomainSpace
    from mixers.backtest import BacktestPlan
    from mixers.backtest import backtest as run_backtest
    from mixopt.errors import MixoptError

    try:
        domains = _domains_in(file, weight_prefix)
        plan = plan_import(
            domains,
            file,
            metrics_path=metrics_file,
            join=join,
            weight_prefix=weight_prefix,
            metric_prefix=metric_prefix,
        )
    except TableError as exc:
        raise _fail(str(exc)) from None
    if plan.invalid:
        label, reason = plan.invalid[0]
        raise _fail(f"{len(plan.invalid)} rows cannot be read; first: {label}: {reason}")
    if objective is None:
        if len(plan.metric_names) != 1:
            raise _fail(
                "pass --objective: the files hold the metrics "
                + (", ".join(plan.metric_names) or "(none)")
            )
        objective = plan.metric_names[0]
    elif objective not in plan.metric_names:
        raise _fail(
            f"no metric {objective!r}; the files hold: {', '.join(plan.metric_names) or '(none)'}"
        )
    rows = [
        row
        for row in plan.rows
        if row.status in (None, "completed") and not row.excluded and objective in row.metrics
    ]
    out = _console(stderr=as_json)  # with --json, stdout holds the JSON alone
    out.print(
        f"{file.name}: {len(rows)} usable runs of {len(plan.rows)}, {len(domains)} domains, "
        f"objective {objective} ({'maximize' if maximize else 'minimize'})"
    )
    if not rows:
        raise _fail("no usable runs")
    weights = np.array([[row.weights[d] for d in domains] for row in rows])
    y = np.array([row.metrics[objective] for row in rows], dtype=float)
    space = DomainSpace.from_swarm(domains, weights)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("backtest", total=None)

        def report(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=what)

        try:
            result = run_backtest(
                space,
                weights,
                y,
                [row.external_id for row in rows],
                BacktestPlan(
                    models=model or None,
                    sizes=size or None,
                    designs=design or ["stored"],
                    reference_model=reference_model,
                    progress=report,
                ),
                direction="maximize" if maximize else "minimize",
                seed=seed,
            )
        except MixoptError as exc:
            raise _fail(str(exc)) from None
    table = Table(title=f"backtest of {file.name} (regret: judged minus the reference's best)")
    for column, justify in [
        ("design", "left"),
        ("runs", "right"),
        ("model", "left"),
        ("cv spearman", "right"),
        ("held-out spearman", "right"),
        ("predicted", "right"),
        ("judged", "right"),
        ("regret", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        label = row.model if row.requested == row.model else f"auto → {row.model}"
        table.add_row(
            row.design + (f" (match {row.match_l1:.2f})" if row.match_l1 is not None else ""),
            str(row.n_runs),
            label,
            _number(row.cv_spearman, 3),
            _number(row.heldout_spearman, 3),
            _number(row.predicted),
            _number(row.judged),
            f"{row.regret:+.4f}",
        )
    if not as_json:
        out.print(table)
    ref = result.reference
    out.print(
        f"reference: {ref.model} on all {result.n_runs} runs, cv spearman "
        f"{_number(ref.cv_spearman, 3)}, its recommendation judged {ref.judged:.4f}; "
        f"{result.seconds:.0f} s"
    )
    if as_json:
        _print_json(result.to_dict())
    if output is not None:
        try:
            output.write_text(json.dumps(result.to_dict(), indent=2))
        except OSError as exc:
            raise _fail(f"cannot write {output}: {exc}", 1) from None
        out.print(f"wrote {output}")
