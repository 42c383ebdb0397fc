"""``mixopt demo``: the mission end to end on real text (``mixopt.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer

from mixopt.cli._common import _console, _fail


def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="small proxies and models: a few minutes on 2 cores")
    ] = False,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="stop the service at the end (scripts, CI)")
    ] = False,
    backend: Annotated[str, typer.Option(help="how workers run: local or ray")] = "local",
    workers: Annotated[
        int | None, typer.Option(min=1, help="workers", show_default="the cores, at most 4")
    ] = None,
    seed: Annotated[int, typer.Option(help="seeds the corpus, the design and the models")] = 0,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="write the results to this JSON file"),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="where the corpus, the database and the logs go")
    ] = Path("mixopt-demo"),
    port: Annotated[int, typer.Option(help="port of the service (a free one if taken)")] = 8000,
) -> None:
    """Build the corpus, start the service, train RegMix proxies with workers, fit, recommend,
    train a larger model on the recommended, prior and uniform mixtures, then one online run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from mixopt.demo import DemoPlan, run_demo, start_service, write_json

    if backend not in ("local", "ray"):
        raise _fail(f"--backend must be local or ray, not {backend!r}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise _fail(
            "the demo trains models: install the trainer extra, pip install 'mixopt[trainer]'"
        ) from None
    out = _console()
    plan = DemoPlan.make(
        quick=quick, seed=seed, backend=cast(Literal["local", "ray"], backend), workers=workers
    )
    workdir.mkdir(parents=True, exist_ok=True)
    out.print(f"mixopt demo ({'quick' if quick else 'full'}), working in {workdir.resolve()}")
    service = start_service(workdir, port=port)
    out.print(f"service: {service.url} (log: {service.log_path})")

    def bar(label: str, total: int) -> Any:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        progress.start()
        task = progress.add_task(label, total=total)

        class Handle:
            def update(self, done: int) -> None:
                progress.update(task, completed=done)

            def close(self) -> None:
                progress.stop()

        return Handle()

    try:
        result = run_demo(plan, workdir, service=service, say=out.print, progress_factory=bar)
    except BaseException:
        service.stop()
        raise
    table = Table(
        title=f"the {plan.final_preset} model on each mixture (objective, lower is better)"
    )
    table.add_column("mixture")
    for seed_name in sorted(result.final_by_seed):
        table.add_column(f"seed {seed_name}", justify="right")
    table.add_column("mean", justify="right")
    for label, mean in result.final.items():
        cells = [
            f"{result.final_by_seed[s].get(label, float('nan')):.4f}"
            for s in sorted(result.final_by_seed)
        ]
        table.add_row(label, *cells, f"{mean:.4f}")
    out.print(table)
    online = result.online
    method = online["method"]
    out.print(
        f"online ({online['preset']} model): {method} {online[method]['objective']:.4f} "
        f"({online[method]['versions']} weight versions) vs stratified "
        f"{online['stratified']['objective']:.4f}; mean over every domain (what the online "
        f"mixer minimises) {online[method]['mean_all_domains']:.4f} vs "
        f"{online['stratified']['mean_all_domains']:.4f}"
    )
    out.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    if output is not None:
        write_json(result, output)
        out.print(f"results written to {output}")
    if no_serve:
        service.stop()
        return
    out.print(f"the service keeps running at {service.url} (Ctrl-C stops it)")
    regmix = result.experiments.get("regmix")
    out.print(
        f"  dashboard: {service.url}/experiments/{regmix}"
        if regmix
        else f"  dashboard: {service.url}/"
    )
    out.print(f"  sign in with the admin token {service.token}")
    out.print(f"  export MIXOPT_URL={service.url} MIXOPT_TOKEN={service.token}")
    out.print("  mixopt experiment list")
    try:
        service.wait()
    except KeyboardInterrupt:
        service.stop()
