"""Batches and the training loop: mixtures, QuaDMix selection, determinism, resume, stop."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy.stats import chisquare  # noqa: E402

from proxy_trainer.batches import MixtureBatches, fixed_eval_batches  # noqa: E402
from proxy_trainer.config import ModelConfig, ProxyConfig, TrainConfig  # noqa: E402
from proxy_trainer.corpus.format import Corpus  # noqa: E402
from proxy_trainer.train import Trainer, resolve_device, train  # noqa: E402
from tests.proxy_trainer.corpus_fixture import synthetic_domains, write_corpus  # noqa: E402

PROXY = ProxyConfig(
    ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=32),
    TrainConfig(
        steps=12,
        batch_size=4,
        warmup_steps=2,
        eval_every=5,
        eval_batches=1,
        log_every=2,
        threads=1,
    ),
)
WEIGHTS = {"repeat": 0.4, "arithmetic": 0.3, "noise": 0.1, "words": 0.2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("corpus"), synthetic_domains(documents=10))


def test_domain_proportions_follow_the_weights(corpus: Corpus) -> None:
    weights = {"repeat": 0.5, "arithmetic": 0.3, "words": 0.2, "noise": 0.0}
    batches = MixtureBatches(corpus, weights, block_size=8, batch_size=100, seed=1)
    drawn = np.concatenate([batches.next()[2] for _ in range(40)])
    counts = np.bincount(drawn, minlength=len(corpus.domains))
    noise = corpus.domains.index("noise")
    assert counts[noise] == 0
    assert batches.tokens_seen["noise"] == 0
    used = [i for i, d in enumerate(corpus.domains) if weights[d] > 0]
    expected = np.array([weights[corpus.domains[i]] for i in used]) * len(drawn)
    assert chisquare(counts[used], expected).pvalue > 0.001
    assert sum(batches.tokens_seen.values()) == len(drawn) * 8


def test_batches_are_windows_of_the_drawn_domain(corpus: Corpus) -> None:
    batches = MixtureBatches(corpus, {"arithmetic": 1.0}, block_size=8, batch_size=5, seed=0)
    x, y, domains = batches.next()
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert set(domains.tolist()) == {corpus.domains.index("arithmetic")}
    allowed = set(b"0123456789+= \n")
    assert set(x.flatten().tolist()) <= allowed


def test_batches_resume_from_state(corpus: Corpus) -> None:
    a = MixtureBatches(corpus, WEIGHTS, block_size=8, batch_size=4, seed=5)
    a.next()
    state = a.state_dict()
    expected = a.next()
    b = MixtureBatches(corpus, WEIGHTS, block_size=8, batch_size=4, seed=99)
    b.load_state_dict(state)
    got = b.next()
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[2], got[2])
    assert a.tokens_seen == b.tokens_seen


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"repeat": 1.0, "poetry": 1.0}, "unknown domain 'poetry'"),
        ({"repeat": -1.0, "words": 2.0}, "domain 'repeat' must be finite and >= 0"),
        ({"repeat": 0.0}, "sum to 0"),
    ],
)
def test_invalid_weights_are_clear_errors(
    corpus: Corpus, weights: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MixtureBatches(corpus, weights, block_size=8, batch_size=4, seed=0)
    with pytest.raises(ValueError, match=message):
        train(corpus, weights, PROXY)


def test_quadmix_threshold_selects_the_best_documents(tmp_path: Path) -> None:
    # Document i of each domain is the byte i repeated; its quality is i (higher is better).
    documents = {d: [bytes([65 + i]) * 100 for i in range(20)] for d in ("a", "b")}
    quality = {d: [[float(i), float(-i)] for i in range(20)] for d in documents}
    corpus = write_corpus(tmp_path, documents, val_fraction=0.0, quality=quality)
    params = {
        "merge": {d: {"compression": 1.0, "printable": 0.0} for d in documents},
        "threshold": {"a": 0.1, "b": 1.0},  # a: the top 10 % of its tokens; b: everything
        "steepness": {"a": 0.0, "b": 0.0},
        "exponent": {"a": 0.0, "b": 0.0},
    }
    batches = MixtureBatches(
        corpus, {"a": 1.0, "b": 1.0}, block_size=4, batch_size=500, seed=0, quadmix_params=params
    )
    x, _, domains = batches.next()
    first = x[:, 0].numpy() - 65
    in_a = domains == corpus.domains.index("a")
    # r̄ = share of tokens strictly above: docs 19, 18 have r̄ 0 and 0.05 <= 0.1; doc 17 has 0.1.
    assert set(first[in_a].tolist()) <= {17, 18, 19}
    assert len(set(first[~in_a].tolist())) > 15
    # Without QuaDMix params every document of a is drawn (uniform by tokens).
    uniform = MixtureBatches(corpus, {"a": 1.0}, block_size=4, batch_size=500, seed=0)
    assert len(set((uniform.next()[0][:, 0].numpy() - 65).tolist())) > 15


def test_quadmix_params_must_match_the_corpus(corpus: Corpus) -> None:
    params = {
        "merge": {d: {"toxicity": 1.0} for d in corpus.domains},
        **{k: dict.fromkeys(corpus.domains, 0.5) for k in ("threshold", "steepness", "exponent")},
    }
    with pytest.raises(ValueError, match="quality scores the corpus lacks: toxicity"):
        MixtureBatches(corpus, WEIGHTS, 8, 4, 0, quadmix_params=params)


def test_fixed_eval_batches_are_fixed_and_held_out(corpus: Corpus) -> None:
    first = fixed_eval_batches(corpus, "words", 16, 4, 3, seed=0)
    again = fixed_eval_batches(corpus, "words", 16, 4, 3, seed=0)
    assert len(first) == 3
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert x.shape == (4, 16) and torch.equal(x, x2) and torch.equal(y, y2)
    val = bytes(corpus.val("words").tokens)
    assert bytes(first[0][0][0].tolist()) in val


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_train_reports_every_domain_and_is_deterministic(corpus: Corpus) -> None:
    points: list[tuple[str, int, float]] = []
    result = train(corpus, WEIGHTS, PROXY, report=points.extend)
    again = train(corpus, WEIGHTS, PROXY)
    assert result.curve == again.curve  # same seed, same config: the identical curve
    assert [s for s, _ in result.curve] == list(range(1, 13))
    assert result.steps == 12 and not result.stopped
    for domain in corpus.domains:
        assert {s for n, s, _ in points if n == f"val_loss/{domain}"} == {5, 10, 12}
        assert result.metrics[f"val_loss/{domain}"] == again.metrics[f"val_loss/{domain}"]
    assert {s for n, s, _ in points if n == "train_loss"} == {2, 4, 6, 8, 10, 12}
    assert {s for n, s, _ in points if n == "lr"} == {2, 4, 6, 8, 10, 12}
    assert result.metrics["tokens/noise"] + result.metrics["tokens/repeat"] > 0
    assert sum(result.metrics[f"tokens/{d}"] for d in corpus.domains) == 12 * 4 * 16
    assert result.metrics["tokens_per_second"] > 0 and result.parameters > 0
    other_seed = train(corpus, WEIGHTS, PROXY.with_train(seed=1))
    assert other_seed.curve != result.curve


def test_resume_after_checkpoint_gives_the_same_curve(corpus: Corpus, tmp_path: Path) -> None:
    full = train(corpus, WEIGHTS, PROXY)
    checkpoint = tmp_path / "run.pt"
    calls = 0

    def stop_after_seven() -> bool:
        nonlocal calls
        calls += 1
        return calls == 7

    stopped = train(corpus, WEIGHTS, PROXY, checkpoint=checkpoint, should_stop=stop_after_seven)
    assert stopped.stopped and stopped.steps == 7 and checkpoint.exists()
    assert "val_loss/words" not in stopped.metrics
    assert Trainer.load(checkpoint, corpus).step == 7
    resumed = train(corpus, WEIGHTS, PROXY, checkpoint=checkpoint)
    assert not resumed.stopped and resumed.steps == 12
    assert resumed.curve == full.curve  # bit for bit
    for domain in corpus.domains:
        key = f"val_loss/{domain}"
        assert resumed.metrics[key] == full.metrics[key]
    assert resumed.metrics["tokens/words"] == full.metrics["tokens/words"]


def test_periodic_checkpoints_and_a_checkpoint_of_another_run(
    corpus: Corpus, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "run.pt"
    proxy = PROXY.with_train(checkpoint_every=4)
    result = train(corpus, WEIGHTS, proxy, checkpoint=checkpoint, should_stop=lambda: False)
    assert Trainer.load(checkpoint, corpus).step == 12
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary behind
    # A finished run's checkpoint: the call returns its result without training again.
    again = train(corpus, WEIGHTS, proxy, checkpoint=checkpoint)
    assert again.curve == result.curve
    with pytest.raises(ValueError, match=r"differs in train\.learning_rate, weights"):
        train(corpus, {"words": 1.0}, proxy.with_train(learning_rate=1e-3), checkpoint=checkpoint)


def test_trainer_step_and_evaluate(corpus: Corpus) -> None:
    trainer = Trainer(corpus, PROXY)
    x = torch.randint(0, 256, (4, 16))
    loss = trainer.train_step(x, x)
    assert trainer.step == 1 and loss > 0
    losses = trainer.evaluate(["words", "noise"])
    assert set(losses) == {"words", "noise"}
    assert trainer.model.training  # evaluate leaves the model in training mode
    with pytest.raises(ValueError, match="without weights"):
        trainer.next_batch()


def test_learning_rate_schedule(corpus: Corpus) -> None:
    proxy = PROXY.with_train(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1)
    trainer = Trainer(corpus, proxy)
    rates = [trainer.lr_at(s) for s in range(100)]
    assert rates[0] < rates[9] < rates[10] == pytest.approx(1e-3)
    assert rates[99] == pytest.approx(1e-4)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
