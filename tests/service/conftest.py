from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tests.conftest import Tokens

DOMAINS = [
    {"name": "web", "tokens": 6e9},
    {"name": "code", "tokens": 2e9},
    {"name": "papers", "tokens": 1e9},
]


def experiment_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "pile-3",
        "method": "regmix",
        "domains": DOMAINS,
        "objective": {"metrics": {"val_loss/web": 1.0}},
        "config": {"seed": 1},
    }
    body.update(overrides)
    return body


@pytest.fixture
def app(settings: Settings, store: SqlStore) -> FastAPI:
    return create_app(settings, store)


@pytest.fixture
def client(app: FastAPI, tokens: Tokens) -> Iterator[TestClient]:
    """A client holding an admin token (tests pass other headers to check scopes)."""
    with TestClient(app, headers=tokens.header("admin")) as test_client:
        yield test_client


@pytest.fixture
def experiment(client: TestClient) -> dict[str, Any]:
    response = client.post("/api/v1/experiments", json=experiment_body())
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result
