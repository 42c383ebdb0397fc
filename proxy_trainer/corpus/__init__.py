"""Multi-domain byte-token corpora for proxy runs: the format (``format``) and its builder."""

from proxy_trainer.corpus.format import (
    CORPUS_FORMAT,
    VOCAB_SIZE,
    Corpus,
    CorpusError,
    DomainInfo,
    Split,
)

__all__ = ["CORPUS_FORMAT", "VOCAB_SIZE", "Corpus", "CorpusError", "DomainInfo", "Split"]
