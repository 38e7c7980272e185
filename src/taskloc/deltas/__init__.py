"""Streaming weight-delta analysis, exact global top-k, sparse patches and grafting.

In memory (studies):
    delta_stats(base_sd, tuned_sd, top="1%") -> DeltaReport
    global_topk_mask(deltas, 0.01) -> {name: bool mask}
    concentration_curve(tensors) / gaussian_null_curve(sizes, mean_squares, fractions)
On checkpoints (CLI): delta_checkpoints(BASE, TUNED, ...), graft_checkpoint(BASE, PATCH, OUT).
"""
from .analysis import GRID, GRID_PERCENT, DeltaReport, GlobalStats, Selection, TensorStats, analyse
from .api import as_top, concentration_curve, delta_checkpoints, delta_stats, global_topk_mask, graft_checkpoint
from .names import kind_of, layer_of
from .null import gaussian_null_curve, gaussian_null_gini, gaussian_null_hoyer
from .patch import open_patch
from .selection import TopK, parse_top

__all__ = [
    "GRID", "GRID_PERCENT", "DeltaReport", "GlobalStats", "Selection", "TensorStats", "TopK", "analyse", "as_top",
    "concentration_curve", "delta_checkpoints", "delta_stats", "gaussian_null_curve", "gaussian_null_gini",
    "gaussian_null_hoyer", "global_topk_mask", "graft_checkpoint", "kind_of", "layer_of", "open_patch", "parse_top",
]
