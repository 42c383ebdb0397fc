"""The HTTP contract's bad-input and idempotency rules (API.md: Conventions, Offline experiments,
Operations), checked through the API on SQLite and on Postgres.

Every error answer must be an RFC 9457 problem document with the exact status; no request here
may be answered with a 500 (the TestClient re-raises server errors, and ``expect`` checks the
status of everything else).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from fastapi import FastAPI

from service.main import API_PREFIX
from service.store.cursor import encode_cursor
from tests.service.conftest import TestClient, experiment_body

API = API_PREFIX
MAX_BODY = 4 * 1024 * 1024
JSON = {"content-type": "application/json"}
VALID = {"web": 0.5, "code": 0.3, "papers": 0.2}
DOMAIN_NAMES = ["web", "code", "papers"]


# --- helpers -----------------------------------------------------------------------------------


def expect(response: httpx.Response, status: int) -> Any:
    """The answer has exactly ``status`` (a 500 is never acceptable); return its JSON, if any."""
    request = response.request
    assert response.status_code != 500, f"{request.method} {request.url}: 500 {response.text}"
    assert response.status_code == status, (
        f"{request.method} {request.url}: expected {status}, "
        f"got {response.status_code}: {response.text[:2000]}"
    )
    if response.content and response.headers.get("content-type", "").endswith("json"):
        return response.json()
    return None


def problem(
    response: httpx.Response,
    status: int,
    *,
    loc: Sequence[str | int] | None = None,
    loc_prefix: Sequence[str | int] | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with ``status``; for 422 one error sits at ``loc``
    (exactly) or under ``loc_prefix``; ``detail`` is a regex the detail must contain."""
    body = expect(response, status)
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    assert isinstance(body, dict)
    for key in ("type", "title", "detail"):
        assert isinstance(body.get(key), str), f"problem without {key}: {body}"
        assert body[key], f"problem with an empty {key}: {body}"
    assert body["status"] == status, body
    if status == 422:
        errors = body.get("errors")
        assert isinstance(errors, list), body
        assert errors, body
        for error in errors:
            assert isinstance(error["loc"], list), body
            assert isinstance(error["msg"], str), body
            assert error["msg"], body
        locs = [error["loc"] for error in errors]
        if loc is not None:
            assert list(loc) in locs, f"no error at {list(loc)}: {body}"
        if loc_prefix is not None:
            n = len(loc_prefix)
            assert any(found[:n] == list(loc_prefix) for found in locs), (
                f"no error under {list(loc_prefix)}: {body}"
            )
    if detail is not None:
        assert re.search(detail, body["detail"], re.IGNORECASE), body
    result: dict[str, Any] = body
    return result


def post_raw(client: TestClient, url: str, text: str | bytes) -> httpx.Response:
    """POST a body as given (NaN, Infinity, broken JSON: what json= cannot send)."""
    content = text.encode() if isinstance(text, str) else text
    return client.post(url, content=content, headers=JSON)


def import_run(client: TestClient, experiment_id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("weights", VALID)
    run: dict[str, Any] = expect(
        client.post(f"{API}/experiments/{experiment_id}/runs", json=body), 201
    )
    return run


def propose(client: TestClient, experiment_id: str, count: int) -> list[dict[str, Any]]:
    url = f"{API}/experiments/{experiment_id}/proposals"
    items: list[dict[str, Any]] = expect(client.post(url, json={"count": count}), 201)["items"]
    return items


def walk(client: TestClient, url: str, limit: int, **params: Any) -> Iterator[dict[str, Any]]:
    """Every item of a paginated list, page by page, checking each page's size."""
    cursor: str | None = None
    for _ in range(10_000):
        query: dict[str, Any] = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        page = expect(client.get(url, params=query), 200)
        assert set(page) >= {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        yield from page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return
        assert len(page["items"]) == limit, "a page short of the limit must be the last"
    raise AssertionError("pagination does not end")


# --- conventions: malformed bodies, types, unknown fields --------------------------------------


def typed_posts(experiment_id: str, run_id: str) -> list[str]:
    """A POST of every kind of typed body."""
    return [
        f"{API}/experiments",
        f"{API}/experiments/{experiment_id}/proposals",
        f"{API}/experiments/{experiment_id}/runs",
        f"{API}/experiments/{experiment_id}/claim",
        f"{API}/runs/{run_id}/heartbeat",
        f"{API}/runs/{run_id}/metrics",
        f"{API}/runs/{run_id}/complete",
        f"{API}/runs/{run_id}/fail",
        f"{API}/runs/{run_id}/release",
        f"{API}/runs/{run_id}/exclude",
        f"{API}/tokens",
    ]


def check_malformed_json_is_422(client: TestClient, experiment: dict[str, Any]) -> None:
    run = import_run(client, experiment["id"])
    for url in typed_posts(experiment["id"], run["id"]):
        problem(post_raw(client, url, b"{bad"), 422, loc_prefix=["body"])
        problem(post_raw(client, url, b'{"count": 1,}'), 422, loc_prefix=["body"])
    # Not a JSON object at all, or no body where one is required.
    url = f"{API}/experiments/{experiment['id']}/proposals"
    problem(post_raw(client, url, b"[1, 2]"), 422, loc=["body"])
    problem(post_raw(client, url, b'"count"'), 422, loc=["body"])
    problem(client.post(url), 422, loc_prefix=["body"])


def check_undecodable_json_is_422_not_400(client: TestClient, experiment: dict[str, Any]) -> None:
    """Invalid UTF-8, nesting beyond the parser's limit and integers too long to parse are
    malformed JSON too."""
    url = f"{API}/experiments/{experiment['id']}/runs"
    weights = json.dumps(VALID).encode()
    bodies = [
        b'{"weights": ' + weights + b', "tags": {"a": "\xff\xfe"}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"weights": ' + weights + b', "params": {"x": ' + b"9" * 5000 + b"}}",
    ]
    for body in bodies:
        problem(post_raw(client, url, body), 422, loc_prefix=["body"])


def check_wrong_types_are_422(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    run = import_run(client, eid)
    cases: list[tuple[str, Any, list[str | int]]] = [
        (f"{API}/experiments/{eid}/proposals", {"count": "many"}, ["body", "count"]),
        (f"{API}/experiments/{eid}/proposals", {"count": 1.5}, ["body", "count"]),
        (f"{API}/experiments/{eid}/proposals", {"count": None}, ["body", "count"]),
        (f"{API}/experiments/{eid}/claim", {"worker": 7}, ["body", "worker"]),
        (f"{API}/experiments/{eid}/claim", {"worker": "w", "lease_seconds": "long"},
         ["body", "lease_seconds"]),
        (f"{API}/experiments/{eid}/runs", {"weights": [0.5, 0.5]}, ["body", "weights"]),
        (f"{API}/experiments/{eid}/runs", {"weights": {**VALID, "web": "half"}},
         ["body", "weights", "web"]),
        (f"{API}/experiments/{eid}/runs", {"weights": VALID, "tags": {"seed": 1}},
         ["body", "tags", "seed"]),
        (f"{API}/experiments/{eid}/runs", {"weights": VALID, "params": []}, ["body", "params"]),
        (f"{API}/experiments/{eid}/runs", {"weights": VALID, "status": "running"},
         ["body", "status"]),
        (f"{API}/runs/{run['id']}/metrics", {"points": {"name": "a"}}, ["body", "points"]),
        (f"{API}/runs/{run['id']}/metrics",
         {"points": [{"name": "a", "step": "one", "value": 1.0}]},
         ["body", "points", 0, "step"]),
        (f"{API}/runs/{run['id']}/metrics",
         {"points": [{"name": "a", "step": -1, "value": 1.0}]},
         ["body", "points", 0, "step"]),
        (f"{API}/runs/{run['id']}/complete", {"metrics": {"val_loss/web": "low"}},
         ["body", "metrics", "val_loss/web"]),
        (f"{API}/runs/{run['id']}/exclude", {"excluded": "perhaps"}, ["body", "excluded"]),
        (f"{API}/experiments", experiment_body(name="t1", domains="web"), ["body", "domains"]),
        (f"{API}/experiments", experiment_body(name="t2", mode="batch"), ["body", "mode"]),
        (f"{API}/experiments", experiment_body(name="t3", config=[]), ["body", "config"]),
        (f"{API}/experiments", experiment_body(name="t4", config={"seed": "x"}),
         ["body", "config", "seed"]),
        (f"{API}/tokens", {"name": "t", "scope": "root"}, ["body", "scope"]),
        (f"{API}/tokens", {"name": "t", "expires_in_days": 0}, ["body", "expires_in_days"]),
    ]  # fmt: skip
    for url, body, loc in cases:
        problem(client.post(url, json=body), 422, loc=loc)


def check_unknown_fields_are_422(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    run = import_run(client, eid)
    point = {"name": "a", "step": 1, "value": 1.0}
    cases: list[tuple[str, dict[str, Any], list[str | int]]] = [
        (f"{API}/experiments/{eid}/claim", {"worker": "w", "priority": 1}, ["body", "priority"]),
        (f"{API}/experiments/{eid}/proposals", {"count": 1, "seed": 3}, ["body", "seed"]),
        (f"{API}/experiments/{eid}/runs", {"weights": VALID, "weight": VALID}, ["body", "weight"]),
        (f"{API}/runs/{run['id']}/heartbeat", {"worker": "w", "x": 1}, ["body", "x"]),
        (f"{API}/runs/{run['id']}/metrics", {"points": [{**point, "unit": "nats"}]},
         ["body", "points", 0, "unit"]),
        (f"{API}/runs/{run['id']}/metrics", {"points": [], "run": 1}, ["body", "run"]),
        (f"{API}/runs/{run['id']}/complete", {"metrics": {}, "status": "completed"},
         ["body", "status"]),
        (f"{API}/runs/{run['id']}/fail", {"reason": "oom", "code": 137}, ["body", "code"]),
        (f"{API}/runs/{run['id']}/release", {"worker": "w", "now": True}, ["body", "now"]),
        (f"{API}/runs/{run['id']}/exclude", {"excluded": True, "why": "x"}, ["body", "why"]),
        (f"{API}/experiments", {**experiment_body(name="u1"), "owner": "me"}, ["body", "owner"]),
        (f"{API}/experiments",
         experiment_body(name="u2", domains=[{"name": "a", "weight": 1}, {"name": "b"}]),
         ["body", "domains", 0, "weight"]),
        (f"{API}/experiments",
         experiment_body(name="u3", objective={"metrics": {"m": 1}, "goal": "min"}),
         ["body", "objective", "goal"]),
        (f"{API}/tokens", {"name": "t", "scopes": ["read"]}, ["body", "scopes"]),
    ]  # fmt: skip
    for url, body, loc in cases:
        problem(client.post(url, json=body), 422, loc=loc)


def test_typed_bodies_reject_bad_input(client: TestClient, experiment: dict[str, Any]) -> None:
    """Malformed JSON, wrong types, unknown fields: 422 naming the field at fault."""
    check_malformed_json_is_422(client, experiment)
    check_undecodable_json_is_422_not_400(client, experiment)
    check_wrong_types_are_422(client, experiment)
    check_unknown_fields_are_422(client, experiment)


# --- conventions: lists ------------------------------------------------------------------------


def list_urls(client: TestClient, experiment: dict[str, Any]) -> list[str]:
    run = import_run(client, experiment["id"])
    return [
        f"{API}/experiments",
        f"{API}/experiments/{experiment['id']}/runs",
        f"{API}/runs/{run['id']}/metrics",
        f"{API}/tokens",
    ]


def check_bad_cursor_is_422(client: TestClient, experiment: dict[str, Any]) -> None:
    bad = [
        "garbage!!",
        "",
        "eyJ",  # truncated base64
        encode_cursor(["not", "ours", "at all"]),
        encode_cursor([True]),
        "e30",  # {} in base64
    ]
    for url in list_urls(client, experiment):
        for cursor in bad:
            problem(client.get(url, params={"cursor": cursor}), 422, loc=["query", "cursor"])


def test_forged_cursor_out_of_range_is_422(client: TestClient, experiment: dict[str, Any]) -> None:
    run = import_run(client, experiment["id"])
    cases = [
        (f"{API}/experiments", encode_cursor([2**70])),
        (f"{API}/experiments/{experiment['id']}/runs", encode_cursor([-(2**70)])),
        (f"{API}/tokens", encode_cursor([2**64])),
        (f"{API}/runs/{run['id']}/metrics", encode_cursor([2**70, "a"])),
        (f"{API}/runs/{run['id']}/metrics", encode_cursor([1, "a\x00"])),
    ]
    for url, cursor in cases:
        problem(client.get(url, params={"cursor": cursor}), 422, loc=["query", "cursor"])


def check_limit_outside_1_to_1000_is_422(client: TestClient, experiment: dict[str, Any]) -> None:
    for url in list_urls(client, experiment):
        for limit in ("0", "1001", "-1", "ten", "1.5"):
            problem(client.get(url, params={"limit": limit}), 422, loc=["query", "limit"])
        for limit in ("1", "1000"):
            expect(client.get(url, params={"limit": limit}), 200)


def check_bad_query_filters_are_422(client: TestClient, experiment: dict[str, Any]) -> None:
    run = import_run(client, experiment["id"])
    runs = f"{API}/experiments/{experiment['id']}/runs"
    problem(client.get(runs, params={"status": "done"}), 422, loc=["query", "status"])
    problem(client.get(runs, params={"excluded": "maybe"}), 422, loc=["query", "excluded"])
    problem(client.get(f"{API}/experiments", params={"status": "x"}), 422, loc=["query", "status"])
    metrics = f"{API}/runs/{run['id']}/metrics"
    problem(client.get(metrics, params={"name": "bad name"}), 422, loc=["query", "name"])


def test_list_parameters_are_validated(client: TestClient, experiment: dict[str, Any]) -> None:
    check_bad_cursor_is_422(client, experiment)
    check_limit_outside_1_to_1000_is_422(client, experiment)
    check_bad_query_filters_are_422(client, experiment)


# --- conventions: body size --------------------------------------------------------------------


def test_body_over_4_mib_is_413(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/proposals"
    head = b'{"count": 1'
    # Declared with Content-Length.
    oversized = head + b" " * (MAX_BODY + 1 - len(head) - 1) + b"}"
    assert len(oversized) == MAX_BODY + 1
    problem(post_raw(client, url, oversized), 413)

    # Chunked, without a Content-Length: the service must count what arrives.
    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(5):
            yield b" " * (1024 * 1024)
        yield b"}"

    response = client.post(url, content=chunks(), headers=JSON)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    problem(response, 413)

    # Exactly at the limit is accepted.
    at_limit = head + b" " * (MAX_BODY - len(head) - 1) + b"}"
    assert len(at_limit) == MAX_BODY
    assert len(expect(post_raw(client, url, at_limit), 201)["items"]) == 1


# --- validation: weights -----------------------------------------------------------------------


def check_weights_sum_to_1_within_1e_6(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/runs"
    for total in (0.9, 1.1, 1 + 2e-6, 1 - 2e-6, 0.0):
        weights = {"web": total * 0.5, "code": total * 0.5, "papers": 0.0}
        problem(
            client.post(url, json={"weights": weights}),
            422,
            loc=["body", "weights"],
            detail=r"sum",
        )
    # Within the tolerance it is accepted, and stored as given: the API never renormalises.
    weights = {"web": 0.5 + 5e-7, "code": 0.3, "papers": 0.2}
    run = expect(client.post(url, json={"weights": weights}), 201)
    assert run["weights"] == weights


def check_weights_finite_and_non_negative(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/runs"
    for value in ("NaN", "Infinity", "-Infinity", "-0.1", "1e999"):
        text = f'{{"weights": {{"web": {value}, "code": 0.5, "papers": 0.5}}}}'
        problem(post_raw(client, url, text), 422, loc=["body", "weights", "web"])
    problem(
        client.post(url, json={"weights": {"web": 1.5, "code": -0.5, "papers": 0.0}}),
        422,
        loc=["body", "weights", "code"],
    )


def check_weight_keys_are_the_domains(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/runs"
    missing = {"web": 0.5, "code": 0.5}
    problem(client.post(url, json={"weights": missing}), 422, loc=["body", "weights"])
    unknown = {**VALID, "bogus": 0.0}
    problem(client.post(url, json={"weights": unknown}), 422, loc=["body", "weights", "bogus"])
    renamed = {"web": 0.5, "code": 0.3, "paper": 0.2}
    body = problem(client.post(url, json={"weights": renamed}), 422)
    locs = [e["loc"] for e in body["errors"]]
    assert ["body", "weights", "paper"] in locs
    assert ["body", "weights"] in locs  # papers is missing
    problem(client.post(url, json={"weights": {}}), 422, loc=["body", "weights"])


def test_weights_are_a_mixture_over_the_domains(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    check_weights_finite_and_non_negative(client, experiment)
    check_weight_keys_are_the_domains(client, experiment)
    check_weights_sum_to_1_within_1e_6(client, experiment)


# --- validation: metric values and names -------------------------------------------------------


def check_metric_values_finite(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    run = import_run(client, eid)
    for value in ("NaN", "Infinity", "-Infinity", "1e999"):
        text = f'{{"points":[{{"name":"a","step":1,"value":{value}}}]}}'
        problem(
            post_raw(client, f"{API}/runs/{run['id']}/metrics", text),
            422,
            loc=["body", "points", 0, "value"],
        )
        text = f'{{"metrics":{{"val_loss/web":{value}}}}}'
        problem(
            post_raw(client, f"{API}/runs/{run['id']}/complete", text),
            422,
            loc=["body", "metrics", "val_loss/web"],
        )
        weights = json.dumps(VALID)
        text = f'{{"weights":{weights},"metrics":{{"val_loss/web":{value}}}}}'
        problem(
            post_raw(client, f"{API}/experiments/{eid}/runs", text),
            422,
            loc=["body", "metrics", "val_loss/web"],
        )
    # Nothing of the above was stored.
    assert expect(client.get(f"{API}/runs/{run['id']}/metrics"), 200)["items"] == []
    assert expect(client.get(f"{API}/runs/{run['id']}"), 200)["status"] == "pending"


BAD_NAMES = ["", "has space", "x" * 129, "naïve", "semi;colon", "a\nb", "trailing\n", "quote'"]


def test_names_must_match_the_pattern(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    run = import_run(client, eid)
    for bad in BAD_NAMES:
        problem(
            client.post(f"{API}/experiments", json=experiment_body(name=bad)),
            422,
            loc=["body", "name"],
        )
        domains = [{"name": bad}, {"name": "ok"}]
        problem(
            client.post(f"{API}/experiments", json=experiment_body(name="n", domains=domains)),
            422,
            loc_prefix=["body", "domains", 0, "name"],
        )
        objective = {"metrics": {bad: 1.0}}
        problem(
            client.post(f"{API}/experiments", json=experiment_body(name="n", objective=objective)),
            422,
            loc_prefix=["body", "objective", "metrics"],
        )
        point = {"name": bad, "step": 1, "value": 1.0}
        problem(
            client.post(f"{API}/runs/{run['id']}/metrics", json={"points": [point]}),
            422,
            loc=["body", "points", 0, "name"],
        )
        problem(
            client.post(f"{API}/runs/{run['id']}/complete", json={"metrics": {bad: 1.0}}),
            422,
            loc_prefix=["body", "metrics"],
        )
        problem(
            client.post(f"{API}/experiments/{eid}/claim", json={"worker": bad}),
            422,
            loc=["body", "worker"],
        )
        problem(
            client.post(
                f"{API}/experiments/{eid}/runs", json={"weights": VALID, "tags": {bad: "1"}}
            ),
            422,
            loc_prefix=["body", "tags"],
        )
        problem(client.post(f"{API}/tokens", json={"name": bad}), 422, loc=["body", "name"])
    # Every allowed character, at the maximum length, is accepted.
    for good in ["A-Za-z0-9_.:/-", "x" * 128, "val_loss/pile_cc", "node3/gpu1"]:
        body = experiment_body(
            name=good,
            domains=[{"name": good}, {"name": "other"}],
            objective={"metrics": {good: 1.0}},
        )
        expect(client.post(f"{API}/experiments", json=body), 201)
        point = {"name": good, "step": 1, "value": 1.0}
        expect(client.post(f"{API}/runs/{run['id']}/metrics", json={"points": [point]}), 202)


# --- validation: experiments -------------------------------------------------------------------


def check_infeasible_bounds_are_422(client: TestClient) -> None:
    cases: list[tuple[list[dict[str, Any]], list[str | int]]] = [
        ([{"name": "a", "min_weight": 0.6}, {"name": "b", "min_weight": 0.5}], ["body", "domains"]),
        ([{"name": "a", "max_weight": 0.4}, {"name": "b", "max_weight": 0.5}], ["body", "domains"]),
        ([{"name": "a", "min_weight": 0.5, "max_weight": 0.4}, {"name": "b"}],
         ["body", "domains", 0]),
        ([{"name": "a", "min_weight": 1.5}, {"name": "b"}], ["body", "domains", 0, "min_weight"]),
        ([{"name": "a", "max_weight": -0.1}, {"name": "b"}], ["body", "domains", 0, "max_weight"]),
    ]  # fmt: skip
    for domains, loc in cases:
        body = experiment_body(name="bounds", domains=domains)
        problem(client.post(f"{API}/experiments", json=body), 422, loc=loc)
    # The edges are feasible: sum(min) == 1 and sum(max) == 1.
    for i, domains in enumerate(
        [
            [{"name": "a", "min_weight": 0.5}, {"name": "b", "min_weight": 0.5}],
            [{"name": "a", "max_weight": 0.5}, {"name": "b", "max_weight": 0.5}],
        ]
    ):
        body = experiment_body(name=f"edge{i}", domains=domains)
        expect(client.post(f"{API}/experiments", json=body), 201)


def check_repetition_cap_below_min_weight_is_422(client: TestClient) -> None:
    domains = [{"name": "a", "tokens": 1e6, "min_weight": 0.5}, {"name": "b", "tokens": 1e9}]
    config = {"train_tokens": 1e9, "max_epochs": 1}
    body = experiment_body(name="capped", domains=domains, config=config)
    problem(
        client.post(f"{API}/experiments", json=body), 422, loc=["body", "domains", 0, "min_weight"]
    )


def check_priors_positive(client: TestClient) -> None:
    for prior in ("0", "-1", "-0.0", "NaN", "Infinity"):
        text = (
            '{"name": "p", "method": "regmix", "objective": {"metrics": {"m": 1}}, '
            f'"domains": [{{"name": "a", "prior": {prior}}}, {{"name": "b", "prior": 1}}]}}'
        )
        problem(
            post_raw(client, f"{API}/experiments", text),
            422,
            loc=["body", "domains", 0, "prior"],
        )
    # Priors given for some domains only are refused, naming the ones missing.
    domains = [{"name": "a", "prior": 1.0}, {"name": "b"}]
    body = experiment_body(name="p", domains=domains)
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "domains", 1, "prior"])


def check_priors_normalised_without_overflow(client: TestClient) -> None:
    """Huge priors or token counts must not overflow their sum into priors of 0."""
    for i, key in enumerate(("prior", "tokens")):
        domains = [{"name": "a", key: 1e308}, {"name": "b", key: 1e308}]
        created = expect(
            client.post(
                f"{API}/experiments", json=experiment_body(name=f"big{i}", domains=domains)
            ),
            201,
        )
        assert [d["prior"] for d in created["domains"]] == [0.5, 0.5]
    domains = [{"name": "a", "prior": 1e308}, {"name": "b", "prior": 1e-300}]
    body = experiment_body(name="wide", domains=domains)
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "domains", 1, "prior"])


def check_unknown_config_key_is_422(client: TestClient) -> None:
    body = experiment_body(config={"seed": 1, "bogus": 2})
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "config", "bogus"])
    body = experiment_body(config={"max_attempts": 0})
    problem(
        client.post(f"{API}/experiments", json=body), 422, loc=["body", "config", "max_attempts"]
    )
    text = json.dumps(experiment_body()).replace('"seed": 1', '"train_tokens": NaN')
    problem(post_raw(client, f"{API}/experiments", text), 422, loc_prefix=["body", "config"])


def check_unknown_method_is_422(client: TestClient) -> None:
    for mode, method in (("offline", "nope"), ("offline", "odm-typo"), ("online", "regmix")):
        body = experiment_body(mode=mode, method=method)
        problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "method"])
    listing = expect(client.get(f"{API}/methods"), 200)
    methods = listing["items"]
    names = {(m["mode"], m["name"]) for m in methods}
    assert {("offline", n) for n in ("regmix", "rounds", "bayes", "quadmix")} <= names
    for method in methods:
        assert set(method) >= {"name", "mode", "description", "config_schema"}
    # The fit's models are documented beside the methods, with their defaults.
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == {"auto", "linear", "lightgbm", "mixing_law", "loglinear", "gp"}
    assert models["lightgbm"]["defaults"]["n_estimators"] == 1000
    assert all(m["description"] for m in models.values())


def check_fixed_weights_are_a_mixture(client: TestClient) -> None:
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"web": 0.5, "code": 0.5}, ["body", "config", "weights"]),
        ({"web": 0.5, "code": 0.6, "papers": 0.0}, ["body", "config", "weights"]),
        ({"web": 0.5, "code": 0.5, "papers": 0.0, "x": 0.0}, ["body", "config", "weights", "x"]),
    ]
    for weights, loc in cases:
        body = experiment_body(method="fixed", config={"weights": weights})
        problem(client.post(f"{API}/experiments", json=body), 422, loc=loc)
    body = experiment_body(method="fixed", config={"weights": VALID})
    created = expect(client.post(f"{API}/experiments", json=body), 201)
    runs = propose(client, created["id"], 3)
    assert [r["weights"] for r in runs] == [VALID] * 3


def check_objective_required_offline(client: TestClient) -> None:
    body = experiment_body()
    del body["objective"]
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "objective"])
    body = experiment_body(objective={"metrics": {}})
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "objective", "metrics"])


def check_duplicate_domain_names_are_422(client: TestClient) -> None:
    body = experiment_body(domains=[{"name": "a"}, {"name": "a"}])
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "domains"])
    body = experiment_body(domains=[{"name": "a"}])
    problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "domains"])


def test_domains_are_validated(client: TestClient) -> None:
    check_duplicate_domain_names_are_422(client)
    check_infeasible_bounds_are_422(client)
    check_repetition_cap_below_min_weight_is_422(client)
    check_priors_positive(client)
    check_priors_normalised_without_overflow(client)


def test_method_config_and_objective_are_validated(client: TestClient) -> None:
    check_unknown_method_is_422(client)
    check_unknown_config_key_is_422(client)
    check_objective_required_offline(client)
    check_fixed_weights_are_a_mixture(client)


def test_duplicate_active_name_is_409_until_archived(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    problem(client.post(f"{API}/experiments", json=experiment_body()), 409)
    archived = expect(client.post(f"{API}/experiments/{experiment['id']}/archive"), 200)
    assert archived["status"] == "archived"
    # Archiving is idempotent.
    assert expect(client.post(f"{API}/experiments/{experiment['id']}/archive"), 200)["status"] == (
        "archived"
    )
    second = expect(client.post(f"{API}/experiments", json=experiment_body()), 201)
    assert second["id"] != experiment["id"]
    assert second["name"] == experiment["name"]
    problem(client.post(f"{API}/experiments", json=experiment_body()), 409)
    active = expect(client.get(f"{API}/experiments", params={"status": "active"}), 200)["items"]
    assert [e["id"] for e in active] == [second["id"]]
    archived_list = expect(client.get(f"{API}/experiments", params={"status": "archived"}), 200)
    assert [e["id"] for e in archived_list["items"]] == [experiment["id"]]


# --- unknown ids -------------------------------------------------------------------------------


def test_unknown_ids_are_404(client: TestClient, experiment: dict[str, Any]) -> None:
    import_run(client, experiment["id"])
    for bad in ("999999", "abc", "0", "-1", "99999999999999999999999"):
        check_unknown_id_is_404(client, bad)


def check_unknown_id_is_404(client: TestClient, bad: str) -> None:
    gets = [
        f"{API}/experiments/{bad}",
        f"{API}/experiments/{bad}/runs",
        f"{API}/experiments/{bad}/runs.csv",
        f"{API}/runs/{bad}",
        f"{API}/runs/{bad}/metrics",
    ]
    for url in gets:
        problem(client.get(url), 404)
    posts: list[tuple[str, dict[str, Any]]] = [
        (f"{API}/experiments/{bad}/archive", {}),
        (f"{API}/experiments/{bad}/proposals", {"count": 1}),
        (f"{API}/experiments/{bad}/runs", {"weights": VALID}),
        (f"{API}/experiments/{bad}/claim", {"worker": "w"}),
        (f"{API}/runs/{bad}/heartbeat", {"worker": "w"}),
        (f"{API}/runs/{bad}/metrics", {"points": [{"name": "a", "step": 1, "value": 1.0}]}),
        (f"{API}/runs/{bad}/complete", {"metrics": {}}),
        (f"{API}/runs/{bad}/fail", {"reason": "x"}),
        (f"{API}/runs/{bad}/release", {"worker": "w"}),
        (f"{API}/runs/{bad}/exclude", {"excluded": True}),
    ]
    for url, body in posts:
        problem(client.post(url, json=body), 404)
    problem(client.delete(f"{API}/tokens/{bad}"), 404)


# --- proposals, claims, metric batches ---------------------------------------------------------


def check_proposal_count_1_to_1000(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/proposals"
    for count in (0, 1001, -5):
        problem(client.post(url, json={"count": count}), 422, loc=["body", "count"])
    problem(client.post(url, json={}), 422, loc=["body", "count"])
    problem(client.post(url, json={"count": 1, "request_id": "bad id"}), 422,
            loc=["body", "request_id"])  # fmt: skip
    assert expect(client.get(f"{API}/experiments/{experiment['id']}/runs"), 200)["items"] == []


def check_archived_experiment_refuses_new_runs(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    expect(client.post(f"{API}/experiments/{eid}/archive"), 200)
    problem(client.post(f"{API}/experiments/{eid}/proposals", json={"count": 1}), 409)
    problem(client.post(f"{API}/experiments/{eid}/runs", json={"weights": VALID}), 409)
    body = {"weights": VALID, "metrics": {"val_loss/web": 3.0}, "external_id": "late"}
    problem(client.post(f"{API}/experiments/{eid}/runs", json=body), 409)
    assert expect(client.get(f"{API}/experiments/{eid}/runs"), 200)["items"] == []
    # Bad input is still 422 on an archived experiment.
    problem(client.post(f"{API}/experiments/{eid}/proposals", json={"count": 0}), 422)


def test_proposal_count_must_be_1_to_1000_and_archived_experiments_refuse_new_runs(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    check_proposal_count_1_to_1000(client, experiment)
    check_archived_experiment_refuses_new_runs(client, experiment)


def test_claim_lease_seconds_must_be_10_to_86400(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    url = f"{API}/experiments/{experiment['id']}/claim"
    for seconds in (9, 86401, 0):
        body = {"worker": "node3/gpu1", "lease_seconds": seconds}
        problem(client.post(url, json=body), 422, loc=["body", "lease_seconds"])
    problem(client.post(url, json={}), 422, loc=["body", "worker"])
    # Nothing pending: 204 with no body.
    response = client.post(url, json={"worker": "w", "lease_seconds": 10})
    expect(response, 204)
    assert response.content == b""
    propose(client, experiment["id"], 2)
    first = expect(client.post(url, json={"worker": "w", "lease_seconds": 10}), 200)
    second = expect(client.post(url, json={"worker": "w2", "lease_seconds": 86400}), 200)
    assert first["id"] != second["id"]
    assert first["status"] == second["status"] == "running"
    expect(client.post(url, json={"worker": "w3"}), 204)
    beat = f"{API}/runs/{first['id']}/heartbeat"
    for seconds in (9, 86401):
        body = {"worker": "w", "lease_seconds": seconds}
        problem(client.post(beat, json=body), 422, loc=["body", "lease_seconds"])
    expect(client.post(beat, json={"worker": "w", "lease_seconds": 10}), 200)


def test_metrics_batch_over_10000_points_is_422(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run = import_run(client, experiment["id"])
    url = f"{API}/runs/{run['id']}/metrics"
    points = [{"name": "loss", "step": i, "value": float(i)} for i in range(10_001)]
    problem(client.post(url, json={"points": points}), 422, loc=["body", "points"])
    assert expect(client.get(url), 200)["items"] == []
    accepted = expect(client.post(url, json={"points": points[:10_000]}), 202)
    assert accepted == {"accepted": 10_000, "new": 10_000}


def check_non_finite_params_are_422(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/runs"
    weights = json.dumps(VALID)
    for params in (
        '{"x": NaN}',
        '{"x": Infinity}',
        '{"nested": {"list": [1, 2, -Infinity]}}',
        '{"x": 1e999}',
    ):
        text = f'{{"weights": {weights}, "params": {params}}}'
        problem(post_raw(client, url, text), 422, loc=["body", "params"])
    assert expect(client.get(url), 200)["items"] == []


def test_non_finite_numbers_are_422(client: TestClient, experiment: dict[str, Any]) -> None:
    """NaN and infinities: in metric values, and anywhere in free-form params."""
    check_non_finite_params_are_422(client, experiment)
    check_metric_values_finite(client, experiment)


def test_unstorable_text_is_422(client: TestClient, experiment: dict[str, Any]) -> None:
    """NUL characters and lone surrogates can be sent in JSON but no database stores them; free
    JSON nested without bound cannot be answered. All are bad input (422), never a 500."""
    eid = experiment["id"]
    url = f"{API}/experiments/{eid}/runs"
    weights = json.dumps(VALID)
    cases: list[tuple[str, list[str | int]]] = [
        ('"tags": {"seed": "1\\u0000"}', ["body", "tags", "seed"]),
        ('"tags": {"seed": "\\ud800"}', ["body", "tags", "seed"]),
        ('"params": {"a": "x\\u0000y"}', ["body", "params"]),
        ('"params": {"a\\u0000": 1}', ["body", "params"]),
        ('"params": {"a": ["\\udfff"]}', ["body", "params"]),
        ('"params": {"a": ' + "[" * 500 + "]" * 500 + "}", ["body", "params"]),
        ('"external_id": "x\\u0000"', ["body", "external_id"]),
    ]
    for fragment, loc in cases:
        problem(post_raw(client, url, f'{{"weights": {weights}, {fragment}}}'), 422, loc=loc)
    assert expect(client.get(f"{API}/experiments/{eid}/runs"), 200)["items"] == []
    run = import_run(client, eid, params={"deep": [[[[{"ok": "ü"}]]]]}, tags={"note": "naïve"})
    assert run["params"] == {"deep": [[[[{"ok": "ü"}]]]]}
    for action, body in (
        ("fail", '{"reason": "oom\\u0000"}'),
        ("exclude", '{"reason": "\\u0000"}'),
    ):
        problem(post_raw(client, f"{API}/runs/{run['id']}/{action}", body), 422,
                loc=["body", "reason"])  # fmt: skip
    text = json.dumps(experiment_body(name="nul")).replace('"seed": 1', '"seed": "\\u0000"')
    problem(post_raw(client, f"{API}/experiments", text), 422, loc_prefix=["body", "config"])


# --- idempotency -------------------------------------------------------------------------------


def check_import_idempotent_on_external_id(client: TestClient, experiment: dict[str, Any]) -> None:
    url = f"{API}/experiments/{experiment['id']}/runs"
    body = {
        "weights": VALID,
        "metrics": {"val_loss/web": 3.25},
        "tags": {"seed": "1"},
        "params": {"note": "baseline"},
        "external_id": "wandb/abc123",
    }
    first = expect(client.post(url, json=body), 201)
    assert first["status"] == "completed"
    assert first["external_id"] == "wandb/abc123"
    again = expect(client.post(url, json=body), 200)
    assert again["id"] == first["id"]
    assert again == first
    other_weights = {**body, "weights": {"web": 0.4, "code": 0.4, "papers": 0.2}}
    problem(client.post(url, json=other_weights), 409)
    other_metrics = {**body, "metrics": {"val_loss/web": 3.5}}
    problem(client.post(url, json=other_metrics), 409)
    fewer_metrics = {**body, "metrics": {}}
    problem(client.post(url, json=fewer_metrics), 409)
    runs = expect(client.get(f"{API}/experiments/{experiment['id']}/runs"), 200)["items"]
    assert [r["id"] for r in runs] == [first["id"]]
    # Without an external_id every import is new.
    assert import_run(client, experiment["id"])["id"] != import_run(client, experiment["id"])["id"]


def check_import_status_defaults(client: TestClient, experiment: dict[str, Any]) -> None:
    assert import_run(client, experiment["id"])["status"] == "pending"
    done = import_run(client, experiment["id"], metrics={"val_loss/web": 3.0})
    assert done["status"] == "completed"
    # Imported runs may lie outside min/max bounds.
    edge = import_run(client, experiment["id"], weights={"web": 0.0, "code": 0.0, "papers": 1.0})
    assert edge["weights"]["papers"] == 1.0


def test_imports_are_idempotent_on_external_id_and_pending_until_given_metrics(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    check_import_idempotent_on_external_id(client, experiment)
    check_import_status_defaults(client, experiment)


def test_proposals_are_idempotent_on_request_id(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    url = f"{API}/experiments/{experiment['id']}/proposals"
    first = expect(client.post(url, json={"count": 4, "request_id": "sched-1"}), 201)["items"]
    again = expect(client.post(url, json={"count": 4, "request_id": "sched-1"}), 201)["items"]
    assert len(first) == 4
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert [r["weights"] for r in again] == [r["weights"] for r in first]
    other = expect(client.post(url, json={"count": 2, "request_id": "sched-2"}), 201)["items"]
    assert not {r["id"] for r in other} & {r["id"] for r in first}
    runs = expect(client.get(f"{API}/experiments/{experiment['id']}/runs"), 200)["items"]
    assert len(runs) == 6
    for run in first:
        assert run["status"] == "pending"
        assert set(run["weights"]) == set(DOMAIN_NAMES)
        assert abs(sum(run["weights"].values()) - 1) <= 1e-6


def check_complete_idempotent(client: TestClient, experiment: dict[str, Any]) -> None:
    run = propose(client, experiment["id"], 1)[0]
    url = f"{API}/runs/{run['id']}/complete"
    metrics = {"val_loss/web": 3.125, "val_loss/code": 2.0}
    first = expect(client.post(url, json={"metrics": metrics}), 200)
    assert first["status"] == "completed"
    assert first["metrics"] == metrics
    again = expect(client.post(url, json={"metrics": metrics}), 200)
    assert again["metrics"] == metrics
    assert again["status"] == "completed"
    problem(client.post(url, json={"metrics": {**metrics, "val_loss/web": 3.5}}), 409)
    problem(client.post(url, json={"metrics": {"val_loss/web": 3.125}}), 409)
    stored = expect(client.get(f"{API}/runs/{run['id']}"), 200)
    assert stored["metrics"] == metrics


def check_lease_holder_rules(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    propose(client, eid, 1)
    run = expect(client.post(f"{API}/experiments/{eid}/claim", json={"worker": "w1"}), 200)
    rid = run["id"]
    problem(client.post(f"{API}/runs/{rid}/heartbeat", json={"worker": "w2"}), 409)
    problem(client.post(f"{API}/runs/{rid}/complete", json={"worker": "w2", "metrics": {}}), 409)
    problem(client.post(f"{API}/runs/{rid}/release", json={"worker": "w2"}), 409)
    expect(client.post(f"{API}/runs/{rid}/heartbeat", json={"worker": "w1"}), 200)
    released = expect(client.post(f"{API}/runs/{rid}/release", json={"worker": "w1"}), 200)
    assert released["status"] == "pending"
    assert released["attempt"] == 1


def test_completion_is_idempotent_and_only_the_lease_holder_may_act_on_a_run(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    check_complete_idempotent(client, experiment)
    check_lease_holder_rules(client, experiment)


def test_metrics_batches_are_idempotent_and_all_or_nothing(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run = import_run(client, experiment["id"])
    url = f"{API}/runs/{run['id']}/metrics"
    batch = [
        {"name": "val_loss/web", "step": 100, "value": 3.5},
        {"name": "val_loss/web", "step": 200, "value": 3.25},
        {"name": "val_loss/code", "step": 100, "value": 2.5},
    ]
    assert expect(client.post(url, json={"points": batch}), 202) == {"accepted": 3, "new": 3}
    assert expect(client.post(url, json={"points": batch}), 202) == {"accepted": 3, "new": 0}
    grown = [*batch, {"name": "val_loss/web", "step": 300, "value": 3.0}]
    assert expect(client.post(url, json={"points": grown}), 202) == {"accepted": 4, "new": 1}
    before = expect(client.get(url), 200)["items"]
    assert len(before) == 4

    conflicting = [
        {"name": "val_loss/web", "step": 400, "value": 2.9},  # new
        {"name": "val_loss/code", "step": 100, "value": 2.75},  # stored as 2.5
        {"name": "val_loss/papers", "step": 100, "value": 4.0},  # new
    ]
    problem(client.post(url, json={"points": conflicting}), 409)
    assert expect(client.get(url), 200)["items"] == before, "a rejected batch stored points"

    twice = [
        {"name": "val_loss/web", "step": 500, "value": 2.8},
        {"name": "val_loss/web", "step": 500, "value": 2.7},
    ]
    problem(client.post(url, json={"points": twice}), 422, loc_prefix=["body", "points"])
    assert expect(client.get(url), 200)["items"] == before
    assert expect(client.post(url, json={"points": []}), 202) == {"accepted": 0, "new": 0}


# --- reading -----------------------------------------------------------------------------------


def test_run_metrics_are_paginated_by_step(client: TestClient, experiment: dict[str, Any]) -> None:
    run = import_run(client, experiment["id"])
    url = f"{API}/runs/{run['id']}/metrics"
    steps = [700, 0, 300, 100, 1200, 900, 50, 400, 1100, 200, 600, 800, 1000, 500, 10]
    points = [
        {"name": name, "step": step, "value": step / 100 + (0.5 if name == "b" else 0.0)}
        for step in steps
        for name in ("b", "a")
    ]
    expect(client.post(url, json={"points": points}), 202)
    for limit in (1, 4, 7, 30, 1000):
        items = list(walk(client, url, limit))
        assert [(p["step"], p["name"]) for p in items] == sorted(
            (p["step"], p["name"]) for p in points
        )
        for item in items:
            expected = item["step"] / 100 + (0.5 if item["name"] == "b" else 0.0)
            assert item["value"] == expected
    only_a = list(walk(client, url, 4, name="a"))
    assert [p["step"] for p in only_a] == sorted(steps)
    assert {p["name"] for p in only_a} == {"a"}
    assert list(walk(client, url, 4, name="absent")) == []


def check_runs_paginated_and_filtered(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    proposed = propose(client, eid, 5)
    done = [import_run(client, eid, metrics={"val_loss/web": 3.0 + i}) for i in range(3)]
    excluded = done[1]
    expect(
        client.post(f"{API}/runs/{excluded['id']}/exclude", json={"reason": "bad node"}),
        200,
    )
    claimed = expect(client.post(f"{API}/experiments/{eid}/claim", json={"worker": "w"}), 200)
    assert claimed["id"] == proposed[0]["id"], "claim leases the oldest pending run"
    url = f"{API}/experiments/{eid}/runs"
    all_ids = [r["id"] for r in proposed] + [r["id"] for r in done]
    for limit in (1, 3, 8, 100):
        assert [r["id"] for r in walk(client, url, limit)] == all_ids
    pending = [r["id"] for r in walk(client, url, 2, status="pending")]
    assert pending == [r["id"] for r in proposed[1:]]
    assert [r["id"] for r in walk(client, url, 2, status="running")] == [claimed["id"]]
    completed = [r["id"] for r in walk(client, url, 2, status="completed")]
    assert completed == [r["id"] for r in done]
    assert list(walk(client, url, 2, status="failed")) == []
    assert [r["id"] for r in walk(client, url, 2, excluded="true")] == [excluded["id"]]
    kept = [r["id"] for r in walk(client, url, 2, excluded="false")]
    assert kept == [i for i in all_ids if i != excluded["id"]]
    both = [r["id"] for r in walk(client, url, 1, status="completed", excluded="false")]
    assert both == [done[0]["id"], done[2]["id"]]
    counts = expect(client.get(f"{API}/experiments/{eid}"), 200)["counts"]
    assert counts == {"pending": 4, "running": 1, "completed": 3, "failed": 0, "excluded": 1}
    # Include it again.
    back = expect(
        client.post(f"{API}/runs/{excluded['id']}/exclude", json={"excluded": False}), 200
    )
    assert back["excluded"] is False


def check_experiments_list_newest_first(client: TestClient, existing: list[str]) -> None:
    ids = [
        expect(client.post(f"{API}/experiments", json=experiment_body(name=f"e{i}")), 201)["id"]
        for i in range(5)
    ]
    newest_first = ids[::-1] + existing[::-1]
    for limit in (1, 2, 100):
        assert [e["id"] for e in walk(client, f"{API}/experiments", limit)] == newest_first


def test_lists_are_paginated_and_filtered(client: TestClient, experiment: dict[str, Any]) -> None:
    check_runs_paginated_and_filtered(client, experiment)
    check_experiments_list_newest_first(client, [experiment["id"]])


def test_runs_csv_has_weight_metric_and_tag_columns(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    first = import_run(
        client,
        eid,
        metrics={"val_loss/web": 3.25, "val_loss/code": 2.5},
        tags={"seed": "1", "model_size": "1M"},
        external_id="ext-1",
    )
    second = import_run(
        client,
        eid,
        weights={"web": 0.2, "code": 0.2, "papers": 0.6},
        metrics={"val_loss/web": 3.5},
        tags={"seed": "2"},
    )
    third = propose(client, eid, 1)[0]
    response = client.get(f"{API}/experiments/{eid}/runs.csv")
    expect(response, 200)
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 3
    header = set(rows[0])
    assert {f"weight/{d}" for d in DOMAIN_NAMES} <= header
    assert {"metric/val_loss/web", "metric/val_loss/code"} <= header
    assert {"tag/seed", "tag/model_size"} <= header
    by_id = {row["run_id"]: row for row in rows}
    assert set(by_id) == {first["id"], second["id"], third["id"]}
    row = by_id[first["id"]]
    assert {d: float(row[f"weight/{d}"]) for d in DOMAIN_NAMES} == VALID
    assert float(row["metric/val_loss/web"]) == 3.25
    assert float(row["metric/val_loss/code"]) == 2.5
    assert row["tag/seed"] == "1"
    assert row["tag/model_size"] == "1M"
    row = by_id[second["id"]]
    assert row["metric/val_loss/code"] == ""
    assert row["tag/model_size"] == ""
    row = by_id[third["id"]]
    assert row["status"] == "pending"
    weights = {d: float(row[f"weight/{d}"]) for d in DOMAIN_NAMES}
    assert weights == third["weights"]
    # An experiment without runs still has the header.
    other = expect(client.post(f"{API}/experiments", json=experiment_body(name="empty")), 201)
    response = client.get(f"{API}/experiments/{other['id']}/runs.csv")
    expect(response, 200)
    lines = response.text.splitlines()
    assert len(lines) == 1
    assert {f"weight/{d}" for d in DOMAIN_NAMES} <= set(lines[0].split(","))


# --- documentation and operations --------------------------------------------------------------

# The calls of the contract's "Offline experiments" and "Operations" tables (and GET /methods).
CONTRACT_CALLS = [
    ("POST", "/api/v1/experiments"),
    ("GET", "/api/v1/experiments"),
    ("GET", "/api/v1/experiments/{id}"),
    ("POST", "/api/v1/experiments/{id}/archive"),
    ("POST", "/api/v1/experiments/{id}/proposals"),
    ("POST", "/api/v1/experiments/{id}/runs"),
    ("POST", "/api/v1/experiments/{id}/claim"),
    ("POST", "/api/v1/runs/{id}/heartbeat"),
    ("POST", "/api/v1/runs/{id}/metrics"),
    ("POST", "/api/v1/runs/{id}/complete"),
    ("POST", "/api/v1/runs/{id}/fail"),
    ("POST", "/api/v1/runs/{id}/release"),
    ("POST", "/api/v1/runs/{id}/exclude"),
    ("GET", "/api/v1/runs/{id}"),
    ("GET", "/api/v1/experiments/{id}/runs"),
    ("GET", "/api/v1/runs/{id}/metrics"),
    ("GET", "/api/v1/experiments/{id}/runs.csv"),
    ("POST", "/api/v1/experiments/{id}/fit"),
    ("GET", "/api/v1/experiments/{id}/fits"),
    ("GET", "/api/v1/fits/{id}"),
    ("POST", "/api/v1/experiments/{id}/predict"),
    ("GET", "/api/v1/experiments/{id}/recommendation"),
    ("GET", "/api/v1/methods"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
]
# Implemented today: these must exist (the rest are checked as soon as they do).
REQUIRED_NOW = {
    call for call in CONTRACT_CALLS if not re.search(r"/fits?\b|/predict|/recomm", call[1])
}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def served(client: TestClient, method: str, path: str) -> bool:
    """Does the app route ``method path``? Probed over HTTP: a path the router does not know is a
    plain 404 (type about:blank) and a method it does not route is 405; an unknown id is a typed
    404 problem, which means the route exists."""
    url = re.sub(r"\{[^}]+\}", "999999", path)
    response = client.request(method, url, json={} if method in ("POST", "PUT") else None)
    if response.status_code == 405:
        return False
    if response.status_code == 404:
        return bool(response.json()["type"] != "about:blank")
    return True


def test_openapi_documents_the_contract(app: FastAPI, client: TestClient) -> None:
    with TestClient(app) as anonymous:
        response = anonymous.get("/openapi.json")
    document = expect(response, 200)
    documented = {
        (method.upper(), _shape(path))
        for path, operations in document["paths"].items()
        for method in operations
    }
    for method, path in CONTRACT_CALLS:
        if served(client, method, path):
            assert (method, _shape(path)) in documented, f"{method} {path} is undocumented"
        else:
            assert (method, path) not in REQUIRED_NOW, f"{method} {path} is not served"
    # Error answers are documented with the problem schema.
    assert "Problem" in document["components"]["schemas"]
    create = document["paths"]["/api/v1/experiments"]["post"]
    assert "422" in create["responses"]
    assert "requestBody" in create


def check_health_and_readiness_need_no_token(app: FastAPI) -> None:
    with TestClient(app) as anonymous:
        assert expect(anonymous.get("/healthz"), 200) == {"status": "ok"}
        assert expect(anonymous.get("/readyz"), 200) == {"status": "ready"}
        metrics = anonymous.get("/metrics")
        expect(metrics, 200)
        assert "mixopt_http_requests" in metrics.text
        page = anonymous.get("/")
        expect(page, 200)
        assert page.headers["content-type"].startswith("text/html")


def check_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    problem(client.get(f"{API}/nothing-here"), 404)
    problem(client.put(f"{API}/experiments"), 405)
    problem(client.delete(f"{API}/experiments"), 405)


def test_operational_endpoints_need_no_token_and_unknown_routes_are_problems(
    app: FastAPI, client: TestClient
) -> None:
    check_health_and_readiness_need_no_token(app)
    check_unknown_routes_and_methods_are_problems(client)


def test_a_seed_numpy_cannot_take_is_422_at_creation_not_500_at_the_first_proposals(
    client: TestClient,
) -> None:
    # A seed of -1 was stored, then every proposal call failed with a 500 (numpy's seeds are
    # non-negative); scikit-learn's stop at 2**32 - 1.
    for seed in (-1, 2**32):
        body = experiment_body(config={"seed": seed})
        problem(client.post(f"{API}/experiments", json=body), 422, loc=["body", "config", "seed"])
    assert expect(client.get(f"{API}/experiments"), 200)["items"] == []
    created = expect(
        client.post(f"{API}/experiments", json=experiment_body(config={"seed": 2**32 - 1})), 201
    )
    expect(client.post(f"{API}/experiments/{created['id']}/proposals", json={"count": 2}), 201)


def test_openapi_links_chain_ids_and_json_bodies_document_415(client: TestClient) -> None:
    document = expect(client.get("/openapi.json"), 200)
    paths = document["paths"]
    operation_ids = {
        operation["operationId"]
        for operations in paths.values()
        for operation in operations.values()
    }
    created = paths[f"{API}/experiments"]["post"]["responses"]["201"]["links"]
    claimed = paths[f"{API}/experiments/{{experiment_id}}/claim"]["post"]["responses"]["200"]
    for links in (created, claimed["links"]):
        assert links, "no links"
        for link in links.values():
            assert link["operationId"] in operation_ids, link
    proposals = paths[f"{API}/experiments/{{experiment_id}}/proposals"]["post"]["operationId"]
    assert created[proposals]["parameters"] == {"experiment_id": "$response.body#/id"}
    heartbeat = paths[f"{API}/runs/{{run_id}}/heartbeat"]["post"]["operationId"]
    assert claimed["links"][heartbeat]["requestBody"] == {"worker": "$response.body#/worker"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert "415" in operation["responses"], f"{method.upper()} {path}"
