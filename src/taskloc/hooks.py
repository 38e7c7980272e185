"""Named hook sites and scoped hooks.

A *site* is an identity module (HookPoint) placed at a named point of a model's forward pass,
TransformerLens-style: ``blocks.3.hook_resid_post``, ``blocks.0.attn.hook_pattern``. Hooks are
attached with ``with hooks(model, {site: fn}):`` and are always removed on exit, even when the
body raises, so a steering vector can never leak into a later measurement.

``capture(model, sites)`` reads the last forward pass's values; ``capture(model, sites,
reducer=...)`` feeds every pass to running statistics per site (``activations/reducers.py``).
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar, overload

import torch
from torch import nn

from .errors import HookError
from .registry import did_you_mean

# fn(activation, site_name) -> replacement activation, or None to leave it unchanged.
HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity at a named site; forward hooks registered on it can read or replace the value."""

    def __init__(self) -> None:
        super().__init__()
        self.site_name = ""  # filled in by name_sites() once the module tree is built

    @property
    def active(self) -> bool:
        """True when a hook is attached. Lets a kernel skip work (e.g. materialising the attention
        pattern) that only a hook would read."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def name_sites(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.site_name = name


def site_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, HookPoint)]


def resolve_sites(model: nn.Module, patterns: list[str]) -> list[str]:
    """Expand glob patterns (``blocks.*.hook_resid_post``) into site names, in model order.
    A pattern that matches nothing is an error naming the closest sites."""
    known = site_names(model)
    out: list[str] = []
    for pattern in patterns:
        matched = [s for s in known if fnmatch.fnmatchcase(s, pattern)]
        if not matched:
            raise HookError(did_you_mean(pattern, known, "hook site"))
        out.extend(s for s in matched if s not in out)
    return out


@contextlib.contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn]) -> Iterator[None]:
    """Attach ``fns`` (site name -> hook function) for the duration of the block."""
    points = {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}
    for name in fns:
        if name not in points:
            raise HookError(did_you_mean(name, list(points), "hook site"))
    handles = []
    try:
        for name, fn in fns.items():
            def wrapper(module: nn.Module, args: tuple, output: torch.Tensor, fn: HookFn = fn, name: str = name):
                return fn(output, name)

            handles.append(points[name].register_forward_hook(wrapper))
        yield
    finally:
        for handle in handles:
            handle.remove()


class Reducer(Protocol):
    """Running statistics of one site, fed each forward pass's value as it happens, so what it
    keeps does not grow with the number of inputs (``taskloc.activations.reducers`` has them)."""

    def update(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """x: the site's detached value, (B, T, ...); mask: the Reduction's mask as the caller set
        it, (B, T) with True (or 1) at real tokens, or None when every position is one."""


R = TypeVar("R", bound=Reducer)


class Reduction(Generic[R]):
    """What ``capture(model, sites, reducer=...)`` yields: one reducer per site (``red[site]``).

    Before each forward pass of a padded batch, set ``mask`` to its (B, T) padding mask
    (True or 1 = real token), so padding never enters the statistics; None means no padding.
    """

    def __init__(self, reducers: dict[str, R]) -> None:
        self.reducers = reducers
        self.mask: torch.Tensor | None = None

    def __getitem__(self, site: str) -> R:
        return self.reducers[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.reducers)

    def __len__(self) -> int:
        return len(self.reducers)


@overload
def capture(model: nn.Module, sites: list[str]) -> contextlib.AbstractContextManager[dict[str, torch.Tensor]]: ...


@overload
def capture(model: nn.Module, sites: list[str], reducer: Callable[[], R]) -> contextlib.AbstractContextManager[Reduction[R]]: ...


def capture(model: nn.Module, sites: list[str], reducer: Callable[[], Reducer] | None = None) -> contextlib.AbstractContextManager:
    """Read the value at each site from forward passes inside the block.

    Without ``reducer``: yields {site: detached tensor}; a later forward pass overwrites an
    earlier one's value, so memory holds one pass. With ``reducer`` (a factory, called once per
    site, e.g. ``RunningMoments``): yields a ``Reduction`` whose reducers see every pass, so
    statistics over any number of inputs fit in memory. Hooks are removed on exit either way.
    """
    return _keep_last(model, sites) if reducer is None else _reduce(model, sites, reducer)


@contextlib.contextmanager
def _keep_last(model: nn.Module, sites: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    store: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, name: str) -> None:
        store[name] = x.detach()

    with hooks(model, {s: record for s in sites}):
        yield store


@contextlib.contextmanager
def _reduce(model: nn.Module, sites: list[str], reducer: Callable[[], R]) -> Iterator[Reduction[R]]:
    reduction = Reduction({s: reducer() for s in sites})

    def record(x: torch.Tensor, name: str) -> None:
        try:
            reduction.reducers[name].update(x.detach(), reduction.mask)
        except HookError as exc:
            raise HookError(f"site {name}: {exc}") from None

    with hooks(model, {s: record for s in sites}):
        yield reduction
