"""Search for the rows a scorer likes best: a top-k pool, and a global-then-refine search.

A *scorer* maps candidate rows (mixtures, or mixtures with parameters) to one score per row,
smaller is better (callers negate what they maximise and map non-finite values to ``inf``).
The search scores many rows drawn over the whole space, then, round by round, rows drawn in
ever tighter neighbourhoods of the best ones so far. It needs no gradients, so it works for any
model, trees included. The recommendation of a fit, the optimum ``rounds`` samples around and
the candidates ``bayes`` picks its batch from all come from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mixers.base import FloatArray

__all__ = ["CHUNK", "Around", "Draw", "Round", "Scorer", "Search", "TopK", "global_then_refine"]

Scorer = Callable[[FloatArray], FloatArray]
"""Rows -> one score per row, smaller is better."""
Draw = Callable[[int], FloatArray]
"""``count -> rows`` drawn over the whole space (it may return fewer)."""
CHUNK = 8192
"""Rows drawn and scored at once in the global stage: bounded memory."""
Around = Callable[[FloatArray, float, int], FloatArray]
"""``(centres, concentration, count) -> rows`` drawn around the centres (rows, used in turn)."""


class TopK:
    """The ``keep`` best rows seen so far, best first; among equal scores the row seen first.

    Keeping the order stable makes a search reproducible whatever the chunking, and a tree
    model's many tied predictions are broken by the order the candidates were drawn in.
    """

    def __init__(self, width: int, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self.rows: FloatArray = np.empty((0, width))
        self.scores: FloatArray = np.empty(0)

    def add(self, rows: FloatArray, scores: FloatArray) -> None:
        rows = np.vstack([self.rows, rows])
        scores = np.concatenate([self.scores, np.asarray(scores, dtype=float)])
        order = np.argsort(scores, kind="stable")[: self.keep]
        self.rows, self.scores = rows[order], scores[order]

    def copy(self) -> TopK:
        other = TopK(self.rows.shape[1], self.keep)
        other.rows, other.scores = self.rows.copy(), self.scores.copy()
        return other

    def centres(self, count: int, min_l1: float | None = None) -> FloatArray:
        """Up to ``count`` of the best rows with a finite score, best first; with ``min_l1``,
        each more than ``min_l1`` (L1) from the ones before it."""
        chosen: list[FloatArray] = []
        for row, score in zip(self.rows, self.scores, strict=True):
            if len(chosen) == count or not np.isfinite(score):
                break
            if min_l1 is None or all(float(np.abs(row - c).sum()) > min_l1 for c in chosen):
                chosen.append(row)
        return np.array(chosen).reshape(-1, self.rows.shape[1])


@dataclass(frozen=True)
class Round:
    """One refinement round: rows around the pool's best centres at each concentration."""

    concentrations: tuple[float, ...]


@dataclass(frozen=True)
class Search:
    """What ``global_then_refine`` found: the pool of the best rows, the pool as it was after
    the global stage (spread over the space, before refinement crowded it around a few
    centres), the rows scored and the refinement rounds done."""

    pool: TopK
    after_global: TopK
    scored: int
    rounds: int


def global_then_refine(
    score: Scorer,
    *,
    draw: Draw,
    candidates: int,
    keep: int,
    width: int,
    global_share: float = 0.5,
    rounds: Sequence[Round] = (),
    around: Around | None = None,
    centres: int = 16,
    min_l1: float | None = None,
    seeds: FloatArray | None = None,
    chunk: int = CHUNK,
) -> Search:
    """Score ``candidates`` rows: ``global_share`` of them from ``draw`` (in chunks), then the
    rest split evenly over the ``rounds``, each round's share split evenly over its
    concentrations, drawn around the ``centres`` best distinct (``min_l1``) rows so far.

    ``seeds`` (e.g. the runs so far) join the pool after the global stage, not counted in
    ``candidates``. Refinement stops early when the pool holds no row with a finite score.

    The work is a count, never a clock: the same scorer, draws and ``candidates`` give the same
    pool on a quiet or a busy machine (a time budget is turned into a count by the caller, e.g.
    ``mixers.recommendation.search_candidates``).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if rounds and around is None:
        raise ValueError("refinement rounds need an `around` sampler")

    def global_part(total: int) -> int:
        # The epsilon keeps an exact share (0.4 x 10240) from rounding up to one row more.
        return math.ceil(total * global_share - 1e-9) if rounds else total

    pool = TopK(width, keep)
    global_count = global_part(candidates)
    drawn = asked = 0
    while asked < global_count:
        size = min(chunk, global_count - asked)
        rows = draw(size)
        pool.add(rows, score(rows))
        drawn += len(rows)
        asked += size
    if seeds is not None and len(seeds):
        pool.add(seeds, score(seeds))
    after_global = pool.copy()
    done = 0
    for i, step in enumerate(rounds):
        count = (candidates - drawn) // (len(rounds) - i)
        best = pool.centres(centres, min_l1)
        if len(best) == 0 or count < 1:
            break
        per = count // len(step.concentrations)
        assert around is not None
        rows = np.vstack([around(best, c, per) for c in step.concentrations])
        pool.add(rows, score(rows))
        drawn += len(rows)
        done += 1
    return Search(pool=pool, after_global=after_global, scored=drawn, rounds=done)
