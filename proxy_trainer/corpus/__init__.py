"""Multi-domain byte-token corpora for proxy runs: the format (``format``), the domain sources
(``sources``), the quality scores (``quality``) and the builder (``build``). Numpy only."""

from proxy_trainer.corpus.build import BuildEvent, BuildReport, DomainReport, build_corpus
from proxy_trainer.corpus.format import (
    CORPUS_FORMAT,
    VOCAB_SIZE,
    Corpus,
    CorpusError,
    DomainInfo,
    Split,
)

__all__ = [
    "CORPUS_FORMAT",
    "VOCAB_SIZE",
    "BuildEvent",
    "BuildReport",
    "Corpus",
    "CorpusError",
    "DomainInfo",
    "DomainReport",
    "Split",
    "build_corpus",
]
