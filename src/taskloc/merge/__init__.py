"""Model merging over streamed checkpoints: one tensor name at a time across all models, so memory
is about one tensor per model, whatever the model size.

    merge_checkpoints(BASE, [A, B], method="ties", options={"k": 20}, out="merged")  # taskloc merge
    merge_models(base_sd, [sd_a, sd_b], method="task_arithmetic").state_dict      # in memory
    cores_of_paths(BASE, [A, B], p=1, tau=0.1) / core_masks(base_sd, [sd_a, sd_b], p=1)  # taskloc cores

Notation: base theta0, task models theta_i (i = 1..N), task vectors d_i = theta_i - theta0, weights
w_i (default 1), all per tensor, computed in float32 and written in the base's dtype.

task_arithmetic  theta0 + lambda * sum_i w_i d_i   (Ilharco et al. 2023; mergekit task_arithmetic).
ties             (Yadav et al. 2023; mergekit ties) 1. trim: keep each d_i's top k% entries by |d_i|,
                 per tensor (k = int(k% * numel), mergekit's density) or, with --trim global, the
                 exact top k% over the whole model (deltas' streaming threshold; k = round(k% * N));
                 2. elect: sign of sum_i w_i d_i (a zero sum elects +); 3. disjoint mean: sum of the
                 agreeing w_i d_i over the sum of their w_i (entries with none stay theta0);
                 theta0 + lambda * that.
dare_linear      d_i -> d_i * m_i / (1 - p), m_i ~ Bernoulli(1 - p) (Yu et al. 2024), then
                 theta0 + lambda * sum_i w_i d_i.
dare_ties        the same drop, then TIES sign election with the agreeing entries summed, not
                 averaged (mergekit's dare_ties: normalize off).
slerp            BASE and one model A: per tensor, cos = <v0, v1> / (|v0| |v1|) (a norm <= 1e-8 is
                 not divided by); |cos| > 0.9995 -> (1 - t) v0 + t v1, else
                 sin((1 - t) a) / sin a * v0 + sin(t a) / sin a * v1, a = arccos(cos) (mergekit slerp).
core_isolation   CPI-FT fusion (Wang et al. 2025, REFERENCE.md C4): core C_i = exact global top p% of
                 |d_i| (ties by tensor order, then flat index, as deltas.global_topk_mask). Entries in
                 some core take the task value, the mean over the tasks whose cores hold them;
                 the others are fused by --noncore: slerp (default; two models at t = 1/2, more by
                 m_1 = theta_1, m_i = slerp(m_{i-1}, theta_i, 1/i), angles over non-core entries
                 only), linear (mean of the task models) or base (theta0's values). The
                 consolidation fine-tune is the study's job: core_masks() gives the masks to freeze.
                 Invariants: all-ones cores give the task model (one task); all-zero cores with
                 --noncore base give the base.

Where mergekit has the method, the same inputs and options give the same tensors, except:
  * defaults follow the papers: ties k = 20% (mergekit density 1.0), DARE p = 90% (mergekit density
    1.0); pass them explicitly to compare;
  * ties trimming breaks ties at the k-th magnitude by lower flat index (mergekit: torch.argsort,
    unspecified order) and keeps 0 entries where int(k% * numel) is 0 (mergekit asserts);
  * DARE masks come from a generator seeded by hash(--seed, model position, tensor name), so they
    are reproducible (mergekit draws from torch's global generator), and survivors are scaled by
    1/(1 - p) as in the DARE paper (mergekit's default rescale matches the L1 norm instead);
  * bf16/fp16 models are merged in float32 and rounded once (mergekit computes in the base dtype);
  * slerp's cosine comes from one float32 dot product over the two norms (mergekit normalizes both
    vectors first), so coefficients agree to float32 rounding.
"""
from .api import MergeResult, build_method, merge_checkpoints, merge_models
from .cores import CoreReport, core_masks, core_overlap, core_regions, cores_of_paths, groups_of
from .inputs import MergeInputs
from .methods import METHODS, MergeMethod, method_table
from .ops import dare_seed, slerp
from .regions import TopRegion, find_region

__all__ = [
    "METHODS", "CoreReport", "MergeInputs", "MergeMethod", "MergeResult", "TopRegion", "build_method", "core_masks",
    "core_overlap", "core_regions", "cores_of_paths", "dare_seed", "find_region", "groups_of", "merge_checkpoints",
    "merge_models", "method_table", "slerp",
]
