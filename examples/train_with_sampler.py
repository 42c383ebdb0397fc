"""Your own PyTorch loop, mixed online by mixopt: ``MixtureSampler`` draws each batch by the weights
the service serves, and every segment's per-domain losses and tokens go back to it.

Build the demo corpus, start a server, create an online experiment and train against it::

    mixopt corpus build --out corpus/
    mixopt serve &
    export MIXOPT_TOKEN=$(mixopt token create --scope admin --name me | tail -n 1)
    ID=$(mixopt experiment create -f examples/specs/odm_demo.yaml | tail -n 1)
    python examples/train_with_sampler.py --experiment $ID --corpus corpus/ --steps 500

(``--url`` defaults to ``$MIXOPT_URL``, else http://127.0.0.1:8000.)

The model here is the proxy GPT, but any model and optimiser work the same way: only the
sampler and the ``OnlineMixture`` calls are mixopt's.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch.utils.data import DataLoader

from mixopt.client import MixoptClient, OnlineMixture
from proxy_trainer.config import ModelConfig
from proxy_trainer.corpus.format import Corpus
from proxy_trainer.model import GPT
from proxy_trainer.online import MixtureSampler

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--url", default=None, help="the server (default: $MIXOPT_URL)")
parser.add_argument("--token", default=None, help="a write token (default: $MIXOPT_TOKEN)")
parser.add_argument("--experiment", required=True, help="id of an online experiment")
parser.add_argument("--corpus", required=True, help="a corpus directory (mixopt corpus build)")
parser.add_argument("--name", default="main", help="name of this training run")
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--block-size", type=int, default=64)
args = parser.parse_args()

torch.manual_seed(0)
corpus = Corpus.open(args.corpus)
client = MixoptClient(args.url, args.token)
mixture = OnlineMixture.start(client, args.experiment, args.name, total_steps=args.steps)
domains = list(mixture.weights)  # the experiment's domains, in its order
sampler = MixtureSampler(corpus, args.block_size, weights=mixture.weights, domains=domains)
batches = iter(DataLoader(sampler, batch_size=args.batch_size))  # one stream: num_workers=0
# Fixed held-out batches, one set per domain: every domain is evaluated, whatever its weight.
held_out = {
    d: MixtureSampler(corpus, args.block_size, weights={d: 1}, split="val", seed=1).batch(32)
    for d in domains
}
model = GPT(ModelConfig(block_size=args.block_size, n_layer=2, n_head=2, n_embd=64))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)


@torch.no_grad()
def evaluate() -> dict[str, float]:
    losses = {}
    for d, (x, y, _) in held_out.items():
        logits, _ = model(x)
        losses[d] = float(F.cross_entropy(logits.transpose(1, 2), y))
    return losses


loss_sums, sequences = torch.zeros(len(domains)), torch.zeros(len(domains))
for step in range(1, args.steps + 1):
    x, y, domain = next(batches)
    logits, _ = model(x)
    per_sequence = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
    optimizer.zero_grad()
    torch.autograd.backward(per_sequence.mean())
    optimizer.step()
    loss_sums.index_add_(0, domain, per_sequence.detach())
    sequences.index_add_(0, domain, torch.ones_like(per_sequence))
    if mixture.due(step):  # the segment ended: report it, train on the answer
        train_losses = {d: float(loss_sums[i] / sequences[i]) for i, d in enumerate(domains)
                        if sequences[i] > 0}  # fmt: skip
        mixture.report(step, train_losses=train_losses, eval_losses=evaluate(),
                       tokens=sampler.take_tokens())  # fmt: skip
        sampler.set_weights(mixture.weights)
        loss_sums.zero_()
        sequences.zero_()
        print(f"step {step}: weights v{mixture.version} {mixture.weights}", flush=True)
final = evaluate()
mixture.complete({f"val_loss/{d}": loss for d, loss in final.items()})
print("final val losses:", final)
