"""Online mixers on real text: ``curves`` (and others) against stratified, within one run each.

    .venv/bin/python bench/online_real.py [--preset small] [--seeds 0 1 2] [--methods curves]

Builds the demo's corpus (real-text domains from installed packages plus three synthetic ones),
starts ``mixopt serve`` on an embedded SQLite file, and for each seed trains the proxy model once
per method through an online experiment, the weights following the service. Every method is
judged on the demo's objective: the mean held-out loss over the real-text domains, which is
also what ``curves`` is told to minimise (``config.target``); the others minimise what their
papers do. Prints one row per seed and the mean gain over stratified.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixopt import schemas
from mixopt.client import MixoptClient, OnlineMixture
from mixopt.demo import objective_of, objective_value, start_service
from proxy_trainer.config import preset
from proxy_trainer.corpus import Corpus
from proxy_trainer.corpus.build import build_corpus
from proxy_trainer.online import train_online

ROUNDS = 12
"""Feedback rounds per run: the segment is the run's steps / ROUNDS."""


def method_config(method: str, real: tuple[str, ...], steps: int) -> dict[str, Any]:
    segment = max(1, steps // ROUNDS)
    if method == "curves":
        return {
            "target": dict.fromkeys(real, 1.0),
            "total_steps": steps,
            "segment_steps": segment,
            "warmup_rounds": 2,
        }
    if method in ("odm", "stratified"):
        return {"segment_steps": segment}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["curves"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--config",
        type=json.loads,
        default={},
        help="JSON object merged into every method's config, e.g. '{\"max_shift\": 0.1}'",
    )
    parser.add_argument(
        "--stratified",
        type=float,
        nargs="+",
        default=None,
        metavar="LOSS",
        help="stratified's objective per seed from an earlier run (it is deterministic by "
        "seed): not trained again",
    )
    args = parser.parse_args()
    if args.stratified is not None and len(args.stratified) != len(args.seeds):
        parser.error("--stratified needs one value per seed")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mixopt-online-real-"))
    corpus_dir = workdir / "corpus"
    build_corpus(corpus_dir, seed=0, max_tokens_per_domain=2_000_000)
    corpus = Corpus.open(corpus_dir)
    real = corpus.real_domains
    objective = objective_of(real)
    tokens = corpus.token_counts()
    service = start_service(workdir, port=0)
    client = MixoptClient(service.url, service.token, retries=5)
    print(f"corpus: {', '.join(tokens)}; objective: mean val loss over {', '.join(real)}")
    print(f"machine: {os.cpu_count()} cores; preset {args.preset}")
    scores: dict[str, list[float]] = {m: [] for m in ["stratified", *args.methods]}
    try:
        for s, seed in enumerate(args.seeds):
            proxy = preset(args.preset).with_train(seed=seed, threads=os.cpu_count())
            steps = proxy.train.steps
            row = []
            for method in scores:
                if method == "stratified" and args.stratified is not None:
                    scores[method].append(args.stratified[s])
                    row.append(f"stratified {args.stratified[s]:.4f} (given)")
                    continue
                experiment = client.create_experiment(
                    schemas.ExperimentCreate.model_validate(
                        {
                            "name": f"online-real-{method}-s{seed}-{time.time_ns()}",
                            "mode": "online",
                            "method": method,
                            "domains": [{"name": d, "tokens": tokens[d]} for d in tokens],
                            "objective": objective,
                            "config": {
                                "seed": seed,
                                **method_config(method, real, steps),
                                **(args.config if method != "stratified" else {}),
                            },
                        }
                    )
                )
                mixture = OnlineMixture.start(client, experiment.id, "main", total_steps=steps)
                started = time.perf_counter()
                trained = train_online(corpus, mixture, proxy)
                value = objective_value(
                    {f"val_loss/{d}": v for d, v in trained.val_losses.items()}, objective
                )
                scores[method].append(value)
                final = trained.weights_history[-1][1] if trained.weights_history else {}
                top = sorted(final.items(), key=lambda kv: -kv[1])[:3]
                row.append(
                    f"{method} {value:.4f} ({time.perf_counter() - started:.0f} s, "
                    f"{len(trained.weights_history)} versions, top "
                    + ", ".join(f"{d} {w:.2f}" for d, w in top)
                    + ")"
                )
            print(f"seed {seed}: " + " | ".join(row), flush=True)
    finally:
        client.close()
        service.stop()
    base = scores["stratified"]
    for method in args.methods:
        gains = [b - s for b, s in zip(base, scores[method], strict=True)]
        print(
            f"{method}: mean {statistics.mean(scores[method]):.4f} vs stratified "
            f"{statistics.mean(base):.4f}; gain per seed "
            + ", ".join(f"{g:+.4f}" for g in gains)
            + f"; worse than stratified on {sum(g < 0 for g in gains)} of {len(gains)} seeds"
        )


if __name__ == "__main__":
    main()
