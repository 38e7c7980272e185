"""Benchmark: streaming `taskloc delta --top 1% --patch` against reading the files and against the
naive in-memory approach.

Builds two float32 safetensors checkpoints of --size-gb each (tensors of 4096 x 2048, like an
MLP of a 7B model) in a temporary folder, warms the page cache, then times, each in its own
subprocess so peak RSS is measured per job (os.wait4):
  read:   both files read once into reused buffers (the floor for any tool that looks at every byte)
  delta:  taskloc's delta_checkpoints(BASE, TUNED, top="1%", patch=P): a sampling pre-pass, one
          streaming pass over mapped tensors (one sweep of each, a compiled loop when numba is
          installed), the report, fingerprints and the patch file (what `taskloc delta --top 1%
          --patch` runs)
  naive:  load both files, concatenate |tuned - base|, kthvalue for the top-1% threshold
and checks that the naive threshold equals taskloc's. Ratios use each job's work time, measured
inside the job after its imports (interpreter and torch start-up, ~2 s here, are listed apart).

    python benchmarks/delta_stream.py                 # 2 GB per checkpoint (naive needs ~9 GB RAM)
    python benchmarks/delta_stream.py --size-gb 0.25  # quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS, COLS = 4096, 2048
TARGETS = {"delta / read": 3.0, "naive / delta": 10.0, "delta peak RSS (GB)": 1.0}

# Each job times its own work (after imports) and reports its peak RSS from /proc (VmHWM, which
# exec resets, unlike a child's ru_maxrss that starts from the forking parent's size).
FOOTER = r"""
work = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"work_s": work, "peak_rss_gb": hwm / 2**20, "result": result}))
"""

READ = r"""
import json, sys, time
buf = bytearray(64 << 20)
start = time.perf_counter()
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
result = None
""" + FOOTER

NAIVE = r"""
import json, sys, time, torch
from safetensors.torch import load_file
start = time.perf_counter()
base, tuned = load_file(sys.argv[1]), load_file(sys.argv[2])
flat = torch.cat([(tuned[n] - base[n]).abs().reshape(-1) for n in base])
k = round(0.01 * flat.numel())
result = torch.kthvalue(flat, flat.numel() - k + 1).values.item()
""" + FOOTER

DELTA = r"""
import json, sys, time
from taskloc.deltas import delta_checkpoints
start = time.perf_counter()
report = delta_checkpoints(sys.argv[1], sys.argv[2], top="1%", patch=sys.argv[3], device="cpu")
result = {"threshold": report.selection.threshold, "timings": report.timings}
""" + FOOTER

BUILD = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from delta_stream import build
build(Path(sys.argv[1]), float(sys.argv[2]))
"""


def build(folder: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    """Two checkpoints written tensor by tensor: base ~ N(0, 0.02^2); tuned = base + a delta that
    is dense small noise plus a sparse set of larger changes in some tensors."""
    import torch

    from taskloc.io.safetensors_format import SafetensorsStreamWriter

    n_tensors = max(1, round(size_gb * 2**30 / (ROWS * COLS * 4)))
    names = [f"model.layers.{i // 4}.mlp.{['gate_proj', 'up_proj', 'down_proj', 'o_proj'][i % 4]}.weight" for i in range(n_tensors)]
    specs = [(n, torch.float32, (ROWS, COLS)) for n in names]
    paths = folder / "base.safetensors", folder / "tuned.safetensors"
    gen = torch.Generator().manual_seed(seed)
    with open(paths[0], "wb") as fb, open(paths[1], "wb") as ft:
        wb, wt = SafetensorsStreamWriter(fb, specs), SafetensorsStreamWriter(ft, specs)
        for i, name in enumerate(names):
            base = torch.randn(ROWS, COLS, generator=gen) * 0.02
            delta = torch.randn(ROWS, COLS, generator=gen) * 1e-4 * (1 + (i % 7))
            rows = torch.randint(0, ROWS, (64,), generator=gen)
            delta[rows] += torch.randn(64, COLS, generator=gen) * 3e-3  # a few rows change a lot
            wb.write(name, base)
            wt.write(name, base + delta)
        wb.close()
        wt.close()
    return paths


def timed(code: str, *args: str) -> dict:
    """Run python -c code in a subprocess: its wall time, plus the work time, peak RSS and result
    it reports as the last line of its stdout."""
    env = {**os.environ, "TASKLOC_QUIET": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark job failed:\n{proc.stderr}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of each checkpoint")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoints go")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive baseline (it needs ~4.5x size-gb of RAM)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="taskloc-bench-", dir=args.tmp))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", BUILD, str(folder), str(args.size_gb), str(Path(__file__).parent)], check=True)
        base, tuned = folder / "base.safetensors", folder / "tuned.safetensors"
        print(f"built 2 x {base.stat().st_size / 2**30:.2f} GB in {time.perf_counter() - t:.1f} s ({folder})")
        timed(READ, str(base), str(tuned))  # warm the page cache
        results = {"read": timed(READ, str(base), str(tuned))}
        results["delta"] = timed(DELTA, str(base), str(tuned), str(folder / "patch.safetensors"))
        if not args.skip_naive:
            results["naive"] = timed(NAIVE, str(base), str(tuned))
        print("job     work (s)  process wall (s)  peak RSS (GB)")
        for name, r in results.items():
            print(f"{name:6s} {r['work_s']:9.2f} {r['wall_s']:17.2f} {r['peak_rss_gb']:14.2f}")
        print(f"delta passes: {results['delta']['result']['timings']}")
        ratios = {"delta / read": results["delta"]["work_s"] / results["read"]["work_s"],
                  "delta peak RSS (GB)": results["delta"]["peak_rss_gb"]}
        if "naive" in results:
            ratios["naive / delta"] = results["naive"]["work_s"] / results["delta"]["work_s"]
            ours, theirs = results["delta"]["result"]["threshold"], results["naive"]["result"]
            print(f"top-1% threshold: taskloc {ours!r}, naive kthvalue {theirs!r} ({'equal' if ours == theirs else 'DIFFERENT'})")
        for name, value in ratios.items():
            target = TARGETS[name]
            higher_is_better = name.startswith("naive")
            ok = value >= target if higher_is_better else value <= target
            print(f"{name:22s} {value:7.2f}   target {'>=' if higher_is_better else '<='} {target:g}   {'ok' if ok else 'MISSED'}")
        print(json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
