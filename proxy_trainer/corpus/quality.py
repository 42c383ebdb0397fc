"""Two cheap per-document quality scores (higher is better), for quality-aware sampling.

``compression``
    ``-|log(r / 0.35)|`` where ``r`` is the raw-deflate compressed/raw size ratio of the document.
    Natural text and code compress to about 0.2-0.45 (corpora.md measures 0.21-0.41 per domain),
    so the score peaks at a typical ratio and falls on both sides: incompressible garbage (random
    bytes, ``r`` near 1) and degenerate repetition (boilerplate, ``r`` near 0) both score low.
    The plain ratio would rank noise *best*; its negation would rank boilerplate best.
``line_quality``
    The share of a document's bytes that lie in lines of 5-300 bytes, the lengths of prose,
    verse, code, sums and JSON lines. Binary noise has newlines only by chance (one byte in
    256), so most of it sits in over-long "lines"; minified one-line blobs score 0 too.

Both take the concatenated tokens and the offsets of the documents; ``line_quality`` is
vectorised over the whole split, ``compression`` is one zlib call per document (C speed).
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GOOD_LINE_BYTES",
    "QUALITY_SCORES",
    "TYPICAL_COMPRESSION_RATIO",
    "compression_ratios",
    "compression_scores",
    "line_quality",
    "quality_scores",
]

QUALITY_SCORES: tuple[str, ...] = ("compression", "line_quality")
TYPICAL_COMPRESSION_RATIO = 0.35
GOOD_LINE_BYTES = (5, 300)
NEWLINE = 10


def compression_ratios(
    tokens: NDArray[np.uint8], offsets: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Raw-deflate (no zlib header, so short documents are not penalised for it) size ratio."""
    data = np.ascontiguousarray(tokens).data
    ratios = np.ones(len(offsets) - 1)
    for i, (start, end) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        if end > start:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            size = len(packer.compress(data[start:end])) + len(packer.flush())
            ratios[i] = size / (end - start)
    return ratios


def compression_scores(
    tokens: NDArray[np.uint8], offsets: NDArray[np.int64]
) -> NDArray[np.float64]:
    ratios = np.maximum(compression_ratios(tokens, offsets), 1e-6)
    return -np.abs(np.log(ratios / TYPICAL_COMPRESSION_RATIO))


def line_quality(tokens: NDArray[np.uint8], offsets: NDArray[np.int64]) -> NDArray[np.float64]:
    """Share of each document's bytes in lines of ``GOOD_LINE_BYTES`` (newline not counted)."""
    documents = len(offsets) - 1
    total = int(offsets[-1]) if documents else 0
    if total == 0:
        return np.zeros(documents)
    # Line segments end after each newline and at each document boundary.
    breaks = np.union1d(np.flatnonzero(np.asarray(tokens) == NEWLINE) + 1, offsets)
    starts, ends = breaks[:-1], breaks[1:]
    lengths = ends - starts
    content = lengths - (np.asarray(tokens)[ends - 1] == NEWLINE)
    low, high = GOOD_LINE_BYTES
    good = np.where((content >= low) & (content <= high), lengths, 0)
    owner = np.searchsorted(offsets, starts, side="right") - 1
    good_bytes = np.bincount(owner, weights=good, minlength=documents)[:documents]
    sizes = np.diff(offsets).astype(np.float64)
    return np.divide(good_bytes, sizes, out=np.zeros(documents), where=sizes > 0)


def quality_scores(tokens: NDArray[np.uint8], offsets: NDArray[np.int64]) -> NDArray[np.float32]:
    """Shape ``(documents, len(QUALITY_SCORES))``, columns in ``QUALITY_SCORES`` order."""
    columns = [compression_scores(tokens, offsets), line_quality(tokens, offsets)]
    return np.stack(columns, axis=1).astype(np.float32)
