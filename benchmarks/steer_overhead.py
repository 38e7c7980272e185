"""Tokens/s of greedy generation with the steering hook against without: same model, same
prompts, same number of tokens, one run.

    python benchmarks/steer_overhead.py [--model PATH] [--batch 1] [--tokens 48] [--rounds 20] [--threads 1]

A default-size TinyLM (4 blocks, width 128; random weights unless --model names a taskloc model
or a local HF folder) generates ``--tokens`` tokens for ``--batch`` prompts with no stop token, so
both arms produce exactly the same number of tokens. The steered arm adds gamma * v at block 2's
output (``taskloc.steering.inject.steering``), last position, every step. Arms alternate round
by round (so drift in machine load hits both) after one warm-up each; the median of the rounds'
tokens/s is printed per arm, with the ratio. The issue asks for an overhead under 3%.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from taskloc.models import ModelConfig, TinyLM, load_model
from taskloc.steering.inject import steering
from taskloc.tasks import VOCAB_SIZE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a taskloc model or a local HF folder (default: a random TinyLM)")
    ap.add_argument("--batch", type=int, default=1, help="prompts per generate call")
    ap.add_argument("--prompt-len", type=int, default=8, help="prompt tokens")
    ap.add_argument("--tokens", type=int, default=48, help="tokens generated per call")
    ap.add_argument("--rounds", type=int, default=20, help="timed calls per arm, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--layer", type=int, default=2, help="block whose output is steered")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model is None:
        model = TinyLM(ModelConfig(vocab_size=VOCAB_SIZE, n_layer=4, n_head=4, d_model=128, d_mlp=512, block_size=64)).eval()
    else:
        model = load_model(args.model, device="cpu").model.eval()
    tokens = min(args.tokens, (model.max_context or 10**9) - args.prompt_len)
    ids = torch.randint(2, min(model.vocab_size, 97), (args.batch, args.prompt_len))
    vector = torch.randn(model.d_model) * 0.01  # small: the tokens may change, their number does not

    def once(steered: bool) -> float:
        with steering(model, vector, 1.0, layer=args.layer) if steered else torch.no_grad():
            t0 = time.perf_counter()
            out = model.generate(ids, tokens, eos_id=None)
            seconds = time.perf_counter() - t0
        assert out.shape == (args.batch, tokens)
        return args.batch * tokens / seconds

    once(False), once(True)  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for steered in ((False, True) if r % 2 == 0 else (True, False)):
            rates[steered].append(once(steered))
    plain, steer = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"model: {'random TinyLM 4x128' if args.model is None else args.model}; batch {args.batch}, {tokens} tokens per call, "
          f"{args.rounds} rounds per arm, {args.threads} thread(s)")
    print(f"without hook: {plain:,.0f} tokens/s (median)")
    print(f"with hook:    {steer:,.0f} tokens/s (median)")
    print(f"ratio with/without: {steer / plain:.4f} (overhead {100 * (1 - steer / plain):+.2f}%)")


if __name__ == "__main__":
    main()
