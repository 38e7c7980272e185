"""StudyContext: what a study sees — the run's config, the device, the tasks, the model under
study (the pretrained TinyLM base, or the --model model), one artefact cache, and a log.

Models are built and cached through ``ArtefactCache``: the base is pretrained once per (config,
data, code) and reused by every study; a fine-tune is keyed by what makes it different (task,
seed, regime), its start weights, mask, schedule, data and the training code.
"""
from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..io import MemoryCheckpoint, fingerprint
from ..io.atomic import write_json, write_text
from ..models import LoadedModel, ModelConfig, TinyLM, codec_of, load_weights, weights_of
from ..models import lora as lora_adapters
from ..runconfig import RunConfig
from ..tasks import Task
from ..tasks.mixture import TaskMixture
from ..tasks.scoring import accuracy_table
from ..train import TrainConfig, checkpoint_step, train
from .cache import CHECKPOINT, TENSORS, ArtefactCache, code_version, tensor_digest
from .embedded import origin_of, seed_from_embedded
from .executor import Executor, Job

StateDict = dict[str, torch.Tensor]

# What produces a model's weights: an edit to any of these retrains (a stale model is never reused).
TRAINING_CODE = ("taskloc.train", "taskloc.models.tinylm", "taskloc.attention.kernels", "taskloc.models.codec",
                 "taskloc.tasks.mixture", "taskloc.tasks.synthetic", "taskloc.tasks.base", "taskloc.tasks.jsonl",
                 "taskloc.tasks.vocab")


@dataclass
class BaseModel:
    """The model every study starts from, and its learning curve (one evaluation for --model)."""

    model: torch.nn.Module
    history: list[dict[str, Any]]
    origin: str | None = None  # set when the base was copied from the package (studies/embedded.py)

    @property
    def final_accuracy(self) -> dict[str, dict[str, list[int]]]:
        return self.history[-1]["accuracy"]


class StudyContext:
    def __init__(self, run_dir: Path, cfg: RunConfig, device: torch.device, tasks: list[Task],
                 given: LoadedModel | None = None, executor: Executor | None = None) -> None:
        self.run_dir, self.cfg, self.device, self.tasks = run_dir, cfg, device, tasks
        self.given = given  # the model passed with --model; None: pretrain the embedded TinyLM
        # content fingerprint of the --model weights (sampled bytes of every tensor; milliseconds)
        self.given_fingerprint = fingerprint(MemoryCheckpoint(weights_of(given.model))) if given else None
        self.cache = ArtefactCache(run_dir / "artefacts")
        self._base: BaseModel | None = None
        # where independent jobs run (studies/executor.py); in process at this process's thread count by default
        self.executor = executor or Executor(torch.get_num_threads())
        self.study = "run"  # the study now running, for the jobs' progress (set by the runner)

    # -- logging --------------------------------------------------------------------------------
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
            if not (record.get("phase") == phase and isinstance(record.get("step"), int) and record["step"] > step):
                kept.append(line)
        write_text(path, "".join(line + "\n" for line in kept))

    # -- models ---------------------------------------------------------------------------------
    def new_model(self, seed: int | None = None) -> torch.nn.Module:
        """A model of the base's architecture: a fresh TinyLM, or a copy of the --model model
        (whose weights callers replace with ``load_weights``)."""
        if self.given is not None:
            return copy.deepcopy(self.given.model)
        torch.manual_seed(self.cfg.seed if seed is None else seed)
        return TinyLM(self.cfg.model).to(self.device)

    def accuracy(self, model: torch.nn.Module, levels: list[int] | None = None, tasks: list[Task] | None = None):
        levels = levels or self.cfg.data.train_levels + self.cfg.data.ood_levels
        return accuracy_table(model, tasks or self.tasks, levels, self.cfg.eval.examples, self.cfg.eval.seed)

    def base_model(self) -> BaseModel:
        """The pretrained base and its learning curve; trained once per config, then loaded."""
        if self._base is None:
            if self.given is not None:  # given, not trained: its "learning curve" is one evaluation
                self._base = BaseModel(self.given.model, [{"step": 0, "accuracy": self.accuracy(self.given.model)}])
            else:
                self._base = self._load_or_pretrain()
        return self._base

    def _base_ingredients(self, mixture: TaskMixture) -> dict[str, Any]:
        cfg = self.cfg
        return {"seed": cfg.seed, "model": cfg.model.to_dict(), "data": cfg.data.to_dict(), "pretrain": cfg.pretrain.to_dict(),
                "eval": cfg.eval.to_dict(), "examples": mixture.fingerprint(), "code": code_version(TRAINING_CODE)}

    def _load_or_pretrain(self) -> BaseModel:
        cfg = self.cfg
        mixture = TaskMixture(self.tasks, cfg.data.train_levels, cfg.seed, cfg.data.weights)
        model = self.new_model()

        def pretrain(folder: Path) -> StateDict:
            checkpoint = folder / CHECKPOINT
            if checkpoint.exists():  # resuming: the steps after the checkpoint are logged again
                self._forget_log_after("pretrain base", checkpoint_step(checkpoint))
            history = train(model, cfg.pretrain, mixture, checkpoint=checkpoint,
                            evaluate=lambda m: {"accuracy": self.accuracy(m)}, label="pretrain base",
                            meta={"kind": "pretrain", "data_hash": mixture.fingerprint()},
                            log=lambda r: self.log(r) if r["step"] % 10 == 0 else None)
            write_json(folder / "history.json", history)
            return weights_of(model)

        ingredients = self._base_ingredients(mixture)
        folder = self.cache.find("base", ingredients, TENSORS).parent
        # the base the package ships under this exact key (studies/embedded.py) spares the pretraining
        if seed_from_embedded(folder):
            self.log({"phase": "pretrain base", "embedded": folder.name})
        tensors = self.cache.get_or_build("base", ingredients, pretrain, TENSORS)
        load_weights(model, tensors)
        return BaseModel(model, json.loads((folder / "history.json").read_text()), origin_of(folder))

    def finetune(self, label: str, key: dict[str, Any], start: StateDict, mixture: Any, train_cfg: TrainConfig,
                 mask: dict[str, torch.Tensor] | None = None) -> StateDict:
        """Fine-tune from ``start`` weights; cached (and resumable). Returns the tuned weights on
        the CPU. ``key`` names what makes this run different from others (task, seed, regime); the
        start weights, the mask, the schedule, the data and the training code are added here, so a
        changed ingredient never reuses a stale run."""
        return self.finetune_many([Finetune(label, key, start, mixture, train_cfg, mask)])[0]

    def finetune_many(self, requests: list[Finetune]) -> list[StateDict]:
        """Independent fine-tunes as one batch of jobs (in parallel under the ray executor); the
        tuned weights in the order asked, each exactly what ``finetune`` returns for it."""
        # the codec keys the data's encoding; read from the class, not a built model (building one
        # would reseed torch's global generator in the driver as a side effect)
        codec = (codec_of(self.given.model) if self.given is not None else TinyLM.codec).fingerprint
        recipe = None if self.given is not None else (self.cfg.model, self.cfg.seed)
        jobs = []
        for r in requests:
            ingredients = {**r.key, "start": tensor_digest(r.start), "mask": tensor_digest(r.mask), "train": r.train_cfg.to_dict(),
                           "data": r.mixture.fingerprint(), "codec": codec, "code": code_version(TRAINING_CODE)}
            if r.lora is not None:  # keys without adapters stay as they were: their cached fine-tunes remain valid
                if r.mask is not None:
                    raise ValueError("a LoRA fine-tune trains its adapters only; it takes no mask")
                ingredients.update(lora=r.lora.to_dict(), lora_code=code_version(("taskloc.models.lora",)))
            build = functools.partial(_tune, recipe=recipe, train_cfg=r.train_cfg, mixture=r.mixture, label=r.label, lora=r.lora,
                                      meta={"kind": "finetune", "key": json.dumps(r.key, sort_keys=True)})
            inputs = {"start": r.start, "mask": r.mask, **({"template": self.given.model} if self.given is not None else {})}
            jobs.append(Job("ft", ingredients, build, TENSORS, r.label, inputs, str(self.device)))
        return self.executor.run(self.cache.root, jobs, self.study)

    def build(self, kind: str, ingredients: dict[str, Any], build: Callable[[Path], Any], fmt, code: tuple[str, ...]) -> Any:
        """Any other artefact (vector, statistics, merged model): cached under ``ingredients`` and
        the source of the ``code`` modules that build it."""
        return self.cache.get_or_build(kind, {**ingredients, "code": code_version(code)}, build, fmt)

    def build_many(self, kind: str, requests: list[tuple[dict[str, Any], Callable[..., Any], str]], fmt,
                   code: tuple[str, ...]) -> list[Any]:
        """Independent artefacts as one batch of jobs (in parallel under the ray executor), each
        (ingredients, build, label); ``build(folder, device=...)`` must pickle (a module-level
        function or a functools.partial of one) and computes on the device it is given."""
        version = code_version(code)
        jobs = [Job(kind, {**ingredients, "code": version}, build, fmt, label, {}, str(self.device))
                for ingredients, build, label in requests]
        return self.executor.run(self.cache.root, jobs, self.study)


@dataclass
class Finetune:
    """One fine-tune for ``finetune_many``: the arguments of ``StudyContext.finetune``."""

    label: str
    key: dict[str, Any]
    start: StateDict
    mixture: Any
    train_cfg: TrainConfig
    mask: dict[str, torch.Tensor] | None = None
    lora: lora_adapters.LoraSpec | None = None  # train low-rank adapters (base frozen), then merge them


def _tune(folder: Path, *, start: StateDict, mask: dict[str, torch.Tensor] | None, recipe: tuple[ModelConfig, int] | None,
          train_cfg: TrainConfig, mixture: Any, label: str, meta: dict[str, str], device: str,
          template: torch.nn.Module | None = None, lora: lora_adapters.LoraSpec | None = None) -> StateDict:
    """A fine-tune job: the model is made as ``StudyContext.new_model`` makes it (a seeded TinyLM,
    or a copy of the --model model), so the job needs nothing from the driver's context."""
    if recipe is not None:
        torch.manual_seed(recipe[1])
        model = TinyLM(recipe[0]).to(device)
    else:
        model = copy.deepcopy(template).to(device)
    load_weights(model, start)
    if lora is not None:
        mask = lora_adapters.attach(model, lora)  # A drawn from lora.seed's own generator
    train(model, train_cfg, mixture, checkpoint=folder / CHECKPOINT, mask=mask, label=label, meta=meta, log=lambda r: None)
    if lora is not None:
        lora_adapters.merge(model)
    return weights_of(model)


def study_settings(cfg: RunConfig, name: str, config_cls: type[Config]) -> Config:
    """A study's typed settings from ``studies.NAME`` of the run config."""
    return config_cls.from_dict(cfg.studies.get(name, {}), f"studies.{name}.")
