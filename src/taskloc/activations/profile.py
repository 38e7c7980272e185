"""Sparsity of a model's activations over a prompts file, read with running statistics.

For every chosen site, each prompt's activation is reduced as the forward pass happens:

- at the prompt's last real token (the last non-padding position, as the paper measures it):
  every ``metrics.metric_profile`` metric of that (D,) vector;
- over all its real tokens: the same metrics per token, averaged over the prompt's tokens;
- for localisation, per-dimension running moments (``RunningMoments``) of the lowest and of the
  highest difficulty level, at the last token and over all tokens.

No activation outlives its forward pass: what is kept is one float64 per (prompt, site, metric,
mode) - what rank correlations and bootstraps over prompts need - and 4 x D moments per site,
so memory does not depend on the number of prompts beyond those scalars.

Prompts run in batches of one difficulty level, sorted by length (little padding), right-padded;
a causal model needs no attention mask for that, an encoder (BERT) gets one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..hooks import capture, resolve_sites
from ..metrics import metric_profile
from ..models.load import LoadedModel
from ..progress import progress_bar
from .prompts import Prompts
from .reducers import RunningMoments, select_tokens

MODES = ("last", "all")  # last prompt token; every real token, averaged per prompt
DEFAULT_SITES = ["blocks.*.hook_resid_post"]


@dataclass(frozen=True)
class Levels:
    """Difficulty levels: each distinct value, or equal-count bins when there are more than asked."""

    names: list[str]
    of_prompt: np.ndarray  # (N,) int: each prompt's level, 0 = lowest difficulty
    binned: bool

    def __len__(self) -> int:
        return len(self.names)


def difficulty_levels(difficulty: np.ndarray, max_levels: int) -> Levels:
    if max_levels < 2:
        raise ConfigError(f"--levels {max_levels}: at least 2 difficulty levels are needed to compare them.")
    values = np.unique(difficulty)
    if values.size <= max_levels:
        return Levels([f"{v:g}" for v in values], np.searchsorted(values, difficulty), False)
    # Equal-count bins on the quantiles; equal difficulties always share a bin.
    edges = np.unique(np.quantile(difficulty, np.linspace(0.0, 1.0, max_levels + 1)))
    of = np.searchsorted(edges[1:-1], difficulty, side="right")
    used = np.unique(of)
    of = np.searchsorted(used, of)  # renumber without empty bins
    names = [f"{difficulty[of == i].min():g}-{difficulty[of == i].max():g}" for i in range(used.size)]
    return Levels(names, of, True)


@dataclass
class _Batch:
    """What the reducers need to know about the batch about to run (set before each pass)."""

    index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (B,) prompt indices
    extreme: int | None = None  # 0: lowest level, 1: highest level, None: neither


class SiteProfile:
    """The reducer of one site: per-prompt metrics (last token, all-token mean) and the moments of
    the two extreme levels. ``values[mode]`` is (N, M) float64 in ``metric_names`` order.

    ``update`` (in the hook) only selects the rows and folds the moments; the metrics of every
    site's rows are computed after the pass by ``flush``, in one ``metric_profile`` call for all
    sites of a width: one call per pass instead of one per site keeps the per-op dispatch cost
    (dominant for a batch's last tokens) from growing with the number of sites.
    """

    def __init__(self, batch: _Batch, n_prompts: int, convention: str, all_tokens: bool) -> None:
        self.batch = batch
        self.n = n_prompts
        self.convention = convention
        self.modes = MODES if all_tokens else MODES[:1]
        self.metric_names: list[str] = []
        self.values: dict[str, np.ndarray] = {}
        self.width = 0
        self.moments = {mode: (RunningMoments(mode == "last"), RunningMoments(mode == "last")) for mode in self.modes}
        # mode -> (rows (R, D) float64, owner (R,) row's prompt within the batch, prompts in the batch)
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def _store(self, mode: str, per_prompt: torch.Tensor) -> None:
        """per_prompt: (M, B) metrics of this batch's prompts."""
        if mode not in self.values:
            self.values[mode] = np.full((self.n, len(self.metric_names)), np.nan)
        self.values[mode][self.batch.index.numpy()] = per_prompt.T.cpu().numpy()

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        b, t, self.width = x.shape
        last = select_tokens(x, mask, last_token=True)  # (B, D) float64
        self.pending["last"] = (last, torch.arange(b, device=x.device), b)
        if self.batch.extreme is not None:
            self.moments["last"][self.batch.extreme].add_rows(last)
        if "all" in self.modes:
            rows = select_tokens(x, mask, last_token=False)  # (N_real, D), row-major over (B, T)
            owner = torch.arange(b, device=x.device)[:, None].expand(b, t)  # (B, T): which prompt
            owner = owner.reshape(-1) if mask is None else owner[mask.to(x.device, torch.bool)]  # (N_real,)
            self.pending["all"] = (rows, owner, b)
            if self.batch.extreme is not None:
                self.moments["all"][self.batch.extreme].add_rows(rows)


@torch.no_grad()
def flush(profiles: list[SiteProfile]) -> None:
    """Metrics of the rows every site read in the last pass, per prompt, into ``values``."""
    groups: dict[tuple[int, str, str], list[SiteProfile]] = {}
    for prof in profiles:
        for mode in prof.pending:
            groups.setdefault((prof.width, mode, prof.convention), []).append(prof)
    for (_, mode, convention), members in groups.items():
        parts = [m.pending[mode] for m in members]
        metrics = metric_profile(torch.cat([rows for rows, _, _ in parts]), convention)  # rows of every site at once
        names = list(metrics)
        stacked = torch.stack([metrics[k] for k in names])  # (M, R_total)
        start = 0
        for member, (rows, owner, b) in zip(members, parts):
            member.metric_names = names
            chunk = stacked[:, start:start + rows.shape[0]]  # (M, R)
            start += rows.shape[0]
            sums = torch.zeros(len(names), b, dtype=torch.float64, device=chunk.device).index_add_(1, owner, chunk)
            member._store(mode, sums / torch.bincount(owner, minlength=b).to(torch.float64))  # (M, B): mean per prompt
            del member.pending[mode]


@dataclass
class ActivationProfile:
    """Everything `taskloc activations` computed from the forward passes; the statistics over
    prompts (intervals, correlations, localisation) are made from it by ``analysis.py``."""

    sites: list[str]
    metric_names: list[str]
    convention: str
    modes: tuple[str, ...]
    values: dict[str, dict[str, np.ndarray]]  # mode -> site -> (N, M) per-prompt metrics
    moments: dict[str, dict[str, tuple[RunningMoments, RunningMoments]]]  # mode -> site -> (lowest, highest)
    widths: dict[str, int]
    levels: Levels
    prompts: Prompts
    tokens: np.ndarray  # (N,) prompt lengths in tokens
    model: dict


def check_sites(loaded: LoadedModel, patterns: list[str]) -> list[str]:
    """Site names for the glob patterns (did-you-mean on a miss); attention patterns are refused,
    they are (B, H, Tq, Tk) probabilities, not one vector per token."""
    sites = resolve_sites(loaded.model, patterns)  # type: ignore[arg-type]
    patterns_hit = [s for s in sites if s.endswith("hook_pattern")]
    if patterns_hit:
        raise ConfigError(f"site {patterns_hit[0]} holds attention probabilities (B, H, T, T), not one vector per token; "
                          "choose residual, attention-output or MLP sites, e.g. blocks.*.hook_resid_post.")
    return sites


def encode_prompts(loaded: LoadedModel, prompts: Prompts) -> list[list[int]]:
    """Token ids of every prompt, checked against the model's context before anything runs."""
    limit = loaded.model.max_context
    out = []
    for i, text in enumerate(prompts.texts):
        ids = loaded.encode(text)
        if not ids:
            raise DataError(f"prompt {i + 1} of {prompts.source} ({text[:30]!r}) encodes to no tokens; remove it.")
        if limit is not None and len(ids) > limit:
            raise DataError(f"prompt {i + 1} of {prompts.source} is {len(ids)} tokens, more than the model's context of "
                            f"{limit}; shorten it.")
        out.append(ids)
    return out


def _pad_id(loaded: LoadedModel) -> int:
    tok = getattr(loaded.model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None)
    return int(pad) if pad is not None else 0  # any id works: padded positions are masked out


def _batches(levels: Levels, lengths: np.ndarray, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """(level, prompt indices) batches, each within one level, longest prompts first."""
    out = []
    for level in range(len(levels)):
        members = np.flatnonzero(levels.of_prompt == level)
        members = members[np.argsort(-lengths[members], kind="stable")]
        out.extend((level, members[i:i + batch_size]) for i in range(0, members.size, batch_size))
    return out


@torch.no_grad()
def profile_activations(loaded: LoadedModel, prompts: Prompts, sites: list[str], *, convention: str = "taskloc",
                        batch_size: int = 16, max_levels: int = 8, all_tokens: bool = True) -> ActivationProfile:
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1.")
    levels = difficulty_levels(prompts.difficulty, max_levels)
    ids = encode_prompts(loaded, prompts)
    lengths = np.array([len(x) for x in ids])
    model = loaded.model
    device = model.device
    masked_attention = getattr(model, "kind", "causal-lm") != "causal-lm"  # an encoder sees padding without a mask
    pad = _pad_id(loaded)
    batch = _Batch()
    n = len(prompts)
    extremes = {0: 0, len(levels) - 1: 1} if len(levels) > 1 else {}
    plan = _batches(levels, lengths, batch_size)
    with capture(model, sites, reducer=lambda: SiteProfile(batch, n, convention, all_tokens)) as red, \
            progress_bar("activations", n) as advance:  # type: ignore[arg-type]
        for level, members in plan:
            width = int(lengths[members].max())
            tokens = torch.full((members.size, width), pad, dtype=torch.long)  # (B, T), right-padded
            for row, i in enumerate(members):
                tokens[row, : lengths[i]] = torch.tensor(ids[i])
            mask = torch.arange(width)[None, :] < torch.as_tensor(lengths[members])[:, None]  # (B, T)
            batch.index, batch.extreme = torch.as_tensor(members), extremes.get(level)
            red.mask = mask.to(device)
            if masked_attention:
                model(tokens.to(device), attention_mask=mask.to(device, torch.long))  # type: ignore[call-arg]
            else:
                model(tokens.to(device))
            flush([red[s] for s in sites])
            advance(members.size)
    first = red[sites[0]]
    modes = first.modes
    return ActivationProfile(
        sites=sites, metric_names=first.metric_names, convention=convention, modes=modes,
        values={mode: {s: red[s].values[mode] for s in sites} for mode in modes},
        moments={mode: {s: red[s].moments[mode] for s in sites} for mode in modes},
        widths={s: red[s].width for s in sites}, levels=levels, prompts=prompts, tokens=lengths,
        model={"source": str(loaded.source), "kind": loaded.kind, "n_layer": model.n_layer, "d_model": model.d_model},
    )
