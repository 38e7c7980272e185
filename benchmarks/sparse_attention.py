"""Benchmark: sparse prefill (block-sparse and vertical-slash at density 1/16) against dense
``scaled_dot_product_attention`` (causal), same inputs, one run.

For each context length: q, k, v of shape (1, --heads, T, --head-dim), float32, one random draw.
Times (fastest of --repeats after one warm-up call, so flex_attention's compile is excluded and
reported apart) for
  dense:  F.scaled_dot_product_attention(q, k, v, is_causal=True)
  gather: taskloc's SparseAttention with the gathered-key backend (selection included)
  flex:   the same selection as a BlockMask for torch.compile(flex_attention) (selection included)
and prints dense time / sparse time per pattern, backend and length, the achieved density and
the max |difference| between the backends' outputs. Target: gather or flex >= 4x at 8192.

    python benchmarks/sparse_attention.py                       # T = 2048 and 8192, one thread
    python benchmarks/sparse_attention.py --lengths 1024 --no-flex
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from taskloc.attention import FlopLedger, PatternSpec, SparseAttention, sparse_kernel
from taskloc.hooks import HookPoint

TARGET = 4.0


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """The fastest of ``repeats`` calls after a warm-up: on a shared machine the minimum is the
    run least disturbed by other work, for dense and sparse alike."""
    out = fn()  # warm-up (and compilation, for flex)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--density", type=float, default=1 / 16)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--patterns", nargs="+", default=["block-sparse", "vertical-slash"])
    ap.add_argument("--no-flex", action="store_true", help="skip torch.compile(flex_attention)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    site = HookPoint()
    print(f"threads={args.threads} heads={args.heads} head_dim={args.head_dim} density={args.density:.4f} "
          f"block={args.block} repeats={args.repeats}")
    for t in args.lengths:
        gen = torch.Generator().manual_seed(t)
        q, k, v = (torch.randn(1, args.heads, t, args.head_dim, generator=gen) for _ in range(3))
        dense_s, _dense_out = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.repeats)
        print(f"T={t} dense sdpa {dense_s * 1e3:.1f} ms")
        for pattern in args.patterns:
            spec = PatternSpec(pattern, args.density, block=args.block)
            ledger = FlopLedger()
            SparseAttention(spec, "gather", ledger)(q, k, v, site)  # exact pair counts
            outs = {}
            for backend in ("gather",) if args.no_flex else ("gather", "flex"):
                kern = sparse_kernel(pattern, args.density, backend=backend, block=args.block)
                start = time.perf_counter()
                kern(q, k, v, site)
                first = time.perf_counter() - start
                s, outs[backend] = timed(lambda kern=kern, q=q, k=k, v=v: kern(q, k, v, site), args.repeats)
                ratio = dense_s / s
                verdict = "meets" if ratio >= TARGET else "misses"
                print(f"T={t} {pattern:14s} {backend:6s} {s * 1e3:8.1f} ms  ratio {ratio:5.2f}x ({verdict} {TARGET:g}x)"
                      f"  first call {first:.1f} s  density {ledger.density:.4f}"
                      f"  computed/attended {ledger.computed / ledger.attended:.2f}")
            if len(outs) == 2:
                print(f"T={t} {pattern:14s} max |gather - flex| = {(outs['gather'] - outs['flex']).abs().max():.2e}")


if __name__ == "__main__":
    main()
