"""The run's configuration: what a preset, a config file, --set overrides and --model resolve to.
Every study reads its own settings from ``studies.NAME`` and the shared ones (model, data,
pretraining, evaluation) from here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import Config, apply_overrides, field, load_config_file, load_preset
from .errors import ConfigError
from .models import ModelConfig
from .tasks import VOCAB_SIZE
from .tasks.mixture import DataConfig
from .train import TrainConfig


@dataclass
class EvalConfig(Config):
    section = "eval."
    examples: int = field(200, "examples per (task, level) cell in every evaluation")
    seed: int = field(1234, "seed of the fixed evaluation sets")

    def validate(self) -> None:
        if self.examples < 1:
            raise ConfigError(f"{self.key('examples')}={self.examples} must be at least 1.")


@dataclass
class ExecutorConfig(Config):
    """How a run executes its jobs: never what it computes, so it is left out of config.json and
    results.json (a run started in process resumes under Ray and gives the same bytes)."""

    section = "run."
    executor: Literal["inprocess", "ray"] = field("inprocess", "where independent jobs (fine-tunes, artefact builds) run: "
                                                               "inprocess, or ray (pip install 'taskloc[ray]')")
    ray_address: str = field("", "ray: address of an existing cluster (e.g. auto, ray://HOST:10001; the run directory must be on "
                                 "storage every node mounts at the same path); empty: a local Ray started on demand")
    workers: int = field(0, "ray, local: CPUs the local Ray may use (0: one per core)")
    threads: int = field(0, "torch threads of every job (0: this process's count, what an in-process run has always used); CPU "
                            "results are byte-identical across executors at one thread count, not across thread counts")
    gpus_per_job: float = field(1.0, "ray, on a CUDA device: GPUs each job asks for (a fraction packs jobs onto one GPU)")
    max_retries: int = field(3, "ray: retries of a job whose worker died (it resumes from its checkpoint)")

    def validate(self) -> None:
        for name in ("workers", "threads", "max_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 0.")
        if not self.gpus_per_job > 0:
            raise ConfigError(f"{self.key('gpus_per_job')}={self.gpus_per_job} must be positive.")


@dataclass
class RunConfig(Config):
    preset: str = field("default", "preset the settings started from")
    seed: int = field(0, "seed for model initialisation and training data")
    model: ModelConfig = field(ModelConfig(), "TinyLM architecture")
    data: DataConfig = field(DataConfig(), "tasks and levels")
    pretrain: TrainConfig = field(TrainConfig(), "pretraining of the base model")
    eval: EvalConfig = field(EvalConfig(), "evaluation sets")
    studies: dict[str, dict[str, Any]] = field({}, "per-study settings, by study name")
    run: ExecutorConfig = field(ExecutorConfig(), "how jobs execute (not part of the results)")
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
