"""Moving experiments between stores: read one whole experiment as an archive, and write an
archive as a new experiment, each in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import DataError, IntegrityError

from mixopt import __version__
from mixopt.errors import Conflict, InvalidInput
from service.store.archive import (
    ARCHIVE_FORMAT,
    ARCHIVE_VERSION,
    ArchivedExperiment,
    ArchivedFeedback,
    ArchivedFit,
    ArchivedOnline,
    ArchivedRun,
    ArchivedVersion,
    ExperimentArchive,
)
from service.store.base import ExperimentRecord
from service.store.models import (
    ExperimentRow,
    FeedbackRow,
    FitRow,
    MetricPointRow,
    MixerStateRow,
    RunRow,
    WeightVersionRow,
)
from service.store.sql._base import _chunks, _parse_id
from service.store.sql.experiments import ExperimentStore

__all__ = ["Relink", "TransferStore"]

Relink = Callable[[ArchivedFit, Mapping[str, str]], ArchivedFit]
"""Rewrite the run ids inside a fit (source id -> new id); the store never reads a report."""

# Run columns copied as they are, both ways (ids and the experiment are the store's own).
_RUN_FIELDS = (
    "status",
    "weights",
    "params",
    "tags",
    "metrics",
    "excluded",
    "reason",
    "worker",
    "last_worker",
    "lease_seconds",
    "lease_expires_at",
    "attempt",
    "external_id",
    "request_id",
    "request_index",
    "name",
    "total_steps",
    "created_at",
    "updated_at",
)

# A fit's progress, copied as it is: a running fit has no owner in the target, so its
# heartbeat goes stale there and it is failed as an interrupted one.
_FIT_STATUS_FIELDS = (
    "status",
    "reason",
    "stage",
    "owner",
    "started_at",
    "finished_at",
    "heartbeat_at",
)


def _columns(row: Row[Any], model: type[BaseModel], *skip: str) -> dict[str, Any]:
    """The columns of ``row`` that ``model`` has a field for (the archive keeps the store's
    names), but ``skip``."""
    return {name: getattr(row, name) for name in model.model_fields if name not in skip}


class TransferStore(ExperimentStore):
    def export_experiment(self, experiment_id: str, origin: str) -> ExperimentArchive:
        """Everything the experiment holds, read in one snapshot (an export during training
        is still consistent). A fit's model stored as a pickle is left out: an archive holds
        data only."""
        eid = _parse_id(experiment_id, "experiment")
        with self._read(snapshot=True) as conn:
            row = self._load_experiment(conn, eid)
            runs = conn.execute(
                select(RunRow).where(RunRow.experiment_id == eid).order_by(RunRow.id)
            ).all()
            ids = [r.id for r in runs]
            points = self._by_run(
                conn,
                select(
                    MetricPointRow.run_id,
                    MetricPointRow.name,
                    MetricPointRow.step,
                    MetricPointRow.value,
                ).order_by(MetricPointRow.run_id, MetricPointRow.step, MetricPointRow.name),
                MetricPointRow.run_id,
                ids,
            )
            states = {r.run_id: r for r in self._rows(conn, MixerStateRow, ids)}
            versions = self._by_run(
                conn,
                select(WeightVersionRow).order_by(
                    WeightVersionRow.run_id, WeightVersionRow.version
                ),
                WeightVersionRow.run_id,
                ids,
            )
            feedback = self._by_run(
                conn,
                select(FeedbackRow).order_by(FeedbackRow.run_id, FeedbackRow.id),
                FeedbackRow.run_id,
                ids,
            )
            fits = conn.execute(
                select(FitRow).where(FitRow.experiment_id == eid).order_by(FitRow.id)
            ).all()
            exported_at = self._clock()
        return ExperimentArchive(
            format=ARCHIVE_FORMAT,
            version=ARCHIVE_VERSION,
            origin=origin,
            exported_at=exported_at,
            mixopt_version=__version__,
            experiment=ArchivedExperiment(
                id=str(row.id), **_columns(row, ArchivedExperiment, "id")
            ),
            runs=[
                ArchivedRun(
                    id=str(run.id),
                    **{f: getattr(run, f) for f in _RUN_FIELDS},
                    points=[(p.name, p.step, p.value) for p in points.get(run.id, [])],
                    online=self._archived_online(
                        states.get(run.id), versions.get(run.id, []), feedback.get(run.id, [])
                    ),
                )
                for run in runs
            ],
            fits=[self._archived_fit(fit) for fit in fits],
        )

    @staticmethod
    def _by_run(
        conn: Connection, query: Any, column: Any, run_ids: list[int]
    ) -> dict[int, list[Row[Any]]]:
        grouped: dict[int, list[Row[Any]]] = {}
        for chunk in _chunks(run_ids):
            for row in conn.execute(query.where(column.in_(list(chunk)))):
                grouped.setdefault(row.run_id, []).append(row)
        return grouped

    @staticmethod
    def _rows(conn: Connection, table: Any, run_ids: list[int]) -> list[Row[Any]]:
        rows: list[Row[Any]] = []
        for chunk in _chunks(run_ids):
            rows += conn.execute(select(table).where(table.run_id.in_(list(chunk)))).all()
        return rows

    @staticmethod
    def _archived_online(
        state: Row[Any] | None, versions: list[Row[Any]], feedback: list[Row[Any]]
    ) -> ArchivedOnline | None:
        if state is None:
            return None
        return ArchivedOnline(
            **_columns(state, ArchivedOnline, "versions", "feedback"),
            versions=[ArchivedVersion(**_columns(v, ArchivedVersion)) for v in versions],
            feedback=[ArchivedFeedback(**_columns(f, ArchivedFeedback)) for f in feedback],
        )

    @staticmethod
    def _archived_fit(row: Row[Any]) -> ArchivedFit:
        data_only = row.model_blob is not None and row.model_format not in (None, "pickle")
        return ArchivedFit(
            id=str(row.id),
            model=row.model,
            requested=row.requested,
            n_runs=row.n_runs,
            report=row.report,
            recommendation=row.recommendation,
            model_format=row.model_format if data_only else None,
            model_data=bytes(row.model_blob) if data_only else None,
            fitted_at=row.fitted_at,
            **{f: getattr(row, f) for f in _FIT_STATUS_FIELDS},
        )

    # --- import -------------------------------------------------------------------------------

    def imported_experiment(self, origin: str) -> tuple[ExperimentRecord, str | None] | None:
        """The experiment imported from the archive ``origin`` with the digest recorded then,
        or None."""
        with self._read() as conn:
            return self._imported(conn, origin)

    def _imported(
        self, conn: Connection, origin: str
    ) -> tuple[ExperimentRecord, str | None] | None:
        row = conn.execute(
            select(ExperimentRow).where(ExperimentRow.imported_from == origin)
        ).first()
        if row is None:
            return None
        return self._experiment(row, self._counts(conn, [row.id])[row.id]), row.import_digest

    def _repeat(self, found: tuple[ExperimentRecord, str | None], digest: str) -> ExperimentRecord:
        record, stored_digest = found
        if stored_digest != digest:
            raise Conflict(
                f"this archive (its origin) was imported as experiment {record.id}, with other "
                "content: export again for a fresh archive"
            )
        return record

    def import_experiment(
        self,
        archive: ExperimentArchive,
        *,
        digest: str,
        name: str | None = None,
        relink: Relink | None = None,
    ) -> tuple[ExperimentRecord, bool]:
        """Write the archive as a new experiment (new ids), all of it or nothing, in one
        transaction. Idempotent on ``archive.origin``: an archive imported before returns that
        experiment and False (``Conflict`` if ``digest``, its content's, differs). ``Conflict``
        if an active experiment already has the name (``name`` overrides the archive's)."""
        source = archive.experiment
        name = name or source.name

        def name_taken(conn: Connection) -> None:
            taken = conn.execute(
                select(ExperimentRow.id).where(
                    ExperimentRow.name == name, ExperimentRow.status == "active"
                )
            ).first()
            if source.status == "active" and taken is not None:
                raise Conflict(f"an active experiment is already named {name!r}")

        try:
            with self._write() as conn:
                found = self._imported(conn, archive.origin)
                if found is not None:
                    return self._repeat(found, digest), False
                name_taken(conn)
                eid = self._insert_archive(conn, archive, name, digest, relink)
                row = self._load_experiment(conn, eid)
                return self._experiment(row, self._counts(conn, [eid])[eid]), True
        except (IntegrityError, DataError) as exc:
            # A concurrent import of the same archive (or an experiment of the same name)
            # committed first; else the archive breaks a rule of the schema the checks before
            # did not catch. Either way nothing was written.
            with self._read() as conn:
                found = self._imported(conn, archive.origin)
                if found is None:
                    name_taken(conn)
            if found is not None:
                return self._repeat(found, digest), False
            raise InvalidInput(
                f"the archive does not fit the store ({type(exc.orig).__name__}): nothing was "
                "imported"
            ) from exc

    def _insert_archive(
        self,
        conn: Connection,
        archive: ExperimentArchive,
        name: str,
        digest: str,
        relink: Relink | None,
    ) -> int:
        source = archive.experiment
        eid: int = conn.execute(
            insert(ExperimentRow)
            .values(
                name=name,
                mode=source.mode,
                method=source.method,
                domains=source.domains,
                objective=source.objective,
                config=source.config,
                status=source.status,
                created_at=source.created_at,
                updated_at=source.updated_at,
                archived_at=source.archived_at,
                imported_from=archive.origin,
                import_digest=digest,
            )
            .returning(ExperimentRow.id)
        ).scalar_one()
        run_ids: dict[str, str] = {}
        if archive.runs:
            values = [
                {"experiment_id": eid, **run.model_dump(include=set(_RUN_FIELDS))}
                for run in archive.runs
            ]
            new_ids = (
                conn.execute(
                    insert(RunRow).returning(RunRow.id, sort_by_parameter_order=True), values
                )
                .scalars()
                .all()
            )
            run_ids = {run.id: str(new) for run, new in zip(archive.runs, new_ids, strict=True)}
        points: list[dict[str, Any]] = []
        states: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        feedback: list[dict[str, Any]] = []
        for run in archive.runs:
            rid = int(run_ids[run.id])
            points += [{"run_id": rid, "name": n, "step": s, "value": v} for n, s, v in run.points]
            online = run.online
            if online is None:
                continue
            states.append(
                {
                    "run_id": rid,
                    "version": online.version,
                    "state": online.state,
                    "frozen": online.frozen,
                    "updated_at": online.updated_at,
                }
            )
            versions += [{"run_id": rid, **v.model_dump()} for v in online.versions]
            # In the archive's order: feedback ids keep the order it was recorded in.
            feedback += [{"run_id": rid, **f.model_dump()} for f in online.feedback]
        for table, rows in (
            (MetricPointRow, points),
            (MixerStateRow, states),
            (WeightVersionRow, versions),
            (FeedbackRow, feedback),
        ):
            for chunk in _chunks(rows, 5000):
                conn.execute(insert(table), list(chunk))
        for fit in archive.fits:  # oldest first, so the latest stays the latest
            if relink is not None:
                fit = relink(fit, run_ids)
            conn.execute(
                insert(FitRow).values(
                    experiment_id=eid,
                    model=fit.model,
                    requested=fit.requested,
                    n_runs=fit.n_runs,
                    report=fit.report,
                    recommendation=fit.recommendation,
                    model_blob=fit.model_data,
                    model_format=fit.model_format,
                    fitted_at=fit.fitted_at,
                    **fit.model_dump(include=set(_FIT_STATUS_FIELDS)),
                )
            )
        return eid
