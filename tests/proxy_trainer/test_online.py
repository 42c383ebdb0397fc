"""The online sampler and the online proxy trainer, against a real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import chisquare

from mixopt.client import MixoptClient, OnlineMixture
from mixopt.settings import Settings
from proxy_trainer.config import ModelConfig, ProxyConfig, TrainConfig
from proxy_trainer.corpus.format import Corpus
from proxy_trainer.online import MixtureSampler, OnlineTrainer, checkpointed_run, train_online
from service.main import create_app
from service.store import SqlStore
from service.store.sql import make_engine
from tests.proxy_trainer.corpus_fixture import write_corpus
from tests.servers import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "examples" / "specs"

DOMAINS = ["prose", "code", "digits"]
BLOCK = 32


def _documents(domain: str, count: int = 20, length: int = 400) -> list[bytes]:
    rng = np.random.default_rng(zlib.crc32(domain.encode()))
    if domain == "digits":
        alphabet = b"0123456789+=\n"
    elif domain == "code":
        alphabet = b"def return (x): if else\n    "
    else:
        alphabet = b"the quick brown fox jumps over lazy dog. \n"
    return [bytes(rng.choice(list(alphabet), size=length)) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("corpus"), {d: _documents(d) for d in DOMAINS})


def _proportions_match(domains: torch.Tensor, weights: dict[str, float]) -> float:
    counts = np.bincount(domains.numpy(), minlength=len(DOMAINS))
    expected = np.array([weights[d] for d in DOMAINS]) * counts.sum()
    positive = expected > 0
    assert counts[~positive].sum() == 0
    return float(chisquare(counts[positive], expected[positive]).pvalue)


def test_draws_follow_the_weights(corpus: Corpus) -> None:
    weights = {"prose": 0.6, "code": 0.3, "digits": 0.1}
    sampler = MixtureSampler(corpus, BLOCK, weights=weights, seed=1)
    _, _, domains = sampler.batch(5000)
    assert _proportions_match(domains, weights) > 0.001


def test_a_zero_weight_domain_is_never_drawn(corpus: Corpus) -> None:
    sampler = MixtureSampler(corpus, BLOCK, weights={"prose": 1, "code": 0, "digits": 3}, seed=2)
    _, _, domains = sampler.batch(5000)
    assert DOMAINS.index("code") not in set(domains.tolist())
    assert sampler.tokens_seen()["code"] == 0


def test_set_weights_changes_the_proportions_from_the_next_draw(corpus: Corpus) -> None:
    sampler = MixtureSampler(corpus, BLOCK, seed=3)
    _, _, before = sampler.batch(3000)
    assert _proportions_match(before, dict.fromkeys(DOMAINS, 1 / 3)) > 0.001
    changed = {"prose": 0.1, "code": 0.1, "digits": 0.8}
    sampler.set_weights(changed)
    _, _, after = sampler.batch(3000)
    assert _proportions_match(after, changed) > 0.001


def test_sequences_are_consecutive_windows_of_their_domain(corpus: Corpus) -> None:
    sampler = MixtureSampler(corpus, BLOCK, seed=4)
    for x, y, index in [next(iter(sampler)) for _ in range(50)]:
        assert x.shape == y.shape == (BLOCK,) and x.dtype == torch.int64
        assert torch.equal(x[1:], y[:-1])
        haystack = bytes(corpus.train(DOMAINS[index]).tokens)
        assert bytes(x.tolist()) + bytes(y[-1:].tolist()) in haystack


def test_tokens_are_counted_per_domain_exactly(corpus: Corpus) -> None:
    sampler = MixtureSampler(corpus, BLOCK, weights={"prose": 1, "code": 1, "digits": 0}, seed=5)
    _, _, first = sampler.batch(100)
    segment = sampler.take_tokens()
    assert segment == {d: int((first == i).sum()) * BLOCK for i, d in enumerate(DOMAINS)}
    assert sum(segment.values()) == 100 * BLOCK
    _, _, second = sampler.batch(40)
    assert sampler.take_tokens() == {
        d: int((second == i).sum()) * BLOCK for i, d in enumerate(DOMAINS)
    }
    assert sampler.take_tokens() == dict.fromkeys(DOMAINS, 0)
    both = torch.cat([first, second])
    assert sampler.tokens_seen() == {
        d: int((both == i).sum()) * BLOCK for i, d in enumerate(DOMAINS)
    }


def test_a_restored_sampler_continues_the_identical_stream(corpus: Corpus, tmp_path: Path) -> None:
    sampler = MixtureSampler(corpus, BLOCK, seed=6)
    sampler.batch(30)
    sampler.set_weights({"prose": 0.5, "code": 0.0, "digits": 0.5})
    sampler.batch(7)
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    state = torch.load(tmp_path / "sampler.pt", weights_only=True)  # as a checkpoint holds it
    expected = sampler.batch(50)

    restored = MixtureSampler(corpus, BLOCK, seed=999)  # the seed is replaced by the state
    restored.load_state_dict(state)
    assert restored.weights == {"prose": 0.5, "code": 0.0, "digits": 0.5}
    actual = restored.batch(50)
    for a, b in zip(actual, expected, strict=True):
        assert torch.equal(a, b)
    assert restored.tokens_seen() == sampler.tokens_seen()
    assert restored.take_tokens() == sampler.take_tokens()


def test_iteration_and_batch_give_the_same_draws(corpus: Corpus) -> None:
    loader = torch.utils.data.DataLoader(MixtureSampler(corpus, BLOCK, seed=7), batch_size=8)
    x, y, domains = next(iter(loader))
    bx, by, bdomains = MixtureSampler(corpus, BLOCK, seed=7).batch(8)
    assert torch.equal(x, bx) and torch.equal(y, by) and torch.equal(domains, bdomains)


def test_loader_workers_draw_streams_of_their_own(corpus: Corpus) -> None:
    loader = torch.utils.data.DataLoader(
        MixtureSampler(corpus, BLOCK, seed=8), batch_size=4, num_workers=2
    )
    batches = iter(loader)
    first, second = next(batches), next(batches)  # one from each worker
    assert not torch.equal(first[0], second[0])


def test_the_last_domain_at_weight_zero_is_never_drawn(corpus: Corpus) -> None:
    sampler = MixtureSampler(corpus, BLOCK, weights={"prose": 0.1, "code": 0.2}, seed=9)
    assert sampler.weights["digits"] == 0
    _, _, domains = sampler.batch(5000)
    assert _proportions_match(domains, {"prose": 1 / 3, "code": 2 / 3, "digits": 0}) > 0.001


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"prose": 1, "web": 1}, "unknown domain 'web'"),
        ({"prose": 1, "code": -0.5}, "domain 'code' must be finite and >= 0"),
        ({"prose": float("nan")}, "domain 'prose' must be finite"),
        ({"prose": float("inf")}, "domain 'prose' must be finite"),
        ({"prose": 0, "code": 0}, "sum to more than 0"),
    ],
)
def test_invalid_weights_are_refused_naming_the_domain(
    corpus: Corpus, weights: dict[str, float], message: str
) -> None:
    sampler = MixtureSampler(corpus, BLOCK)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sampler.set_weights(weights)
    assert sampler.weights == dict.fromkeys(DOMAINS, pytest.approx(1 / 3))


def test_a_domain_too_short_for_one_sequence_cannot_get_weight(tmp_path: Path) -> None:
    small = write_corpus(tmp_path / "c", {"long": _documents("prose"), "tiny": [b"ab"] * 5})
    sampler = MixtureSampler(small, BLOCK, weights={"long": 1, "tiny": 0})
    with pytest.raises(ValueError, match="domain 'tiny' has 8 train tokens"):
        sampler.set_weights({"long": 1, "tiny": 1})


# --- against a real server ----------------------------------------------------------------------


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def client(self) -> MixoptClient:
        return MixoptClient(self.url, self.token, backoff_base=0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    """One SQLite-backed server for the module (each test makes its own experiments)."""
    path = tmp_path_factory.mktemp("db") / "mixopt.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    store = SqlStore(engine)
    token = store.create_token("admin", "admin", None)[1]
    with ThreadedServer(create_app(Settings(token_cache_seconds=5), store)) as running:
        yield Server(running.url, token)
    store.close()
    engine.dispose()


def _online_experiment(client: MixoptClient, method: str, config: dict[str, Any]) -> str:
    return client.create_experiment(
        {
            "name": f"{method}-{time.monotonic_ns()}",
            "mode": "online",
            "method": method,
            "domains": [{"name": d} for d in DOMAINS],
            "config": {"seed": 1, **config},
        }
    ).id


@pytest.mark.parametrize("spec", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_specs_are_accepted_by_the_server(server: Server, spec: Path) -> None:
    body = yaml.safe_load(spec.read_text())
    body["name"] = f"{body['name']}-{time.monotonic_ns()}"  # names are unique among active ones
    with server.client() as client:
        experiment = client.create_experiment(body)
    assert experiment.method == spec.stem.removesuffix("_demo")
    assert len(experiment.domains) == 7


def test_the_example_specs_cover_each_demo_method() -> None:
    assert {p.name for p in SPECS.glob("*.yaml")} >= {
        "regmix_demo.yaml",
        "aioli_demo.yaml",
        "odm_demo.yaml",
    }


def test_the_example_script_trains_against_the_server(server: Server, corpus: Corpus) -> None:
    with server.client() as client:
        experiment = _online_experiment(client, "odm", {"segment_steps": 5, "warmup_steps": 5})
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "train_with_sampler.py"),
                "--url",
                server.url,
                "--token",
                server.token,
                "--experiment",
                experiment,
                "--corpus",
                str(corpus.root),
                "--steps",
                "20",
                "--batch-size",
                "4",
                "--block-size",
                str(BLOCK),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            # One thread: the two cores are shared, and torch's thread pool would fight for them.
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 60
        assert "final val losses" in done.stdout
        (run,) = client.list_runs(experiment).items
        assert run.status == "completed"
        assert set(run.metrics) == {f"val_loss/{d}" for d in DOMAINS}
        history = list(client.iter_weights_history(run.id))
        assert len(history) == 5  # the first weights and one version per segment of 5 steps


# --- train_online -------------------------------------------------------------------------------

PROXY = ProxyConfig(
    ModelConfig(block_size=BLOCK, n_layer=1, n_head=2, n_embd=32),
    TrainConfig(steps=40, batch_size=4, warmup_steps=2, eval_batches=1, threads=1),
)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """The trainer runs on one thread (two shared cores); the rest of the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _versions(client: MixoptClient, run_id: str) -> list[tuple[int, bool]]:
    return [(v.step, v.superseded) for v in client.iter_weights_history(run_id)]


def test_a_stratified_run_reports_every_segment_and_completes(
    server: Server, corpus: Corpus
) -> None:
    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": 10})
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=40)
        result = train_online(corpus, mixture, PROXY)
        assert [step for step, _ in result.weights_history] == [0, 10, 20, 30, 40]
        assert all(w == dict.fromkeys(DOMAINS, 1 / 3) for _, w in result.weights_history)
        assert _versions(client, mixture.run_id) == [(s, False) for s in (0, 10, 20, 30, 40)]
        assert result.steps == 40 and not result.stopped and result.resumed_from is None
        assert sum(result.tokens.values()) == 40 * 4 * BLOCK
        assert set(result.val_losses) == set(DOMAINS)
        assert all(0 < loss < 6 for loss in result.val_losses.values())
        run = client.get_run(mixture.run_id)
        assert run.status == "completed"
        assert (
            run.metrics
            == result.metrics
            == {
                **{f"val_loss/{d}": result.val_losses[d] for d in DOMAINS},
                "eval_loss/mean": pytest.approx(sum(result.val_losses.values()) / 3),
            }
        )
        curve = list(client.iter_metrics(mixture.run_id, name="val_loss/code"))
        assert [p.step for p in curve] == [10, 20, 30, 40]
        assert curve[-1].value == result.val_losses["code"]
        assert len(list(client.iter_metrics(mixture.run_id, name="train_loss/prose"))) == 4


def test_a_zero_weight_domain_gets_no_tokens_but_eval_losses(
    server: Server, corpus: Corpus
) -> None:
    weights = {"prose": 0.5, "code": 0.5, "digits": 0.0}
    with server.client() as client:
        experiment = _online_experiment(client, "fixed", {"weights": weights, "segment_steps": 8})
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=20)
        result = train_online(corpus, mixture, PROXY.with_train(steps=20))
        assert [step for step, _ in result.weights_history] == [0, 8, 16, 20]
        assert result.tokens["digits"] == 0
        evals = list(client.iter_metrics(mixture.run_id, name="val_loss/digits"))
        assert [p.step for p in evals] == [8, 16, 20]
        assert list(client.iter_metrics(mixture.run_id, name="train_loss/digits")) == []
        assert set(result.val_losses) == set(DOMAINS)


def test_a_mixer_that_leaves_the_segments_to_the_trainer_hears_at_the_end(
    server: Server, corpus: Corpus
) -> None:
    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": None})
        mixture = OnlineMixture.start(client, experiment, "main")  # no total_steps either
        result = train_online(corpus, mixture, PROXY.with_train(steps=12), report_metrics=False)
        assert [step for step, _ in result.weights_history] == [0, 12]
        assert client.get_run(mixture.run_id).status == "completed"
        assert list(client.iter_metrics(mixture.run_id)) == []


def test_aioli_adapts_the_weights_from_the_eval_losses(server: Server, corpus: Corpus) -> None:
    # A round: 3 domains x 1 sweep x 2 perturbation steps, then 4 steps on the learnt mixture.
    config = {"lp_rounds": 1, "lp_steps": 2, "segment_steps": 4, "eta": 1.0}
    with server.client() as client:
        experiment = _online_experiment(client, "aioli", config)
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=30)
        result = train_online(corpus, mixture, PROXY.with_train(steps=30))
        steps = [step for step, _ in result.weights_history]
        assert steps == [0, 2, 4, 6, 10, 12, 14, 16, 20, 22, 24, 26, 30]
        distinct = {tuple(sorted(w.items())) for _, w in result.weights_history}
        assert len(distinct) >= 5  # three perturbations and learnt mixtures
        exploit = [w for step, w in result.weights_history if step in (6, 16, 26)]
        assert exploit[-1] != dict.fromkeys(DOMAINS, pytest.approx(1 / 3))
        assert client.get_run(mixture.run_id).status == "completed"


def test_a_fresh_start_of_a_run_that_went_on_without_a_checkpoint_rewinds_it(
    server: Server, corpus: Corpus
) -> None:
    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": 10})
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=20)
        mixture.report(10, train_losses=dict.fromkeys(DOMAINS, 3.0))  # then it crashed
        result = train_online(corpus, mixture, PROXY.with_train(steps=20))
        assert [step for step, _ in result.weights_history] == [0, 10, 20]
        assert _versions(client, mixture.run_id) == [
            (0, False), (10, True), (0, False), (10, False), (20, False)
        ]  # fmt: skip
        assert client.get_run(mixture.run_id).status == "completed"


def _stop_after(steps: int, then: Callable[[int], None] | None = None) -> Callable[[], bool]:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        if then is not None:
            then(calls)
        return calls >= steps

    return should_stop


def test_a_run_resumed_from_its_checkpoint_ends_as_the_straight_run(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": 10})
        straight = train_online(
            corpus, OnlineMixture.start(client, experiment, "straight", total_steps=40), PROXY
        )

        path = tmp_path / "online.pt"
        first = OnlineMixture.start(client, experiment, "restarted", total_steps=40)
        stopped = train_online(corpus, first, PROXY, checkpoint=path, should_stop=_stop_after(25))
        assert stopped.stopped and stopped.steps == 25
        assert stopped.val_losses == stopped.metrics == {}
        assert client.get_run(first.run_id).status == "running"

        run_id = checkpointed_run(path)
        assert run_id == first.run_id
        again = OnlineMixture(client, run_id, total_steps=40)
        resumed = OnlineTrainer(corpus, again, PROXY, checkpoint=path)
        assert resumed.trainer.step == 20 and resumed.reported_step == 20
        result = resumed.run()
        assert result.resumed_from == 20 and result.steps == 40
        # resume(20) added a version at step 20; nothing was superseded (no feedback past 20).
        assert _versions(client, run_id) == [
            (0, False), (10, False), (20, False), (20, False), (30, False), (40, False)
        ]  # fmt: skip
        assert client.get_run(run_id).status == "completed"
        assert result.val_losses == straight.val_losses
        assert result.tokens == straight.tokens
        assert [s for s, _ in result.weights_history] == [0, 10, 20, 30, 40]

        # A finished run restarted again trains nothing and completes with the same metrics.
        final = train_online(
            corpus, OnlineMixture(client, run_id, total_steps=40), PROXY, checkpoint=path
        )
        assert final.val_losses == straight.val_losses and final.steps == 40


def test_a_restart_from_an_older_checkpoint_supersedes_the_later_feedback(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    path, older = tmp_path / "online.pt", tmp_path / "online-10.pt"

    def keep_step_10(calls: int) -> None:
        if calls == 10:
            shutil.copy(path, older)

    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": 10})
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=40)
        train_online(
            corpus, mixture, PROXY, checkpoint=path, should_stop=_stop_after(25, keep_step_10)
        )
        shutil.copy(older, path)  # the checkpoint of step 20 was lost
        result = train_online(
            corpus, OnlineMixture(client, mixture.run_id, total_steps=40), PROXY, checkpoint=path
        )
        assert result.resumed_from == 10 and result.steps == 40
        assert _versions(client, mixture.run_id) == [
            (0, False), (10, False), (20, True), (10, False), (20, False), (30, False), (40, False)
        ]  # fmt: skip


def test_a_checkpoint_of_another_run_is_refused(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    path = tmp_path / "online.pt"
    with server.client() as client:
        experiment = _online_experiment(client, "stratified", {"segment_steps": 10})
        first = OnlineMixture.start(client, experiment, "first", total_steps=40)
        train_online(corpus, first, PROXY, checkpoint=path, should_stop=_stop_after(12))
        other = OnlineMixture.start(client, experiment, "other", total_steps=40)
        with pytest.raises(ValueError, match=f"belongs to online run {first.run_id}"):
            OnlineTrainer(corpus, other, PROXY, checkpoint=path)
        with pytest.raises(ValueError, match=r"differs in model\.n_embd"):
            OnlineTrainer(
                corpus,
                OnlineMixture(client, first.run_id, total_steps=40),
                ProxyConfig(replace(PROXY.model, n_embd=16), PROXY.train),
                checkpoint=path,
            )


def test_an_interrupted_aioli_run_resumes_and_completes(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    config = {"lp_rounds": 1, "lp_steps": 2, "segment_steps": 4}
    path = tmp_path / "online.pt"
    with server.client() as client:
        experiment = _online_experiment(client, "aioli", config)
        mixture = OnlineMixture.start(client, experiment, "main", total_steps=30)
        stopped = train_online(
            corpus, mixture, PROXY.with_train(steps=30), checkpoint=path,
            should_stop=_stop_after(13),
        )  # fmt: skip
        assert stopped.steps == 13
        result = train_online(
            corpus,
            OnlineMixture(client, mixture.run_id, total_steps=30),
            PROXY.with_train(steps=30),
            checkpoint=path,
        )
        assert result.resumed_from == 12 and result.steps == 30
        assert [s for s, _ in result.weights_history][-3:] == [24, 26, 30]
        assert client.get_run(mixture.run_id).status == "completed"
