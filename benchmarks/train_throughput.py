"""Training throughput of TinyLM against the GPT a user would otherwise write, in one run.

Contenders, all at TinyLM's default size (4 layers, 4 heads, width 128, MLP 512, 64 tokens),
batch 64, AdamW, full next-token loss on the same random token batches:

* ``gpt``               a plain nanoGPT-style GPT written below (learned positions, SDPA causal
                        attention, tied unembedding): the baseline;
* ``tinylm-rope``       TinyLM with rotary positions (the default), hook sites present, unused;
* ``tinylm-learned``    TinyLM with learned absolute positions;
* ``tinylm-rope-bare``  TinyLM with rotary positions and no hook sites (prices the sites).

Rounds are interleaved (every contender runs once per round, the order rotating) so machine drift
hits all alike; a ratio is the median over rounds of the two contenders' rates in the same round.

    python benchmarks/train_throughput.py [--steps 20] [--rounds 7] [--device cpu] [--threads N]

Targets: tinylm-rope / gpt >= 0.95; sites overhead (tinylm-rope vs tinylm-rope-bare) < 3%.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE

N_LAYER, N_HEAD, D_MODEL, BLOCK, BATCH = 4, 4, 128, 64, 64


class PlainBlock(nn.Module):
    """nanoGPT's block: pre-norm, fused qkv projection, SDPA causal attention, GELU MLP (4x)."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.h = nn.ModuleList(PlainBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def tinylm(positional: str, sites: bool = True) -> Callable[[], nn.Module]:
    cfg = ModelConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, d_model=D_MODEL,
                      d_mlp=4 * D_MODEL, positional=positional, hook_sites=sites)  # fmt: skip
    return lambda: TinyLM(cfg)


CONTENDERS: dict[str, Callable[[], nn.Module]] = {
    "gpt": lambda: PlainGPT(VOCAB_SIZE, BLOCK, N_LAYER, N_HEAD, D_MODEL),
    "tinylm-rope": tinylm("rope"),
    "tinylm-learned": tinylm("learned"),
    "tinylm-rope-bare": tinylm("rope", sites=False),
}


class Trainer:
    def __init__(self, build: Callable[[], nn.Module], device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build().to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def tokens_per_second(self, batches: list[torch.Tensor], steps: int) -> float:
        sync = torch.cuda.synchronize if batches[0].is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        for i in range(steps):
            seq = batches[i % len(batches)]  # (B, T + 1)
            inputs, targets = seq[:, :-1], seq[:, 1:]
            logits = self.model(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync()
        return steps * batches[0].shape[0] * (batches[0].shape[1] - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per contender per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB_SIZE, (BATCH, BLOCK + 1), generator=gen).to(device) for _ in range(8)]
    trainers = {name: Trainer(build, device) for name, build in CONTENDERS.items()}
    for trainer in trainers.values():
        trainer.tokens_per_second(batches, 3)  # warm-up: allocator, kernels, optimizer state
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            rates[name].append(trainers[name].tokens_per_second(batches, args.steps))
    median = {name: statistics.median(r) for name, r in rates.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of a's rate over b's in the same round: robust to load drifting."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    print(f"device={device} threads={torch.get_num_threads()} batch={BATCH} tokens={BLOCK} "
          f"rounds={args.rounds} steps/round={args.steps}")  # fmt: skip
    for name, trainer in trainers.items():
        params = sum(p.numel() for p in trainer.model.parameters())
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        print(f"{name:18s} {median[name]:10.0f} tokens/s (range {spread}), {params:,} params")
    for name in names[1:]:
        print(f"ratio {name}/gpt: {ratio(name, 'gpt'):.3f}" + (" (target >= 0.95)" if name == "tinylm-rope" else ""))
    overhead = 1 - ratio("tinylm-rope", "tinylm-rope-bare")
    print(f"hook sites overhead (tinylm-rope vs tinylm-rope-bare): {100 * overhead:+.1f}% (target < 3%)")


if __name__ == "__main__":
    main()
