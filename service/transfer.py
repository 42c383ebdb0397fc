"""Moving an experiment between stores (e.g. the embedded SQLite file to production Postgres).

``export_archive`` reads the whole experiment into an ``ExperimentArchive`` (see
``service.store.archive``: a versioned JSON document holding data only); ``read_archive`` parses
and checks one (a gzip'd file too), and ``import_archive`` writes it as a new experiment, once
per archive. The HTTP routes and ``mixopt experiment export/import`` both go through here.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from mixers import DomainSpace
from mixers.persistence import FIT_FORMAT, UnreadableFit, dump_fit, load_fit
from mixers.registry import get_method
from mixopt import schemas
from mixopt.errors import ErrorItem, InvalidInput
from service.store import ExperimentRecord, Store
from service.store.archive import (
    ARCHIVE_FORMAT,
    ARCHIVE_VERSION,
    ArchivedFit,
    ArchivedRun,
    ExperimentArchive,
)

__all__ = [
    "archive_chunks",
    "archive_digest",
    "check_archive",
    "export_archive",
    "import_archive",
    "read_archive",
    "relink_fit",
    "write_archive_file",
]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 64 * 1024


def export_archive(store: Store, experiment_id: str) -> ExperimentArchive:
    """The experiment as a new archive (a fresh ``origin``: importing it creates one copy)."""
    return store.export_experiment(experiment_id, uuid.uuid4().hex)


def archive_chunks(archive: ExperimentArchive) -> Iterator[bytes]:
    """The archive's JSON in pieces, for a streamed answer or file."""
    data = archive.model_dump_json().encode()
    for start in range(0, len(data), _CHUNK):
        yield data[start : start + _CHUNK]


def archive_digest(archive: ExperimentArchive) -> str:
    """What identifies the content: the same archive re-read (re-compressed, re-indented) gives
    the same digest; any change to what it holds gives another."""
    return hashlib.sha256(archive.model_dump_json().encode()).hexdigest()


def _gunzip(data: bytes, max_bytes: int | None) -> bytes:
    reader = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = reader.decompress(data, max_bytes + 1 if max_bytes is not None else 0)
    except zlib.error as exc:
        raise InvalidInput.at((), f"the archive is not valid gzip: {exc}") from None
    if max_bytes is not None and len(out) > max_bytes:
        raise InvalidInput.at((), f"the archive is over {max_bytes} bytes once decompressed")
    return out


def read_archive(data: bytes, *, max_bytes: int | None = None) -> ExperimentArchive:
    """Parse and check an archive (JSON, or gzip'd JSON up to ``max_bytes`` decompressed).
    ``InvalidInput`` names each field at fault, located in the document; nothing is written."""
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, max_bytes)
    try:
        archive = ExperimentArchive.model_validate_json(data)
    except ValidationError as exc:
        raise _archive_error(exc) from None
    check_archive(archive)
    return archive


def _archive_error(exc: ValidationError) -> InvalidInput:
    errors = exc.errors()
    for error in errors:
        if error["type"] == "json_invalid":
            return InvalidInput.at((), f"the archive is not JSON: {error['msg']}")
        if error["loc"] == ("format",):
            return InvalidInput.at(
                ("format",),
                f"not a mixopt experiment archive: format is {error.get('input')!r}, "
                f"not {ARCHIVE_FORMAT!r}",
            )
        if error["loc"] == ("version",):
            return InvalidInput.at(
                ("version",),
                f"archive version {error.get('input')!r} is not one this mixopt reads "
                f"(version {ARCHIVE_VERSION}); export it with a matching mixopt",
            )
    return InvalidInput(
        f"the archive is invalid ({len(errors)} errors)",
        [ErrorItem(tuple(e["loc"]), e["msg"]) for e in errors],
    )


def check_archive(archive: ExperimentArchive) -> None:
    """What the schema of the document cannot say: a known method with a valid config, domains
    that make a space, mixtures over them, the runs fitting the mode, no duplicate keys."""
    source = archive.experiment
    try:
        cls = get_method(source.mode, source.method)
    except KeyError:
        raise InvalidInput.at(
            ("experiment", "method"), f"unknown {source.mode} method {source.method!r}"
        ) from None
    try:
        cls.from_config(source.config)
        schemas.Objective.model_validate(source.objective)
        space = DomainSpace.from_domains(
            source.domains,
            train_tokens=source.config.get("train_tokens"),
            max_epochs=source.config.get("max_epochs"),
        )
    except InvalidInput as exc:
        raise exc.prefixed("experiment") from None
    except ValidationError as exc:
        raise InvalidInput(
            "the experiment's objective is invalid",
            [ErrorItem(("experiment", "objective", *e["loc"]), e["msg"]) for e in exc.errors()],
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput.at(("experiment", "domains"), f"not a list of domains: {exc}") from None
    errors: list[ErrorItem] = []
    for i, run in enumerate(archive.runs):
        errors += _run_errors(space, source.mode, ("runs", i), run)
    errors += _duplicates(
        [("runs", i, "external_id") for i, r in enumerate(archive.runs) if r.external_id],
        [r.external_id for r in archive.runs if r.external_id],
        "external_id",
    )
    requests = [(r.request_id, r.request_index) for r in archive.runs if r.request_id]
    errors += _duplicates(
        [("runs", i, "request_id") for i, r in enumerate(archive.runs) if r.request_id],
        requests,
        "request_id and request_index",
    )
    errors += _duplicates(
        [("runs", i, "id") for i in range(len(archive.runs))],
        [r.id for r in archive.runs],
        "run id",
    )
    for i, fit in enumerate(archive.fits):
        loc = ("fits", i)
        if fit.model_format in (None, "pickle") and fit.model_data is not None:
            errors.append(
                ErrorItem(
                    (*loc, "model_format"),
                    "a stored model must name a data-only format (never a pickle)",
                )
            )
    if errors:
        raise InvalidInput(f"the archive is inconsistent ({len(errors)} errors)", errors)


def _duplicates(locs: list[tuple[str | int, ...]], keys: list[Any], what: str) -> list[ErrorItem]:
    seen = Counter(keys)
    pairs = zip(locs, keys, strict=True)
    return [ErrorItem(loc, f"{what} appears twice") for loc, k in pairs if seen[k] > 1]


def _mixture_errors(
    space: DomainSpace, weights: Mapping[str, float], loc: tuple[str | int, ...]
) -> list[ErrorItem]:
    try:
        space.validate_weights(weights, loc=loc)
    except InvalidInput as exc:
        return list(exc.errors) or [ErrorItem(loc, exc.detail)]
    return []


def _run_errors(
    space: DomainSpace, mode: str, loc: tuple[str | int, ...], run: ArchivedRun
) -> list[ErrorItem]:
    errors = _mixture_errors(space, run.weights, (*loc, "weights"))
    errors += _duplicates(
        [(*loc, "points", j) for j in range(len(run.points))],
        [(name, step) for name, step, _ in run.points],
        "point (name, step)",
    )
    online = run.online
    if mode == "offline":
        if online is not None:
            errors.append(ErrorItem((*loc, "online"), "an offline experiment has no online runs"))
        return errors
    if online is None:
        errors.append(ErrorItem((*loc, "online"), "an online run needs its mixer state"))
        return errors
    numbers = [v.version for v in online.versions]
    errors += _duplicates(
        [(*loc, "online", "versions", j, "version") for j in range(len(numbers))],
        numbers,
        "version",
    )
    if online.version not in numbers:
        errors.append(
            ErrorItem((*loc, "online", "version"), f"version {online.version} is not in versions")
        )
    for j, version in enumerate(online.versions):
        errors += _mixture_errors(
            space, version.weights, (*loc, "online", "versions", j, "weights")
        )
    live = [(j, f.step) for j, f in enumerate(online.feedback) if not f.superseded]
    errors += _duplicates(
        [(*loc, "online", "feedback", j, "step") for j, _ in live],
        [step for _, step in live],
        "live feedback for a step",
    )
    return errors


def relink_fit(fit: ArchivedFit, run_ids: Mapping[str, str]) -> ArchivedFit:
    """The fit with its run ids (the report's out-of-fold predictions, and the stored model's
    copy of them) rewritten to the importing store's; ids it does not know stay as they are."""

    def new_id(run_id: Any) -> Any:
        return run_ids.get(str(run_id), run_id)

    report = dict(fit.report)
    oof = report.get("oof")
    if isinstance(oof, list):
        report["oof"] = [
            {**o, "run_id": new_id(o.get("run_id"))} if isinstance(o, dict) else o for o in oof
        ]
    model_data = fit.model_data
    if model_data is not None and fit.model_format == FIT_FORMAT:
        try:
            loaded = load_fit(model_data, fit.model_format)
        except UnreadableFit:
            pass  # kept as it came: predicting will say it cannot read it, as the source did
        else:
            relinked = tuple(replace(o, run_id=str(new_id(o.run_id))) for o in loaded.oof)
            model_data = dump_fit(replace(loaded, oof=relinked))
    return fit.model_copy(update={"report": report, "model_data": model_data})


def import_archive(
    store: Store, archive: ExperimentArchive, *, name: str | None = None
) -> tuple[ExperimentRecord, bool]:
    """Write a checked archive (``read_archive``) as a new experiment, or find the one an
    earlier import of it made (created False). ``name`` renames it (an active experiment of the
    same name is a 409)."""
    if name is not None and not re.fullmatch(schemas.NAME_PATTERN, name):
        raise InvalidInput.at(("name",), f"name must match {schemas.NAME_PATTERN}")
    return store.import_experiment(
        archive, digest=archive_digest(archive), name=name, relink=relink_fit
    )


def write_archive_file(archive: ExperimentArchive, path: str) -> int:
    """Write the archive to ``path`` (gzip'd if it ends in ``.gz``); return the bytes written."""
    data = b"".join(archive_chunks(archive))
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as handle:
        handle.write(data)
    return len(data)
