"""The proxy model: shapes, causality, initialisation and that it can learn."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from proxy_trainer.config import ModelConfig, TrainConfig  # noqa: E402
from proxy_trainer.model import GPT  # noqa: E402

CONFIG = ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_forward_shapes_and_loss() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    idx = torch.randint(0, 256, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 256)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss is not None
    # At initialisation the prediction is close to uniform over the 256 bytes.
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5


def test_rejects_sequences_longer_than_the_block() -> None:
    with pytest.raises(ValueError, match="block_size"):
        GPT(CONFIG)(torch.zeros(1, 17, dtype=torch.long))


def test_causal_masking() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_weight_tying_and_parameter_count() -> None:
    model = GPT(CONFIG)
    assert model.head.weight is model.wte.weight
    d, layers = CONFIG.n_embd, CONFIG.n_layer
    per_block = 12 * d * d + 13 * d  # qkv, proj, fc, proj (weights + biases) and two norms
    expected = 256 * d + CONFIG.block_size * d + layers * per_block + 2 * d
    assert model.num_parameters() == expected


def test_optimizer_decays_only_linear_matrices() -> None:
    model = GPT(CONFIG)
    optimizer = model.configure_optimizer(TrainConfig(weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert any(p is model.wte.weight for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_same_seed_same_initialisation() -> None:
    torch.manual_seed(3)
    a = GPT(CONFIG)
    torch.manual_seed(3)
    b = GPT(CONFIG)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    optimizer = model.configure_optimizer(TrainConfig(learning_rate=3e-3, weight_decay=0.0))
    data = torch.randint(0, 256, (4, 17))
    x, y = data[:, :-1], data[:, 1:]
    for _ in range(300):
        _, loss = model(x, y)
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.5:
            break
    assert loss.item() < 0.5
