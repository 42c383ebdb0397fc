"""Tiny corpora in the on-disk format of ``proxy_trainer.corpus.format``, for the trainer's tests
(independent of the corpus builder: the files are written here, then opened with ``Corpus``)."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from proxy_trainer.corpus.format import CORPUS_FORMAT, MANIFEST, Corpus

DEFAULT_SCORES = ("compression", "printable")


def default_quality(document: bytes) -> list[float]:
    """Higher is better: compressibility below 1 (neither noise nor pure repetition is text-like
    here, good enough for tests) and the share of printable ASCII."""
    if not document:
        return [0.0, 0.0]
    ratio = len(zlib.compress(document)) / len(document)
    printable = sum(32 <= b < 127 or b == 10 for b in document) / len(document)
    return [-abs(ratio - 0.4), printable]


def write_corpus(
    root: Path,
    domains: Mapping[str, Sequence[bytes]],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    quality: Mapping[str, Sequence[Sequence[float]]] | None = None,
    quality_scores: Sequence[str] = DEFAULT_SCORES,
) -> Corpus:
    """Write ``domains`` (name -> documents) under ``root`` and open it.

    Each domain's documents are shuffled (seeded) and split by document: ``val_fraction`` of them
    (at least one when there are two or more) go to ``val``. ``quality``: per domain, one row of
    ``len(quality_scores)`` scores per document in the given order (default: ``default_quality``).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, object] = {}
    for name, documents in domains.items():
        scores = (
            [list(row) for row in quality[name]]
            if quality is not None and name in quality
            else [default_quality(doc) for doc in documents]
        )
        if len(scores) != len(documents):
            raise ValueError(f"domain {name!r}: {len(scores)} score rows for {len(documents)} docs")
        order = rng.permutation(len(documents))
        n_val = round(len(documents) * val_fraction)
        if len(documents) >= 2:
            n_val = min(max(n_val, 1), len(documents) - 1)
        split_of = {"val": order[:n_val], "train": order[n_val:]}
        base = root / name
        base.mkdir(exist_ok=True)
        summary: dict[str, dict[str, int]] = {}
        digest = hashlib.sha256()
        for split, indices in split_of.items():
            docs = [documents[i] for i in sorted(indices)]
            data = b"".join(docs)
            digest.update(data)
            (base / f"{split}.tokens").write_bytes(data)
            offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
            np.save(base / f"{split}.offsets.npy", offsets)
            rows = np.array([scores[i] for i in sorted(indices)], dtype=np.float32).reshape(
                len(docs), len(quality_scores)
            )
            np.save(base / f"{split}.quality.npy", rows)
            summary[split] = {"documents": len(docs), "tokens": len(data)}
        entries[name] = {
            "kind": "synthetic",
            "source": "tests.proxy_trainer.corpus_fixture",
            "licence": "CC0-1.0",
            "documents": len(documents),
            "tokens": sum(len(d) for d in documents),
            "content_hash": f"sha256:{digest.hexdigest()}",
            **summary,
        }
    manifest = {"format": CORPUS_FORMAT, "quality_scores": list(quality_scores), "domains": entries}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Corpus.open(root)


def synthetic_domains(seed: int = 0, documents: int = 40) -> dict[str, list[bytes]]:
    """Four domains of clearly different statistics, ~1-2 KB per document.

    ``repeat``: a few sentences repeated; ``arithmetic``: lines ``a + b = c``; ``noise``: random
    bytes (incompressible: loss ~ ln 256 whatever the mixture); ``words``: random words from a
    small vocabulary (learnable spelling, unpredictable order).
    """
    rng = np.random.default_rng(seed)
    sentences = [
        b"the quick brown fox jumps over the lazy dog. ",
        b"a journey of a thousand miles begins with a single step. ",
        b"all that glitters is not gold. ",
    ]
    vocabulary = [
        b"river",
        b"stone",
        b"cloud",
        b"lantern",
        b"meadow",
        b"copper",
        b"violet",
        b"harbor",
        b"ember",
        b"willow",
    ]
    out: dict[str, list[bytes]] = {"repeat": [], "arithmetic": [], "noise": [], "words": []}
    for _ in range(documents):
        out["repeat"].append(b"".join(sentences[i] for i in rng.integers(0, 3, 30)))
        lines = []
        for a, b in rng.integers(0, 100, (80, 2)):
            lines.append(f"{a} + {b} = {a + b}\n".encode())
        out["arithmetic"].append(b"".join(lines))
        out["noise"].append(rng.integers(0, 256, 1200, dtype=np.uint8).tobytes())
        out["words"].append(b" ".join(vocabulary[i] for i in rng.integers(0, 10, 200)))
    return out
