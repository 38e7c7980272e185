"""One readable training loop for every regime: pretraining on a task mixture, fine-tuning on
one task, fine-tuning under a parameter mask, multi-task mixed and sequential (a list of phases).

Checkpoints are safetensors holding the model, the optimizer state and the step; a killed run
resumes from the last one and, because batches are a pure function of (seed, step) and CPU
arithmetic is deterministic, ends with bit-identical weights.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .config import Config, field
from .errors import ConfigError
from .io.atomic import write_json, write_safetensors
from .models import LanguageModel, codec_of, load_weights, weights_of
from .progress import progress_bar
from .tasks.mixture import TaskMixture

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor of the parameter's shape


@dataclass
class TrainConfig(Config):
    steps: int = field(1000, "optimizer steps")
    batch_size: int = field(128, "examples per step")
    lr: float = field(3e-3, "peak learning rate (AdamW)")
    warmup: int = field(50, "linear warm-up steps")
    min_lr_frac: float = field(0.1, "cosine decay floor as a fraction of lr")
    weight_decay: float = field(0.0, "AdamW weight decay")
    grad_clip: float = field(1.0, "max global gradient norm")
    eval_every: int = field(200, "steps between evaluations (learning curves)")
    ckpt_every: int = field(100, "steps between resumable checkpoints")
    optimizer: Literal["adamw", "sgd"] = field("adamw", "AdamW, or plain SGD with momentum (the grafting paper's fine-tuning setting)")
    momentum: float = field(0.9, "SGD momentum (optimizer = sgd)")

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 1.")
        if not self.lr > 0:
            raise ConfigError(f"{self.key('lr')}={self.lr} must be positive.")
        if self.warmup < 0 or not 0 <= self.min_lr_frac <= 1 or self.grad_clip <= 0 or self.weight_decay < 0:
            raise ConfigError(f"{self.key('warmup')}={self.warmup} must be >= 0, {self.key('min_lr_frac')}={self.min_lr_frac} in [0, 1], "
                              f"{self.key('grad_clip')}={self.grad_clip} > 0 and {self.key('weight_decay')}={self.weight_decay} >= 0.")


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(model: LanguageModel, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over answer tokens only (prompt tokens are given, not learned), averaged per
    example first: a one-letter answer weighs as much as a twenty-token trace, so tasks with long
    answers do not drown out the others in a mixture."""
    logits = model(inputs)  # (B, T, V)
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none") * mask  # (B, T)
    return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(path: Path, model: LanguageModel, opt: torch.optim.Optimizer, step: int, history: list, meta: dict) -> None:
    tensors = {f"model.{k}": v for k, v in weights_of(model).items()}
    tensors.update(_optimizer_tensors(opt))
    metadata = {"step": str(step), "history": json.dumps(history), **{k: str(v) for k, v in meta.items()}}
    write_safetensors(path, tensors, metadata)


def checkpoint_step(path: Path) -> int:
    """The step a resumable checkpoint was written at (read from its header only)."""
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def load_checkpoint(path: Path, model: LanguageModel, opt: torch.optim.Optimizer) -> tuple[int, list]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")})
    return int(meta["step"]), json.loads(meta["history"])


def train(
    model: LanguageModel,
    cfg: TrainConfig,
    mixture: TaskMixture,
    *,
    checkpoint: Path | None = None,
    evaluate: Callable[[LanguageModel], dict] | None = None,
    mask: Mask | None = None,
    label: str = "train",
    meta: dict | None = None,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place for cfg.steps steps on batches from ``mixture``.

    checkpoint: resumable state file; resumed from when present. The caller deletes it once the
                final weights are safely written (a kill in between then costs nothing).
    evaluate:   model -> metrics dict, called every cfg.eval_every steps and at the end; the
                history of those calls (the learning curve) is returned.
    mask:       when given, only entries where mask is True change: gradients are masked so Adam's
                moments stay clean, and masked-out entries are restored after every step so that
                no weight decay or numerical drift can move them.
    """
    device = model.device
    codec = codec_of(model)
    params = dict(model.named_parameters())
    if mask is not None:
        unknown = sorted(set(mask) - set(params))
        if unknown:
            raise ConfigError(f"mask names parameters the model lacks: {unknown[:3]}.")
        frozen = {n: p.detach().clone() for n, p in params.items() if n in mask}
        for n, p in params.items():
            if n not in mask:
                p.requires_grad_(False)
    trained = [p for p in params.values() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(trained, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, history = 0, []
    if checkpoint is not None and checkpoint.exists():
        start, history = load_checkpoint(checkpoint, model, opt)
    model.train()
    with progress_bar(label, total=cfg.steps, completed=start) as advance:
        for step in range(start, cfg.steps):
            inputs, labels, ans = (t.to(device) for t in codec.encode_batch(
                [(e.prompt, e.target) for e in mixture.batch(step, cfg.batch_size)]))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = answer_loss(model, inputs, labels, ans)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mask is not None:
                for n, m in mask.items():
                    if params[n].grad is not None:
                        params[n].grad.mul_(m.to(params[n].device, params[n].dtype))
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if mask is not None:
                with torch.no_grad():
                    for n, m in mask.items():
                        params[n].copy_(torch.where(m.to(params[n].device, torch.bool), params[n], frozen[n]))
            done = step + 1
            if log is not None:
                log({"phase": label, "step": done, "loss": round(loss.item(), 6), "lr": lr_at(step, cfg)})
            if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                model.eval()
                history.append({"step": done, **evaluate(model)})
                model.train()
            if checkpoint is not None and done % cfg.ckpt_every == 0 and done < cfg.steps:
                save_checkpoint(checkpoint, model, opt, done, history, meta or {})
            advance(1, loss=loss.item())
    model.eval()
    for p in params.values():
        p.requires_grad_(True)
    return history


@dataclass
class Phase:
    """One stage of sequential training: its schedule, its data and a label."""

    cfg: TrainConfig
    mixture: TaskMixture
    label: str
    mask: Mask | None = None


def train_sequential(model: LanguageModel, phases: list[Phase], folder: Path,
                     evaluate: Callable[[LanguageModel], dict] | None = None) -> list[list[dict]]:
    """Train through ``phases`` in order (task A, then task B, ...), e.g. to measure forgetting.

    Each finished phase leaves its weights in ``folder/phase-<i>-<hash>.safetensors``; a resumed run
    loads the last finished phase and continues inside the next one from its checkpoint.
    Returns each phase's learning-curve history.
    """
    from safetensors.torch import load_file

    histories = []
    chain = hashlib.sha256()
    for i, phase in enumerate(phases):
        # Files are named by a hash of this phase and every phase before it, so a reordered or
        # edited list of phases never picks up another sequence's weights.
        chain.update(json.dumps([phase.label, phase.cfg.to_dict(), phase.mixture.fingerprint(), phase.mask is not None]).encode())
        stem = f"phase-{i}-{chain.hexdigest()[:12]}"
        done = folder / f"{stem}.safetensors"
        history_file = folder / f"{stem}.json"
        if done.exists():
            load_weights(model, load_file(str(done)))
            histories.append(json.loads(history_file.read_text()))
            continue
        history = train(model, phase.cfg, phase.mixture, checkpoint=folder / f"{stem}.checkpoint.safetensors",
                        evaluate=evaluate, mask=phase.mask, label=phase.label)
        write_json(history_file, history)
        write_safetensors(done, weights_of(model), {"phase": str(i), "label": phase.label})
        (folder / f"{stem}.checkpoint.safetensors").unlink(missing_ok=True)
        histories.append(history)
    return histories
