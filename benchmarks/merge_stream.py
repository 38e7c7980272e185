"""Benchmark: a streamed 3-model TIES merge (`taskloc merge BASE A B C --method ties`) against
loading every model fully into memory and merging there (the in-memory approach).

Builds four float32 safetensors checkpoints of --size-gb each (a base and three fine-tunes;
tensors of 4096 x 2048, like an MLP of a 7B model) in a temporary folder under --tmp, warms the
page cache, then runs each job in its own subprocess, so its peak memory is its own: the
high-water mark of its resident set (VmHWM from /proc/self/status, read at the end of the job;
mapped file pages the job touches count too). Jobs:
  stream:    taskloc's merge_checkpoints(BASE, [A, B, C], method="ties", k=20%) -> one .safetensors,
             one tensor name at a time across the four models
  in-memory: load all four files with safetensors.torch.load_file, then the same TIES formula per
             tensor on the loaded state dicts, written tensor by tensor to one .safetensors
and checks that the two outputs hold bit-identical tensors. Times are each job's work (after its
imports). Everything under the temporary folder is deleted at the end.

    python benchmarks/merge_stream.py                  # 4 x 1 GB (the in-memory job needs ~4.5 GB RAM)
    python benchmarks/merge_stream.py --size-gb 0.25   # quick
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
MODELS = ("base", "a", "b", "c")
TARGET_RSS_RATIO = 1 / 3  # stream peak RSS / in-memory peak RSS

FOOTER = r"""
work = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"work_s": work, "peak_rss_gb": hwm / 2**20}))
"""

READ = r"""
import json, sys, time
buf = bytearray(64 << 20)
start = time.perf_counter()
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
""" + FOOTER

STREAM = r"""
import json, sys, time
from taskloc.merge import merge_checkpoints
start = time.perf_counter()
merge_checkpoints(sys.argv[1], sys.argv[2:5], method="ties", options={"k": 20}, out=sys.argv[5])
""" + FOOTER

IN_MEMORY = r"""
import json, sys, time
from safetensors.torch import load_file
from taskloc.io.safetensors_format import SafetensorsStreamWriter
from taskloc.merge import build_method, MergeInputs
from taskloc.merge.api import merged_tensors
start = time.perf_counter()
base, *tasks = [load_file(p) for p in sys.argv[1:5]]  # every model fully in memory
with MergeInputs.open(base, tasks) as inputs:
    merger = build_method("ties", inputs, {"k": 20})
    specs = [(n, v.dtype, tuple(v.shape)) for n, v in base.items()]
    with open(sys.argv[5], "wb") as f:
        writer = SafetensorsStreamWriter(f, specs, {})
        for name, tensor in merged_tensors(merger):
            writer.write(name, tensor)
        writer.close()
""" + FOOTER

BUILD = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from merge_stream import build
build(Path(sys.argv[1]), float(sys.argv[2]))
"""


def build(folder: Path, size_gb: float, seed: int = 0) -> list[Path]:
    """Four checkpoints written tensor by tensor: base ~ N(0, 0.02^2); each fine-tune = base + dense
    small noise + larger changes in a few rows of its own."""
    import torch

    from taskloc.io.safetensors_format import SafetensorsStreamWriter

    n_tensors = max(1, round(size_gb * 2**30 / (ROWS * COLS * 4)))
    names = [f"model.layers.{i // 4}.mlp.{['gate_proj', 'up_proj', 'down_proj', 'o_proj'][i % 4]}.weight" for i in range(n_tensors)]
    specs = [(n, torch.float32, (ROWS, COLS)) for n in names]
    paths = [folder / f"{m}.safetensors" for m in MODELS]
    gen = torch.Generator().manual_seed(seed)
    files = [open(p, "wb") for p in paths]
    try:
        writers = [SafetensorsStreamWriter(f, specs) for f in files]
        for name in names:
            base = torch.randn(ROWS, COLS, generator=gen) * 0.02
            writers[0].write(name, base)
            for w in writers[1:]:
                delta = torch.randn(ROWS, COLS, generator=gen) * 1e-4
                rows = torch.randint(0, ROWS, (64,), generator=gen)
                delta[rows] += torch.randn(64, COLS, generator=gen) * 3e-3
                w.write(name, base + delta)
        for w in writers:
            w.close()
    finally:
        for f in files:
            f.close()
    return paths


def timed(code: str, *args: str) -> dict:
    """Run python -c code in a subprocess: its wall time, plus the work time and peak RSS it reports
    as the last line of its stdout."""
    env = {**os.environ, "TASKLOC_QUIET": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark job failed:\n{proc.stderr}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold bit-identical tensors (metadata aside), one at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        names = list(fa.keys())
        if names != list(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(n), fb.get_tensor(n)) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each of the four checkpoints")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoints go")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="taskloc-merge-bench-", dir=args.tmp))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", BUILD, str(folder), str(args.size_gb), str(Path(__file__).parent)], check=True)
        inputs = [str(folder / f"{m}.safetensors") for m in MODELS]
        size = Path(inputs[0]).stat().st_size / 2**30
        print(f"built 4 x {size:.2f} GB in {time.perf_counter() - t:.1f} s ({folder}); load average {os.getloadavg()[0]:.2f}")
        timed(READ, *inputs)  # warm the page cache
        results = {"read": timed(READ, *inputs)}
        results["stream"] = timed(STREAM, *inputs, str(folder / "stream.safetensors"))
        results["in-memory"] = timed(IN_MEMORY, *inputs, str(folder / "memory.safetensors"))
        same = same_tensors(folder / "stream.safetensors", folder / "memory.safetensors")
        print("job        work (s)  process wall (s)  peak RSS (GB)")
        for name, r in results.items():
            print(f"{name:9s} {r['work_s']:9.2f} {r['wall_s']:17.2f} {r['peak_rss_gb']:14.2f}")
        print(f"outputs identical: {same}")
        ratios = {
            "stream / in-memory peak RSS": results["stream"]["peak_rss_gb"] / results["in-memory"]["peak_rss_gb"],
            "stream / in-memory time": results["stream"]["work_s"] / results["in-memory"]["work_s"],
            "stream / read time": results["stream"]["work_s"] / results["read"]["work_s"],
        }
        for name, value in ratios.items():
            verdict = ""
            if name.endswith("RSS"):
                verdict = f"   target <= {TARGET_RSS_RATIO:.3f}   {'ok' if value <= TARGET_RSS_RATIO else 'MISSED'}"
            print(f"{name:28s} {value:7.3f}{verdict}")
        print(json.dumps({"identical": same, **{k: round(v, 3) for k, v in ratios.items()}}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
