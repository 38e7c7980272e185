"""What running-statistics capture at every layer costs: forward passes with it against plain
forward passes, same model and same inputs, in one run; and peak memory as the prompts grow 10x.

    python benchmarks/capture_overhead.py [--batches 8] [--batch 32] [--rounds 5] [--threads 1]

Models: a default-size TinyLM (4 blocks, width 128, MLP 512, 64 tokens) and a tiny Hugging Face
Llama of the same shape (built from a config, wrapped by taskloc.hf.HFModel). Inputs: right-padded
random batches (``capture_memory._batches``), the padding mask set on the reduction as a study does.

Modes, each hooking ``blocks.*.hook_resid_post`` (every layer):
  plain     no hook attached (the model's own arithmetic)
  moments   ``RunningMoments`` over every real token (per-dimension count, mean, M2 in float64)
  last      ``taskloc activations``' reducer at the last prompt token only (every C1 metric per
            prompt, moments of the extreme levels)
  profile   the same reducer with all tokens too (every C1 metric of every token: a sort per token)

Time is process CPU time (one thread by default, so other jobs on other cores do not count); each
batch runs in every mode back to back, ``rounds`` times, and its fastest time per mode is kept (on a
shared machine other processes only ever add time); printed: the sums and their ratio to plain. The memory part runs
each size in a fresh process with capture_memory's VmHWM method (peak RSS over the RSS after a
warm-up pass), under capture_memory's fixed-mmap-threshold allocator so RSS tracks live tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from capture_memory import ALLOCATORS, _batches, _status_kb
from taskloc.activations.profile import SiteProfile, _Batch, flush
from taskloc.activations.reducers import RunningMoments
from taskloc.hooks import capture, resolve_sites
from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE

SITES = ["blocks.*.hook_resid_post"]
MODES = ("plain", "moments", "last", "profile")
MEMORY_ALLOCATOR = "mmap threshold 64 KiB"


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "tinylm":
        return TinyLM(ModelConfig(vocab_size=VOCAB_SIZE)).eval()
    import transformers

    from taskloc.hf import HFModel

    cfg = transformers.LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=512, max_position_embeddings=64)
    return HFModel(transformers.LlamaForCausalLM(cfg).eval(), kind="causal-lm")


def _reducer(mode: str, n_prompts: int, batch: _Batch):
    if mode == "moments":
        return RunningMoments
    return lambda: SiteProfile(batch, n_prompts, "taskloc", all_tokens=mode == "profile")


def _forward(model, red, mode: str, ids: torch.Tensor, mask: torch.Tensor, sites: list[str], batch: _Batch,
             offset: int) -> None:
    """One pass as `taskloc activations` makes it: mask set, forward, the profile's metrics flushed."""
    if red is not None:
        red.mask = mask
        batch.index = torch.arange(offset, offset + ids.shape[0])  # where this batch's prompts are stored
    model(ids)
    if mode in ("last", "profile"):
        flush([red[s] for s in sites])


@torch.no_grad()
def run_mode(model, mode: str, batches, sites: list[str]) -> float:
    """CPU seconds for one pass over ``batches`` in ``mode`` (hooks attached once, as a study does)."""
    batch = _Batch(extreme=0)  # every batch feeds the level moments: the most work the reducer does
    offsets = [0]
    for ids, _ in batches:
        offsets.append(offsets[-1] + ids.shape[0])
    start = time.process_time()
    if mode == "plain":
        for ids, mask in batches:
            _forward(model, None, mode, ids, mask, sites, batch, 0)
        return time.process_time() - start
    # per-prompt metrics for every prompt: the O(n) scalars the memory part should see grow
    with capture(model, sites, reducer=_reducer(mode, offsets[-1], batch)) as red:
        for (ids, mask), offset in zip(batches, offsets):
            _forward(model, red, mode, ids, mask, sites, batch, offset)
    return time.process_time() - start


@torch.no_grad()
def overhead(kind: str, n_batches: int, batch: int, rounds: int) -> dict[str, float]:
    """CPU seconds per mode for all batches: each batch is timed in every mode back to back (the
    order rotating), ``rounds`` times, and its fastest time kept: on a shared machine the minimum
    is the cost of the work itself, other processes only ever add to it."""
    model = build(kind)
    sites = resolve_sites(model, SITES)
    batches = _batches(n_batches * batch, batch, 64)
    best = {m: [float("inf")] * len(batches) for m in MODES}
    for r in range(rounds):
        for i, one in enumerate(batches):
            for k in range(len(MODES)):
                mode = MODES[(k + r + i) % len(MODES)]
                best[mode][i] = min(best[mode][i], run_mode(model, mode, [one], sites))
    return {m: sum(v) for m, v in best.items()}


@torch.no_grad()
def memory_child(kind: str, mode: str, n_inputs: int, batch: int) -> dict:
    torch.set_num_threads(1)
    model = build(kind)
    sites = resolve_sites(model, SITES)
    batches = _batches(n_inputs, batch, 64)
    model(batches[0][0])  # warm-up: allocator pools and lazy initialisation are not the capture's cost
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    run_mode(model, mode, batches, sites)
    return {"peak_mb": (_status_kb("VmHWM") - before) / 1024}


def memory(kind: str, mode: str, n_inputs: int, batch: int) -> float:
    env = {**os.environ, **ALLOCATORS[MEMORY_ALLOCATOR]}
    out = subprocess.run([sys.executable, __file__, "--child", kind, mode, str(n_inputs), str(batch)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inputs", type=int, default=64, help="inputs in the small memory run; the large one reads 10x")
    parser.add_argument("--models", default="tinylm,llama")
    parser.add_argument("--no-memory", action="store_true", help="time only; skip the peak-memory runs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, mode, n, batch = args.child
        print(json.dumps(memory_child(kind, mode, int(n), int(batch))))
        return
    torch.set_num_threads(args.threads)
    kinds = args.models.split(",")
    print(f"capture at every layer ({SITES[0]}), {args.batches} batches of {args.batch} x 64 tokens (right-padded), "
          f"{args.rounds} rounds interleaved batch by batch, {args.threads} thread(s); CPU seconds, sum of each batch's fastest")
    for kind in kinds:
        times = overhead(kind, args.batches, args.batch, args.rounds)
        print(f"\n{kind}")
        print(f"{'mode':<9}{'seconds':>9}{'ratio':>8}{'overhead':>10}")
        for mode in MODES:
            print(f"{mode:<9}{times[mode]:>9.3f}{times[mode] / times['plain']:>8.3f}{100 * (times[mode] / times['plain'] - 1):>9.1f}%")
    if args.no_memory:
        return
    small, large = args.inputs, 10 * args.inputs
    print(f"\npeak memory (MB, VmHWM - VmRSS after warm-up, allocator: {MEMORY_ALLOCATOR}), {small} vs {large} inputs")
    print(f"{'model':<8}{'mode':<9}{small:>9}{large:>9}{'ratio':>8}")
    for kind in kinds:
        for mode in MODES:
            a, b = memory(kind, mode, small, args.batch), memory(kind, mode, large, args.batch)
            print(f"{kind:<8}{mode:<9}{a:>9.1f}{b:>9.1f}{b / max(a, 1e-9):>8.2f}")


if __name__ == "__main__":
    main()
