"""Peak memory of reading every layer's activations over a growing set of inputs: running
statistics (``capture(..., reducer=RunningMoments)``) against keeping every full activation.

    python benchmarks/capture_memory.py [--inputs 64] [--batch 32] [--rounds 3]

Each measurement runs in a fresh process (so freed memory from one never hides the next): a
default-size TinyLM (4 blocks, width 128, MLP 512, 64 tokens) reads right-padded random batches
with every (B, T, D)-shaped site hooked (6 per block and the final norm: 25 sites). Memory is the
process's peak resident set (Linux VmHWM, reset via /proc/self/clear_refs after the model is built
and has run one warm-up pass) minus its resident set at that point: tensors live outside Python's
allocator, so tracemalloc would not see them. Every run is made under glibc's default malloc and
under a fixed mmap threshold (see ALLOCATORS); rounds interleave all runs; medians are printed.
Running statistics should stay flat when the inputs grow 10x; full activations grow 10x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from taskloc.activations.reducers import RunningMoments
from taskloc.hooks import capture, hooks, resolve_sites
from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE

SITE_PATTERNS = ["blocks.*.hook_resid_pre", "blocks.*.hook_attn_out", "blocks.*.hook_resid_mid", "blocks.*.mlp.hook_post",
                 "blocks.*.hook_mlp_out", "blocks.*.hook_resid_post", "ln_final.hook_normalized"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status (this benchmark needs Linux)")


def _batches(n_inputs: int, batch: int, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, n_inputs, batch):
        b = min(batch, n_inputs - start)
        ids = torch.randint(2, VOCAB_SIZE, (b, block), generator=gen)  # (B, T)
        lengths = torch.randint(block // 2, block + 1, (b,), generator=gen)
        out.append((ids, torch.arange(block)[None, :] < lengths[:, None]))  # mask (B, T): right padding
    return out


@torch.no_grad()
def child(mode: str, n_inputs: int, batch: int) -> dict:
    """One measurement in this process: peak RSS growth while reading n_inputs."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=VOCAB_SIZE)).eval()
    sites = resolve_sites(model, SITE_PATTERNS)
    batches = _batches(n_inputs, batch, model.cfg.block_size)
    model(batches[0][0])  # warm-up: allocator pools and lazy initialisation are not the capture's cost
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    if mode == "stats":
        with capture(model, sites, reducer=RunningMoments) as red:
            for ids, mask in batches:
                red.mask = mask
                model(ids)
        kept = sum(red[s].mean.numel() + red[s].m2.numel() for s in sites) * 8
    else:
        store: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

        def keep(x: torch.Tensor, name: str) -> None:
            store[name].append(x.detach().clone())  # (B, T, D): what a study without reducers holds

        with hooks(model, {s: keep for s in sites}):
            for ids, _ in batches:
                model(ids)
        kept = sum(t.numel() * t.element_size() for parts in store.values() for t in parts)
    seconds = time.perf_counter() - start
    return {"peak_mb": (_status_kb("VmHWM") - before) / 1024, "kept_mb": kept / 2**20, "seconds": seconds}


# glibc's default malloc raises its mmap threshold after the first large free, so later
# activation-sized blocks come from the heap, whose freed middle is kept, not returned: RSS then
# creeps up with the number of batches even when live memory is flat. A fixed threshold returns
# every large block to the OS, so RSS tracks live tensors (at a cost in speed).
ALLOCATORS = {"glibc default": {}, "mmap threshold 64 KiB": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def measure(mode: str, n_inputs: int, batch: int, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n_inputs), str(batch)],
                         capture_output=True, text=True, check=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=64, help="inputs in the small run; the large run reads 10x")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, batch = args.child
        print(json.dumps(child(mode, int(n), int(batch))))
        return
    sizes = (args.inputs, 10 * args.inputs)
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for alloc, env in ALLOCATORS.items():
            for n in sizes:
                for mode in ("stats", "full"):
                    runs.setdefault((alloc, mode, n), []).append(measure(mode, n, args.batch, env))

    print(f"TinyLM default size, {len(SITE_PATTERNS) - 1} sites x 4 blocks + final norm, batch {args.batch}, "
          f"{args.rounds} rounds; peak = VmHWM - VmRSS (MB), medians")
    small, large = sizes
    for alloc in ALLOCATORS:

        def med(mode: str, n: int, key: str, alloc: str = alloc) -> float:
            return statistics.median(r[key] for r in runs[(alloc, mode, n)])

        print(f"\nallocator: {alloc}")
        print(f"{'mode':<7}{'inputs':>8}{'peak MB':>10}{'kept MB':>10}{'seconds':>9}")
        for mode in ("stats", "full"):
            for n in sizes:
                print(f"{mode:<7}{n:>8}{med(mode, n, 'peak_mb'):>10.1f}{med(mode, n, 'kept_mb'):>10.2f}{med(mode, n, 'seconds'):>9.2f}")
        for mode in ("stats", "full"):
            print(f"{mode}: peak at {large} inputs / peak at {small} = {med(mode, large, 'peak_mb') / med(mode, small, 'peak_mb'):.2f}")
        print(f"full / stats peak at {large} inputs = {med('full', large, 'peak_mb') / med('stats', large, 'peak_mb'):.1f}")


if __name__ == "__main__":
    main()
