"""How fast a proxy model trains on CPU, per size, against a matmul loop timed in the same run.

    .venv/bin/python -m bench.proxy [--threads 1] [--steps 40] [--seed-check]

For each size (the ``tiny``, ``small`` and ``large`` presets, and ``ref-0.84M``: the 0.84M-parameter
model the issue quotes at ~12k tokens/s on 2 cores) it trains on a synthetic corpus of the test
fixture (4 domains) for ``--steps`` steps after 3 warm-up steps and prints the parameters,
training tokens/s, seconds per 100 steps, and the seconds a whole preset run takes (its steps
plus its evaluations). ``calibration`` is a fixed torch workload (256 x 256 float32 matmuls,
in GFLOP/s) timed the same way; ``x calib`` = tokens/s per calibration GFLOP/s, comparable
across machines.

``--seed-check`` then trains the ``tiny`` and ``small`` presets on a mixture with and without
one domain, two seeds each, and prints the validation losses: the mixture's effect must dwarf
the seed noise for proxy runs to rank mixtures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_trainer.config import PRESETS, ModelConfig, ProxyConfig
from proxy_trainer.corpus.format import Corpus
from proxy_trainer.train import Trainer, train
from tests.proxy_trainer.corpus_fixture import synthetic_domains, write_corpus

REFERENCE = ProxyConfig(ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128))
WEIGHTS = {"repeat": 0.3, "arithmetic": 0.3, "noise": 0.1, "words": 0.3}


def calibration_gflops(seconds: float = 1.0) -> float:
    a = torch.randn(256, 256)
    b = torch.randn(256, 256)
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            a @ b
        count += 50
    return 2 * 256**3 * count / (time.perf_counter() - start) / 1e9


def measure(corpus: Corpus, name: str, proxy: ProxyConfig, steps: int) -> dict[str, float]:
    trainer = Trainer(corpus, proxy, weights=WEIGHTS)
    for _ in range(3):  # warm-up: allocator and kernel selection
        trainer.train_step(*trainer.next_batch())
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*trainer.next_batch())
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    trainer.evaluate()
    per_eval = time.perf_counter() - start
    cfg = proxy.train
    evals = cfg.steps // cfg.eval_every + (cfg.steps % cfg.eval_every != 0)
    tokens = cfg.batch_size * proxy.model.block_size
    return {
        "parameters": trainer.model.num_parameters(),
        "tokens_per_second": tokens / per_step,
        "seconds_per_100": 100 * per_step,
        "run_seconds": cfg.steps * per_step + evals * per_eval,
        "run_tokens": cfg.steps * tokens,
    }


def seed_check(corpus: Corpus, threads: int) -> None:
    without = {k: v for k, v in WEIGHTS.items() if k != "arithmetic"}
    for name in ("tiny", "small"):
        proxy = PRESETS[name].with_train(threads=threads)
        losses: dict[str, list[dict[str, float]]] = {}
        for label, weights in (("with arithmetic", WEIGHTS), ("without arithmetic", without)):
            losses[label] = [
                train(corpus, weights, proxy.with_train(seed=seed)).metrics for seed in (0, 1)
            ]
        print(f"\n{name}: val loss, seeds 0 / 1 (|seed diff|), per domain")
        for domain in corpus.domains:
            key = f"val_loss/{domain}"
            cells = []
            for label, runs in losses.items():
                a, b = runs[0][key], runs[1][key]
                cells.append(f"{label}: {a:.3f} / {b:.3f} ({abs(a - b):.3f})")
            effect = statistics.mean(
                r[key] for r in losses["without arithmetic"]
            ) - statistics.mean(r[key] for r in losses["with arithmetic"])
            print(f"  {domain:<11} " + "   ".join(cells) + f"   effect {effect:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed-check", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp), synthetic_domains(documents=60))
        calibration = calibration_gflops()
        print(f"threads {args.threads}; calibration {calibration:.1f} GFLOP/s (256^2 matmul)")
        print(
            f"{'size':<10} {'params':>9} {'tokens/s':>9} {'x calib':>8} {'s/100 steps':>11} "
            f"{'run tokens':>10} {'run s':>7}"
        )
        sizes = {**PRESETS, "ref-0.84M": REFERENCE}
        for name, proxy in sizes.items():
            row = measure(corpus, name, proxy.with_train(threads=args.threads), args.steps)
            print(
                f"{name:<10} {row['parameters']:>9,.0f} {row['tokens_per_second']:>9,.0f} "
                f"{row['tokens_per_second'] / calibration:>8,.0f} {row['seconds_per_100']:>11.2f} "
                f"{row['run_tokens']:>10,.0f} {row['run_seconds']:>7.1f}"
            )
        if args.seed_check:
            seed_check(corpus, args.threads)


if __name__ == "__main__":
    main()
