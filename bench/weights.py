"""Weights polls and feedback through the service, against ``/healthz`` in the same run.

    .venv/bin/python bench/weights.py [--connections 16] [--seconds 10]

Starts ``mixopt serve`` on a fresh Postgres database with one online run, then for each of
``GET /healthz`` (the process and nothing else: the ceiling), ``GET /runs/{id}/weights`` and
``GET /runs/{id}/weights`` with ``If-None-Match`` (the poll a trainer makes, 304), 16 concurrent
connections request as fast as they can for the given time: requests/s and p50/p99 latency.
Then feedback per second from one trainer (sequential, as a trainer posts it). Uses wrk for the
GETs when it is installed, else an asyncio httpx load generator (the same one for all three, so
the ratios compare like with like).

With ``--fit-domains 64`` a last phase polls the weights again while a fit (``--fit-model``, on
``--fit-runs`` runs of an offline experiment with that many domains) runs in the background:
the polls' p50/p99 next to the idle ones, and the fit's wall time. ``--fit-workers 0`` serves
with fits in the server's threads (as before the fit pool), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

# Run as a script (python bench/x.py): the repository root is what imports resolve against.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import bench_server, percentile


async def hammer(
    url: str, path: str, headers: dict[str, str], connections: int, seconds: float
) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of GET ``path`` over ``connections`` connections."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await http.get(path)
                latencies.append(time.perf_counter() - start)
                if response.status_code not in (200, 304):
                    raise RuntimeError(f"{path}: {response.status_code} {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return (
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        percentile(latencies, 0.99) * 1000,
    )


def wrk(url: str, headers: dict[str, str], connections: int, seconds: float) -> tuple[float, ...]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[-1])

    def ms(label: str) -> float:
        value = next(line for line in out.splitlines() if line.strip().startswith(label)).split()[1]
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
        unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
        return float(value[: -len(unit)]) * scale[unit]

    return rate, ms("50%"), ms("99%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--feedback", type=int, default=300, help="feedback posts to time")
    parser.add_argument("--fit-domains", type=int, default=0, help="0: no fit phase")
    parser.add_argument("--fit-runs", type=int, default=512)
    parser.add_argument("--fit-model", default="auto")
    parser.add_argument("--fit-workers", type=int, default=None, help="mixopt serve's")
    parser.add_argument(
        "--load",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator (default wrk when installed)",
    )
    args = parser.parse_args()

    serve_args = [] if args.fit_workers is None else ["--fit-workers", str(args.fit_workers)]
    fit_phase: tuple[tuple[float, ...], float, bool, tuple[int, int]] | None = None
    with bench_server(*serve_args) as server:
        auth = {"Authorization": f"Bearer {server.token}"}
        results: dict[str, tuple[float, ...]] = {}
        server_side: dict[str, tuple[int, int]] = {}
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
            experiment = http.post(
                "/api/v1/experiments",
                json={
                    "name": "weights-bench",
                    "mode": "online",
                    "method": "stratified",
                    "domains": [{"name": f"d{i}"} for i in range(8)],
                },
            ).json()
            run = http.post(
                f"/api/v1/experiments/{experiment['id']}/runs", json={"name": "main"}
            ).json()
            weights_path = f"/api/v1/runs/{run['id']}/weights"
            etag = http.get(weights_path).headers["etag"]
            cases = {
                "healthz": ("/healthz", {}),
                "weights": (weights_path, auth),
                "weights 304": (weights_path, {**auth, "If-None-Match": etag}),
            }
            for label, (path, headers) in cases.items():
                before = poll_durations(http)
                results[label] = poll(server.url, path, headers, args)
                server_side[label] = within(before, poll_durations(http))
            domains = [f"d{i}" for i in range(8)]
            start = time.perf_counter()
            for i in range(args.feedback):
                response = http.post(
                    f"/api/v1/runs/{run['id']}/feedback",
                    json={
                        "step": (i + 1) * 100,
                        "train_losses": dict.fromkeys(domains, 3.0),
                        "eval_losses": dict.fromkeys(domains, 3.1),
                        "tokens": dict.fromkeys(domains, 1000),
                    },
                )
                response.raise_for_status()
            feedback_rate = args.feedback / (time.perf_counter() - start)
            if args.fit_domains:
                fit_phase = while_fitting(http, server.url, weights_path, auth, args)

    tool = "wrk" if args.load == "wrk" else "asyncio httpx"
    print(f"{args.connections} connections, {args.seconds:g} s each, load from {tool}")
    for label, (rate, p50, p99) in results.items():
        print(
            f"{label:12s}: {rate:8,.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            f"{_server_side(*server_side[label])}"
        )
    base = results["healthz"][0]
    print(f"ratio weights/healthz: {results['weights'][0] / base:.2f}")
    print(f"ratio weights 304/healthz: {results['weights 304'][0] / base:.2f}")
    print(f"feedback: {feedback_rate:,.0f} /s (one trainer, sequential, stratified mixer)")
    if fit_phase is not None:
        (rate, p50, p99), fit_seconds, during, answered = fit_phase
        print(
            f"weights while fitting: {rate:8,.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            f"{_server_side(*answered)} ({args.fit_model} on {args.fit_runs} runs of "
            f"{args.fit_domains} domains: "
            f"{fit_seconds:.1f} s{'' if during else '; it ended before the polls did'})"
        )


def while_fitting(
    http: httpx.Client,
    url: str,
    weights_path: str,
    auth: dict[str, str],
    args: argparse.Namespace,
) -> tuple[tuple[float, ...], float, bool, tuple[int, int]]:
    """Weights polls (rate, p50, p99) for ``args.seconds`` from the start of a background fit,
    the fit's wall time, whether it still ran when the polls stopped (pick ``--seconds``
    shorter than the fit), and the polls the server answered within 10 ms (of all)."""
    rng = np.random.default_rng(0)
    domains = [f"d{i}" for i in range(args.fit_domains)]
    experiment = http.post(
        "/api/v1/experiments",
        json={
            "name": "fit-bench",
            "method": "regmix",
            "domains": [{"name": d} for d in domains],
            "objective": {"metrics": {"loss": 1.0}},
        },
    ).json()
    coefficients = rng.normal(size=len(domains))
    runs = []
    for _ in range(args.fit_runs):
        w = rng.dirichlet(np.full(len(domains), 0.3))
        loss = 3.0 + float(w @ coefficients) + float(rng.normal(0, 0.01))
        runs.append(
            {"weights": dict(zip(domains, w.tolist(), strict=True)), "metrics": {"loss": loss}}
        )
    http.post(
        f"/api/v1/experiments/{experiment['id']}/runs/batch", json={"runs": runs}
    ).raise_for_status()
    start = time.perf_counter()
    started = http.post(
        f"/api/v1/experiments/{experiment['id']}/fit",
        json={"model": args.fit_model, "wait": False},
    )
    started.raise_for_status()
    if started.status_code != 202:
        raise RuntimeError(f"the server fitted before answering: {started.status_code}")
    before = poll_durations(http)
    polls = poll(url, weights_path, auth, args)  # as the idle polls were measured
    answered = within(before, poll_durations(http))
    fit_path = f"/api/v1/fits/{started.json()['id']}"
    during = running = http.get(fit_path).json()["status"] == "running"
    while running:
        time.sleep(0.2)
        running = http.get(fit_path).json()["status"] == "running"
    return polls, time.perf_counter() - start, during, answered


def poll(
    url: str, path: str, headers: dict[str, str], args: argparse.Namespace
) -> tuple[float, ...]:
    if args.load == "wrk":
        return wrk(url + path, headers, args.connections, args.seconds)
    return asyncio.run(hammer(url, path, headers, args.connections, args.seconds))


BOUND = "0.01"  # seconds: the p99 target, a bucket of the server's duration histogram


def poll_durations(http: httpx.Client) -> tuple[float, float]:
    """The server's own count of weights polls answered within ``BOUND`` and of all of them
    (``/metrics``: from the request's first byte to its answer's last, in the server)."""
    within_bound = total = 0.0
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("route") != "get_weights":
                continue
            if sample.name.endswith("_bucket") and sample.labels.get("le") == BOUND:
                within_bound += sample.value
            elif sample.name.endswith("_count"):
                total += sample.value
    return within_bound, total


def within(before: tuple[float, float], after: tuple[float, float]) -> tuple[int, int]:
    return int(after[0] - before[0]), int(after[1] - before[1])


def _server_side(answered: int, total: int) -> str:
    """What the server measured (nothing for a phase without weights polls, ``/healthz``):
    wrk's latencies include its own waits for the CPU, which on 2 shared cores is most of an
    outlier."""
    if not total:
        return ""
    return f"  (server: {100 * answered / total:.2f} % within {float(BOUND) * 1000:g} ms)"


if __name__ == "__main__":
    main()
