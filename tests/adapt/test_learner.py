import copy

import pytest
import torch

from taskloc.adapt import Learner, LearnerConfig, PromptSearchConfig, answer_kl, probe_kl
from taskloc.models import load_weights, weights_of
from taskloc.tasks import get_task
from taskloc.tasks.mixture import TaskMixture, eval_examples
from taskloc.train import TrainConfig, train

CFG = TrainConfig(steps=7, batch_size=8, lr=3e-3, warmup=2, eval_every=100, ckpt_every=100)
SEARCH = PromptSearchConfig(population=3, children=3, generations=1, length=3, examples=4)


def _run(model, kind, kl, seed=0, cycle_steps=3):
    start = copy.deepcopy(model)
    learner = Learner(model, start, LearnerConfig(kind, kl, cycle_steps), SEARCH, seed)
    mix = TaskMixture([get_task("sort")], [2], seed=11)
    seen = []
    learner.segment(mix, CFG, eval_examples(get_task("sort"), 2, 4, 5), on_cycle=seen.append)
    return learner, seen


def test_kl_zero_without_prompt_is_exactly_train(tiny_model):
    a, b = tiny_model, copy.deepcopy(tiny_model)
    train(a, CFG, TaskMixture([get_task("sort")], [2], seed=11), log=None)
    _, seen = _run(b, "slow-only", kl=0.0)
    assert seen == [3, 6, 7]  # cycles of 3 steps, the last one short
    wa, wb = weights_of(a), weights_of(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit, not merely close


def test_kl_penalty_changes_the_update_and_holds_the_model_nearer_the_start(tiny_model):
    base = weights_of(tiny_model)
    probe = eval_examples(get_task("reverse"), 1, 16, 0)
    drift = {}
    for kl in (0.0, 5.0):
        model = copy.deepcopy(tiny_model)
        load_weights(model, base)
        learner, _ = _run(model, "slow-only", kl)
        drift[kl] = probe_kl(model, learner.start, probe)
    assert drift[5.0] < drift[0.0]
    assert probe_kl(tiny_model, copy.deepcopy(tiny_model), probe) == pytest.approx(0.0, abs=1e-7)


def test_fast_only_moves_no_weight_and_two_channel_is_seeded(tiny_model):
    before = weights_of(tiny_model)
    learner, seen = _run(tiny_model, "fast-only", kl=0.1)
    after = weights_of(tiny_model)
    assert seen == [3, 6, 7] and all(torch.equal(before[k], after[k]) for k in before)
    assert learner.search is not None and learner.search.last is not None
    runs = []
    for _ in range(2):
        model = copy.deepcopy(tiny_model)
        learner, _ = _run(model, "two-channel", kl=0.1, seed=4)
        runs.append((learner.prompt, weights_of(model)))
    assert runs[0][0] == runs[1][0] and all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_answer_kl_is_zero_for_equal_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert float(answer_kl(logits, logits, mask)) == pytest.approx(0.0, abs=1e-7)
    other = logits.clone()
    other[0, 0, 1] += 10.0  # outside the answer: ignored
    assert float(answer_kl(logits, other, mask)) == pytest.approx(0.0, abs=1e-7)
    other[1, 3, 2] += 3.0
    assert float(answer_kl(logits, other, mask)) > 0
