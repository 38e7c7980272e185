"""Executors: where a study's independent jobs run — in this process (the default) or as Ray tasks.

A job is one cached artefact build (a fine-tune, a vector, a merged model): its kind, its cache
ingredients, a build function and the artefact's format. Jobs are keyed by the artefact cache's
key, so whichever executor runs them:

- a finished artefact is never rebuilt (its final file is read instead), and a killed run resumes
  from the checkpoint its job left in the artefact's folder;
- two workers never write the same artefact: a batch holds each key once, and a job holds an
  exclusive lock on its key-named folder while it builds (a second run on the same directory
  waits, then reads what the first wrote); every file is written atomically;
- the numbers do not depend on the executor: a job runs with the run's thread count
  (``run.threads``; CPU kernels split their sums by thread, so the count is part of the
  arithmetic), seeds torch's and numpy's global generators from its own key, and, in process,
  leaves the caller's thread count and generator states as it found them.

Artefacts travel through the run directory, not through Ray's object store: the run directory is
already the content-addressed, resumable cache (an object in Ray's store dies with the driver or
the cluster, so a killed run could not resume from it), a worker writes each artefact once with
an atomic rename, and the driver reads it back with the same reader as a cached artefact, so an
in-process run and a Ray run hand a study the same bytes. On a cluster the run directory must
therefore be shared storage that every node mounts at the same path. Only a job's inputs (start
weights, masks) go through the object store, once per batch however many jobs share them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, TasklocError
from ..progress import console, progress_bar
from .cache import ArtefactCache, Format, key_of

RAY_MISSING = "the ray executor needs Ray, which is not installed: pip install 'taskloc[ray]' (or run with --executor inprocess)."


@dataclass
class Job:
    """One independent, cached artefact build."""

    kind: str
    ingredients: dict[str, Any]  # the cache key's ingredients, the builder's code version included
    build: Callable[..., Any]  # build(folder, **inputs[, device=...]) -> the artefact; must pickle for Ray
    fmt: Format
    label: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)  # large values (weights, masks) shipped once per batch
    device: str | None = None  # the torch device it computes on; None: a CPU job that is not told one

    @property
    def key(self) -> str:
        return f"{self.kind}-{key_of(self.ingredients)}"


@contextlib.contextmanager
def _job_environment(threads: int, key: str, device: str | None) -> Iterator[None]:
    """The job's thread count and generator seeds; the caller's are restored afterwards."""
    previous = torch.get_num_threads()
    cuda = [torch.device(device).index or 0] if device is not None and device.startswith("cuda") else []
    np_state = np.random.get_state()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=cuda):
            seed = int(key.rsplit("-", 1)[-1], 16)  # the cache key's hex digest
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(np_state)
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on an artefact's folder for the time of its build (released by the
    kernel if the process dies, so a killed worker never blocks its retry)."""
    with (folder / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_job(root: str | Path, job: Job, threads: int, inputs: dict[str, Any], device: str | None) -> Any:
    """Build (or read) ``job``'s artefact under ``root``; the same code in every executor."""
    cache = ArtefactCache(Path(root))
    final = cache.find(job.kind, job.ingredients, job.fmt)
    if final.exists():  # finished: read without a lock (a read-only or shared run directory stays readable)
        return job.fmt.read(final)
    folder = cache.folder(job.kind, key_of(job.ingredients))
    extra = {"device": device} if device is not None else {}
    with _folder_lock(folder), _job_environment(threads, job.key, device):
        return cache.get_or_build(job.kind, job.ingredients, lambda f: job.build(f, **inputs, **extra), job.fmt)


class Progress:
    """Jobs done / total per study over the whole run, whichever executor runs them."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # study -> [done, total, read from the cache]

    @contextlib.contextmanager
    def batch(self, study: str, n: int, cached: int) -> Iterator[Callable[[], None]]:
        done, total, reused = self.counts.setdefault(study, [0, 0, 0])
        self.counts[study] = [done + cached, total + n, reused + cached]
        with progress_bar(f"{study} jobs", total=total + n, completed=done + cached) as advance:
            def finished() -> None:
                self.counts[study][0] += 1
                advance()

            yield finished

    def summary(self, study: str) -> str | None:
        if study not in self.counts:
            return None
        done, total, reused = self.counts[study]
        return f"{study}: {done}/{total} jobs done ({reused} read from the cache)"


class Executor:
    """Runs a batch of jobs and returns their artefacts in order."""

    name = "inprocess"

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.progress = Progress()

    def run(self, root: Path, jobs: list[Job], study: str = "run") -> list[Any]:
        unique = {job.key: job for job in jobs}  # one build per key, however often a batch asks for it
        cached = {k for k, job in unique.items() if (Path(root) / k / job.fmt.filename).exists()}
        values: dict[str, Any] = {}
        with self.progress.batch(study, len(unique), len(cached)) as finished:
            for key, job in unique.items():
                values[key] = self._run(root, job, key in cached, finished)
            values.update(self._collect())
        return [values[job.key] for job in jobs]

    def _run(self, root: Path, job: Job, cached: bool, finished: Callable[[], None]) -> Any:
        value = run_job(root, job, self.threads, job.inputs, job.device)
        if not cached:
            finished()
        return value

    def _collect(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class RayExecutor(Executor):
    """Jobs as Ray tasks on an existing cluster (``address``) or a local Ray started on the
    first batch with ``workers`` CPUs (0: one per core). Each task asks for ``threads`` CPUs, and
    ``gpus_per_job`` GPUs when its job computes on CUDA; a task whose worker dies is retried up to
    ``max_retries`` times and resumes from its artefact's checkpoint."""

    name = "ray"

    def __init__(self, threads: int, address: str = "", workers: int = 0, gpus_per_job: float = 1.0, max_retries: int = 3) -> None:
        super().__init__(threads)
        self.ray = import_ray()
        self.address, self.workers, self.gpus_per_job, self.max_retries = address, workers, gpus_per_job, max_retries
        self._started = False
        self._remote = None
        self._pending: dict[Any, tuple[str, Job, Callable[[], None]]] = {}
        self._root: Path | None = None

    def _ensure_started(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            import logging

            env = {"env_vars": {"TASKLOC_QUIET": "1"}}  # workers' per-step bars would interleave on the driver's terminal
            if self.address:
                ray.init(address=self.address, runtime_env=env, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False, runtime_env=env,
                         logging_level=logging.WARNING)
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_ray_job)

    def run(self, root: Path, jobs: list[Job], study: str = "run") -> list[Any]:
        self._root = Path(root).resolve()  # workers may have another working directory
        self._inputs: dict[int, Any] = {}
        return super().run(self._root, jobs, study)

    def _run(self, root: Path, job: Job, cached: bool, finished: Callable[[], None]) -> Any:
        if cached:  # read here: no task, no transfer
            return job.fmt.read(root / job.key / job.fmt.filename)
        self._ensure_started()
        names = list(job.inputs)
        for v in job.inputs.values():  # each input (the shared start weights, above all) is uploaded once per batch
            if id(v) not in self._inputs:
                self._inputs[id(v)] = self.ray.put(v)
        refs = [self._inputs[id(v)] for v in job.inputs.values()]
        cuda = job.device is not None and job.device.startswith("cuda")
        device = "cuda" if cuda else job.device  # a Ray worker sees only the GPUs it was given, from cuda:0
        task = self._remote.options(num_cpus=self.threads, num_gpus=self.gpus_per_job if cuda else 0,
                                    max_retries=self.max_retries, name=job.label or job.key)
        ref = task.remote(str(root), _without_inputs(job), self.threads, device, names, *refs)
        self._pending[ref] = (job.key, job, finished)
        return None  # read in _collect, once the task has written it

    def _collect(self) -> dict[str, Any]:
        ray, out = self.ray, {}
        try:
            while self._pending:
                ready, _ = ray.wait(list(self._pending), num_returns=1)
                key, job, finished = self._pending.pop(ready[0])
                try:
                    ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, TasklocError):
                        raise cause from None  # a user-caused error: one line, as in process
                    raise
                out[key] = job.fmt.read(self._root / key / job.fmt.filename)
                finished()
        finally:
            for ref in self._pending:
                ray.cancel(ref)
            self._pending.clear()
            self._inputs = {}
        return out

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def _without_inputs(job: Job) -> Job:
    return Job(job.kind, job.ingredients, job.build, job.fmt, job.label, {}, job.device)


def _ray_job(root: str, job: Job, threads: int, device: str | None, names: list[str], *values: Any) -> None:
    """The Ray task: the artefact lands in the run directory; nothing is returned through Ray."""
    run_job(root, job, threads, dict(zip(names, values)), device)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def make_executor(settings) -> Executor:
    """The executor ``run.*`` asks for. Ray is imported here, before a run directory exists, so a
    missing extra fails with one line and leaves nothing behind; a local Ray starts on the first
    batch of jobs."""
    threads = settings.threads or torch.get_num_threads()
    if settings.executor == "ray":
        cpus = settings.workers or os.cpu_count() or 1
        if not settings.ray_address and threads > cpus:  # a task asking for more CPUs than Ray has would wait forever
            raise ConfigError(f"run.threads={threads} (CPUs per job) exceeds the {cpus} CPUs of the local Ray; "
                              f"set run.threads to at most {cpus} (or run.workers higher).")
        return RayExecutor(threads, settings.ray_address, settings.workers, settings.gpus_per_job, settings.max_retries)
    return Executor(threads)


def report(executor: Executor, study: str) -> None:
    line = executor.progress.summary(study)
    if line:
        console.print(line, highlight=False)
