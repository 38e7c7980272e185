"""Benchmark: streaming `taskloc delta --top 1% --patch` against reading the files and against the
naive in-memory approach, at 1 and 2 sweep threads.

Builds two float32 safetensors checkpoints of --size-gb each (tensors of 4096 x 2048, like an
MLP of a 7B model) in a temporary folder, warms the page cache and numba's compile cache (one
untimed delta run, whose time is shown: a fresh install compiles the loop there), then runs
--rounds rounds, each job in its own subprocess so peak RSS is measured per job:
  read:      both files read once into a reused buffer (the floor for any tool that looks at every byte)
  delta@T:   taskloc's delta_checkpoints(BASE, TUNED, top="1%", patch=P) with TASKLOC_THREADS=T: a
             sampling pre-pass, one streaming pass over mapped tensors (one compiled sweep of
             each), the report, fingerprints and the patch file (what `taskloc delta --top 1%
             --patch` runs)
  naive:     load both files, concatenate |tuned - base|, kthvalue for the top-1% threshold
             (first round only: it needs ~4.5x size-gb of RAM and is 10-40x slower)
and checks that the naive threshold equals taskloc's. Jobs of a round run back to back, so each
ratio compares jobs measured under the same machine load; the figures are medians over rounds.
Ratios use each job's work time, measured inside the job after its imports (interpreter and
torch start-up are listed apart). CPU = user + system time of the job: CPU close to work time
means one busy core, close to twice means two. The delta breakdown gives each phase's wall time.
Other processes on the machine distort everything: the load average is printed before and after.

    python benchmarks/delta_stream.py                 # 2 GB per checkpoint (naive needs ~9 GB RAM)
    python benchmarks/delta_stream.py --size-gb 0.25  # quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS, COLS = 4096, 2048
TARGETS = {"delta / read": 3.0, "naive / delta": 10.0, "delta peak RSS (GB)": 1.0}
THREADS = (1, 2)

# Each job times its own work (after imports), with the CPU time it used, and reports its peak
# RSS from /proc (VmHWM, which exec resets, unlike a child's ru_maxrss that starts from the
# forking parent's size).
START = r"""
import resource
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
"""
FOOTER = r"""
work = time.perf_counter() - start
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"work_s": work, "user_s": cpu1.ru_utime - cpu0.ru_utime, "sys_s": cpu1.ru_stime - cpu0.ru_stime,
                  "peak_rss_gb": hwm / 2**20, "result": result}))
"""

READ = r"""
import json, sys, time
buf = bytearray(64 << 20)
""" + START + r"""
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
result = None
""" + FOOTER

NAIVE = r"""
import json, sys, time, torch
from safetensors.torch import load_file
""" + START + r"""
base, tuned = load_file(sys.argv[1]), load_file(sys.argv[2])
flat = torch.cat([(tuned[n] - base[n]).abs().reshape(-1) for n in base])
k = round(0.01 * flat.numel())
result = torch.kthvalue(flat, flat.numel() - k + 1).values.item()
""" + FOOTER

DELTA = r"""
import json, sys, time
from taskloc.deltas import delta_checkpoints
""" + START + r"""
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


def timed(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run python -c code in a subprocess: its wall time, plus the work time, CPU time, peak RSS
    and result it reports as the last line of its stdout."""
    env = {**os.environ, "TASKLOC_QUIET": "1", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark job failed:\n{proc.stderr}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def phases(run: dict) -> dict[str, float]:
    """Wall time of each phase of one delta job: the pre-pass, the passes, and what follows
    (fingerprints, the report, writing the patch)."""
    t = run["result"]["timings"]
    out = {"sample": t.get("sample_s", 0.0), "pass 1": t.get("pass1_s", 0.0), "pass 2": t.get("pass2_s", 0.0),
           "pass 3": t.get("pass3_s", 0.0)}
    out["fingerprints+patch"] = run["work_s"] - t.get("total_s", 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of each checkpoint")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of read / delta at each thread count")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoints go")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive baseline (it needs ~4.5x size-gb of RAM)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="taskloc-bench-", dir=args.tmp))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", BUILD, str(folder), str(args.size_gb), str(Path(__file__).parent)], check=True)
        base, tuned = folder / "base.safetensors", folder / "tuned.safetensors"
        files, patch = (str(base), str(tuned)), str(folder / "patch.safetensors")
        print(f"built 2 x {base.stat().st_size / 2**30:.2f} GB in {time.perf_counter() - t:.1f} s ({folder})")
        print(f"load average before: {load_average()} (1, 5, 15 min) on {os.cpu_count()} CPUs")
        timed(READ, *files)  # warm the page cache
        first = timed(DELTA, *files, patch)  # ... and numba's compile cache
        print(f"first delta run (compiles the loop on a fresh install): work {first['work_s']:.2f} s, "
              f"CPU {first['user_s']:.2f} user + {first['sys_s']:.2f} sys")
        runs: dict[str, list[dict]] = {"read": [], **{f"delta@{n}": [] for n in THREADS}, "naive": []}
        for r in range(args.rounds):
            runs["read"].append(timed(READ, *files))
            for n in THREADS:
                runs[f"delta@{n}"].append(timed(DELTA, *files, patch, env={"TASKLOC_THREADS": str(n)}))
            if r == 0 and not args.skip_naive:
                runs["naive"].append(timed(NAIVE, *files))
        print(f"load average after:  {load_average()}")
        report(runs, args.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(runs: dict[str, list[dict]], rounds: int) -> None:
    print(f"\nmedians over {rounds} rounds (naive: one run)")
    print("job        work (s)   min    max   CPU user+sys (s)  process wall (s)  peak RSS (GB)")
    for name, rs in runs.items():
        if rs:
            work = [r["work_s"] for r in rs]
            print(f"{name:9s} {median(work):8.2f} {min(work):6.2f} {max(work):6.2f} "
                  f"{median([r['user_s'] for r in rs]):8.2f} + {median([r['sys_s'] for r in rs]):5.2f} "
                  f"{median([r['wall_s'] for r in rs]):17.2f} {max(r['peak_rss_gb'] for r in rs):14.2f}")
    print("\ndelta breakdown, wall (s)   " + "  ".join(f"{p:>8s}" for p in phases(runs["delta@1"][0])))
    for n in THREADS:
        ph = [phases(r) for r in runs[f"delta@{n}"]]
        print(f"  {n} thread{'s' if n > 1 else ' '}                 " + "  ".join(f"{median([p[k] for p in ph]):8.2f}" for k in ph[0]))
    ratios: dict[str, float] = {}
    for n in THREADS:
        # per round, against the read measured just before: both saw the same load
        ratios[f"delta@{n} / read"] = median([d["work_s"] / r["work_s"] for d, r in zip(runs[f"delta@{n}"], runs["read"])])
    # CPU time (user + sys) is less sensitive to other processes than wall time on a busy machine:
    # at 1 thread it approximates the idle machine's wall time (shown, not judged)
    cpu = {name: median([r["user_s"] + r["sys_s"] for r in rs]) for name, rs in runs.items() if rs}
    print(f"\nCPU time, delta@1 / read: {cpu['delta@1'] / cpu['read']:.2f}"
          + (f"; naive / delta@1: {cpu['naive'] / cpu['delta@1']:.2f}" if "naive" in cpu else ""))
    ratios["delta peak RSS (GB)"] = max(r["peak_rss_gb"] for n in THREADS for r in runs[f"delta@{n}"])
    if runs["naive"]:
        naive = runs["naive"][0]
        for n in THREADS:
            ratios[f"naive / delta@{n}"] = naive["work_s"] / runs[f"delta@{n}"][0]["work_s"]  # same round
        ours = {r["result"]["threshold"] for n in THREADS for r in runs[f"delta@{n}"]}
        theirs = naive["result"]
        print(f"\ntop-1% threshold: taskloc {sorted(ours)!r}, naive kthvalue {theirs!r} "
              f"({'equal' if ours == {theirs} else 'DIFFERENT'})")
    print()
    for name, value in ratios.items():
        key = "delta / read" if "/ read" in name else "naive / delta" if name.startswith("naive") else name
        target = TARGETS[key]
        higher_is_better = key.startswith("naive")
        ok = value >= target if higher_is_better else value <= target
        print(f"{name:22s} {value:7.2f}   target {'>=' if higher_is_better else '<='} {target:g}   {'ok' if ok else 'MISSED'}")
    print(json.dumps({k: round(v, 3) for k, v in ratios.items()}))


if __name__ == "__main__":
    main()
