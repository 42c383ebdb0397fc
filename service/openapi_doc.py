"""What FastAPI's generated OpenAPI document does not say by itself.

Links: how the ids one call returns feed the calls that take them. Clients and stateful testers
(schemathesis) follow them from a new experiment to its proposals, claims and fits, and from a
run to its heartbeats, metrics and weights. And the 415 of every call that takes a JSON body.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_links", "add_unsupported_media_type"]

API = "/api/v1"
EXPERIMENT = f"{API}/experiments/{{experiment_id}}"
RUN = f"{API}/runs/{{run_id}}"

# (method, path) of every call that takes an experiment id, a run id, ...
_EXPERIMENT_CALLS = [
    ("get", EXPERIMENT),
    ("patch", EXPERIMENT),
    ("post", f"{EXPERIMENT}/archive"),
    ("post", f"{EXPERIMENT}/proposals"),
    ("post", f"{EXPERIMENT}/runs"),
    ("post", f"{EXPERIMENT}/runs/batch"),
    ("get", f"{EXPERIMENT}/runs"),
    ("get", f"{EXPERIMENT}/runs.csv"),
    ("post", f"{EXPERIMENT}/claim"),
    ("get", f"{EXPERIMENT}/recommendation"),
    ("post", f"{EXPERIMENT}/fit"),
    ("post", f"{EXPERIMENT}/backtest"),
    ("get", f"{EXPERIMENT}/fits"),
    ("post", f"{EXPERIMENT}/predict"),
]
_RUN_CALLS = [
    ("get", RUN),
    ("post", f"{RUN}/heartbeat"),
    ("post", f"{RUN}/metrics"),
    ("get", f"{RUN}/metrics"),
    ("post", f"{RUN}/complete"),
    ("post", f"{RUN}/fail"),
    ("post", f"{RUN}/release"),
    ("post", f"{RUN}/retry"),
    ("post", f"{RUN}/exclude"),
    ("get", f"{RUN}/weights"),
    ("get", f"{RUN}/weights/history"),
    ("post", f"{RUN}/feedback"),
    ("post", f"{RUN}/resume"),
]
# The calls that hold a lease name their worker: the claim's worker keeps it.
_LEASE_CALLS = {f"{RUN}/heartbeat", f"{RUN}/complete", f"{RUN}/fail", f"{RUN}/release"}

# (method, path, status) of a response -> (the calls it feeds, parameter, where the id is)
_SOURCES: list[tuple[str, str, str, list[tuple[str, str]], str, str]] = [
    ("post", f"{API}/experiments", "201", _EXPERIMENT_CALLS, "experiment_id", "/id"),
    ("get", EXPERIMENT, "200", _EXPERIMENT_CALLS, "experiment_id", "/id"),
    ("post", f"{EXPERIMENT}/proposals", "201", _RUN_CALLS, "run_id", "/items/0/id"),
    ("post", f"{EXPERIMENT}/runs", "201", _RUN_CALLS, "run_id", "/id"),
    ("post", f"{EXPERIMENT}/runs", "200", _RUN_CALLS, "run_id", "/id"),
    ("post", f"{EXPERIMENT}/claim", "200", _RUN_CALLS, "run_id", "/id"),
    ("post", f"{EXPERIMENT}/fit", "200", [("get", f"{API}/fits/{{fit_id}}")], "fit_id", "/id"),
    ("post", f"{API}/tokens", "201", [("delete", f"{API}/tokens/{{token_id}}")], "token_id", "/id"),
]


def add_links(document: dict[str, Any]) -> None:
    """Add the links to ``document`` in place, only to and from operations it has."""
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    for method, path, status, targets, parameter, pointer in _SOURCES:
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for target_method, target_path in targets:
            target = paths.get(target_path, {}).get(target_method)
            if target is None or "operationId" not in target:
                continue
            link: dict[str, Any] = {
                "operationId": target["operationId"],
                "parameters": {parameter: f"$response.body#{pointer}"},
            }
            if path.endswith("/claim") and target_path in _LEASE_CALLS:
                link["requestBody"] = {"worker": "$response.body#/worker"}
            links[target["operationId"]] = link


def add_unsupported_media_type(document: dict[str, Any]) -> None:
    """Every call with a JSON body answers 415 to a body of another type (AuthenticatedRoute)."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                operation.setdefault("responses", {}).setdefault(
                    "415",
                    {
                        "description": "the body is not JSON",
                        "content": {"application/problem+json": {"schema": problem}},
                    },
                )
