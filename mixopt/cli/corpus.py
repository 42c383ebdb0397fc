"""``mixopt corpus``: build the multi-domain byte-token corpus proxy runs train on, and show it.

The builder (``proxy_trainer.corpus``, numpy only) is imported inside the commands."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mixopt.cli._common import _console, _fail

if TYPE_CHECKING:
    from rich.table import Table

    from proxy_trainer.corpus.build import BuildEvent, BuildReport

corpus_app = typer.Typer(help="Training corpora for proxy runs.", no_args_is_help=True)

DEFAULT_OUT = Path("mixopt-corpus")
TABLE_WIDTH = 200


def _parse_domain_dirs(pairs: Iterable[str]) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise _fail(f"--domain-dir takes NAME=PATH, not {pair!r}")
        if name in dirs:
            raise _fail(f"--domain-dir names {name!r} twice")
        dirs[name] = Path(path)
    return dirs


def _split_cell(entry: Mapping[str, Any]) -> str:
    return f"{entry['train']['documents']:,}/{entry['val']['documents']:,}"


def _table(
    rows: Iterable[tuple[str, str, Mapping[str, Any] | None, str, str, str]],
    last_column: str = "status",
) -> Table:
    """rows: (domain, kind, manifest entry or None, source, licence, last column)."""
    from rich.table import Table

    table = Table(title="corpus domains")
    # Names and numbers never wrap; the long descriptions fold in narrow terminals.
    table.add_column("domain", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("documents", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("train/val docs", justify="right", no_wrap=True)
    for column in ("source", "licence", last_column):
        table.add_column(column, overflow="fold", ratio=1, min_width=12)
    for name, kind, entry, source, licence, last in rows:
        if entry is None:
            table.add_row(name, kind, "-", "-", "-", source, licence, last)
        else:
            table.add_row(
                name,
                kind,
                f"{entry['documents']:,}",
                f"{entry['tokens']:,}",
                _split_cell(entry),
                source,
                licence,
                last,
            )
    return table


def _print_table(table: Table) -> None:
    """On a terminal at its width; into a pipe or file wide enough that nothing folds."""
    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, TABLE_WIDTH)
    console.print(table)


def _report_table(report: BuildReport) -> Table:
    return _table(
        (
            d.name,
            d.kind,
            d.entry,
            d.source,
            d.licence,
            d.status if d.reason is None else f"{d.status}: {d.reason}",
        )
        for d in report.domains
    )


class _Progress:
    """A rich progress bar per domain, on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: BuildEvent) -> None:
        task = self.tasks.get(event.domain)
        if task is None:
            task = self.progress.add_task(event.domain, total=None, state="")
            self.tasks[event.domain] = task
        if event.stage == "fetch":
            self.progress.update(task, state="fetching packages")
        elif event.stage == "read":
            state = f"{event.tokens:,} tokens"
            self.progress.update(task, completed=event.tokens, total=event.total, state=state)
        elif event.stage == "write":
            self.progress.update(task, state=f"writing {event.tokens:,} tokens")
        else:
            self.progress.update(task, total=1, completed=1, state=str(event.status))


@corpus_app.command("build")
def corpus_build(
    out: Annotated[Path, typer.Option("--out", help="the corpus directory")] = DEFAULT_OUT,
    domains: Annotated[
        str | None,
        typer.Option(
            help="comma-separated domains or groups (default, real, synthetic, apt); "
            "default: the 4 real + 3 synthetic domains, or the user's domains when given",
            show_default=False,
        ),
    ] = None,
    synthetic_only: Annotated[
        bool, typer.Option("--synthetic-only", help="only the seeded generators (fast)")
    ] = False,
    with_apt: Annotated[
        bool,
        typer.Option(
            "--with-apt",
            help="add dictionary, tech_docs, math_formal, german (apt-get download + dpkg-deb -x)",
        ),
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="never fetch packages (PyPI or apt)")
    ] = False,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from",
            file_okay=False,
            exists=True,
            help="each subdirectory is a domain of .txt (a document a file) and .jsonl "
            '(a document a line, in "text") files',
            show_default=False,
        ),
    ] = None,
    domain_dir: Annotated[
        list[str] | None,
        typer.Option("--domain-dir", help="NAME=PATH: a user domain (repeatable)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the generators, caps and splits")] = 0,
    max_tokens_per_domain: Annotated[
        int, typer.Option(min=2, help="cap per domain, by whole documents")
    ] = 2_000_000,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of documents held out")
    ] = 0.1,
) -> None:
    """Build or update a corpus; unchanged domains are not rebuilt."""
    from proxy_trainer.corpus.build import build_corpus
    from proxy_trainer.corpus.sources import SourceError, user_domains_from

    user: dict[str, Path] = {}
    if from_dir is not None:
        try:
            user.update(user_domains_from(from_dir))
        except SourceError as exc:
            raise _fail(str(exc)) from None
    for name, path in _parse_domain_dirs(domain_dir or []).items():
        if name in user:
            raise _fail(f"domain {name!r} comes from both --from and --domain-dir")
        user[name] = path
    requested = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    try:
        with _Progress() as progress:
            report = build_corpus(
                out,
                requested,
                synthetic_only=synthetic_only,
                with_apt=with_apt,
                offline=offline,
                seed=seed,
                max_tokens_per_domain=max_tokens_per_domain,
                val_fraction=val_fraction,
                user_domains=user,
                progress=progress,
            )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _print_table(_report_table(report))
    console = _console()
    err = _console(stderr=True)
    for domain in report.with_status("missing", "failed"):
        err.print(f"warning: {domain.name} {domain.status}: {domain.reason}")
    if not report.ok:
        raise _fail(f"no domain could be built; nothing was written to {out}", code=1)
    built, unchanged = len(report.with_status("built")), len(report.with_status("unchanged"))
    console.print(
        f"{out}: {built} built, {unchanged} unchanged, "
        f"{len(report.domains) - built - unchanged} unavailable ({report.seconds:.1f} s)"
    )


@corpus_app.command("show")
def corpus_show(
    directory: Annotated[Path, typer.Argument(help="a corpus directory")] = DEFAULT_OUT,
) -> None:
    """Print a corpus's domains from its manifest."""
    from proxy_trainer.corpus.format import Corpus, CorpusError

    try:
        corpus = Corpus.open(directory)
    except CorpusError as exc:
        raise _fail(str(exc), code=1) from None
    entries: Mapping[str, Any] = corpus.manifest["domains"]
    _print_table(
        _table(
            (
                (name, info.kind, entries[name], info.source, info.licence, info.content_hash[:19])
                for name, info in corpus.infos.items()
            ),
            last_column="content hash",
        )
    )
    _console().print(f"quality scores: {', '.join(corpus.quality_scores)}")
