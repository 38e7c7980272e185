"""A test-only kernel registered once in the shared registry: the full causal mask built row by
row, explicit softmax, K/V heads repeated for grouped-query attention. It shares no code with the
dense kernel, so agreement between the two checks both."""
import pytest
import torch

from taskloc.attention import ATTENTION

REFERENCE = "masked-reference"
CALLS: list[tuple[int, ...]] = []  # q shapes, so a test can prove the kernel really ran


def reference_attention(q, k, v, pattern_site, mask=None, *, causal=True, scale=None):
    CALLS.append(tuple(q.shape))
    _b, h, t_q, d = q.shape
    t_k = k.shape[2]
    k = k.repeat_interleave(h // k.shape[1], dim=1)  # (B, H, Tk, Dh)
    v = v.repeat_interleave(h // v.shape[1], dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * (d**-0.5 if scale is None else scale)
    allowed = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)
    if causal:
        for i in range(t_q):
            allowed[i, t_k - t_q + i + 1 :] = False  # query i sits at position Tk - Tq + i
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        scores = scores + mask
    scores = torch.where(allowed, scores, torch.finfo(scores.dtype).min)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    pattern = pattern_site(weights / weights.sum(-1, keepdim=True))  # always explicit: allowed by the contract
    return torch.einsum("bhqk,bhkd->bhqd", pattern, v)


ATTENTION.register(REFERENCE)(reference_attention)


@pytest.fixture
def reference_calls() -> list[tuple[int, ...]]:
    CALLS.clear()
    return CALLS
