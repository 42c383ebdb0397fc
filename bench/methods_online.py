"""The ``online`` section of ``bench/methods.py``: head-room captured per online method and seed.

On the toy trainer of ``tests/mixers/online/simulator.py`` (the default world and three random
ones, 2,000 steps each), each method's default config is run once per seed; the figure is the
share of the best static mixture's gain over stratified that the run reaches (1: all of it,
0: no better than stratified, < 0: worse). With ``real`` it also runs ``bench/online_real.py``'s
comparison of ``curves`` against stratified on the proxy trainer and the real corpus.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mixers.online import simulator

METHODS = ("odm", "aioli", "doremi", "curves")
WORLDS: tuple[tuple[str, simulator.World, int], ...] = (
    ("default K=5", simulator.WORLD, 5),
    ("random 1 K=4", simulator.random_world(1, 4), 3),
    ("random 3 K=8", simulator.random_world(3, 8), 3),
    ("random 5 K=10", simulator.random_world(5, 10), 3),
)


def run_section(real: bool = False, real_preset: str = "tiny") -> dict[str, list[float]]:
    """Print one row per method and world (head-room captured per seed, mean); return every
    method's figures over all worlds and seeds."""
    print("online: head-room captured (share of best-static's gain over stratified)")
    figures: dict[str, list[float]] = {m: [] for m in METHODS}
    for label, world, seeds in WORLDS:
        best = simulator.best_static(world)
        for method in METHODS:
            captured = [
                simulator.head_room_captured(method, seed, world, best=best)
                for seed in range(seeds)
            ]
            figures[method] += captured
            print(
                f"  {label:<14} {method:<7} "
                + " ".join(f"{c:+.2f}" for c in captured)
                + f"  mean {statistics.mean(captured):+.2f}",
                flush=True,
            )
    for method, captured in figures.items():
        print(
            f"  all worlds     {method:<7} mean {statistics.mean(captured):+.2f}, "
            f"worst seed {min(captured):+.2f}"
        )
    if real:
        script = Path(__file__).with_name("online_real.py")
        subprocess.run(
            [sys.executable, str(script), "--preset", real_preset, "--methods", "curves"],
            check=True,
        )
    return figures


if __name__ == "__main__":
    run_section(real="--real" in sys.argv)
