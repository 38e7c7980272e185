"""Runs studies: resolves and validates everything first (so bad input leaves nothing behind),
then shares cached artefacts (the pretrained base is trained once per config and reused by every
study), writes results.json and report.html.

A run directory is the unit of reproducibility:
    config.json        the full resolved configuration
    metrics.jsonl      training losses and other per-step logs (append-only)
    artefacts/         cached models, keyed by config fingerprint (safetensors with metadata)
    studies/NAME.json  each finished study's result, reused when the run is resumed
    results.json       every study's result and the verdict table; same seed -> same bytes
    timings.json       wall-clock seconds (kept out of results.json so that stays reproducible)
    report.html        self-contained report
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, apply_overrides, field, load_config_file, load_preset
from .device import pick_device
from .errors import ConfigError, DataError, RunDirError
from .io import MemoryCheckpoint, fingerprint
from .io.atomic import json_safe, write_json, write_safetensors, write_text
from .models import LoadedModel, ModelConfig, TinyLM, codec_of, load_model, load_weights, weights_of
from .progress import console
from .studies import STUDIES, Study
from .tasks import VOCAB_SIZE, Task
from .tasks.mixture import DataConfig, TaskMixture
from .tasks.scoring import accuracy_table
from .train import TrainConfig, checkpoint_step, train


@dataclass
class EvalConfig(Config):
    examples: int = field(200, "examples per (task, level) cell in every evaluation")
    seed: int = field(1234, "seed of the fixed evaluation sets")

    def validate(self) -> None:
        if self.examples < 1:
            raise ConfigError(f"eval.examples={self.examples} must be at least 1.")


@dataclass
class RunConfig(Config):
    preset: str = field("default", "preset the settings started from")
    seed: int = field(0, "seed for model initialisation and training data")
    model: ModelConfig = field(ModelConfig(), "TinyLM architecture")
    data: DataConfig = field(DataConfig(), "tasks and levels")
    pretrain: TrainConfig = field(TrainConfig(), "pretraining of the base model")
    eval: EvalConfig = field(EvalConfig(), "evaluation sets")
    studies: dict[str, dict[str, Any]] = field({}, "per-study settings, by study name")
    model_path: str = field("", "study this model instead of pretraining TinyLM: a taskloc run directory or "
                                ".safetensors, or a local Hugging Face causal-LM folder with its tokenizer (--model)")

    def validate(self) -> None:
        if self.model.vocab_size != VOCAB_SIZE:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size} must equal the task vocabulary size {VOCAB_SIZE}.")


def resolve_config(preset: str, config_file: Path | None = None, overrides: tuple[str, ...] = (),
                   model_path: Path | None = None) -> RunConfig:
    data = load_preset(preset)
    if config_file is not None:
        data = _deep_merge(data, load_config_file(config_file))
    data = apply_overrides(data, list(overrides))
    if "preset" in data:
        raise ConfigError("'preset' is chosen with --preset, not set in a config file or with --set.")
    data["preset"] = preset
    if model_path is not None:
        data["model_path"] = str(model_path)
    if data.get("model_path"):  # from --model, a config file or --set: one spelling per model
        data["model_path"] = str(Path(str(data["model_path"])).expanduser().resolve())
    if isinstance(data.get("model", {}), dict):
        data.setdefault("model", {}).setdefault("vocab_size", VOCAB_SIZE)
    return RunConfig.from_dict(data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RunContext:
    """What a study sees: the config, the device, the tasks, cached artefacts and a log."""

    def __init__(self, run_dir: Path, cfg: RunConfig, device: torch.device, tasks: list[Task],
                 source: LoadedModel | None = None) -> None:
        self.run_dir, self.cfg, self.device, self.tasks = run_dir, cfg, device, tasks
        self.source = source  # the model given with --model; None: pretrain the embedded TinyLM
        # content fingerprint of the --model weights (sampled bytes of every tensor; milliseconds)
        self.source_fingerprint = fingerprint(MemoryCheckpoint(weights_of(source.model))) if source else None
        self._base: tuple[TinyLM, list[dict]] | None = None

    def log(self, record: dict[str, Any]) -> None:
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _forget_log_after(self, phase: str, step: int) -> None:
        """Drop the log lines of ``phase`` past ``step`` that a killed run wrote after its last
        checkpoint, so a resumed run's metrics.jsonl has each step once."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by the kill
                continue
            if not _logged_after(record, phase, step):
                kept.append(line)
        write_text(path, "".join(line + "\n" for line in kept))

    def artefact_dir(self, kind: str, fingerprint: str) -> Path:
        path = self.run_dir / "artefacts" / f"{kind}-{fingerprint}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_model(self, seed: int | None = None) -> TinyLM:
        """A model of the base's architecture: a fresh TinyLM, or a copy of the --model model
        (whose weights callers replace with ``load_weights``)."""
        if self.source is not None:
            return copy.deepcopy(self.source.model)
        torch.manual_seed(self.cfg.seed if seed is None else seed)
        return TinyLM(self.cfg.model).to(self.device)

    def accuracy(self, model: TinyLM, levels: list[int] | None = None, tasks: list[Task] | None = None):
        levels = levels or self.cfg.data.train_levels + self.cfg.data.ood_levels
        return accuracy_table(model, tasks or self.tasks, levels, self.cfg.eval.examples, self.cfg.eval.seed)

    def base_model(self) -> tuple[TinyLM, list[dict]]:
        """The pretrained base and its learning curve; trained once per config, then loaded."""
        if self._base is None:
            if self.source is not None:  # given, not trained: its "learning curve" is one evaluation
                self._base = (self.source.model, [{"step": 0, "accuracy": self.accuracy(self.source.model)}])
            else:
                self._base = self._load_or_pretrain()
        return self._base

    @property
    def base_key(self) -> str:
        cfg = self.cfg
        key = Config.fingerprint(_Key(cfg.seed, cfg.model, cfg.data, cfg.pretrain, cfg.eval))
        # the examples themselves (task files' contents, generator code) enter through the data
        data = TaskMixture(self.tasks, cfg.data.train_levels, cfg.seed, cfg.data.weights).fingerprint()
        return hashlib.sha256((key + data).encode()).hexdigest()[:16]

    def finetune(self, label: str, key: dict[str, Any], start: dict[str, torch.Tensor], mixture: Any,
                 train_cfg: TrainConfig, mask: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Fine-tune from ``start`` weights; cached (and resumable) under artefacts/ft-<hash of key>.
        Returns the tuned weights on the CPU. ``key`` names what makes this run different from
        others (task, seed, regime); the start weights, the mask, the training config and the data
        fingerprint are hashed into it here, so a changed ingredient never reuses a stale run."""
        model = self.new_model()
        blob = json.dumps({**key, "start": _tensor_digest(start), "mask": _tensor_digest(mask) if mask else None,
                           "train": train_cfg.to_dict(), "data": mixture.fingerprint(),
                           "codec": codec_of(model).fingerprint}, sort_keys=True)
        folder = self.artefact_dir("ft", hashlib.sha256(blob.encode()).hexdigest()[:16])
        final = folder / "model.safetensors"
        if final.exists():
            return load_model_tensors(final)
        load_weights(model, start)
        checkpoint = folder / "checkpoint.safetensors"
        train(model, train_cfg, mixture, checkpoint=checkpoint, mask=mask, label=label,
              meta={"kind": "finetune", "key": blob}, log=lambda r: None)
        tensors = weights_of(model)
        write_safetensors(final, tensors, {"taskloc": blob})
        checkpoint.unlink(missing_ok=True)
        return tensors

    def _load_or_pretrain(self) -> tuple[TinyLM, list[dict]]:
        cfg = self.cfg
        folder = self.artefact_dir("base", self.base_key)
        final = folder / "model.safetensors"
        model = self.new_model()
        if final.exists():
            load_weights(model, load_model_tensors(final))
            return model, json.loads((folder / "history.json").read_text())
        mixture = TaskMixture(self.tasks, cfg.data.train_levels, cfg.seed, cfg.data.weights)
        checkpoint = folder / "checkpoint.safetensors"
        if checkpoint.exists():  # resuming: the steps after the checkpoint are logged again
            self._forget_log_after("pretrain base", checkpoint_step(checkpoint))
        history = train(model, cfg.pretrain, mixture, checkpoint=checkpoint,
                        evaluate=lambda m: {"accuracy": self.accuracy(m)}, label="pretrain base",
                        meta={"kind": "pretrain", "data_hash": mixture.fingerprint()},
                        log=lambda r: self.log(r) if r["step"] % 10 == 0 else None)
        write_json(folder / "history.json", history)
        write_safetensors(final, weights_of(model), {
            "taskloc": json.dumps({"kind": "base", "model": cfg.model.to_dict(), "step": cfg.pretrain.steps,
                                   "data_hash": mixture.fingerprint(), "seed": cfg.seed})})
        checkpoint.unlink(missing_ok=True)
        return model, history


def _logged_after(record: dict[str, Any], phase: str, step: int) -> bool:
    return record.get("phase") == phase and isinstance(record.get("step"), int) and record["step"] > step


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Key(Config):
    seed: int = 0
    model: ModelConfig = field(ModelConfig(), "")
    data: DataConfig = field(DataConfig(), "")
    pretrain: TrainConfig = field(TrainConfig(), "")
    eval: EvalConfig = field(EvalConfig(), "")


def load_model_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def resolve_studies(names: list[str], cfg: RunConfig) -> list[tuple[Study, Config]]:
    names = names or STUDIES.names()
    unknown_cfg = sorted(set(cfg.studies) - set(STUDIES.names()))
    if unknown_cfg:
        STUDIES.get(unknown_cfg[0])  # raises with did-you-mean
    out = []
    for name in names:
        study_cls = STUDIES.get(name)
        study_cfg = study_cls.Config.from_dict(cfg.studies.get(name, {}), f"studies.{name}.")
        study = study_cls()
        study.check(study_cfg, cfg)  # settings that only make sense against the run's data
        out.append((study, study_cfg))
    return out


def run_studies(names: list[str], *, preset: str = "default", out: Path | None = None,
                config_file: Path | None = None, overrides: tuple[str, ...] = (), device: str = "auto",
                model: Path | None = None) -> Path:
    # Everything that can be wrong with the input is checked before the run directory exists.
    cfg = resolve_config(preset, config_file, tuple(overrides), model)
    plan = resolve_studies(list(names), cfg)
    tasks = cfg.data.load_tasks()
    dev = pick_device(device)
    source = load_study_model(Path(cfg.model_path), device) if cfg.model_path else None
    if source is None or isinstance(source.model, TinyLM):
        _check_char_vocabulary(tasks)
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
        ctx = RunContext(run_dir, cfg, dev, tasks, source)
        results, timings = {}, {}
        for study, study_cfg in plan:
            started = time.perf_counter()
            results[study.name] = _run_cached(ctx, study, study_cfg)
            timings[study.name] = round(time.perf_counter() - started, 2)
        document = build_results(cfg, results)
        write_json(run_dir / "results.json", document)
        write_json(run_dir / "timings.json", {"seconds": timings, "device": str(dev), "threads": torch.get_num_threads()})
        from .report import write_report

        write_report(run_dir, document)
    except Exception:
        if created:  # a run that failed before producing anything leaves nothing behind
            if not any((run_dir / "artefacts").glob("*/*.safetensors")):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def load_study_model(path: Path, device: str) -> LoadedModel:
    """The --model model, checked for what studies need: next-token logits and a way to encode
    task text. Fails here, before a run directory exists."""
    # float32 whatever the checkpoint's dtype: fine-tuning in bf16/fp16 rounds small late updates
    # to zero and snaps deltas to a coarse grid, which would bias every concentration figure
    loaded = load_model(path, device, dtype=torch.float32)
    kind = getattr(loaded.model, "kind", "causal-lm")
    if kind != "causal-lm":
        raise ConfigError(f"{path} is a {loaded.kind} {kind}; studies train and score next-token answers, "
                          "so they need a causal LM (a taskloc TinyLM, or a Llama, Qwen2 or GPT-2 folder).")
    codec = codec_of(loaded.model)  # raises when an HF model has no usable tokenizer
    rows = loaded.model.cfg.vocab_size if isinstance(loaded.model, TinyLM) else loaded.model.hf.get_input_embeddings().num_embeddings
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
    if not record.get("model_path"):
        record.pop("model_path", None)
    return record


def _run_cached(ctx: RunContext, study: Study, study_cfg: Config) -> dict[str, Any]:
    path = ctx.run_dir / "studies" / f"{study.name}.json"
    # a --model folder rewritten in place must not reuse results computed on its old weights
    key = study_cfg.fingerprint() + (ctx.source_fingerprint or "")
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("config_fingerprint") == key:
            return saved["result"]
    console.print(f"[bold]study {study.name}[/bold]: {study.summary}")
    result = study.run(ctx, study_cfg).to_dict()
    for claim in result["claims"]:
        claim["study"] = study.name
    write_json(path, {"config_fingerprint": key, "result": result})
    return result


def build_results(cfg: RunConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    claims = [c for r in results.values() for c in r["claims"]]
    return json_safe({"taskloc_version": __version__, "preset": cfg.preset, "config": cfg.to_dict(),
                       "claims": claims, "studies": results})


def describe_studies() -> None:
    from rich.table import Table

    table = Table(title="taskloc studies")
    table.add_column("study")
    table.add_column("claims")
    table.add_column("what it does")
    for name in STUDIES.names():
        s = STUDIES.get(name)
        table.add_row(name, ", ".join(s.claims) or "-", s.summary)
    console.print(table)
