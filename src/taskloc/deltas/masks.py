"""Selection rules for grafting and imposed sparse fine-tuning: which k entries of a delta
(tuned - base, per tensor) to keep.

    mask = select("saliency", base, tuned, k, model=model, data=pairs)   # {name: bool tensor}
    grafted = apply_mask(base, tuned, mask, scale=rule_scale("saliency", k, n))

Every rule returns a global mask over the floating tensors the two state dicts share, holding
exactly k True entries:

    magnitude  the k largest |delta| (exact, ties to earlier tensors then lower flat indices)
    random     k entries uniformly at random (seeded)
    dare       the same random entries, grafted at scale 1/keep = n/k (DARE's rescale, which keeps
               the expected delta unchanged)
    saliency   the k largest |delta * dL/dtheta| with the gradient of the task's answer loss taken
               at the BASE: the graft starts from the base, and the first-order change of the loss
               when entry i is added is delta_i * g_i(base). At the tuned model the fine-tune has
               driven the gradient to about zero, so first-order scores there rank by noise.
               (|.| as in SNIP and the grafting literature.)
    learned    a sigmoid-relaxed mask optimised on the task's training data (learned.py)

Rules that read a model (saliency, learned) take ``model`` (a LanguageModel whose parameter
names are the state dicts' names) and ``data``: (prompt, target) training pairs, never the
evaluation split. The model's weights are never modified: losses are computed with
torch.func.functional_call on tensors the rule owns.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from ..errors import CheckpointError, ConfigError
from ..registry import Registry
from .api import global_topk_mask
from .inmemory import random_mask

Mask = dict[str, torch.Tensor]  # name -> bool tensor of the tensor's shape
StateDict = Mapping[str, torch.Tensor]
Pairs = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class SelectOptions:
    """What the model-based rules need besides the delta. steps / lr / batch_size / sparsity /
    init_logit configure the learned mask (learned.py); saliency reads batch_size only.

    sparsity prices each kept entry at sparsity / k of the task loss: an entry stays only while its
    share of the loss reduction beats that price. Too high and entries that help only together
    (a unit dead at the base revived by two entries) never start rising; too low and entries of
    tiny consistent help (dense small updates) crowd in. 0.1 sits between on the planted-skill
    test model (tests/deltas/test_masks.py), where 0.03 and 0.3 both lose recall."""

    model: object | None = None  # a LanguageModel; typed loosely so this module imports no models
    data: Pairs | None = None
    seed: int = 0
    steps: int = 200
    lr: float = 0.1
    batch_size: int = 32
    sparsity: float = 0.1
    init_logit: float = 3.0
    init: str = "magnitude"  # the rule whose top k the learned mask starts from: magnitude (Panigrahi et al.) or saliency
    # the task loss's gradient at the base over ``data`` (learned.loss_gradient), when the caller
    # already has it: it depends on the model, the base and the data only, not on the delta, so a
    # caller choosing many masks on the same data computes it once
    gradient: Mapping[str, torch.Tensor] | None = None


SETTINGS = tuple(f.name for f in fields(SelectOptions) if f.name not in ("model", "data", "seed", "gradient"))  # select(**settings)


@dataclass(frozen=True)
class Rule:
    name: str
    choose: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], int, SelectOptions], Mask]  # (base, deltas, k, options)
    help: str
    needs_model: bool = False
    rescaled: bool = False  # grafted at scale n / k (DARE)

    def scale(self, k: int, n: int) -> float:
        """The factor the kept deltas are multiplied by when grafted."""
        return n / k if self.rescaled and k else 1.0


SELECTORS: Registry[Rule] = Registry("selection rule")


def register(rule: Rule) -> Rule:
    return SELECTORS.register(rule.name)(rule)


def deltas_of(base: StateDict, tuned: StateDict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(float32 base, float32 tuned - base) for every floating tensor of ``base``, in its order;
    ``tuned`` must hold the same names with the same shapes."""
    missing = [n for n in base if n not in tuned]
    extra = [n for n in tuned if n not in base]
    if missing or extra:
        raise CheckpointError(f"base and tuned hold different tensors (only in base: {missing[:3]}, only in tuned: {extra[:3]}); "
                              "select over two states of one architecture.")
    base32, deltas = {}, {}
    for name, b in base.items():
        if not b.dtype.is_floating_point:
            continue
        t = tuned[name]
        if t.shape != b.shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(b.shape)} in the base but {tuple(t.shape)} in the tuned state.")
        base32[name] = b.detach().float()
        deltas[name] = t.detach().float() - base32[name]
    return base32, deltas


def count_of(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


def select(name: str, base: StateDict, tuned: StateDict, k: int, *, model: object | None = None, data: Pairs | None = None,
           seed: int = 0, gradient: Mapping[str, torch.Tensor] | None = None, **learned: float | int) -> Mask:
    """A global mask of exactly ``k`` entries over tuned - base, chosen by rule ``name``
    (SELECTORS: magnitude, random, dare, saliency, learned), over the floating tensors of ``base``.
    ``learned`` takes the optional SelectOptions SETTINGS (steps, lr, batch_size, sparsity, init_logit, init);
    ``gradient`` is the task loss's gradient at the base over ``data`` when the caller has it."""
    rule = SELECTORS.get(name)
    base32, deltas = deltas_of(base, tuned)
    n = sum(d.numel() for d in deltas.values())
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ConfigError(f"k={k!r} must be a whole number of entries between 0 and {n:,} (the size of the delta).")
    unknown = sorted(set(learned) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown selection option(s) {unknown}; known: {', '.join(SETTINGS)}.")
    options = SelectOptions(model=model, data=data, seed=seed, gradient=gradient, **learned)  # type: ignore[arg-type]
    if rule.needs_model:
        _check_model_inputs(rule.name, options, deltas)
    mask = rule.choose(base32, deltas, k, options)
    if count_of(mask) != k:  # every rule promises exactly k: a miss is a bug, not a user error
        raise AssertionError(f"selection rule {name!r} chose {count_of(mask)} entries, not {k}")
    return mask


def rule_scale(name: str, k: int, n: int) -> float:
    """Scale at which rule ``name``'s kept deltas are grafted (n / k for dare, else 1)."""
    return SELECTORS.get(name).scale(k, n)


# Up to this many entries the scores are ranked by one in-memory sort (~10x faster than the
# streaming selection for TinyLM-sized deltas); beyond it, streamed, so memory stays bounded.
IN_MEMORY_TOP_K = 1 << 27


def top_k_scores(scores: Mapping[str, torch.Tensor], k: int) -> Mask:
    """Exactly the k largest |scores|, over all tensors together (the exact global top-k of
    deltas.api, so ties go to earlier tensors, then lower flat indices)."""
    names = [n for n in scores if scores[n].dtype.is_floating_point]  # as the streamed selection: floating tensors only
    if sum(scores[n].numel() for n in names) > IN_MEMORY_TOP_K:
        return global_topk_mask(scores, int(k))
    # |.| in float32, as the streamed selection ranks (magnitude passes the signed delta itself)
    flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float32).abs() for n in names])  # (N,) in dict order
    if not bool(torch.isfinite(flat).all()):
        return global_topk_mask(scores, int(k))  # which names the tensor holding NaN or inf, in one line
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    # a stable descending sort keeps equal scores in flat order: ties go to earlier tensors, lower indices
    chosen[torch.sort(flat, descending=True, stable=True).indices[: int(k)]] = True
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = chosen[start : start + size].view(scores[n].shape)
        start += size
    return masks


def apply_mask(base: StateDict, tuned: StateDict, mask: Mapping[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The graft: base + scale * mask * (tuned - base), in the base's dtypes. At scale 1 the kept
    entries are the tuned entries themselves (bit for bit); otherwise float32 arithmetic. Tensors
    the mask does not name stay the base's."""
    out = {}
    for name, b in base.items():
        m = mask.get(name)
        if m is None:
            out[name] = b.clone()
        elif scale == 1:
            out[name] = torch.where(m, tuned[name], b)
        else:
            moved = b.float() + scale * (tuned[name].float() - b.float())
            out[name] = torch.where(m, moved.to(b.dtype), b)
    return out


def _check_model_inputs(rule: str, options: SelectOptions, deltas: Mapping[str, torch.Tensor]) -> None:
    if options.model is None:
        raise ConfigError(f"selection rule {rule!r} runs the model on training data: pass model= (and data=).")
    if not options.data:
        raise ConfigError(f"selection rule {rule!r} needs training examples: pass data= as a non-empty list of (prompt, target) pairs "
                          "from the task's training split (never its evaluation split).")
    names = set(options.model.state_dict())  # type: ignore[attr-defined]
    unknown = [n for n in deltas if n not in names]
    if unknown:
        raise ConfigError(f"the model has no tensors named {unknown[:3]}; the base and tuned states must be the model's own state dicts.")
    if options.batch_size < 1 or options.steps < 0 or not options.lr > 0 or options.sparsity < 0:
        raise ConfigError(f"learned-mask settings out of range: batch_size={options.batch_size} >= 1, steps={options.steps} >= 0, "
                          f"lr={options.lr} > 0 and sparsity={options.sparsity} >= 0 are required.")


# --- the rules ------------------------------------------------------------------------------------

def _magnitude(base: dict, deltas: dict, k: int, options: SelectOptions) -> Mask:
    return top_k_scores(deltas, k)


def _random(base: dict, deltas: dict, k: int, options: SelectOptions) -> Mask:
    shapes = {name: d.shape for name, d in deltas.items()}
    n = sum(d.numel() for d in deltas.values())
    # random_mask draws round(fraction * n) entries; fraction k / n gives back k exactly (|error| << 0.5)
    return random_mask(shapes, k / n if n else 0.0, seed=options.seed)


def _saliency(base: dict, deltas: dict, k: int, options: SelectOptions) -> Mask:
    from .learned import loss_gradient

    grads = options.gradient or loss_gradient(options.model, base, options.data, batch_size=options.batch_size)  # type: ignore[arg-type]
    return top_k_scores({name: (d * grads[name]).abs() for name, d in deltas.items()}, k)


def _learned(base: dict, deltas: dict, k: int, options: SelectOptions) -> Mask:
    from .learned import learn_mask

    return learn_mask(options.model, base, deltas, k, options)  # type: ignore[arg-type]


register(Rule("magnitude", _magnitude, "the k largest |tuned - base|"))
register(Rule("random", _random, "k entries uniformly at random (seeded), unscaled"))
register(Rule("dare", _random, "the random entries, grafted at scale n/k (DARE's rescale)", rescaled=True))
register(Rule("saliency", _saliency, "the k largest |delta * gradient of the task loss at the base|", needs_model=True))
register(Rule("learned", _learned, "a sigmoid-relaxed mask optimised on training data, binarised to its top k", needs_model=True))
