"""The trainer-side OnlineMixture helper driving a real training loop against a live server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mixopt.client import MixoptClient, OnlineMixture
from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer

DOMAINS = ["web", "code", "papers"]


@pytest.fixture
def client(store: SqlStore, tokens: Tokens) -> Iterator[MixoptClient]:
    with (
        ThreadedServer(create_app(Settings(token_cache_seconds=5), store)) as server,
        MixoptClient(server.url, tokens.admin, backoff_base=0.01) as connected,
    ):
        yield connected


@pytest.fixture
def experiment_id(client: MixoptClient) -> str:
    return client.create_experiment(
        {
            "name": "online-loop",
            "mode": "online",
            "method": "stratified",
            "domains": [{"name": d} for d in DOMAINS],
            "config": {"seed": 1, "segment_steps": 100},
        }
    ).id


def train(mixture: OnlineMixture, first: int, last: int) -> list[int]:
    """A stand-in training loop: one step at a time, a report whenever a segment ends."""
    reported = []
    for step in range(first, last + 1):
        assert abs(sum(mixture.weights.values()) - 1) < 1e-6
        if mixture.due(step):
            mixture.report(
                step,
                train_losses=dict.fromkeys(DOMAINS, 3.0 - step / 1000),
                eval_losses=dict.fromkeys(DOMAINS, 3.1 - step / 1000),
                tokens=dict.fromkeys(DOMAINS, 100),
            )
            reported.append(step)
    return reported


def test_training_loop_reports_at_each_segment_end(
    client: MixoptClient, experiment_id: str, store: SqlStore
) -> None:
    mixture = OnlineMixture.start(client, experiment_id, "main", total_steps=950)
    assert mixture.version == 1 and mixture.segment_end == 100
    assert train(mixture, 1, 950) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 950]
    assert mixture.version == 11
    assert mixture.poll().version == 11  # a 304 under the hood: same object
    mixture.complete({"eval_loss/mean": 2.2})
    assert store.online_state(mixture.run_id).frozen


def test_resumed_loop_ends_in_the_same_state(
    client: MixoptClient, experiment_id: str, store: SqlStore
) -> None:
    straight = OnlineMixture.start(client, experiment_id, "straight", total_steps=600)
    train(straight, 1, 600)
    restarted = OnlineMixture.start(client, experiment_id, "restarted", total_steps=600)
    train(restarted, 1, 450)  # crash after step 450; the last checkpoint was at step 300
    restarted.resume(300)
    assert restarted.segment_end == 400
    train(restarted, 301, 600)
    assert store.online_state(restarted.run_id).state == store.online_state(straight.run_id).state
