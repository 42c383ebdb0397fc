"""Claims per second through the service vs a raw ``SKIP LOCKED`` claim loop, on Postgres.

    .venv/bin/python bench/claims.py [--workers 16] [--runs 2000] [--serve-workers 1]

Starts ``mixopt serve`` on a fresh Postgres database with an offline experiment of ``--runs``
pending runs, then ``--workers`` concurrent clients each loop claim + complete until the queue
is empty (a 204): claims/s, p50/p99 claim latency, and a check that no run was handed out twice
and every run was completed once. In the same run, the same number of psycopg threads claim
the rows of a second experiment of as many pending runs straight in SQL (``SELECT ... FOR UPDATE
SKIP LOCKED`` + ``UPDATE``, then the completing ``UPDATE``, one commit each): the ceiling for a
queue on this table. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg

# Run as a script (python bench/x.py): the repository root is what imports resolve against.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import bench_server, percentile

EXPERIMENT = {
    "name": "claims-bench",
    "method": "regmix",
    "domains": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    "objective": {"metrics": {"loss": 1}},
}


def pending_experiment(http: httpx.Client, name: str, runs: int) -> str:
    experiment = http.post("/api/v1/experiments", json={**EXPERIMENT, "name": name})
    experiment.raise_for_status()
    eid = str(experiment.json()["id"])
    left = runs
    while left:
        count = min(left, 1000)  # the most one proposals call designs
        response = http.post(f"/api/v1/experiments/{eid}/proposals", json={"count": count})
        response.raise_for_status()
        left -= count
    return eid


async def service_claims(
    url: str, token: str, experiment_id: str, workers: int
) -> tuple[list[str], list[str], list[float], float]:
    """Claimed run ids, completed run ids, claim latencies (s) and the elapsed time."""
    claimed: list[str] = []
    completed: list[str] = []
    latencies: list[float] = []

    async def worker(index: int) -> None:
        name = f"bench-{index}"
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            while True:
                start = time.perf_counter()
                response = await http.post(
                    f"/api/v1/experiments/{experiment_id}/claim", json={"worker": name}
                )
                latencies.append(time.perf_counter() - start)
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    raise RuntimeError(f"claim: {response.status_code} {response.text}")
                run_id = str(response.json()["id"])
                claimed.append(run_id)
                done = await http.post(
                    f"/api/v1/runs/{run_id}/complete",
                    json={"metrics": {"loss": 1.0 + index / 100}, "worker": name},
                )
                if done.status_code != 200:
                    raise RuntimeError(f"complete: {done.status_code} {done.text}")
                completed.append(run_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    return claimed, completed, latencies, time.perf_counter() - started


def raw_claims(dsn: str, experiment_id: str, workers: int) -> tuple[list[int], float]:
    """The same loop in SQL: claimed run ids and the elapsed time."""
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        with psycopg.connect(dsn) as conn:
            while True:
                row = conn.execute(
                    "UPDATE runs SET status = 'running', worker = %s, updated_at = now() "
                    "WHERE id = (SELECT id FROM runs WHERE experiment_id = %s "
                    "AND status = 'pending' AND NOT excluded ORDER BY id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED) RETURNING id",
                    (f"raw-{index}", int(experiment_id)),
                ).fetchone()
                conn.commit()
                if row is None:
                    return
                conn.execute(
                    "UPDATE runs SET status = 'completed', metrics = %s, updated_at = now() "
                    "WHERE id = %s",
                    ('{"loss": 1.0}', row[0]),
                )
                conn.commit()
                with lock:
                    claimed.append(row[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claimed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16, help="concurrent claiming clients")
    parser.add_argument("--runs", type=int, default=2000, help="pending runs to claim")
    parser.add_argument("--serve-workers", type=int, default=1, help="mixopt serve --workers")
    args = parser.parse_args()

    serve_args = ["--workers", str(args.serve_workers)] if args.serve_workers > 1 else []
    with bench_server(*serve_args) as server:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=120
        ) as http:
            service_eid = pending_experiment(http, "claims-bench", args.runs)
            raw_eid = pending_experiment(http, "claims-bench-raw", args.runs)
        claimed, completed, latencies, elapsed = asyncio.run(
            service_claims(server.url, server.token, service_eid, args.workers)
        )
        raw_claimed, raw_elapsed = raw_claims(server.dsn, raw_eid, args.workers)
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60
        ) as http:
            counts = http.get(f"/api/v1/experiments/{service_eid}").json()["counts"]

    twice = [run for run, n in Counter(claimed).items() if n > 1]
    problems = []
    if twice:
        problems.append(f"{len(twice)} runs handed out twice, e.g. {twice[:5]}")
    if len(set(claimed)) != args.runs or sorted(completed) != sorted(claimed):
        problems.append(f"{len(set(claimed))} runs claimed, {len(completed)} completed")
    if counts.get("completed") != args.runs:
        problems.append(f"the experiment counts {counts}, not {args.runs} completed")
    if len(set(raw_claimed)) != len(raw_claimed) or len(raw_claimed) != args.runs:
        problems.append(f"raw loop: {len(raw_claimed)} claims, {len(set(raw_claimed))} distinct")

    rate = len(claimed) / elapsed
    raw_rate = len(raw_claimed) / raw_elapsed
    print(f"workers={args.workers} runs={args.runs} serve-workers={args.serve_workers}")
    print(
        f"service : {rate:8,.0f} claims/s  (claim + complete per run, {elapsed:.1f} s)"
        f"  claim latency p50 {statistics.median(latencies) * 1000:.1f} ms"
        f"  p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    print(f"raw SQL : {raw_rate:8,.0f} claims/s  (SKIP LOCKED claim + complete, same concurrency)")
    print(f"ratio service/raw: {rate / raw_rate:.2f}")
    print("no run handed out twice; every run completed once" if not problems else "")
    if problems:
        sys.exit("FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main()
