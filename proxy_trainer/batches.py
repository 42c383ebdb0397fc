"""Where a proxy run's batches come from: seeded windows of a corpus, drawn by a mixture.

``MixtureBatches`` draws each training sequence's domain by the run's weights (a weight is the
probability that a sequence, and so its tokens, comes from that domain), then a window of
``block_size + 1`` tokens of that domain's train split. For a QuaDMix run the window starts
inside a document picked by QuaDMix's sampling function over the corpus quality scores, so the
run trains on the documents the function selects. ``fixed_eval_batches`` gives the same
held-out windows of a domain's val split on every call.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from mixers.offline.quadmix.documents import sampling_probabilities
from mixers.offline.quadmix.params import QuadMixParams
from proxy_trainer.corpus.format import Corpus, Split

__all__ = ["MixtureBatches", "fixed_eval_batches", "quadmix_document_shares", "validate_weights"]

Batch = tuple[torch.Tensor, torch.Tensor]


def validate_weights(corpus: Corpus, weights: Mapping[str, float]) -> dict[str, float]:
    """The weights normalised to sum 1, over every corpus domain (absent domains get 0).

    Raises ``ValueError`` naming the domain for an unknown domain or a negative or non-finite
    weight, and when no weight is positive.
    """
    for domain, weight in weights.items():
        if domain not in corpus.domains:
            raise ValueError(
                f"unknown domain {domain!r} in weights; the corpus has {', '.join(corpus.domains)}"
            )
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of domain {domain!r} must be finite and >= 0, got {weight}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("weights sum to 0: at least one domain needs a positive weight")
    return {d: float(weights.get(d, 0.0)) / total for d in corpus.domains}


def parse_quadmix_params(
    corpus: Corpus, params: Mapping[str, Any] | QuadMixParams
) -> QuadMixParams:
    """A run's QuaDMix ``params`` JSON checked against the corpus: its domains must be corpus
    domains and its score names corpus ``quality_scores`` (columns are matched by name)."""
    if not isinstance(params, QuadMixParams):
        merge = params.get("merge")
        if not isinstance(merge, Mapping) or not merge:
            raise ValueError("QuaDMix params need a non-empty 'merge' object")
        first = next(iter(merge.values()))
        scores = tuple(first) if isinstance(first, Mapping) else ()
        params = QuadMixParams.from_params(params, tuple(merge), scores)
    unknown = [d for d in params.domains if d not in corpus.domains]
    if unknown:
        raise ValueError(f"QuaDMix params name domains the corpus lacks: {', '.join(unknown)}")
    missing = [s for s in params.scores if s not in corpus.quality_scores]
    if missing:
        raise ValueError(
            f"QuaDMix params use quality scores the corpus lacks: {', '.join(missing)}; "
            f"it has {', '.join(corpus.quality_scores) or 'none'}"
        )
    return params


def quadmix_document_shares(
    corpus: Corpus, params: QuadMixParams
) -> dict[str, NDArray[np.float64]]:
    """Per domain of ``params``, each train document's share of the domain's sampled tokens.

    The sampling function runs once over the train documents of all of the params' domains
    together (its ``σ`` ranks each score corpus-wide; ``r̄`` ranks within the domain, token
    weighted). A window then starts at a uniform token of the sampled copies, so a document is
    picked with its *token* share, ``probability x length``, not its per-draw probability.
    """
    columns = [corpus.quality_scores.index(s) for s in params.scores]
    splits = [corpus.train(d) for d in params.domains]
    scores = np.concatenate([np.asarray(s.quality)[:, columns] for s in splits])
    labels = np.concatenate([np.full(s.documents, i) for i, s in enumerate(splits)])
    # An empty document has no tokens to start at; length 1 keeps the function's input valid.
    lengths = np.concatenate([np.maximum(s.lengths, 1) for s in splits])
    sampling = sampling_probabilities(scores, labels, params, tokens=lengths)
    shares: dict[str, NDArray[np.float64]] = {}
    for i, domain in enumerate(params.domains):
        share = sampling.token_share[labels == i]
        shares[domain] = share / share.sum() if share.sum() > 0 else share
    return shares


class MixtureBatches:
    """Seeded training batches of a mixture: ``next()`` -> ``(x, y, domains)``.

    ``x`` and ``y`` are ``LongTensor[batch_size, block_size]`` (``y`` is ``x`` shifted by one),
    ``domains`` the index into ``corpus.domains`` of each sequence. ``tokens_seen`` counts the
    trained tokens per domain. ``state_dict()`` / ``load_state_dict()`` carry the generator and
    the counts, so that a resumed run draws the batches the uninterrupted run would have.
    """

    def __init__(
        self,
        corpus: Corpus,
        weights: Mapping[str, float],
        block_size: int,
        batch_size: int,
        seed: int,
        quadmix_params: Mapping[str, Any] | QuadMixParams | None = None,
    ) -> None:
        self.corpus = corpus
        self.domains = corpus.domains
        self.block_size = block_size
        self.batch_size = batch_size
        self.weights = validate_weights(corpus, weights)
        self.probabilities = np.array([self.weights[d] for d in self.domains])
        self.splits: dict[str, Split] = {}
        for domain, weight in self.weights.items():
            if weight <= 0:
                continue
            split = corpus.train(domain)
            if len(split.tokens) < block_size + 1:
                raise ValueError(
                    f"domain {domain!r} has {len(split.tokens)} train tokens, fewer than one "
                    f"window of block_size + 1 = {block_size + 1}"
                )
            self.splits[domain] = split
        # Per weighted domain of a QuaDMix run: cumulative document shares, for searchsorted.
        self.document_cdf: dict[str, NDArray[np.float64]] = {}
        if quadmix_params is not None:
            params = parse_quadmix_params(corpus, quadmix_params)
            absent = [d for d in self.splits if d not in params.domains]
            if absent:
                raise ValueError(f"QuaDMix params miss weighted domains: {', '.join(absent)}")
            shares = quadmix_document_shares(corpus, params)
            for domain in self.splits:
                if shares[domain].sum() <= 0:
                    raise ValueError(f"QuaDMix params sample no document of domain {domain!r}")
                self.document_cdf[domain] = np.cumsum(shares[domain])
        self.rng = np.random.default_rng(seed)
        self.tokens_seen: dict[str, int] = dict.fromkeys(self.domains, 0)

    def _starts(self, domain: str, count: int) -> NDArray[np.int64]:
        split = self.splits[domain]
        last = len(split.tokens) - (self.block_size + 1)  # the last valid window start
        cdf = self.document_cdf.get(domain)
        if cdf is None:
            uniform: NDArray[np.int64] = self.rng.integers(0, last + 1, count)
            return uniform
        documents = np.minimum(np.searchsorted(cdf, self.rng.random(count) * cdf[-1]), len(cdf) - 1)
        lengths = np.maximum(split.lengths[documents], 1)
        inside = np.floor(self.rng.random(count) * lengths).astype(np.int64)
        # A window may run on into the next document, as in any concatenated stream; near the
        # end of the split it is moved back to fit.
        starts: NDArray[np.int64] = np.minimum(split.offsets[documents] + inside, last)
        return starts

    def next(self) -> tuple[torch.Tensor, torch.Tensor, NDArray[np.int64]]:
        domains = self.rng.choice(len(self.domains), self.batch_size, p=self.probabilities)
        windows = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
        offsets = np.arange(self.block_size + 1)
        for index in np.unique(domains):
            rows = np.flatnonzero(domains == index)
            domain = self.domains[index]
            starts = self._starts(domain, len(rows))
            windows[rows] = self.splits[domain].tokens[starts[:, None] + offsets]
            self.tokens_seen[domain] += len(rows) * self.block_size
        data = torch.from_numpy(windows)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous(), domains.astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "tokens_seen": dict(self.tokens_seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = dict(state["rng"])
        self.tokens_seen = {d: int(state["tokens_seen"].get(d, 0)) for d in self.domains}


def fixed_eval_batches(
    corpus: Corpus, domain: str, block_size: int, batch_size: int, n_batches: int, seed: int
) -> list[Batch]:
    """``n_batches`` batches of held-out windows of ``domain``'s val split, the same every call.

    The split is cut into ``batch_size * n_batches`` equal strata and one window starts at a
    seeded random place in each: the windows cover the split evenly, which keeps the estimate's
    noise low. A val split shorter than ``block_size + 1`` tokens gets shorter windows.
    """
    tokens = corpus.val(domain).tokens
    length = min(block_size, len(tokens) - 1)
    if length < 1:
        raise ValueError(f"domain {domain!r} has {len(tokens)} val tokens: too few to evaluate")
    count = batch_size * n_batches
    last = len(tokens) - (length + 1)
    # The domain's name enters the seed, so domains of equal size do not share window places.
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode())])
    edges = np.linspace(0, last + 1, count + 1)
    starts = np.minimum(
        np.floor(edges[:-1] + rng.random(count) * np.diff(edges)).astype(np.int64), last
    )
    windows = torch.from_numpy(tokens[starts[:, None] + np.arange(length + 1)].astype(np.int64))
    return [
        (
            windows[i : i + batch_size, :-1].contiguous(),
            windows[i : i + batch_size, 1:].contiguous(),
        )
        for i in range(0, count, batch_size)
    ]
