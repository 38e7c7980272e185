"""Training throughput of TinyLM with hook sites present but unused, against the same model with
no hook sites, measured in one run (interleaved rounds so drift hits both alike).

    python benchmarks/train_throughput.py [--steps 30] [--rounds 5]

Prints tokens/s for each and the overhead of the sites; the target is under 3%.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from taskloc.models import CHAR_CODEC, ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE
from taskloc.tasks.mixture import DataConfig, TaskMixture
from taskloc.train import answer_loss


def make(sites: bool) -> tuple[TinyLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=VOCAB_SIZE, hook_sites=sites)).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def tokens_per_second(model: TinyLM, opt: torch.optim.Optimizer, batches: list, steps: int) -> float:
    tokens, start = 0, time.perf_counter()
    for i in range(steps):
        inputs, labels, mask = batches[i % len(batches)]
        loss = answer_loss(model, inputs, labels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = DataConfig()
    mixture = TaskMixture(data.load_tasks(), data.train_levels, seed=0)
    batches = [CHAR_CODEC.encode_batch([(e.prompt, e.target) for e in mixture.batch(s, 128)]) for s in range(8)]
    with_sites, without = make(True), make(False)
    tokens_per_second(*with_sites, batches, 5)  # warm-up
    tokens_per_second(*without, batches, 5)
    a, b = [], []
    for _ in range(args.rounds):
        a.append(tokens_per_second(*with_sites, batches, args.steps))
        b.append(tokens_per_second(*without, batches, args.steps))
    sites, plain = statistics.median(a), statistics.median(b)
    print(f"threads={torch.get_num_threads()} params={with_sites[0].num_params():,} batch=128")
    print(f"hook sites present, unused: {sites:10.0f} tokens/s (median of {args.rounds})")
    print(f"no hook sites (baseline):   {plain:10.0f} tokens/s")
    print(f"ratio sites/baseline: {sites / plain:.3f}  -> overhead {100 * (1 - sites / plain):+.1f}% (target < 3%)")


if __name__ == "__main__":
    main()
