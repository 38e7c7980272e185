"""Runs studies: resolves and validates everything first (so bad input leaves nothing behind),
orders studies so that those providing a precondition run before those requiring it, shares
cached artefacts (the pretrained base is trained once per config and reused by every study),
applies preconditions to claims, and writes results.json and report.html.

A run directory is the unit of reproducibility:
    config.json        the full resolved configuration
    metrics.jsonl      training losses and other per-step logs (append-only)
    artefacts/         cached models and other artefacts, content-addressed (safetensors with metadata)
    studies/NAME.json  each finished study's result, reused when the run is resumed with the same code
    results.json       claims, preconditions and every study's result; same seed -> same bytes (one machine)
    timings.json       wall-clock and CPU seconds per study (kept out of results.json so that stays reproducible)
    report.html        self-contained report
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config
from .device import pick_device
from .errors import ConfigError, DataError, RunDirError
from .io.atomic import json_safe, write_json, write_text
from .models import CHAR_CODEC, LoadedModel, codec_of, load_model
from .progress import console
from .runconfig import RunConfig, resolve_config
from .studies import STUDIES, Study
from .studies.base import apply_preconditions
from .studies.cache import package_version
from .studies.context import StudyContext, study_settings
from .studies.executor import make_executor
from .studies.executor import report as report_jobs
from .tasks import Task


def resolve_studies(names: list[str], cfg: RunConfig) -> list[tuple[Study, Config]]:
    """The studies to run, in order, with their typed settings: those asked for (default: all),
    plus any study that provides a precondition one of them requires, placed before it."""
    unknown_cfg = sorted(set(cfg.studies) - set(STUDIES.names()))
    if unknown_cfg:
        STUDIES.get(unknown_cfg[0])  # raises with did-you-mean
    providers = {p: n for n in STUDIES.names() for p in STUDIES.get(n).provides}
    ordered: list[str] = []

    def add(name: str) -> None:
        study_cls = STUDIES.get(name)  # unknown name -> did-you-mean
        for needed in study_cls.requires:
            if needed not in providers:
                raise ConfigError(f"study {name!r} requires precondition {needed!r}, which no study provides.")
            if providers[needed] != name:
                add(providers[needed])
        if name not in ordered:
            ordered.append(name)

    for name in names or STUDIES.names():
        add(name)
    out = []
    for name in ordered:
        study_cls = STUDIES.get(name)
        study_cfg = study_settings(cfg, name, study_cls.Config)
        study = study_cls()
        study.check(study_cfg, cfg)  # settings that only make sense against the run's data
        out.append((study, study_cfg))
    return out


def run_studies(names: list[str], *, preset: str = "default", out: Path | None = None,
                config_file: Path | None = None, overrides: tuple[str, ...] = (), device: str = "auto",
                model: Path | None = None, allow_pickle: bool = False, executor: str | None = None) -> Path:
    # Everything that can be wrong with the input is checked before the run directory exists.
    overrides = (*overrides, f"run.executor={executor}") if executor else tuple(overrides)
    cfg = resolve_config(preset, config_file, overrides, model)
    tasks = cfg.data.load_tasks()  # the run's own tasks first: a study's cross-check assumes they are valid
    if not cfg.model_path:  # the embedded TinyLM reads taskloc's character vocabulary
        _check_char_vocabulary(tasks)
    plan = resolve_studies(list(names), cfg)
    dev = pick_device(device)
    source = load_study_model(Path(cfg.model_path), device, allow_pickle) if cfg.model_path else None
    if source is not None and codec_of(source.model) is CHAR_CODEC:  # a given model on the same vocabulary
        _check_char_vocabulary(tasks)
    jobs = make_executor(cfg.run)  # a missing Ray is named here, before the run directory exists
    run_dir = Path(out) if out is not None else Path("runs") / preset
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file; pass a directory for the run.")
    config_json = json.dumps(_config_record(cfg), indent=2, sort_keys=True) + "\n"
    if (run_dir / "config.json").exists():
        if (run_dir / "config.json").read_text() != config_json:
            raise RunDirError(f"{run_dir} holds a run with a different configuration; pass another --out or delete it.")
        console.print(f"resuming run in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not a taskloc run directory; pass another --out.")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_text(run_dir / "config.json", config_json)
        ctx = StudyContext(run_dir, cfg, dev, tasks, source, jobs)
        results, timings, cpu = {}, {}, {}
        for study, study_cfg in plan:
            started, cpu_started = time.perf_counter(), time.process_time()
            ctx.study = study.name
            results[study.name] = _run_cached(ctx, study, study_cfg)
            report_jobs(jobs, study.name)
            timings[study.name] = round(time.perf_counter() - started, 2)
            # CPU seconds of all threads: on a loaded machine wall time says little, CPU time
            # still says what the study costs. Written after every study so a killed run keeps them.
            cpu[study.name] = round(time.process_time() - cpu_started, 2)
            # cpu_seconds counts this process only: jobs run by Ray workers are not in it. job_threads
            # is part of the jobs' arithmetic (not of results.json, which must not depend on the executor)
            write_json(run_dir / "timings.json", {"seconds": timings, "cpu_seconds": cpu, "device": str(dev),
                                                   "threads": torch.get_num_threads(), "executor": cfg.run.executor,
                                                   "job_threads": cfg.run.threads or torch.get_num_threads()})
        document = build_results(cfg, results, {study.name: study.requires for study, _ in plan})
        write_json(run_dir / "results.json", document)
        from .report import write_report

        write_report(run_dir, document)
    except Exception:
        if created:  # a run that failed before producing anything leaves nothing behind
            if not any((run_dir / "artefacts").glob("*/*.safetensors")):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        jobs.close()
    return run_dir


def load_study_model(path: Path, device: str, allow_pickle: bool = False) -> LoadedModel:
    """The --model model, checked for what studies need: next-token logits and a way to encode
    task text. Fails here, before a run directory exists."""
    # float32 whatever the checkpoint's dtype: fine-tuning in bf16/fp16 rounds small late updates
    # to zero and snaps deltas to a coarse grid, which would bias every concentration figure
    loaded = load_model(path, device, dtype=torch.float32, allow_pickle=allow_pickle)
    kind = getattr(loaded.model, "kind", "causal-lm")
    if kind != "causal-lm":
        raise ConfigError(f"{path} is a {loaded.kind} {kind}; studies train and score next-token answers, "
                          "so they need a causal LM (a taskloc TinyLM, or a Llama, Qwen2 or GPT-2 folder).")
    codec = codec_of(loaded.model)  # raises when an HF model has no usable tokenizer
    rows = loaded.model.vocab_size  # rows of the embedding
    if codec.vocab_size > rows:
        raise ConfigError(f"the tokenizer in {path} has {codec.vocab_size} tokens but the model embeds only {rows}; "
                          "pass the tokenizer that belongs to this model.")
    _switch_off_dropout(loaded.model)
    return loaded


def _check_char_vocabulary(tasks: list[Task]) -> None:
    """TinyLM reads printable ASCII only; a task file with other characters fails here, before a
    run directory exists."""
    for task in tasks:
        where = getattr(task, "outside_vocab", None)
        if where:
            raise DataError(f"{where} is outside TinyLM's vocabulary (printable ASCII); remove it, "
                            "or study a model with its own tokenizer (--model).")


def _switch_off_dropout(model: torch.nn.Module) -> None:
    """Studies compare fine-tunes that differ only in what they are asked to vary (task, seed,
    mask); dropout would add an RNG stream that depends on what ran before. TinyLM has none; an
    HF model's dropout modules and attention-dropout rates are set to 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "attn_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def _config_record(cfg: RunConfig) -> dict[str, Any]:
    """config.json's content: the resolved config; model_path only when a model was given, so
    run directories from before that option still resume."""
    record = cfg.to_dict()
    record.pop("run")  # how jobs execute, not what they compute: a run resumes under another executor
    if not record.get("model_path"):
        record.pop("model_path", None)
    return record


def _run_cached(ctx: StudyContext, study: Study, study_cfg: Config) -> dict[str, Any]:
    """A study's result as it left ``run`` (before preconditions are applied), reused when the
    settings, the --model weights and taskloc's code are unchanged."""
    path = ctx.run_dir / "studies" / f"{study.name}.json"
    key = {"settings": study_cfg.fingerprint(), "model": ctx.given_fingerprint, "code": package_version()}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["result"]
    console.print(f"[bold]study {study.name}[/bold]: {study.summary}")
    result = study.run(ctx, study_cfg).to_dict()
    for record in result["claims"] + result["preconditions"]:
        record["study"] = study.name
    write_json(path, {"key": key, "result": result})
    return result


def build_results(cfg: RunConfig, results: dict[str, dict[str, Any]], requires: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """results.json: the claims (C0..C6) apart from the preconditions that gate them, and every
    study's full result. A claim whose study requires a failed precondition is downgraded here."""
    results = json.loads(json.dumps(json_safe(results)))  # a copy: the cached study files stay as measured
    checks = {p["id"]: p for r in results.values() for p in r["preconditions"]}
    for name, result in results.items():
        apply_preconditions(result, requires.get(name, ()), checks)
    config = {k: v for k, v in cfg.to_dict().items() if k != "run"}  # the executor changes no result
    return json_safe({"taskloc_version": __version__, "preset": cfg.preset, "config": config,
                      "claims": [c for r in results.values() for c in r["claims"]],
                      "preconditions": [p for r in results.values() for p in r["preconditions"]],
                      "studies": results})


def describe_studies(verbose: bool = False) -> None:
    """`taskloc studies`: each study, the claims it tests and its preconditions; with
    ``verbose``, every setting with its default and help text."""
    from rich.console import Console
    from rich.table import Table

    console = Console()  # a listing: stdout, unlike progress and errors
    table = Table(title="taskloc studies (claims: `taskloc claims`, docs/claims.md)")
    for col in ("study", "claims", "requires", "what it does"):
        table.add_column(col)
    for name in STUDIES.names():
        s = STUDIES.get(name)
        table.add_row(name, ", ".join(s.claims) or "-", ", ".join(s.requires) or "-", s.summary)
    console.print(table)
    if not verbose:
        console.print("[dim]taskloc studies --verbose lists every setting (set with --set studies.NAME.KEY=VALUE).[/dim]")
        return
    shared = Table(title="run settings (--set KEY=VALUE)")
    for col in ("setting", "default", "what it does"):
        shared.add_column(col, overflow="fold")
    for key, default, text in RunConfig.describe_fields():
        shared.add_row(key, "" if default == "" else json.dumps(json_safe(default)), text)
    console.print(shared)
    for name in STUDIES.names():
        t = Table(title=f"studies.{name}")
        for col in ("setting", "default", "what it does"):
            t.add_column(col, overflow="fold")
        for key, default, text in STUDIES.get(name).Config.describe_fields(f"studies.{name}."):
            t.add_row(key, "" if default == "" else json.dumps(json_safe(default)), text)
        console.print(t)
