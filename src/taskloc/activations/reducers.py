"""Reducers for ``capture(model, sites, reducer=...)``: statistics of a site over any number of
inputs in memory that does not grow with them (or grows by a few scalars per prompt).

Each reducer reads a (B, T, D) site (the residual stream, attention and MLP outputs, the MLP
hidden layer), skips padded positions, and works in float64:

- ``RunningMoments``: per-dimension count, mean and variance over every real token, merged batch
  by batch with Chan et al.'s pairwise update (exact up to rounding, unlike a running sum of
  squares, which cancels catastrophically when the mean is large against the spread).
- ``RunningMoments(last_token=True)``: the same over each prompt's last real token only.
- ``LastTokenScalars(fn)``: ``fn`` on each prompt's last-token vector, e.g.
  ``metrics.sparsity_profile``; keeps its scalars per prompt, O(n) numbers instead of O(n * D).

Typical use, one statistic per block over a padded dataset::

    with capture(model, resolve_sites(model, ["blocks.*.hook_resid_post"]), reducer=RunningMoments) as red:
        for inputs, mask in batches:
            red.mask = mask  # (B, T), True at real tokens
            model(inputs)
    mean, var = red["blocks.0.hook_resid_post"].mean, red["blocks.0.hook_resid_post"].variance()
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import HookError

# One scalar per row, or several named ones: (B, D) -> (B,) or {name: (B,)}.
RowFn = Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]]


def _check_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise HookError(f"reducers read (batch, tokens, features) sites, but this one holds shape {tuple(x.shape)} "
                        "(the attention pattern is (B, H, Tq, Tk)); capture it without a reducer.")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise HookError(f"the padding mask has shape {tuple(mask.shape)} but the activation is {tuple(x.shape)}; "
                        "set the mask to the (B, T) padding mask of the batch about to run (None: no padding).")


def last_positions(mask: torch.Tensor | None, batch: int, tokens: int, device: torch.device | None = None) -> torch.Tensor:
    """Index of each row's last real token (B,): T - 1 without a mask; with a (B, T) mask the
    last True position, so right and left padding both work."""
    if mask is None:
        return torch.full((batch,), tokens - 1, dtype=torch.long, device=device)
    mask = mask.to(torch.bool)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise HookError(f"row {int(empty.nonzero()[0])} of the padding mask has no real token; drop empty prompts from the batch.")
    return tokens - 1 - mask.flip(1).to(torch.int8).argmax(dim=1)  # argmax: first True from the right


def select_tokens(x: torch.Tensor, mask: torch.Tensor | None, last_token: bool) -> torch.Tensor:
    """The rows a reducer reads, (N, D) in float64: every real token of x (B, T, D), or each
    row's last real token (N = B)."""
    _check_tokens(x, mask)
    mask = None if mask is None else mask.to(x.device, torch.bool)
    b, t, d = x.shape
    if last_token:
        rows = x[torch.arange(b, device=x.device), last_positions(mask, b, t, x.device)]  # (B, D)
    else:
        rows = x.reshape(b * t, d) if mask is None else x[mask]  # (N_real, D)
    return rows.to(torch.float64)


class RunningMoments:
    """Per-dimension moments of a site over real tokens (all of them, or each prompt's last).

    ``count``, ``mean`` (D,) and ``m2`` (D,), the sum of squared deviations from the mean; the
    variance is ``variance(ddof)``. Tensors stay on the site's device, in float64.
    """

    def __init__(self, last_token: bool = False) -> None:
        self.last_token = last_token
        self.count = 0
        self.mean: torch.Tensor | None = None  # (D,)
        self.m2: torch.Tensor | None = None  # (D,)

    def update(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.add_rows(select_tokens(x, mask, self.last_token))

    def add_rows(self, rows: torch.Tensor) -> None:
        """Fold in rows already selected (N, D) float64, e.g. by a reducer that also reads them."""
        if rows.shape[0] == 0:
            return
        var, mean = torch.var_mean(rows, dim=0, correction=0)  # one pass (Welford), no (N, D) temporaries
        self._merge(rows.shape[0], mean, var * rows.shape[0])

    def merge(self, other: RunningMoments) -> None:
        """Fold in moments gathered elsewhere (another shard of the data)."""
        if other.count:
            self._merge(other.count, other.mean, other.m2)

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean.clone(), m2.clone()
            return
        if mean.shape != self.mean.shape:
            raise HookError(f"moments of width {self.mean.shape[0]} cannot absorb width {mean.shape[0]}; use one reducer per site.")
        total = self.count + n
        delta = mean.to(self.mean.device) - self.mean
        # Chan, Golub & LeVeque (1979): exact pooling of two groups' means and squared deviations.
        self.m2 = self.m2 + m2.to(self.m2.device) + delta**2 * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def variance(self, ddof: int = 0) -> torch.Tensor:
        """(D,): population variance for ddof=0, the unbiased estimate for ddof=1."""
        if self.m2 is None or self.count <= ddof:
            raise HookError(f"variance with ddof={ddof} needs more than {ddof} token(s), and {self.count} were seen; "
                            "run forward passes inside the capture block first.")
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> torch.Tensor:
        return self.variance(ddof).sqrt()


class LastTokenScalars:
    """``fn`` on each prompt's last real token, kept per prompt in input order.

    fn: (B, D) float64 rows -> (B,) scalars, or {name: (B,)} (``metrics.sparsity_profile``).
    ``scalars()`` returns (N,) float64 on the CPU, or {name: (N,)}.
    """

    def __init__(self, fn: RowFn) -> None:
        self.fn = fn
        self.count = 0  # prompts seen
        self._parts: list[torch.Tensor | dict[str, torch.Tensor]] = []

    def update(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        rows = select_tokens(x, mask, last_token=True)  # (B, D)
        value = self.fn(rows)
        if isinstance(value, dict):
            self._parts.append({k: self._per_row(v, rows.shape[0], k) for k, v in value.items()})
        else:
            self._parts.append(self._per_row(value, rows.shape[0], None))
        self.count += rows.shape[0]

    def _per_row(self, value: torch.Tensor, rows: int, name: str | None) -> torch.Tensor:
        value = torch.as_tensor(value)
        if tuple(value.shape) != (rows,):
            what = f"its {name!r} entry" if name else "it"
            raise HookError(f"the per-row function returned shape {tuple(value.shape)} for {rows} rows; "
                            f"{what} must hold one scalar per row, shape ({rows},).")
        return value.detach().to("cpu", torch.float64)

    def scalars(self) -> torch.Tensor | dict[str, torch.Tensor]:
        if not self._parts:
            return torch.zeros(0, dtype=torch.float64)
        first = self._parts[0]
        if isinstance(first, dict):
            return {k: torch.cat([part[k] for part in self._parts]) for k in first}  # type: ignore[index]
        return torch.cat(self._parts)  # type: ignore[arg-type]
