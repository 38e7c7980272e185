"""Wall time of a study's fine-tunes in process against Ray, on this machine, in one run.

    python benchmarks/executor.py [--jobs-per-core 3] [--steps 40]

The jobs are weight-delta's: the default preset's TinyLM (4 blocks, width 128) fine-tuned on
sort, hop and copy over seeds, batch 64, from a freshly initialised base (the timing does not
depend on what the base knows). Every job runs at one torch thread, so all executors do the same
arithmetic (the tuned weights are compared byte for byte) and Ray can run one job per core.
Each measurement builds into an empty artefact folder (nothing is read from the cache):

1. in process, the jobs one after another;
2. Ray with one worker per core (a local Ray of ``cores`` CPUs): the speed-up is 1 / 2;
3. Ray with one worker (a local Ray of one CPU) on the same jobs: a single core's worth of work, so
   3 / 1 - 1 is Ray's overhead (task submission, shipping the start weights once, reading each
   artefact back from the run directory). Ray's start-up is timed apart; a run pays it once.

Every configuration runs ``--repeats`` times after one untimed warm-up job, and the fastest repeat
counts (on a machine shared with other work, wall times move with the load; CPU seconds of this
process are printed beside the in-process time).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from taskloc.models import TinyLM, weights_of
from taskloc.runconfig import resolve_config
from taskloc.studies.context import Finetune, StudyContext
from taskloc.studies.executor import Executor, RayExecutor, import_ray
from taskloc.tasks import get_task
from taskloc.tasks.mixture import TaskMixture
from taskloc.train import TrainConfig


def requests(cfg, n: int, steps: int) -> list[Finetune]:
    torch.manual_seed(cfg.seed)
    base = weights_of(TinyLM(cfg.model))
    schedule = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=min(30, steps // 4), ckpt_every=10**9, eval_every=10**9)
    out = []
    for i in range(n):
        task, seed = get_task(("sort", "hop", "copy")[i % 3]), i // 3
        out.append(Finetune(f"adamw {task.name} s{seed}", {"task": task.name, "seed": seed, "regime": "adamw", "levels": [1, 2, 3]},
                            base, TaskMixture([task], [1, 2, 3], seed=1000 + seed), schedule))
    return out


def timed(cfg, executor: Executor, asked: list[Finetune]) -> tuple[float, float, list[dict]]:
    with tempfile.TemporaryDirectory(prefix="taskloc-bench-") as tmp:
        ctx = StudyContext(Path(tmp), cfg, torch.device("cpu"), [], executor=executor)
        ctx.study = "benchmark"
        wall, cpu = time.perf_counter(), time.process_time()
        tuned = ctx.finetune_many(asked)
        return time.perf_counter() - wall, time.process_time() - cpu, tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-per-core", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps per job")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each configuration (the fastest counts)")
    args = parser.parse_args()
    os.environ.setdefault("TASKLOC_QUIET", "1")
    ray = import_ray()
    cores = os.cpu_count() or 1
    cfg = resolve_config("default")
    asked = requests(cfg, cores * args.jobs_per_core, args.steps)
    print(f"{len(asked)} fine-tunes of the default TinyLM ({args.steps} steps of 64 each), one thread per job, {cores} cores")

    timed(cfg, Executor(threads=1), requests(cfg, 1, 2))  # warm-up: first calls into torch's kernels
    inproc, inproc_cpu, reference = min((timed(cfg, Executor(threads=1), asked) for _ in range(args.repeats)), key=lambda r: r[0])
    print(f"in process:                {inproc:8.2f} s wall ({inproc_cpu:.2f} s CPU)")

    rows = {}
    for workers in (cores, 1):
        started = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env={"env_vars": {"TASKLOC_QUIET": "1"}}, logging_level="WARNING")
        executor = RayExecutor(threads=1)
        executor._ensure_started()
        startup = time.perf_counter() - started
        timed(cfg, executor, requests(cfg, workers, 2))  # warm-up: every worker's first job
        wall, _, tuned = min((timed(cfg, executor, asked) for _ in range(args.repeats)), key=lambda r: r[0])
        ray.shutdown()
        same = all(all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(tuned, reference))
        rows[workers] = wall
        print(f"ray, {workers} worker(s):           {wall:8.2f} s wall (+ {startup:.2f} s to start Ray); weights identical: {same}")
    print(f"speed-up of Ray with one worker per core ({cores}): {inproc / rows[cores]:.2f}x (in process / Ray)")
    print(f"Ray overhead on a single core's worth of jobs: {100 * (rows[1] / inproc - 1):+.1f}% (target < 10%)")


if __name__ == "__main__":
    main()
