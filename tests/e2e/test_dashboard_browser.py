"""The dashboard in a real browser: Debian's Chromium driven by Playwright against ``mixopt
serve`` (a child process, SQLite, auth on) holding realistic data (``dashboard_data``).

Every page must draw each of its charts with no console error, no uncaught exception, no failed
request and no answer >= 400 other than the ones a test provokes. Each page is screenshotted
(full page) into ``$MIXOPT_SCREENSHOTS`` (default: a pytest temporary directory) and copied to
``/tmp/mixopt-screenshots``; its load time in the browser is printed at the end of the module.
The HTTP-level checks of the same pages are in ``tests/service/test_dashboard.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    ViewportSize,
    sync_playwright,
)

from mixopt.client import MixoptClient
from tests.e2e.dashboard_data import (
    MAX_WEIGHTS,
    DashboardData,
    feedback_round,
    load,
    sqlite_service,
)
from tests.regmix_data import DATA

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
COPY_TO = Path("/tmp/mixopt-screenshots")
NUMBER = re.compile(r"^-?\d+\.\d{4}$")
# The charts each page must draw (the ``data-figure`` of each chart div).
PAGE_CHARTS = {
    "experiments": set(),
    "offline-experiment": {"recommendation", "oof", "importance", "best", "parallel"},
    "regmix-run": {"weights"},  # imported with final metrics only: no curve to draw
    "long-run": {"weights", "losses", "other"},
    "online-experiment": set(),
    "online-run": {"weights", "train", "eval"},
}
RENDERED = """() => {
  const charts = [...document.querySelectorAll("[data-figure]")];
  const drawn = charts.filter((el) => el.classList.contains("js-plotly-plot")
    && el.querySelector(".main-svg"));
  return drawn.length === charts.length ? performance.now() : false;
}"""


# --- what went wrong in a page -----------------------------------------------------------------


@dataclass
class Watch:
    """Console errors, uncaught exceptions, failed requests and answers >= 400 of one page,
    except the ``(status, path)`` answers a test provokes (``allow``)."""

    page: Page
    problems: list[str] = field(default_factory=list)
    allowed: set[tuple[int, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def allow(self, status: int, path: str) -> None:
        self.allowed.add((status, path))

    def _is_allowed(self, status: int, url: str) -> bool:
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
        return (status, path) in self.allowed

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        found = re.search(r"status of (\d{3})", message.text)
        if found and self._is_allowed(int(found.group(1)), message.location.get("url", "")):
            return  # Chromium's own line about an answer the test provoked
        self.problems.append(f"console error: {message.text} at {message.location}")

    def _failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and not self._is_allowed(response.status, response.url):
            self.problems.append(f"{response.status} from {response.request.method} {response.url}")

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@dataclass
class Timing:
    ttfb_ms: float
    load_ms: float
    charts_ms: float
    bytes: int


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Collected by the tests, printed (always, past the capture) when the module ends."""
    collected: dict[str, Any] = {"loading": {}, "pages": {}}
    yield collected
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print_timings(collected)


def print_timings(collected: dict[str, Any]) -> None:
    print("\ndashboard data loading (through the API):")
    for part, seconds in collected["loading"].items():
        print(f"  {part:<32} {seconds:6.2f} s")
    if collected["pages"]:
        print("dashboard pages in Chromium (ms since navigation start):")
        print(f"  {'page':<20} {'first byte':>10} {'load':>8} {'charts':>8} {'HTML':>9}")
        for name, t in collected["pages"].items():
            print(
                f"  {name:<20} {t.ttfb_ms:10.0f} {t.load_ms:8.0f} {t.charts_ms:8.0f}"
                f" {t.bytes / 1024:7.0f} kB"
            )


@pytest.fixture(scope="module")
def data(
    tmp_path_factory: pytest.TempPathFactory, timings: dict[str, Any]
) -> Iterator[DashboardData]:
    if not DATA.is_dir():
        pytest.skip(f"RegMix data not found at {DATA}")
    started = time.perf_counter()
    with sqlite_service(tmp_path_factory.mktemp("dashboard")) as (url, admin_token):
        timings["loading"]["start mixopt serve"] = time.perf_counter() - started
        loaded = load(url, admin_token)
        timings["loading"].update(loaded.seconds)
        timings["loading"]["total"] = time.perf_counter() - started
        yield loaded


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MIXOPT_SCREENSHOTS")
    path = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    COPY_TO.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield launched
        launched.close()


def sign_in(browser: Browser, data: DashboardData, token: str) -> BrowserContext:
    """A browser session signed in through the login form."""
    context = browser.new_context(base_url=data.url, viewport=VIEWPORT)
    page = context.new_page()
    page.goto("/login")
    page.fill("#login input[name=token]", token)
    with page.expect_navigation():
        page.click("#login button[type=submit]")
    assert page.url == f"{data.url}/", page.content()
    page.close()
    return context


@pytest.fixture(scope="module")
def reader(browser: Browser, data: DashboardData) -> Iterator[BrowserContext]:
    context = sign_in(browser, data, data.tokens["read"])
    yield context
    context.close()


@pytest.fixture(scope="module")
def writer(browser: Browser, data: DashboardData) -> Iterator[BrowserContext]:
    context = sign_in(browser, data, data.tokens["write"])
    yield context
    context.close()


Opened = tuple[Page, Watch]


@pytest.fixture
def open_page() -> Iterator[Callable[[BrowserContext], Opened]]:
    """A new watched page of a context, closed when the test ends."""
    pages: list[Page] = []

    def make(context: BrowserContext) -> Opened:
        page = context.new_page()
        pages.append(page)
        return page, Watch(page)

    yield make
    for page in pages:
        page.close()


def draw_every_chart(page: Page) -> float:
    """Charts are drawn as they come into view: bring each one there, as a reader scrolling
    does, and wait until all are drawn; when that was (ms since navigation start)."""
    page.evaluate(
        """async () => {
          const frame = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done)));
          for (const el of document.querySelectorAll("[data-figure]")) {
            el.scrollIntoView();
            await frame();
          }
          window.scrollTo(0, 0);
        }"""
    )
    return float(page.wait_for_function(RENDERED, timeout=30_000).json_value())


def visit(page: Page, path: str) -> Timing:
    """Go to ``path`` and wait until every chart is drawn; the browser's own clock."""
    response = page.goto(path, wait_until="load")
    assert response is not None and response.status == 200, path
    charts_ms = draw_every_chart(page)
    navigation = page.evaluate(
        """() => { const n = performance.getEntriesByType("navigation")[0];
        return {ttfb: n.responseStart, load: n.loadEventEnd, bytes: n.decodedBodySize}; }"""
    )
    return Timing(navigation["ttfb"], navigation["load"], charts_ms, navigation["bytes"])


def drawn_charts(page: Page) -> dict[str, int]:
    """Each ``data-figure`` div: how many plotly SVG layers it holds (0: not drawn)."""
    counts: dict[str, int] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("[data-figure]")].map((el) =>
        [el.dataset.figure, el.classList.contains("js-plotly-plot")
          ? el.querySelectorAll(".main-svg").length : 0]))"""
    )
    return counts


def save_screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if COPY_TO.resolve() != directory.resolve():
        shutil.copy(path, COPY_TO / path.name)
    return path


def whatif_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => ({
          sliders: Object.fromEntries([...document.querySelectorAll("#whatif input[type=range]")]
            .map((s) => [s.dataset.domain, {value: +s.value, min: +s.dataset.min,
                                            max: +s.dataset.max}])),
          typed: JSON.parse(document.getElementById("whatif-json").value),
          prediction: document.getElementById("whatif-prediction").textContent,
          interval: document.getElementById("whatif-interval").textContent,
          error: document.getElementById("whatif-error").textContent,
        })"""
    )
    return state


def drag(page: Page, domain: str, value: float) -> dict[str, Any]:
    """Set a slider as a drag ends on ``value``; wait for the prediction it asks for."""
    page.evaluate("() => { document.getElementById('whatif-interval').textContent = ''; }")
    with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
        page.eval_on_selector(
            f'#whatif input[data-domain="{domain}"]',
            """(slider, value) => { slider.value = value;
              slider.dispatchEvent(new Event("input", {bubbles: true})); }""",
            value,
        )
    assert answer.value.status == 200
    page.wait_for_function(
        "() => document.getElementById('whatif-interval').textContent.startsWith('80 %')"
    )
    return whatif_state(page)


def assert_on_the_simplex(state: dict[str, Any]) -> None:
    sliders = state["sliders"]
    typed = state["typed"]
    # The sliders step by 0.001 and the JSON keeps 4 decimals: both sum to 1 within rounding.
    assert math.isclose(sum(s["value"] for s in sliders.values()), 1.0, abs_tol=0.0005 * 17)
    assert math.isclose(sum(typed.values()), 1.0, abs_tol=0.00005 * 17 + 1e-9)
    for domain, slider in sliders.items():
        assert slider["min"] - 1e-4 <= typed[domain] <= slider["max"] + 1e-4, (domain, typed)
    assert NUMBER.match(state["prediction"]), state
    assert state["error"] == ""


# --- tests -------------------------------------------------------------------------------------


def test_signing_in_through_the_login_form_works_and_a_bad_token_shows_the_error(
    browser: Browser, data: DashboardData, screenshots: Path
) -> None:
    context = browser.new_context(base_url=data.url, viewport=VIEWPORT)
    try:
        page = context.new_page()
        watch = Watch(page)
        watch.allow(401, "/login")
        page.goto(f"/experiments/{data.regmix_id}")
        assert page.url == f"{data.url}/login?next=/experiments/{data.regmix_id}"
        page.fill("#login input[name=token]", "mixopt-not-a-token")
        with page.expect_navigation():
            page.click("#login button[type=submit]")
        alert = page.locator(".login .error[role=alert]")
        assert alert.is_visible() and "unknown token" in alert.inner_text()
        save_screenshot(page, screenshots, "login-refused")

        page.fill("#login input[name=token]", data.tokens["read"])
        with page.expect_navigation():
            page.click("#login button[type=submit]")
        assert page.url == f"{data.url}/experiments/{data.regmix_id}"  # back where it started
        assert "dashboard-read" in page.locator("header .who").inner_text()
        with page.expect_navigation():
            page.click("#logout")
        assert page.url == f"{data.url}/login"
        watch.assert_clean()
    finally:
        context.close()


@pytest.mark.parametrize("name", list(PAGE_CHARTS))
def test_the_page_draws_every_chart_with_no_error_or_failed_request(
    name: str,
    reader: BrowserContext,
    data: DashboardData,
    open_page: Callable[[BrowserContext], Opened],
    screenshots: Path,
    timings: dict[str, Any],
) -> None:
    page, watch = open_page(reader)
    timing = visit(page, data.pages()[name])
    charts = drawn_charts(page)
    assert set(charts) == PAGE_CHARTS[name]
    assert all(count >= 1 for count in charts.values()), charts
    page.wait_for_load_state("networkidle")
    save_screenshot(page, screenshots, name)
    timings["pages"][name] = timing
    if name == "experiments":
        assert page.locator("#experiments tbody tr").count() == 3
    elif name == "offline-experiment":
        assert page.locator("#whatif input[type=range]").count() == len(data.domains)
        assert page.locator("#runs tbody tr").count() == 50
        assert "page 1 of 11" in page.locator(".pager").inner_text()
        assert NUMBER.match(page.locator("#whatif-prediction").inner_text())
    elif name == "long-run":
        assert "downsampled" in page.locator("figcaption").nth(1).inner_text()
    elif name == "online-run":
        assert int(page.locator("#online-feedback").inner_text()) >= data.feedback_rounds
    watch.assert_clean()


def test_a_read_token_sees_no_fit_form_and_the_fit_endpoint_refuses_it(
    reader: BrowserContext, data: DashboardData, open_page: Callable[[BrowserContext], Opened]
) -> None:
    page, watch = open_page(reader)
    path = f"/ui/experiments/{data.regmix_id}/fits"
    watch.allow(403, path)
    visit(page, f"/experiments/{data.regmix_id}")
    assert page.locator("#fit-form").count() == 0
    assert "No fit yet" not in page.locator("#fit-report").inner_text()
    refused = page.evaluate(
        """async (path) => { const r = await fetch(path, {method: "POST",
          credentials: "same-origin", headers: {"Content-Type": "application/json",
            "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
          body: JSON.stringify({model: "linear"})});
          return {status: r.status, type: r.headers.get("content-type"),
                  body: await r.json()}; }""",
        path,
    )
    assert refused["status"] == 403, refused
    assert refused["type"].startswith("application/problem+json")
    visit(page, f"/runs/{data.regmix_run_id}")
    assert page.locator("#exclusion-form").count() == 0
    watch.assert_clean()


def test_moving_a_what_if_slider_keeps_the_mixture_on_the_simplex_and_predicts(
    reader: BrowserContext, data: DashboardData, open_page: Callable[[BrowserContext], Opened]
) -> None:
    page, watch = open_page(reader)
    visit(page, f"/experiments/{data.regmix_id}")
    page.wait_for_function(
        "() => /^-?\\d+\\.\\d{4}$/.test(document.getElementById('whatif-prediction').textContent)"
    )
    start = whatif_state(page)
    assert_on_the_simplex(start)
    # It opens on the recommendation, predicted exactly as the card beside it says.
    with MixoptClient(data.url, data.tokens["read"]) as client:
        recommended = client.recommendation(data.regmix_id)
    assert recommended.predicted is not None
    assert start["prediction"] == f"{recommended.predicted.value:.4f}"

    moved = drag(page, "pile_cc", 0.6)
    assert_on_the_simplex(moved)
    assert moved["typed"]["pile_cc"] == pytest.approx(0.6, abs=1e-4)
    # The others kept their proportions (those clear of their bounds).
    free = [d for d in data.domains if d != "pile_cc" and d not in MAX_WEIGHTS]
    ratios = [moved["typed"][d] / start["typed"][d] for d in free if start["typed"][d] > 0.01]
    assert max(ratios) - min(ratios) < 0.02, ratios

    capped = drag(page, "enron_emails", 0.5)  # above its upper bound of 0.05
    assert_on_the_simplex(capped)
    assert capped["typed"]["enron_emails"] == pytest.approx(MAX_WEIGHTS["enron_emails"], abs=1e-4)

    emptied = drag(page, "pile_cc", 0.0)  # the others grow, enron_emails no further than 0.05
    assert_on_the_simplex(emptied)
    assert emptied["typed"]["pile_cc"] == 0
    assert emptied["typed"]["enron_emails"] == pytest.approx(MAX_WEIGHTS["enron_emails"], abs=1e-4)
    assert emptied["prediction"] != moved["prediction"]
    watch.assert_clean()


def test_a_mixture_pasted_as_json_is_predicted_like_the_api_does(
    reader: BrowserContext, data: DashboardData, open_page: Callable[[BrowserContext], Opened]
) -> None:
    page, watch = open_page(reader)
    visit(page, f"/experiments/{data.regmix_id}")
    with MixoptClient(data.url, data.tokens["read"]) as client:
        mixture = client.get_run(data.regmix_run_id).weights
        expected = client.predict(data.regmix_id, [mixture])[0]
    page.fill("#whatif-json", json.dumps(mixture))
    with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
        page.click("#whatif-apply")
    assert answer.value.status == 200
    page.wait_for_function(
        "(want) => document.getElementById('whatif-prediction').textContent === want",
        arg=f"{expected.value:.4f}",
    )
    state = whatif_state(page)
    assert_on_the_simplex(state)
    assert state["interval"] == f"80 % interval {expected.low:.4f} – {expected.high:.4f}"
    for domain, weight in mixture.items():
        assert state["typed"][domain] == pytest.approx(weight, abs=1e-4)
    # Not JSON: said in the panel, nothing sent.
    page.fill("#whatif-json", "{web: 1")
    page.click("#whatif-apply")
    assert page.locator("#whatif-error").inner_text().startswith("not JSON")
    watch.assert_clean()


def test_a_write_token_starts_a_fit_from_the_page_and_sees_it_in_the_history(
    writer: BrowserContext, data: DashboardData, open_page: Callable[[BrowserContext], Opened]
) -> None:
    page, watch = open_page(writer)
    visit(page, f"/experiments/{data.regmix_id}")
    page.wait_for_load_state("networkidle")  # the first what-if prediction is in
    history = page.locator("#fit-history tbody tr")
    before = history.count()
    page.select_option("#fit-form select[name=model]", "linear")
    with page.expect_navigation(wait_until="load", timeout=120_000):
        page.click("#fit-form button[type=submit]")
    draw_every_chart(page)
    assert history.count() == before + 1
    newest = history.first.locator("td")
    assert newest.nth(1).inner_text() == "linear" and newest.nth(3).inner_text() == "512"
    assert "linear" in page.locator("#fit-report").inner_text()
    page.wait_for_load_state("networkidle")
    watch.assert_clean()


def test_the_online_run_page_shows_new_feedback_without_a_reload(
    reader: BrowserContext, data: DashboardData, open_page: Callable[[BrowserContext], Opened]
) -> None:
    page, watch = open_page(reader)
    visit(page, f"/runs/{data.online_run_id}")
    shown = int(page.locator("#online-feedback").inner_text())
    points = page.evaluate("() => document.getElementById('chart-train').data[0].x.length")
    page.evaluate("() => { window.notReloaded = true; }")
    with MixoptClient(data.url, data.tokens["write"]) as trainer:
        step = feedback_round(trainer, data.online_run_id, data.domains, seed=1000)
    page.wait_for_function(
        "(want) => document.getElementById('online-feedback').textContent === want",
        arg=str(shown + 1),
        timeout=15_000,
    )
    assert page.evaluate("() => window.notReloaded === true")
    train = page.evaluate("() => document.getElementById('chart-train').data[0].x")
    assert len(train) == points + 1 and train[-1] == step
    watch.assert_clean()
