"""Invariants of the merge methods beyond tests/merge/test_merge_methods.py: the collinear (lerp)
branch of SLERP at its endpoints, DARE without dropping, and core isolation with disjoint cores."""
import pytest
import torch

from taskloc.merge import merge_models

SHAPES = {"a.weight": (12, 8), "b.bias": (8,)}


def _base(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


@pytest.mark.parametrize("t, end", [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints_on_the_collinear_branch(t, end):
    base = _base()
    scaled = {n: 2.0 * v for n, v in base.items()}  # cos = 1: the linear fallback
    got = merge_models(base, [scaled], method="slerp", options={"t": t}).state_dict
    want = [base, scaled][end]
    assert all(torch.equal(got[n], want[n]) for n in base)


def test_dare_without_drop_is_task_arithmetic():
    base = _base()
    tasks = [{n: v + 0.1 * torch.randn_like(v) for n, v in base.items()} for _ in range(2)]
    dare = merge_models(base, tasks, method="dare_linear", options={"drop": 0, "lambda_": 0.5}).state_dict
    ta = merge_models(base, tasks, method="task_arithmetic", options={"lambda_": 0.5}).state_dict
    assert all(torch.equal(dare[n], ta[n]) for n in base)


def test_core_isolation_with_disjoint_cores_transplants_each_task_and_fuses_the_rest():
    base = _base()
    g = torch.Generator().manual_seed(5)
    tasks = [{n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(2)]
    first = {n: torch.rand(v.shape, generator=g) < 0.3 for n, v in base.items()}
    second = {n: ~first[n] & (torch.rand(v.shape, generator=g) < 0.5) for n, v in base.items()}
    got = merge_models(base, tasks, method="core_isolation", options={"masks": [first, second], "noncore": "linear"}).state_dict
    for n in base:
        assert torch.equal(got[n][first[n]], tasks[0][n][first[n]])
        assert torch.equal(got[n][second[n]], tasks[1][n][second[n]])
        rest = ~(first[n] | second[n])
        torch.testing.assert_close(got[n][rest], ((tasks[0][n] + tasks[1][n]) / 2)[rest], rtol=0, atol=1e-6)
