"""Metric ingest through the service vs raw psycopg inserts of the same rows, on Postgres.

    .venv/bin/python bench/ingest.py [--clients 32] [--batch 100] [--seconds 10] [--workers 1]

Starts ``mixopt serve`` (``--workers`` processes) on a fresh Postgres database, then 32
concurrent clients post batches of 100 points for 10 s: points/s and p50/p99 latency per batch.
The clients are wrk connections (``bench/ingest.lua``) when wrk is installed, else asyncio httpx
(``--load httpx``), which on a 2-core machine takes a good part of the CPU the server needs.
In the same run, the same number of threads insert the same kind of rows straight into the
table with psycopg (``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``, one commit
per batch): the ceiling for a durable, idempotent append. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

# Run as a script (python bench/x.py): the repository root is what imports resolve against.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import bench_server, percentile


async def service_load(
    url: str, token: str, run_ids: list[str], clients: int, batch: int, seconds: float
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    posted = 0
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal posted
        run_id = run_ids[index]
        step = 0
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            while time.perf_counter() < deadline:
                points = [
                    {"name": "train/loss", "step": step + i, "value": 1.0 / (1 + step + i)}
                    for i in range(batch)
                ]
                step += batch
                start = time.perf_counter()
                response = await http.post(
                    f"/api/v1/runs/{run_id}/metrics", json={"points": points}
                )
                latencies.append(time.perf_counter() - start)
                if response.status_code != 202:
                    raise RuntimeError(response.text)
                posted += batch

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return posted, [*latencies, time.perf_counter() - started]


def wrk_load(
    url: str, token: str, run_ids: list[str], clients: int, batch: int, seconds: float
) -> tuple[float, float, float]:
    """Points/s, p50 and p99 (s) with wrk as the load generator (``bench/ingest.lua``)."""
    threads = 2
    script = Path(__file__).with_name("ingest.lua")
    args = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{int(seconds)}s", "--latency"]
    args += ["--timeout", "60s", "-s", str(script), url, "--", token, str(batch), str(threads)]
    out = subprocess.run([*args, *run_ids], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    if any("Non-2xx" in line for line in lines):
        raise RuntimeError(f"some batches were not accepted:\n{out}")
    rate = float(next(line for line in lines if "Requests/sec" in line).split()[-1])

    def seconds_at(label: str) -> float:
        value = next(line for line in lines if line.strip().startswith(label)).split()[1]
        unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
        return float(value[: -len(unit)]) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]

    return rate * batch, seconds_at("50%"), seconds_at("99%")


def raw_load(
    dsn: str, run_ids: list[str], clients: int, batch: int, seconds: float
) -> tuple[int, float]:
    inserted = [0] * clients
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        run_id = int(run_ids[index])
        step = 10**9  # past the service's steps: these rows are new
        with psycopg.connect(dsn) as conn:
            while time.perf_counter() < deadline:
                steps = list(range(step, step + batch))
                step += batch
                conn.execute(
                    "INSERT INTO metric_points (run_id, name, step, value) "
                    "SELECT %s, 'train/loss', s, v FROM unnest(%s::bigint[], %s::float8[]) "
                    "AS t(s, v) ON CONFLICT (run_id, name, step) DO NOTHING",
                    (run_id, steps, [1.0 / (1 + s) for s in steps]),
                )
                conn.commit()
                inserted[index] += batch

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(inserted), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="mixopt serve --workers")
    parser.add_argument(
        "--load",
        choices=["wrk", "httpx"],
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator: wrk (C, light: measures the server) or asyncio httpx (Python: "
        "on a small machine it takes CPU from the server)",
    )
    args = parser.parse_args()

    with bench_server(*(["--workers", str(args.workers)] if args.workers > 1 else [])) as server:
        token = server.token
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            experiment = http.post(
                "/api/v1/experiments",
                json={
                    "name": "ingest-bench",
                    "method": "regmix",
                    "domains": [{"name": "a"}, {"name": "b"}],
                    "objective": {"metrics": {"loss": 1}},
                },
            ).json()
            runs = http.post(
                f"/api/v1/experiments/{experiment['id']}/proposals",
                json={"count": args.clients},
            ).json()["items"]
        run_ids = [r["id"] for r in runs]

        if args.load == "wrk":
            service_rate, p50, p99 = wrk_load(
                server.url, token, run_ids, args.clients, args.batch, args.seconds
            )
            posted_text = "wrk"
        else:
            posted, timings = asyncio.run(
                service_load(server.url, token, run_ids, args.clients, args.batch, args.seconds)
            )
            elapsed, latencies = timings[-1], timings[:-1]
            service_rate = posted / elapsed
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            posted_text = f"httpx, {posted:,} points, {len(latencies):,} batches"
        raw_points, raw_elapsed = raw_load(
            server.dsn, run_ids, args.clients, args.batch, args.seconds
        )
        raw_rate = raw_points / raw_elapsed

    print(
        f"clients={args.clients} batch={args.batch} seconds={args.seconds:g} "
        f"workers={args.workers} load={args.load}"
    )
    print(
        f"service : {service_rate:10,.0f} points/s  ({posted_text})"
        f"  latency p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms"
    )
    print(f"raw SQL : {raw_rate:10,.0f} points/s  (psycopg unnest insert, same concurrency)")
    print(f"ratio service/raw: {service_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
