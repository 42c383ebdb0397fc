"""Bad input on every endpoint of /openapi.json: each case is answered with the documented 4xx as
an RFC 9457 problem (naming the field at fault for a 422), and nothing written before changes.

One table, one row per case: the call, what is sent, the status and (for 422) the error's
``loc``. The data every case must leave intact is made by the ``world`` fixture: an offline
experiment with completed, pending and leased runs (one whose worker lost its lease to another)
and metric points, an online experiment with a training run that has had feedback, and tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.store import SqlStore
from tests.conftest import Clock, Tokens
from tests.service.conftest import TestClient, experiment_body
from tests.service.test_api_contract import MAX_BODY, expect, problem

API = "/api/v1"
VALID = {"web": 0.5, "code": 0.3, "papers": 0.2}
LOSSES = {"web": 3.0, "code": 2.0, "papers": 2.5}
SQL = "'; DROP TABLE runs; --"
HOLDER = "node1/gpu0"  # holds the lease of {run}
LOSER = "node2/gpu0"  # held the lease of {lost}, which expired and was claimed by THIEF
THIEF = "node3/gpu0"


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # {eid} {oid} {run} {lost} {done} {orun} are filled in from the world
    status: int
    json: Any = None
    raw: bytes | None = None  # sent as is, with ``content_type``
    content_type: str = "application/json"
    token: str | None = "admin"  # scope of the token sent; None: no Authorization header
    headers: dict[str, str] = field(default_factory=dict)
    loc: tuple[str | int, ...] | None = None  # a 422's error at exactly this loc
    detail: str | None = None  # a regex the problem's detail contains


def _nested(depth: int, open_: str, close: str, inner: str = "") -> bytes:
    return (open_ * depth + inner + close * depth).encode()


def _metrics(value: str) -> bytes:
    return f'{{"points": [{{"name": "val_loss/web", "step": 7, "value": {value}}}]}}'.encode()


def _run_import(weights: str = json.dumps(VALID), metrics: str = '{"val_loss/web": 3}') -> bytes:
    return f'{{"weights": {weights}, "metrics": {metrics}}}'.encode()


def _experiment(**overrides: Any) -> dict[str, Any]:
    return experiment_body(**{"name": "fresh-1", **overrides})


E, R = f"{API}/experiments", f"{API}/runs"

CASES = [
    # --- NaN, Infinity and numbers too large for a double --------------------------------------
    Case("metric-NaN", "POST", R + "/{run}/metrics", 422, raw=_metrics("NaN"),
         loc=("body", "points", 0, "value")),
    Case("metric-Infinity", "POST", R + "/{run}/metrics", 422, raw=_metrics("Infinity"),
         loc=("body", "points", 0, "value")),
    Case("metric--Infinity", "POST", R + "/{run}/metrics", 422, raw=_metrics("-Infinity"),
         loc=("body", "points", 0, "value")),
    Case("metric-1e400", "POST", R + "/{run}/metrics", 422, raw=_metrics("1e400"),
         loc=("body", "points", 0, "value")),
    Case("complete-metric-NaN", "POST", R + "/{run}/complete", 422,
         raw=f'{{"metrics": {{"val_loss/web": NaN}}, "worker": "{HOLDER}"}}'.encode(),
         loc=("body", "metrics", "val_loss/web")),
    Case("complete-without-objective-metric", "POST", R + "/{run}/complete", 422,
         json={"metrics": {"loss": 3.0}, "worker": HOLDER}, loc=("body", "metrics"),
         detail="val_loss/web"),
    Case("patch-unknown-field", "PATCH", E + "/{eid}", 422, json={"method": "bayes"},
         loc=("body", "method")),
    Case("patch-empty-objective", "PATCH", E + "/{eid}", 422, json={"objective": {"metrics": {}}},
         loc=("body", "objective", "metrics")),
    Case("patch-name-pattern", "PATCH", E + "/{eid}", 422, json={"name": SQL},
         loc=("body", "name")),
    Case("import-weight-NaN", "POST", E + "/{eid}/runs", 422,
         raw=_run_import(weights='{"web": NaN, "code": 0.5, "papers": 0.5}'),
         loc=("body", "weights", "web")),
    Case("import-metric-1e400", "POST", E + "/{eid}/runs", 422,
         raw=_run_import(metrics='{"val_loss/web": 1e400}'),
         loc=("body", "metrics", "val_loss/web")),
    Case("predict-weight-Infinity", "POST", E + "/{eid}/predict", 422,
         raw=b'{"mixtures": [{"weights": {"web": Infinity, "code": 0, "papers": 0}}]}',
         loc=("body", "mixtures", 0, "weights", "web")),
    Case("prior-1e400", "POST", E, 422,
         raw=json.dumps(_experiment()).replace('"tokens": 6000000000.0', '"prior": 1e400').encode(),
         loc=("body", "domains", 0, "prior")),
    Case("objective-Infinity", "POST", E, 422,
         raw=json.dumps(_experiment()).replace('"val_loss/web": 1.0', '"val_loss/web": Infinity')
         .encode(), loc=("body", "objective", "metrics", "val_loss/web")),
    Case("feedback-loss-NaN", "POST", R + "/{orun}/feedback", 422,
         raw=b'{"step": 200, "version": 2, "eval_losses": {"web": NaN, "code": 2, "papers": 2}}',
         loc=("body", "eval_losses", "web")),
    Case("config-train-tokens-Infinity", "POST", E, 422,
         raw=json.dumps(_experiment(config={"train_tokens": 1})).replace(": 1}", ": Infinity}")
         .encode(), loc=("body", "config"), detail="non-finite number at train_tokens"),
    # --- weights: negative, not normalised, unknown or missing domains ---------------------------
    Case("weight-negative", "POST", E + "/{eid}/runs", 422,
         json={"weights": {"web": 1.5, "code": -0.5, "papers": 0}},
         loc=("body", "weights", "code")),
    Case("weights-sum-0.9", "POST", E + "/{eid}/runs", 422,
         json={"weights": {"web": 0.5, "code": 0.3, "papers": 0.1}}, loc=("body", "weights"),
         detail="sum to 0.9"),
    Case("weights-sum-1.1", "POST", E + "/{eid}/runs", 422,
         json={"weights": {"web": 0.6, "code": 0.3, "papers": 0.2}}, loc=("body", "weights")),
    Case("weights-unknown-domain", "POST", E + "/{eid}/runs", 422,
         json={"weights": {**VALID, "wiki": 0.0}}, loc=("body", "weights", "wiki")),
    Case("weights-missing-domain", "POST", E + "/{eid}/runs", 422,
         json={"weights": {"web": 0.5, "code": 0.5}}, loc=("body", "weights")),
    Case("weights-empty", "POST", E + "/{eid}/runs", 422, json={"weights": {}},
         loc=("body", "weights")),
    Case("predict-not-normalised", "POST", E + "/{eid}/predict", 422,
         json={"mixtures": [{"weights": {"web": 2, "code": 0, "papers": 0}}]},
         loc=("body", "mixtures", 0, "weights")),
    Case("feedback-unknown-domain", "POST", R + "/{orun}/feedback", 422,
         json={"step": 200, "version": 2, "eval_losses": {**LOSSES, "wiki": 1.0}},
         loc=("body", "eval_losses", "wiki")),
    Case("domains-missing", "POST", E, 422,
         json={k: v for k, v in _experiment().items() if k != "domains"}, loc=("body", "domains")),
    Case("domains-empty", "POST", E, 422, json=_experiment(domains=[]), loc=("body", "domains")),
    Case("domains-duplicate", "POST", E, 422,
         json=_experiment(domains=[{"name": "web"}, {"name": "web"}]), loc=("body", "domains")),
    # --- wrong JSON types: strings for numbers, lists for objects, booleans for integers ---------
    Case("count-string", "POST", E + "/{eid}/proposals", 422, json={"count": "4"},
         loc=("body", "count")),
    Case("count-bool", "POST", E + "/{eid}/proposals", 422, json={"count": True},
         loc=("body", "count")),
    Case("count-float", "POST", E + "/{eid}/proposals", 422, json={"count": 1.5},
         loc=("body", "count")),
    Case("count-0", "POST", E + "/{eid}/proposals", 422, json={"count": 0}, loc=("body", "count")),
    Case("lease-string", "POST", E + "/{eid}/claim", 422,
         json={"worker": "w", "lease_seconds": "60"},
         loc=("body", "lease_seconds")),
    Case("experiment-list", "POST", E, 422, json=[_experiment()], loc=("body",)),
    Case("domains-object", "POST", E, 422, json=_experiment(domains={"web": {}}),
         loc=("body", "domains")),
    Case("tag-int", "POST", E + "/{eid}/runs", 422, json={"weights": VALID, "tags": {"seed": 1}},
         loc=("body", "tags", "seed")),
    Case("excluded-string", "POST", R + "/{done}/exclude", 422, json={"excluded": "yes"},
         loc=("body", "excluded")),
    Case("points-object", "POST", R + "/{run}/metrics", 422, json={"points": {"name": "a"}},
         loc=("body", "points")),
    Case("step-string", "POST", R + "/{run}/metrics", 422,
         json={"points": [{"name": "a", "step": "100", "value": 1}]},
         loc=("body", "points", 0, "step")),
    Case("scope-int", "POST", f"{API}/tokens", 422, json={"name": "t", "scope": 5},
         loc=("body", "scope")),
    Case("model-list", "POST", E + "/{eid}/fit", 422, json={"model": ["linear"]},
         loc=("body", "model")),
    Case("resume-negative", "POST", R + "/{orun}/resume", 422, json={"step": -1},
         loc=("body", "step")),
    Case("worker-int", "POST", R + "/{run}/heartbeat", 422, json={"worker": 1},
         loc=("body", "worker")),
    Case("feedback-step-string", "POST", R + "/{orun}/feedback", 422,
         json={"step": "200", "eval_losses": LOSSES}, loc=("body", "step")),
    Case("unknown-field", "POST", E + "/{eid}/proposals", 422, json={"count": 1, "cuont": 2},
         loc=("body", "cuont")),
    Case("seed-negative", "POST", E, 422, json=_experiment(config={"seed": -1}),
         loc=("body", "config", "seed")),
    # --- sizes and nesting -----------------------------------------------------------------------
    Case("body-over-4MiB", "POST", E, 413, raw=b'{"name": "' + b"x" * MAX_BODY + b'"}'),
    Case("10000-nested-lists", "POST", E + "/{eid}/proposals", 422,
         raw=_nested(10_000, "[", "]"), loc=("body",)),
    Case("10000-nested-objects", "POST", E, 422, raw=_nested(10_000, '{"a":', "}", "1"),
         loc=("body",)),
    Case("10000-nested-lists-in-tags", "POST", E + "/{eid}/runs", 422,
         raw=b'{"weights": {"web": 1, "code": 0, "papers": 0}, "tags": {"x": '
         + _nested(10_000, "[", "]") + b"}}", loc=("body",)),
    # --- odd unicode and SQL-ish text ------------------------------------------------------------
    Case("name-NUL", "POST", E, 422, json=_experiment(name="a\x00b"), loc=("body", "name")),
    Case("name-lone-surrogate", "POST", E, 422,
         raw=json.dumps(_experiment(name="SURROGATE")).replace("SURROGATE", "\\ud800").encode(),
         loc=("body", "name")),
    Case("name-RTL-mark", "POST", E, 422, json=_experiment(name="\u202eevil"),
         loc=("body", "name")),
    Case("name-emoji", "POST", E, 422, json=_experiment(name="pile-🔥"), loc=("body", "name")),
    Case("name-SQL", "POST", E, 422, json=_experiment(name=SQL), loc=("body", "name")),
    Case("domain-SQL", "POST", E, 422,
         json=_experiment(domains=[{"name": SQL}, {"name": "code"}]),
         loc=("body", "domains", 0, "name")),
    Case("metric-name-SQL", "POST", R + "/{run}/metrics", 422,
         json={"points": [{"name": SQL, "step": 1, "value": 1}]},
         loc=("body", "points", 0, "name")),
    Case("worker-emoji", "POST", E + "/{eid}/claim", 422, json={"worker": "gpu-🚀"},
         loc=("body", "worker")),
    Case("reason-NUL", "POST", R + "/{run}/fail", 422, json={"reason": "oom\x00", "worker": HOLDER},
         loc=("body", "reason")),
    Case("tag-lone-surrogate", "POST", E + "/{eid}/runs", 422,
         raw=b'{"weights": {"web": 1, "code": 0, "papers": 0}, "tags": {"x": "\\udc00"}}',
         loc=("body", "tags", "x")),
    Case("tag-NUL", "POST", E + "/{eid}/runs", 422,
         json={"weights": VALID, "tags": {"x": "a\x00"}}, loc=("body", "tags", "x")),
    Case("invalid-UTF-8", "POST", E + "/{eid}/proposals", 422, raw=b'{"count": "\xff\xfe"}',
         loc=("body",)),
    Case("query-SQL", "GET", E + "?status=" + SQL, 422, loc=("query", "status")),
    Case("query-name-SQL", "GET", R + "/{run}/metrics?name=" + SQL, 422, loc=("query", "name")),
    # --- unknown and malformed ids ----------------------------------------------------------------
    Case("run-abc", "GET", R + "/abc", 404),
    Case("run-negative", "GET", R + "/-1", 404),
    Case("run-huge", "GET", R + "/99999999999999999999999", 404),
    Case("run-NUL", "GET", R + "/%00", 404),
    Case("run-SQL", "GET", R + "/1%27%20OR%20%271%27=%271", 404),
    Case("experiment-abc", "GET", E + "/abc", 404),
    Case("experiment-huge-proposals", "POST", E + "/99999999999999999999999/proposals", 404,
         json={"count": 1}),
    Case("fit-negative", "GET", f"{API}/fits/-1", 404),
    Case("token-abc", "DELETE", f"{API}/tokens/abc", 404),
    Case("heartbeat-unknown-run", "POST", R + "/abc/heartbeat", 404, json={"worker": HOLDER}),
    Case("weights-of-offline-run", "GET", R + "/{run}/weights", 404),
    # --- cursors, limits and other query values ---------------------------------------------------
    Case("cursor-garbage", "GET", E + "/{eid}/runs?cursor=zzz", 422, loc=("query", "cursor")),
    Case("cursor-NUL", "GET", E + "?cursor=%00", 422, loc=("query", "cursor")),
    Case("limit-0", "GET", E + "?limit=0", 422, loc=("query", "limit")),
    Case("limit-1001", "GET", E + "/{eid}/fits?limit=1001", 422, loc=("query", "limit")),
    Case("limit-string", "GET", f"{API}/tokens?limit=abc", 422, loc=("query", "limit")),
    Case("limit-negative", "GET", R + "/{run}/metrics?limit=-1", 422, loc=("query", "limit")),
    Case("history-limit-huge", "GET", R + "/{orun}/weights/history?limit=99999999999999999999",
         422, loc=("query", "limit")),
    Case("at-step-negative", "GET", R + "/{orun}/weights?at_step=-1", 422,
         loc=("query", "at_step")),
    Case("excluded-maybe", "GET", E + "/{eid}/runs?excluded=maybe", 422,
         loc=("query", "excluded")),
    # --- tokens: missing, wrong, insufficient -----------------------------------------------------
    Case("no-token", "GET", E, 401, token=None),
    Case("unknown-token", "GET", E + "/{eid}", 401, token=None,
         headers={"Authorization": "Bearer mxo_not-a-token"}),
    Case("basic-auth", "GET", R + "/{run}", 401, token=None,
         headers={"Authorization": "Basic Zm9vOmJhcg=="}),
    Case("no-token-malformed-json", "POST", E + "/{eid}/proposals", 401, token=None, raw=b"{bad"),
    Case("read-proposes", "POST", E + "/{eid}/proposals", 403, token="read", json={"count": 1}),
    Case("read-posts-metrics", "POST", R + "/{run}/metrics", 403, token="read",
         json={"points": [{"name": "a", "step": 1, "value": 1}]}),
    Case("write-creates-experiment", "POST", E, 403, token="write", json=_experiment()),
    Case("write-archives", "POST", E + "/{eid}/archive", 403, token="write"),
    Case("write-creates-token", "POST", f"{API}/tokens", 403, token="write",
         json={"name": "t", "scope": "admin"}),
    Case("read-lists-tokens", "GET", f"{API}/tokens", 403, token="read"),
    # --- stale leases and conflicting repeats -----------------------------------------------------
    Case("heartbeat-lost-lease", "POST", R + "/{lost}/heartbeat", 409, json={"worker": LOSER}),
    Case("complete-lost-lease", "POST", R + "/{lost}/complete", 409,
         json={"metrics": {"val_loss/web": 3.0}, "worker": LOSER}),
    Case("fail-lost-lease", "POST", R + "/{lost}/fail", 409,
         json={"reason": "oom", "worker": LOSER}),
    Case("release-lost-lease", "POST", R + "/{lost}/release", 409, json={"worker": LOSER}),
    Case("heartbeat-other-worker", "POST", R + "/{run}/heartbeat", 409, json={"worker": THIEF}),
    Case("metric-point-other-value", "POST", R + "/{run}/metrics", 409,
         json={"points": [{"name": "val_loss/web", "step": 10, "value": 9.9}]}),
    Case("external-id-other-weights", "POST", E + "/{eid}/runs", 409,
         json={"weights": {"web": 0.2, "code": 0.3, "papers": 0.5},
               "metrics": {"val_loss/web": 3.0}, "external_id": "imported-1"}),
    Case("external-id-other-metrics", "POST", E + "/{eid}/runs", 409,
         json={"weights": VALID, "metrics": {"val_loss/web": 4.0}, "external_id": "imported-1"}),
    Case("complete-again-other-metrics", "POST", R + "/{done}/complete", 409,
         json={"metrics": {"val_loss/web": 1.0}}),
    Case("experiment-name-taken", "POST", E, 409, json=experiment_body()),
    Case("proposals-online", "POST", E + "/{oid}/proposals", 409, json={"count": 1}),
    Case("feedback-step-moved-on", "POST", R + "/{orun}/feedback", 409,
         json={"step": 50, "version": 2, "eval_losses": LOSSES}),
    Case("resume-ahead", "POST", R + "/{orun}/resume", 409, json={"step": 10_000}),
    Case("predict-before-fit", "POST", E + "/{eid}/predict", 409,
         json={"mixtures": [{"weights": VALID}]}),
    Case("fit-too-few-runs", "POST", E + "/{eid}/fit", 409, json={"model": "linear"}),
    Case("recommendation-before-fit", "GET", E + "/{eid}/recommendation", 409),
    # --- the other calls: exports, imports, batches, backtests ------------------------------------
    Case("methods-no-token", "GET", f"{API}/methods", 401, token=None),
    Case("csv-unknown-experiment", "GET", E + "/abc/runs.csv", 404),
    Case("export-unknown-experiment", "GET", E + "/abc/export", 404),
    Case("import-not-an-archive", "POST", E + "/import", 422, raw=b'{"format": "zip"}',
         loc=("body", "format")),
    Case("import-plain-text", "POST", E + "/import", 415, raw=b"{}", content_type="text/plain"),
    Case("batch-one-bad-row", "POST", E + "/{eid}/runs/batch", 422,
         json={"runs": [{"weights": VALID, "external_id": "b-1"},
                        {"weights": {**VALID, "web": -0.5}, "external_id": "b-2"}]},
         loc=("body", "runs", 1, "weights", "web")),
    Case("batch-not-a-list", "POST", E + "/{eid}/runs/batch", 422, json={"runs": VALID},
         loc=("body", "runs")),
    Case("backtest-size-0", "POST", E + "/{eid}/backtest", 422, json={"sizes": [0]},
         loc=("body", "sizes", 0)),
    Case("exclude-other-experiment-run", "POST", R + "/99999999999999999999999/exclude", 404,
         json={"excluded": True}),
    Case("retry-completed-run", "POST", R + "/{done}/retry", 409),
    Case("retry-running-run", "POST", R + "/{run}/retry", 409),
    # --- content types and malformed JSON ---------------------------------------------------------
    Case("text-plain", "POST", E + "/{eid}/proposals", 415, raw=b'{"count": 1}',
         content_type="text/plain"),
    Case("form-urlencoded", "POST", E, 415, raw=b"name=x&method=regmix",
         content_type="application/x-www-form-urlencoded"),
    Case("xml-metrics", "POST", R + "/{run}/metrics", 415, raw=b"<points/>",
         content_type="application/xml"),
    Case("text-plain-complete", "POST", R + "/{run}/complete", 415,
         raw=b'{"metrics": {"val_loss/web": 3}}', content_type="text/plain; charset=utf-8"),
    Case("malformed-json-line-column", "POST", E + "/{eid}/claim", 422,
         raw=b'{\n  "worker": "w",\n  "lease_seconds": 60,,\n}', loc=("body",),
         detail="line 3 column 23"),
    Case("truncated-json", "POST", R + "/{orun}/feedback", 422, raw=b'{"step": 1', loc=("body",),
         detail="line 1 column"),
]  # fmt: skip


@dataclass
class World:
    ids: dict[str, str]

    def url(self, path: str) -> str:
        return path.format(**self.ids)


@pytest.fixture
def world(client: TestClient, experiment: dict[str, Any], clock: Clock) -> World:
    eid = experiment["id"]

    def ok(response: Any, status: int = 200) -> Any:
        return expect(response, status)

    done = ok(
        client.post(
            f"{E}/{eid}/runs",
            json={"weights": VALID, "metrics": {"val_loss/web": 3.0}, "external_id": "imported-1"},
        ),
        201,
    )
    ok(client.post(f"{E}/{eid}/proposals", json={"count": 2}), 201)
    run = ok(client.post(f"{E}/{eid}/claim", json={"worker": HOLDER}))
    points = [{"name": "val_loss/web", "step": s, "value": 4.0 - s / 100} for s in (10, 20)]
    ok(client.post(f"{R}/{run['id']}/metrics", json={"points": points}), 202)
    lost = ok(client.post(f"{E}/{eid}/claim", json={"worker": LOSER, "lease_seconds": 10}))
    clock.advance(11)
    stolen = ok(client.post(f"{E}/{eid}/claim", json={"worker": THIEF}))
    assert stolen["id"] == lost["id"], "the expired lease is claimed again"

    online = ok(
        client.post(
            E, json=experiment_body(name="online-1", mode="online", method="odm", objective=None)
        ),
        201,
    )
    orun = ok(client.post(f"{E}/{online['id']}/runs", json={"name": "main"}), 201)
    feedback = {"step": 100, "version": 1, "eval_losses": LOSSES, "train_losses": LOSSES}
    ok(client.post(f"{R}/{orun['id']}/feedback", json=feedback))
    return World(
        ids={
            "eid": eid,
            "oid": online["id"],
            "run": run["id"],
            "lost": lost["id"],
            "done": done["id"],
            "orun": orun["id"],
        }
    )


def snapshot(store: SqlStore, world: World) -> dict[str, Any]:
    """Everything the cases could damage, read from the store (a tenth of the time of reading
    it through the API, which the cases cross 120 times)."""
    ids, n = world.ids, 1000
    return {
        "experiments": store.list_experiments(status=None, limit=n, cursor=None).items,
        "runs": store.list_runs(ids["eid"], status=None, excluded=None, limit=n, cursor=None).items,
        "online_runs": store.list_runs(
            ids["oid"], status=None, excluded=None, limit=n, cursor=None
        ).items,
        "points": store.list_metrics(ids["run"], name=None, limit=n, cursor=None).items,
        "weights": store.weights_history(ids["orun"], limit=n, cursor=None).items,
        "fits": store.list_fits(ids["eid"], limit=n, cursor=None).items,
        "tokens": store.list_tokens(limit=n, cursor=None).items,
    }


def send(client: TestClient, tokens: Tokens, world: World, case: Case) -> Any:
    headers = dict(case.headers)
    if case.token is not None:
        headers["Authorization"] = tokens.header(case.token)["Authorization"]
    content = case.raw
    if case.json is not None:
        content = json.dumps(case.json).encode()
    if content is not None:
        headers["Content-Type"] = case.content_type
    request = client.build_request(case.method, world.url(case.path), content=content)
    # The client sends the admin token by default: a case without a token sends none at all.
    request.headers.pop("Authorization", None)
    request.headers.update(headers)
    return client.send(request)


def test_bad_input_is_a_problem_and_changes_nothing(
    client: TestClient, store: SqlStore, tokens: Tokens, world: World, subtests: pytest.Subtests
) -> None:
    """Every case of the table, against one world (building it per case took 1.5 s a case)."""
    before = snapshot(store, world)
    assert len(before["runs"]) == 3 and len(before["points"]) == 2 and before["weights"]
    for case in CASES:
        with subtests.test(case.id):
            response = send(client, tokens, world, case)
            problem(response, case.status, loc=case.loc, detail=case.detail)
            if case.status == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer"
            assert snapshot(store, world) == before, "the data written before changed"
    assert len(CASES) >= 60


def test_the_table_covers_every_call_of_the_api_document(client: TestClient) -> None:
    """Every operation of /openapi.json that takes input has at least one bad-input case."""
    document = expect(client.get("/openapi.json"), 200)
    covered = set()
    for case in CASES:
        path = case.path.split("?")[0]
        for name, placeholder in (
            ("{eid}", "{experiment_id}"),
            ("{oid}", "{experiment_id}"),
            ("{run}", "{run_id}"),
            ("{lost}", "{run_id}"),
            ("{done}", "{run_id}"),
            ("{orun}", "{run_id}"),
        ):
            path = path.replace(name, placeholder)
        covered.add((case.method.lower(), path))
    missing = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        if path.startswith(API)
        for method in operations
        if (method, path) not in covered and not _covered_by_pattern(method, path, covered)
    ]
    assert not missing, f"no bad-input case for: {missing}"


def _covered_by_pattern(method: str, path: str, covered: set[tuple[str, str]]) -> bool:
    # A path parameter given a malformed value (run 'abc') covers that call too.
    prefix, _, rest = path.partition("{")
    if not rest:
        return False
    suffix = rest.partition("}")[2]
    return any(
        m == method and p.startswith(prefix) and p.endswith(suffix) and "{" not in p
        for m, p in covered
    )
