"""Exact attention FLOP accounting: the (query, key) pairs a kernel attends and computes.

One attended pair costs 2 * Dh FLOPs for q.k and 2 * Dv for the weighted value sum (softmax and
masking, O(1) per pair, are left out, as FLOP counts in the sparse-attention literature do).
``attended`` pairs are the pattern's set; ``computed`` pairs are what the kernel multiplied
(a gathered row's key list covers all its queries, so computed >= attended); ``select_flops``
is the cost of choosing the keys. Dense causal attention attends sum_i (p_i + 1) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass


def causal_pairs(t_q: int, t_k: int) -> int:
    """Pairs dense causal attention attends: queries at positions Tk - Tq .. Tk - 1."""
    return t_q * (t_k - t_q) + t_q * (t_q + 1) // 2


@dataclass
class FlopLedger:
    """Running totals over kernel calls (all heads and batch rows)."""

    queries: int = 0  # query rows x heads
    attended: int = 0
    computed: int = 0
    dense: int = 0  # what dense causal attention would attend for the same calls
    select_flops: int = 0
    pair_flops: int = 0  # FLOPs per pair, 2 * (Dh + Dv), of the last call

    def add(self, q_shape: tuple[int, ...], t_k: int, dv: int, *, attended: int, computed: int,
            select_flops: int = 0) -> None:
        b, h, t_q, d = q_shape
        self.queries += b * h * t_q
        self.attended += attended
        self.computed += computed
        self.dense += b * h * causal_pairs(t_q, t_k)
        self.select_flops += select_flops
        self.pair_flops = 2 * (d + dv)

    def add_dense(self, q_shape: tuple[int, ...], t_k: int, dv: int) -> None:
        b, h, t_q, _d = q_shape
        pairs = b * h * causal_pairs(t_q, t_k)
        self.add(q_shape, t_k, dv, attended=pairs, computed=pairs)

    @property
    def density(self) -> float:
        """Attended pairs as a fraction of dense causal attention's."""
        return self.attended / self.dense if self.dense else 1.0

    def flops_per_query(self, include_selection: bool = True) -> float:
        """Attention FLOPs per query row and head: attended pairs x pair cost (+ selection)."""
        if not self.queries:
            return 0.0
        total = self.attended * self.pair_flops + (self.select_flops if include_selection else 0)
        return total / self.queries
