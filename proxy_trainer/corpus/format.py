"""The on-disk corpus every proxy run reads: one byte-token file per domain and split.

A corpus directory holds ``manifest.json`` and, per domain ``D`` and split ``S`` (``train`` or
``val``; the split is by document)::

    D/S.tokens        uint8, the documents' UTF-8 bytes concatenated (byte-level tokens, vocab 256)
    D/S.offsets.npy   int64, shape (documents + 1,): document i is tokens[offsets[i]:offsets[i+1]]
    D/S.quality.npy   float32, shape (documents, len(quality_scores)): higher is better

``manifest.json``::

    {"format": "mixopt.corpus.v1",
     "quality_scores": ["compression", "line_quality"],
     "domains": {"literature": {"kind": "real", "source": "...", "licence": "...",
                                "documents": 42, "tokens": 5061234, "content_hash": "sha256:...",
                                "train": {"documents": 38, "tokens": 4600000},
                                "val": {"documents": 4, "tokens": 461234}, ...}, ...}}

``kind`` is ``"real"`` for text from installed packages or the user's files and ``"synthetic"``
for the seeded generators (arithmetic, JSON records, noise). Files are read through ``np.memmap``
so that every worker process shares the page cache instead of holding its own copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CORPUS_FORMAT",
    "MANIFEST",
    "SPLITS",
    "VOCAB_SIZE",
    "Corpus",
    "CorpusError",
    "DomainInfo",
    "Split",
    "SplitName",
]

CORPUS_FORMAT = "mixopt.corpus.v1"
MANIFEST = "manifest.json"
VOCAB_SIZE = 256
"""Byte-level tokens: every UTF-8 byte is a token."""
SplitName = Literal["train", "val"]
SPLITS: tuple[SplitName, ...] = ("train", "val")
DomainKind = Literal["real", "synthetic"]


class CorpusError(Exception):
    """The corpus directory is missing, incomplete or of another format."""


@dataclass(frozen=True)
class DomainInfo:
    """A domain's manifest entry."""

    name: str
    kind: DomainKind
    source: str
    licence: str
    documents: int
    tokens: int
    content_hash: str
    split_documents: Mapping[SplitName, int]
    split_tokens: Mapping[SplitName, int]
    extra: Mapping[str, Any]

    @classmethod
    def from_manifest(cls, name: str, entry: Mapping[str, Any]) -> DomainInfo:
        try:
            known = {
                "kind",
                "source",
                "licence",
                "documents",
                "tokens",
                "content_hash",
                *SPLITS,
            }
            return cls(
                name=name,
                kind=entry["kind"],
                source=str(entry["source"]),
                licence=str(entry["licence"]),
                documents=int(entry["documents"]),
                tokens=int(entry["tokens"]),
                content_hash=str(entry["content_hash"]),
                split_documents={s: int(entry[s]["documents"]) for s in SPLITS},
                split_tokens={s: int(entry[s]["tokens"]) for s in SPLITS},
                extra={k: v for k, v in entry.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusError(f"manifest entry of domain {name!r} is malformed: {exc!r}") from exc


@dataclass(frozen=True, eq=False)
class Split:
    """One domain's train or validation documents (arrays are read-only)."""

    tokens: NDArray[np.uint8]
    offsets: NDArray[np.int64]
    quality: NDArray[np.float32]

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> NDArray[np.int64]:
        """Tokens per document."""
        return np.diff(self.offsets)

    def document(self, index: int) -> NDArray[np.uint8]:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]


class Corpus:
    """A built corpus, opened read-only: ``Corpus.open(path)``."""

    def __init__(self, root: Path, manifest: Mapping[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.quality_scores: tuple[str, ...] = tuple(manifest.get("quality_scores", ()))
        raw = manifest.get("domains")
        if not isinstance(raw, Mapping) or not raw:
            raise CorpusError(f"{root / MANIFEST} lists no domains")
        self.infos: dict[str, DomainInfo] = {
            name: DomainInfo.from_manifest(name, entry) for name, entry in raw.items()
        }
        self._splits: dict[tuple[str, SplitName], Split] = {}

    @classmethod
    def open(cls, path: str | Path) -> Corpus:
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise CorpusError(
                f"no corpus at {root}: {MANIFEST} is missing (build one with `mixopt corpus build`)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise CorpusError(f"{manifest_path} is not JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != CORPUS_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise CorpusError(f"{manifest_path} has format {found!r}, expected {CORPUS_FORMAT!r}")
        return cls(root, manifest)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.infos)

    @property
    def real_domains(self) -> tuple[str, ...]:
        """The domains of real text (not synthetic): what the demo's objective averages."""
        return tuple(d for d, info in self.infos.items() if info.kind == "real")

    def info(self, domain: str) -> DomainInfo:
        try:
            return self.infos[domain]
        except KeyError:
            raise CorpusError(
                f"the corpus at {self.root} has no domain {domain!r}; it has "
                f"{', '.join(self.domains)}"
            ) from None

    def split(self, domain: str, split: SplitName) -> Split:
        key = (domain, split)
        if key not in self._splits:
            self.info(domain)
            base = self.root / domain
            try:
                tokens_path = base / f"{split}.tokens"
                size = tokens_path.stat().st_size
                # np.memmap refuses empty files; an empty split is a zero-length array.
                tokens: NDArray[np.uint8] = (
                    np.memmap(tokens_path, dtype=np.uint8, mode="r")
                    if size
                    else np.zeros(0, dtype=np.uint8)
                )
                offsets = np.load(base / f"{split}.offsets.npy", mmap_mode="r")
                quality = np.load(base / f"{split}.quality.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CorpusError(
                    f"domain {domain!r} split {split!r} is unreadable: {exc}"
                ) from exc
            if int(offsets[-1]) != len(tokens) or len(quality) != len(offsets) - 1:
                raise CorpusError(f"domain {domain!r} split {split!r} files disagree in size")
            self._splits[key] = Split(tokens, offsets, quality)
        return self._splits[key]

    def train(self, domain: str) -> Split:
        return self.split(domain, "train")

    def val(self, domain: str) -> Split:
        return self.split(domain, "val")

    def token_counts(self, split: SplitName = "train") -> dict[str, int]:
        """Tokens per domain: the ``tokens`` of an experiment's domains, the prior mixture."""
        return {d: info.split_tokens[split] for d, info in self.infos.items()}
