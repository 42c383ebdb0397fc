"""Dashboard pages served with realistic data, against the API reads they sit beside.

    .venv/bin/python bench/dashboard.py [--repeat 20] [--postgres]

Starts ``mixopt serve`` (one process; a SQLite file, or with ``--postgres`` a fresh Postgres
database) and loads what the browser tests look at (``tests/e2e/dashboard_data.py``): the 512
RegMix runs with a LightGBM fit, a run with 100,000 metric points and an online run with 50
feedback rounds. Then each page is fetched ``--repeat`` times with a signed-in session (the
token cookie): median and p90 time to the last byte, and the page's size. In the same run the
baseline: ``GET /api/v1/experiments/{id}/runs?limit=1000`` of the same 512-run experiment (the
API read a script would make instead), and ``/healthz`` (the floor: routing and one answer).
Prints every figure and each page's ratio to the runs read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# Run as a script (python bench/x.py): the repository root is what imports resolve against.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import bench_server, percentile
from service.web.auth import TOKEN_COOKIE
from tests.e2e.dashboard_data import DashboardData, load, sqlite_service


@contextmanager
def service(postgres: bool) -> Iterator[tuple[str, str]]:
    """``(url, admin token)`` of a fresh service."""
    if postgres:
        with bench_server() as server:
            yield server.url, server.token
    else:
        with tempfile.TemporaryDirectory() as workdir, sqlite_service(Path(workdir)) as running:
            yield running


def timed(
    http: httpx.Client, path: str, repeat: int, headers: dict[str, str] | None = None
) -> tuple[list[float], int]:
    """``repeat`` GETs after one warm-up: seconds each (to the last byte), and the body's size."""
    seconds = []
    size = 0
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        response = http.get(path, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code not in (200, 304):
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        if attempt:
            seconds.append(elapsed)
        size = len(response.content)
    return seconds, size


def measure(data: DashboardData, repeat: int) -> list[tuple[str, list[float], int]]:
    rows: list[tuple[str, list[float], int]] = []
    bearer = {"Authorization": f"Bearer {data.tokens['read']}"}
    with httpx.Client(base_url=data.url, headers=bearer, timeout=120) as api:
        rows.append(("healthz", *timed(api, "/healthz", repeat)))
        runs = f"/api/v1/experiments/{data.regmix_id}/runs?limit=1000"
        rows.append(("API runs?limit=1000", *timed(api, runs, repeat)))
    cookies = {TOKEN_COOKIE: data.tokens["read"]}
    with httpx.Client(base_url=data.url, cookies=cookies, timeout=120) as browser:
        for name, path in data.pages().items():
            rows.append((f"page {name}", *timed(browser, path, repeat)))
        poll = f"/ui/runs/{data.online_run_id}/online"
        rows.append(("poll online (200)", *timed(browser, poll, repeat)))
        etag = browser.get(poll).headers["etag"]
        rows.append(("poll online (304)", *timed(browser, poll, repeat, {"If-None-Match": etag})))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed GETs of each path")
    parser.add_argument("--postgres", action="store_true", help="a Postgres database, not SQLite")
    parser.add_argument("--fit-model", default="lightgbm", help="the model of the stored fit")
    args = parser.parse_args()

    with service(args.postgres) as (url, admin_token):
        started = time.perf_counter()
        data = load(url, admin_token, fit_model=args.fit_model)
        loading = time.perf_counter() - started
        rows = measure(data, args.repeat)

    print(f"backend={'postgres' if args.postgres else 'sqlite'} repeat={args.repeat}")
    print(f"data loaded through the API in {loading:.1f} s:")
    for part, spent in data.seconds.items():
        print(f"  {part:<28} {spent:6.2f} s")
    baseline = statistics.median(next(s for n, s, _ in rows if n.startswith("API runs")))
    print(f"{'':<26} {'median':>9} {'p90':>9} {'size':>10}  ratio to the API runs read")
    for name, seconds, size in rows:
        median = statistics.median(seconds)
        print(
            f"{name:<26} {median * 1000:7.1f}ms {percentile(seconds, 0.9) * 1000:7.1f}ms"
            f" {size / 1024:8.1f}kB  {median / baseline:5.2f}"
        )


if __name__ == "__main__":
    main()
